import importlib.util
from pathlib import Path

import pytest
import torch

BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "embed_throughput.py"


@pytest.mark.slow
def test_throughput_benchmark_runs_every_path(capsys):
    spec = importlib.util.spec_from_file_location("embed_throughput", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    argv = ["--images", "2", "--conditions", "1", "3", "--repeats", "1", "--image-size", "112"]
    argv += ["--threads", str(torch.get_num_threads())]  # main sets it for the process
    rates = module.main(argv)
    assert set(rates) == {(path, c) for path in module.PATHS for c in (1, 3)}
    assert all(rate > 0 for rate in rates.values())
    table = capsys.readouterr().out
    assert "lower bound" in table and "reference-kv" in table


@pytest.mark.slow
def test_deletion_benchmark_runs_small(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARK.parent))
    spec = importlib.util.spec_from_file_location("deletions", BENCHMARK.parent / "deletions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    argv = ["--size", "8000", "--dim", "64", "--queries", "100", "--shard-size", "3000"]
    rows = module.main([*argv, "--index-type", "IVF32,SQ8,Refine(SQfp16)"])
    assert [(r["deleted"], r["rows"], r["deleted_rows"]) for r in rows] == [
        ("0%", 8000, 0),
        ("10%", 7200, 800),
        ("40%", 4800, 3200),
        ("40%, compacted", 4800, 0),
    ]
    # Filtering deleted rows costs no recall against exact search over the live rows.
    assert rows[2]["recall"] >= rows[3]["recall"] - 0.01
    assert all(r["recall"] >= 0.9 for r in rows)
    assert "R@10" in capsys.readouterr().out
