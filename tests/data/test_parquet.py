"""Parquet is read on the calling thread: Arrow's worker threads that hold buffers of a
Python file object abort the process when they drop them during interpreter exit (a resumed
`index` ended with exit 134 about one run in four; see tests/indexing/test_sync_kills.py)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import dior_search

PROBE = textwrap.dedent(
    """
    import os
    import sys
    from pathlib import Path

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dior_search.data.parquet import ParquetTable

    path = Path(sys.argv[1])
    n = 50_000
    columns = {"id": np.arange(n), "norm": np.ones(n), "path": [f"{i}.png" for i in range(n)]}
    pq.write_table(pa.table(columns), str(path), row_group_size=n // 4)


    def threads():
        return len(os.listdir("/proc/self/task"))


    before = threads()
    with path.open("rb") as handle:
        table = ParquetTable(handle)
        assert table.read().num_rows == n
        assert table.read(["path"]).column_names == ["path"]
        assert table.read_row_group(2, ["id"]).column("id")[0].as_py() == n // 2
        assert table.group_rows() == [n // 4] * 4
    assert ParquetTable(str(path)).read(["id", "norm"]).num_rows == n
    ours = threads()
    with path.open("rb") as handle:
        pq.read_table(handle)
    print(before, ours, threads(), flush=True)
    os._exit(0)  # what this last read risks at exit is the very abort described above
    """
)


def test_parquet_reads_start_no_arrow_threads(tmp_path):
    package = str(Path(dior_search.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "t.parquet")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": package, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, ours, default = map(int, done.stdout.split())
    assert ours == before
    # Arrow's own default does start threads, so this probe sees them when they start.
    assert default > ours
