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
