"""A shard written to a full disk: the write fails as one line, with nothing of FAISS's own
printed before it and no empty shard left under its final name."""

import os
from pathlib import Path

import numpy as np
import pytest

from dior_search.files import atomic_file
from dior_search.store.index_types import FLAT
from dior_search.store.shards import write_faiss

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")


def test_a_shard_write_to_a_full_disk_fails_and_leaves_nothing(tmp_path, capfd):
    final = tmp_path / "shard-00001.faiss"
    vectors = np.eye(4, 8, dtype=np.float32)
    with pytest.raises(OSError) as failed, atomic_file(final) as tmp:
        # Every byte written to the temporary file lands on a device that is always full.
        os.symlink("/dev/full", tmp)
        write_faiss(tmp, vectors, np.arange(4, dtype=np.int64), FLAT)
    assert failed.value.errno == 28  # ENOSPC: "No space left on device"
    assert not final.exists() and not final.is_symlink()
    assert capfd.readouterr().err == ""  # FAISS printed no "close error" of its own
