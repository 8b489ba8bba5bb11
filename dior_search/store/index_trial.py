"""Trying an index type before any embedding, in a process of its own.

FAISS accepts factory strings it cannot use: `HNSW0` aborts the whole process when the first
vector is added, `HNSW99999999` runs out of memory, `IVF0,Flat` fails at the first search,
and `SQ0` or `PCA0,Flat` build indexes that answer every query with the same ids and a score
of 0. Parsing cannot foresee all of that, so before a run embeds anything, the type is built,
trained on random unit vectors of the index's dimension, filled with them and searched, in a
child process (an abort ends the child, not the run) with bounded memory and time. The type
passes if every query gets real ids and finite scores and most queries find themselves.

Run as `python -m dior_search.store.index_trial SPEC DIM`; it prints one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.store.index_types import (
    apply_search_params,
    default_search_params,
    faiss_reason,
    make_index,
    pretrain_pca,
    training_minimum,
    unwrap,
)

# Random vectors the type is trained on (at least its training minimum) and queries.
SAMPLE_SIZE = 256
QUERIES = 32
K = 10
# The share of queries that must find themselves among their K results.
SELF_FOUND_SHARE = 0.5
# A type whose training alone needs more vectors than this is built but not trained here;
# coarse list counts (checked by range beforehand) are tried at most at TRIAL_LISTS.
MAX_TRIAL_VECTORS = 4096
TRIAL_LISTS = 256
TRIAL_MEMORY_BYTES = 8 << 30
TRIAL_TIMEOUT_S = 30.0


def try_index_type(factory: str, dim: int) -> str | None:
    """Why `factory` at dimension `dim` cannot serve as an index type (None: it can)."""
    package_parent = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
        # One thread: FAISS's OpenMP threads spin on a loaded machine; the trial is small.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "dior_search.store.index_trial", factory, str(dim)]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=TRIAL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return f"trying it on {SAMPLE_SIZE} vectors took over {TRIAL_TIMEOUT_S:.0f} s"
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return f"FAISS ended the process ({name}) when it was built, filled or searched"
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        return f"trying it failed: {last_line(done.stderr) or f'exit status {done.returncode}'}"
    reason = answer.get("reason")
    return None if reason is None else str(reason)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if not line.startswith("WARNING")]
    return lines[-1] if lines else ""


def trial(factory: str, dim: int) -> str | None:
    """Build, train, fill and search the type in this process (see module)."""
    import faiss

    smaller = re.sub(r"IVF(\d+)", lambda m: f"IVF{min(int(m.group(1)), TRIAL_LISTS)}", factory)
    try:
        index = make_index(smaller, dim)
    except Exception as exc:  # UsageError with FAISS's reason, or its own errors
        return faiss_reason(exc)
    minimum = training_minimum(index)
    if minimum > MAX_TRIAL_VECTORS:
        return None  # too large to train here; build checks passed
    n = max(SAMPLE_SIZE, minimum)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    quicken(index, faiss)
    try:
        if not index.is_trained:
            pretrain_pca(index, vectors)
            index.train(vectors)
        apply_search_params(index, default_search_params(index), factory)
        index.add_with_ids(vectors, np.arange(n, dtype=np.int64))
        scores, ids = index.search(vectors[:QUERIES], K)
    except MemoryError:
        return "FAISS ran out of memory building it"
    except Exception as exc:
        return faiss_reason(exc)
    return judge(scores, ids, n)


def quicken(index: Any, faiss: Any) -> None:
    """Few k-means iterations and no polysemous training: the trial checks, it does not tune."""
    parts = unwrap(index)
    parts += [faiss.downcast_index(p.storage) for p in parts if isinstance(p, faiss.IndexHNSW)]
    for part in parts:
        if isinstance(part, faiss.IndexIVF):
            part.cp.niter = 2
        if hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False
        pq = getattr(part, "pq", None)
        if isinstance(pq, faiss.ProductQuantizer):
            pq.cp.niter = 2


def judge(scores: np.ndarray, ids: np.ndarray, n: int) -> str | None:
    """Why search results on the trial's own vectors show a type that cannot tell them apart."""
    if (ids < 0).any() or (ids >= n).any():
        return "searching it returns no results for vectors it holds"
    if not np.isfinite(scores).all():
        return "searching it returns scores that are not finite numbers"
    if np.allclose(scores, scores.flat[0]):
        return "it gives every vector the same score: it cannot tell vectors apart"
    found = np.mean([row_id in row for row_id, row in enumerate(ids)])
    if found < SELF_FOUND_SHARE:
        return (
            f"only {found:.0%} of vectors find themselves among their {K} nearest in it: it "
            "cannot tell vectors apart"
        )
    return None


def main() -> None:
    factory, dim = sys.argv[1], int(sys.argv[2])
    with contextlib.suppress(ValueError, OSError):  # a lower hard limit is already set
        resource.setrlimit(resource.RLIMIT_AS, (TRIAL_MEMORY_BYTES, TRIAL_MEMORY_BYTES))
    print(json.dumps({"reason": trial(factory, dim)}), flush=True)


if __name__ == "__main__":
    main()
