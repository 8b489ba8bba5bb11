"""The command line under hostile input: every verb with boundary values of each numeric
option, degenerate FAISS factory strings and search parameters, odd conditions and odd file
names. Every run ends with a documented exit code; a failure is one stderr line, never a
traceback; a success is checked to be right (the index holds every image once and finds each
by its own vector, a query returns the asked image first)."""

import json
from pathlib import Path

import numpy as np
import pytest
from cli_runs import (
    DOCUMENTED_EXIT_CODES,
    TINY,
    Run,
    error_line,
    image_folder,
    odd,
    run_cli,
)

from dior_search.data.synthetic import write_dataset
from dior_search.store.reader import IndexReader

PHOTOS = [
    "a.png",
    odd(b"b\xff.png"),
    "c\td.png",
    "e\nf.png",
    "g\u202eh.png",
    "noext",
    "sub/i.png",
    "[bold]j[/bold].png",
]
INTEGERS = ["0", "-1", str(2**63), str(10**30), "nan", "inf", "1.5"]
SIZES = ["0", "-1", "nan", "inf", "1e30", "1k", "99999999T"]
CONDITIONS = [
    "",
    "  ",
    "a" * 201,
    "line\nbreak",
    "rtl\u202eoverride",
    odd(b"not\xffutf8"),
    "object/color",
    "object--color",
    "skipped.tsv",
    "..",
    ".",
    "-dash",
    "unconditional",
    "[bold]markup[/bold]",
    "%s {} \\n",
    "caf\u00e9 \U0001f600",
]
FACTORY_STRINGS = [
    "HNSW0", "HNSW1", "HNSW99999999", "NSG0", "NSG2", "PCAR2000,Flat", "PCA0,Flat",
    "IVF0,Flat", "IVF99999999,Flat", "SQ0", "IVF2,SQ0", "PQ0", "PQ16x0", "OPQ0,Flat",
    "RR0,Flat", "Pad0,Flat", "LSH", "SQ8_direct", "IDMap,Flat", "", ",", "Flat,Flat",
    "IVF2,Flat", "HNSW4", "auto", "FLAT",
]  # fmt: skip
SEARCH_PARAMS = [
    "nprobe=0", "nprobe=-1", "nprobe=nan", "nprobe=inf", "nprobe=1e30", "nprobe=1",
    "nprobe=2", "efSearch=8", "k_factor_rf=2", "bogus=1", "nprobe", "=", ",,", "nprobe=1,nprobe=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Images under odd names, a 10-image synthetic dataset, and two indexes of the images
    (exact, and IVF2,Flat for search parameters)."""
    root = tmp_path_factory.mktemp("fuzz")
    photos = image_folder(root / "photos", PHOTOS)
    write_dataset(root / "datasets" / "synthetic", {"test": 10})
    from dior_search.cli import main

    for name, extra in (("flat", []), ("ivf", ["--index-type", "IVF2,Flat"])):
        args = ["index", "--images", str(photos), "-c", "color", "--indexes", str(root / name)]
        assert main([*args, *TINY, *extra]) == 0
    return root


def directory(indexes: Path, condition: str = "color") -> Path:
    from dior_search.store.layout import condition_folder

    (found,) = indexes.glob(f"*/*/{condition_folder(condition)}")
    return found


def checked(run: Run) -> Run:
    """Documented exit code; a failure in one line."""
    assert run.code in DOCUMENTED_EXIT_CODES, (run.code, run.err)
    assert "Traceback" not in run.out + run.err
    if run.code != 0:
        error_line(run, run.code)
    return run


def assert_right_index(path: Path, count: int = len(PHOTOS)) -> None:
    """Every image once, and each found first by its own stored vector."""
    reader = IndexReader(path)
    assert sorted(reader.paths()) == sorted(PHOTOS)[:count] or len(reader) == count
    assert len(set(reader.paths())) == len(reader) == count
    _, found = reader.search(reader.vectors(reader.ids), 1)
    np.testing.assert_array_equal(found[:, 0], reader.ids)


def assert_right_answer(run: Run, asked_id: int, k: int) -> None:
    hits = json.loads(run.out)
    assert hits[0]["id"] == asked_id
    assert len(hits) == min(k, len(PHOTOS))
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)


# -- fast: queries, factory strings, search parameters, conditions -----------------------


@pytest.mark.parametrize("spec", FACTORY_STRINGS)
def test_fuzz_index_types(world, tmp_path, capsys, spec):
    args = ["index", "--images", world / "photos", "-c", "color", "--indexes", tmp_path, *TINY]
    run = checked(run_cli(capsys, *args, "--index-type", spec))
    if run.code == 0:
        assert_right_index(directory(tmp_path))


@pytest.mark.parametrize("params", SEARCH_PARAMS)
def test_fuzz_search_parameters(world, capsys, params):
    query = ["query", "--id", "3", "--index", directory(world / "ivf"), "--json", "-k", "4"]
    run = checked(run_cli(capsys, *query, "--search-params", params))
    if run.code == 0:
        assert_right_answer(run, 3, 4)


@pytest.mark.parametrize(
    ("option", "value"),
    [(o, v) for o in ("-k", "--id", "--nprobe", "--ef-search") for v in INTEGERS]
    + [("--weight", v) for v in ["0", "-1", "nan", "inf", "1e308", "1"]],
)
def test_fuzz_query_numbers(world, capsys, option, value):
    index = directory(world / "ivf" if option in ("--nprobe", "--ef-search") else world / "flat")
    args = ["query", "--index", index, "--json", option, value]
    if option != "--id":
        args += ["--id", "2"]
    if option != "-k":
        args += ["-k", "3"]
    run = checked(run_cli(capsys, *args))
    if run.code == 0:
        asked = int(value) if option == "--id" else 2
        assert_right_answer(run, asked, int(value) if option == "-k" else 3)


@pytest.mark.slow
def test_fuzz_conditions(world, tmp_path, capsys):
    """Each odd condition is refused in one line, or indexed and found again under exactly
    its own name (never another condition's index)."""
    indexed = []
    for condition in CONDITIONS:
        args = ["index", "--images", world / "photos", "--indexes", tmp_path, *TINY]
        run = checked(run_cli(capsys, *args, "-c", condition))
        if run.code != 0:
            continue
        indexed.append(condition)
        assert_right_index(directory(tmp_path, condition))
    for condition in indexed:
        query = ["query", "--id", "1", "--images", world / "photos", "--indexes", tmp_path]
        run = checked(run_cli(capsys, *query, "-c", condition, "--json", "-k", "2"))
        assert run.code == 0
        assert_right_answer(run, 1, 2)
        from dior_search.store.manifest import Manifest

        assert Manifest.read(directory(tmp_path, condition)).condition["name"] == condition
    assert len(indexed) == len({directory(tmp_path, c) for c in indexed})


# -- slow: every verb with boundary values of its numeric options -----------------------

INDEX_OPTIONS = ["--shard-size", "--batch-size", "--layer", "--max-pixels", "--max-side"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [[o, v] for o in INDEX_OPTIONS for v in INTEGERS]
    + [["--memory-budget", v] for v in SIZES]
    + [["--part", v, "--parts", "2"] for v in INTEGERS]
    + [["--part", "0", "--parts", v] for v in INTEGERS],
)
def test_fuzz_index_numbers(world, tmp_path, capsys, extra):
    args = ["index", "--images", world / "photos", "-c", "color", "--indexes", tmp_path]
    run = checked(run_cli(capsys, *args, "--model", "tiny", "--device", "cpu", *extra))
    if run.code == 0 and "--part" not in extra:
        assert_right_index(directory(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [[o, v] for o in ("--n-images", "--batch-size", "--layer", "--max-side") for v in INTEGERS],
)
def test_fuzz_demo_numbers(tmp_path, capsys, extra):
    args = ["demo", "--data-dir", tmp_path, "--device", "cpu"]
    if extra[0] != "--n-images":
        args += ["--n-images", "8"]
    run = checked(run_cli(capsys, *args, *extra))
    if run.code == 0:
        assert "recall@1" in run.out


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra", [[o, v] for o in ("--batch-size", "--max-pixels", "--max-side") for v in INTEGERS]
)
def test_fuzz_bench_numbers(world, tmp_path, capsys, extra):
    args = ["bench", "--dataset", "synthetic", "--method", "dior", "-c", "color", "--device", "cpu"]
    where = [
        "--datasets-dir",
        world / "datasets",
        "--indexes",
        tmp_path,
        "--json",
        tmp_path / "o.json",
    ]
    run = checked(run_cli(capsys, *args, *where, *extra))
    if run.code == 0:
        metrics = json.loads((tmp_path / "o.json").read_text())["synthetic"]["color"]["dior"]
        # AMI is adjusted for chance: below 0 where a clustering agrees less than chance.
        assert all(-1.0 <= value <= 1.0 for value in metrics.values())
        assert all(0.0 <= value <= 1.0 for name, value in metrics.items() if name != "ami")


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [[o, v] for o in ("--port", "--max-k") for v in INTEGERS]
    + [[o, v] for o in ("--max-upload-mb", "--max-megapixels", "--timeout") for v in INTEGERS],
)
def test_fuzz_serve_numbers(world, capsys, monkeypatch, extra):
    from dior_search.serve import app as serve_app

    class NoServer:
        terminated = False

        def run(self) -> None:
            pass

    monkeypatch.setattr(serve_app, "make_server", lambda *args, **kwargs: NoServer())
    run = checked(run_cli(capsys, "serve", "--indexes", world / "flat", "--device", "cpu", *extra))
    if run.code == 0:
        assert "serving with model tiny" in run.out
