"""Index types and search parameters checked before any embedding; a type changed later takes
effect (repack) even with no new image; a failed pack records nothing."""

import json

import pytest
from cli_runs import TINY, error_line, image_folder, run_cli

from dior_search.errors import UsageError
from dior_search.store import packing as index_pack
from dior_search.store.index_trial import try_index_type
from dior_search.store.index_types import check_index_spec, parse_search_params
from dior_search.store.manifest import MANIFEST, Manifest
from dior_search.store.reader import IndexReader

DIM = 128  # the bundled tiny model's

# Factory strings FAISS accepts but cannot use: each is refused with what was wrong.
DEGENERATE_TYPES = {
    "HNSW0": "HNSW's links per vector (M) must be between 2 and 512, not 0",
    "HNSW1": "HNSW's links per vector (M) must be between 2 and 512, not 1",
    "HNSW99999999": "must be between 2 and 512, not 99999999",
    "NSG0": "NSG's neighbours per vector (R) must be between 8 and 512, not 0",
    "PCAR2000,Flat": "the PCA's output dimension must be between 1 and 128 (the vectors' "
    "dimension), not 2000",
    "PCA0,Flat": "the PCA's output dimension must be between 1",
    "IVF0,Flat": "the number of coarse lists must be between 1 and 1048576, not 0",
    "SQ0": "SQ's bits per dimension must be between 4 and 8, not 0",
    "IVF4,SQ0": "SQ's bits per dimension must be between 4 and 8, not 0",
    "PQ16x0": "PQ's bits per code must be between 1 and 16, not 0",
    "OPQ0,Flat": "OPQ's number of sub-quantizers must be between 1",
    "RR0,Flat": "the random rotation's output dimension must be between 1",
    "IVF64_HNSW0,Flat": "HNSW's links per vector (M) must be between 2 and 512, not 0",
    "SQ8_direct": "it gives every vector the same score: it cannot tell vectors apart",
    "LSH": "is not a FAISS factory string for dimension 128",
    "PQ7": "should be a multiple of the number of subquantizers",
    "Bogus": "is not a FAISS factory string",
    "IDMap,Flat": "drop the IDMap prefix",
}


@pytest.mark.parametrize("spec", DEGENERATE_TYPES)
def test_degenerate_types_are_refused(spec):
    with pytest.raises(UsageError) as caught:
        check_index_spec(spec, DIM, 10_000)
    message = str(caught.value)
    assert DEGENERATE_TYPES[spec] in message
    assert "\n" not in message and ".cpp" not in message


@pytest.mark.parametrize(
    "spec", ["Flat", "IVF16,Flat", "HNSW8", "PCA64,IVF16,SQ8,Refine(SQfp16)", "IVF16,PQ16"]
)
def test_usable_types_pass(spec):
    check_index_spec(spec, DIM, 10_000)


def test_an_aborting_type_ends_the_trial_not_the_process():
    # Past the range checks, FAISS aborts on HNSW0: only the child process ends.
    assert try_index_type("HNSW0", 32) == (
        "FAISS ended the process (SIGABRT) when it was built, filled or searched"
    )
    assert try_index_type("IVF4,SQ0", 32) == "searching it returns no results for vectors it holds"


@pytest.mark.parametrize(
    "text", ["nprobe=0", "nprobe=-1", "nprobe=nan", "nprobe=inf", "nprobe=1e30", "nprobe=2.5",
             "efSearch=0", "k_factor_rf=0", "k_factor_rf=inf", "max_codes=-1", "nprobe=x"],
)  # fmt: skip
def test_search_parameters_out_of_range_are_refused(text):
    with pytest.raises(UsageError, match="search parameter"):
        parse_search_params(text)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(
        tmp_path_factory.mktemp("images") / "photos", [f"{n}.png" for n in range(12)]
    )


def index(capsys, folder, indexes, *extra):
    args = ["index", "--images", folder, "-c", "color", "--indexes", indexes, *TINY]
    return run_cli(capsys, *args, *extra)


def only_index(indexes):
    (directory,) = indexes.glob("*/tiny/color")
    return directory


@pytest.mark.parametrize("spec", ["HNSW0", "NSG0", "PCAR2000,Flat", "IVF0,Flat", "SQ0"])
def test_cli_refuses_a_degenerate_type_before_embedding(folder, tmp_path, capsys, spec):
    line = error_line(index(capsys, folder, tmp_path, "--index-type", spec), 2)
    assert line.startswith(f"error: --index-type {spec!r}")
    assert not list(tmp_path.rglob("shard-*")) and not list(tmp_path.rglob(MANIFEST))


def test_cli_refuses_a_memory_budget_before_embedding(folder, tmp_path, capsys):
    line = error_line(index(capsys, folder, tmp_path, "--memory-budget", "1k"), 2)
    assert "raise --memory-budget" in line
    assert not list(tmp_path.rglob("shard-*"))
    assert "must be more than 0 bytes" in error_line(
        index(capsys, folder, tmp_path, "--memory-budget", "0"), 2
    )


@pytest.fixture
def ivf_index(folder, tmp_path, capsys):
    assert index(capsys, folder, tmp_path, "--index-type", "IVF4,Flat").code == 0
    return only_index(tmp_path)


@pytest.mark.parametrize(
    "extra",
    [
        ["--search-params", "nprobe=0"],
        ["--search-params", "nprobe=-1"],
        ["--search-params", "nprobe=nan"],
        ["--search-params", "nprobe=inf"],
        ["--search-params", "nprobe=1e30"],
        ["--nprobe", "0"],
        ["--ef-search", "0"],
        ["--nprobe", "-5"],
    ],
)
def test_cli_refuses_search_parameters_out_of_range(ivf_index, capsys, extra):
    run = run_cli(capsys, "query", "--id", "3", "--index", ivf_index, "--json", *extra)
    assert "search parameter" in error_line(run, 2)


def test_cli_ef_search_gives_right_answers_on_hnsw(folder, tmp_path, capsys):
    assert index(capsys, folder, tmp_path, "--index-type", "HNSW8").code == 0
    directory = only_index(tmp_path)
    for ef in ("1", "16"):
        run = run_cli(
            capsys, "query", "--id", "5", "--index", directory, "--json", "-k", "4",
            "--ef-search", ef,
        )  # fmt: skip
        hits = json.loads(run.out)
        assert hits[0]["id"] == 5 and len(hits) == 4


def test_a_later_type_takes_effect_without_new_images_and_says_so(ivf_index, folder, capsys):
    indexes = ivf_index.parents[2]
    before = IndexReader(ivf_index)
    paths = before.paths()
    run = index(capsys, folder, indexes, "--index-type", "flat")
    assert run.code == 0, run.err
    assert "0 added, 0 changed, 0 moved, 0 removed, 12 unchanged" in run.out
    assert (
        "color: index type 'IVF4,Flat' -> 'Flat'; 12 vectors unpacked from their IVF4,Flat "
        "codes to be packed again; the index is now Flat"
    ) in run.out
    after = IndexReader(ivf_index)
    assert (after.manifest.index_spec, after.manifest.index_type) == ("Flat", "Flat")
    assert after.exact and after.paths() == paths
    # IVF4,Flat keeps exact vectors: the repacked index answers as a fresh flat one.
    hits = json.loads(
        run_cli(capsys, "query", "--id", "7", "--index", ivf_index, "--json", "-k", "12").out
    )
    assert hits[0]["id"] == 7 and [h["score"] for h in hits] == sorted(
        (h["score"] for h in hits), reverse=True
    )
    # The same again changes nothing and says nothing.
    again = index(capsys, folder, indexes, "--index-type", "flat")
    assert again.code == 0 and "->" not in again.out


def test_a_memory_budget_takes_effect_without_new_images(folder, tmp_path, capsys, monkeypatch):
    from dior_search.store import index_types

    assert index(capsys, folder, tmp_path).code == 0
    directory = only_index(tmp_path)
    assert Manifest.read(directory).index_type == "Flat"
    # With a budget the flat index does not fit in, auto picks a compressed type.
    monkeypatch.setattr(index_types, "FLAT_MAX_BYTES", 1000)
    monkeypatch.setattr(index_types, "TRAIN_POINTS_PER_LIST", 1)
    monkeypatch.setattr(index_types, "nlist_for", lambda n: 2)
    run = index(capsys, folder, tmp_path, "--memory-budget", "4M")
    assert run.code == 0, run.err
    assert "memory budget 8.0 GiB -> 4.0 MiB" in run.out
    manifest = Manifest.read(directory)
    assert manifest.memory_budget == 4 << 20 and manifest.index_type == "IVF2,SQ8,Refine(SQfp16)"


def test_a_failed_pack_never_records_its_type(folder, tmp_path, capsys, monkeypatch):
    assert index(capsys, folder, tmp_path).code == 0
    directory = only_index(tmp_path)
    before = (directory / MANIFEST).read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("Error in void faiss::Clustering::train() at Clustering.cpp:1: oops")

    monkeypatch.setattr(index_pack, "train_index", fail)
    line = error_line(index(capsys, folder, tmp_path, "--index-type", "IVF4,Flat"), 5)
    assert line.startswith(f"error: cannot pack index {directory}")
    assert (directory / MANIFEST).read_bytes() == before
    monkeypatch.undo()
    # The next run (another type, no new image) takes effect.
    run = index(capsys, folder, tmp_path, "--index-type", "IVF2,Flat")
    assert run.code == 0 and "the index is now IVF2,Flat" in run.out
    assert Manifest.read(directory).index_type == "IVF2,Flat"
