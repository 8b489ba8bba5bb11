"""Index types: the auto choice, factory validation, trained types across shards, mmap."""

import doctest
import json

import numpy as np
import pytest
from descriptions import described, prompt_of

from dior_search.errors import IndexStoreError, UsageError
from dior_search.store import index_types
from dior_search.store import packing as index_pack
from dior_search.store.files import sha256_file
from dior_search.store.index_types import (
    GiB,
    MiB,
    check_index_spec,
    choose_index_type,
    make_index,
)
from dior_search.store.manifest import MANIFEST, TRAINED, Manifest
from dior_search.store.reader import IndexReader
from dior_search.store.schema import Row
from dior_search.store.writer import IndexWriter

DIM = 64


def test_doctests():
    assert doctest.testmod(index_types).failed == 0


def clustered(n, dim=DIM, seed=0, clusters=30, latent=12):
    """Unit vectors around a few centres in a low-dimensional subspace, like embeddings."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(1).normal(size=(latent, dim))
    centres = np.random.default_rng(2).normal(size=(clusters, latent))
    z = centres[rng.integers(clusters, size=n)] + 0.5 * rng.normal(size=(n, latent))
    x = z @ basis + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def manifest_for(spec, shard_size, packed_shard_size=0, dim=DIM):
    return Manifest(
        collection={"name": "c", "root": "/data"},
        condition={"name": "color", "text": "object color"},
        prompt=prompt_of("object color"),
        embedder=described("m", dim=dim),
        dim=dim,
        shard_size=shard_size,
        index_spec=spec,
        index_type="Flat" if spec == "auto" else spec,
        packed_shard_size=packed_shard_size,
    )


def build(directory, vectors, spec, shard_size, packed_shard_size=0, ids=None):
    writer = IndexWriter(directory, manifest_for(spec, shard_size, packed_shard_size))
    for number, vector in enumerate(vectors):
        row_id = None if ids is None else int(ids[number])
        writer.add(vector, Row(f"img/{number:05d}.png", f"hash{number}"), row_id)
    writer.close()
    return directory


def exact_top_k(vectors, queries, k):
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])


@pytest.mark.parametrize(
    ("n", "dim", "budget", "expected"),
    [
        (1_000, 3584, 8 * GiB, "Flat"),
        (30_000, 3584, 8 * GiB, "Flat"),
        (30_000, 3584, 200 * MiB, "PCA256,IVF256,SQ8,Refine(SQ8)"),
        (100_000, 3584, 8 * GiB, "PCA256,IVF512,SQ8,Refine(SQfp16)"),
        (1_000_000, 3584, 12 * GiB, "PCA256,IVF2048,SQ8,Refine(SQfp16)"),
        (1_000_000, 3584, 8 * GiB, "PCA256,IVF2048,SQ8,Refine(SQ8)"),
        (1_000_000, 3584, 4 * GiB, "PCA256,IVF2048,SQ8,Refine(SQ4)"),
        (1_000_000, 3584, 2 * GiB, "PCA256,IVF2048,SQ8"),
        (50_000_000, 2048, 32 * GiB, "PCA256,IVF16384_HNSW32,SQ8"),
        (3_000_000, 64, 8 * GiB, "IVF4096,SQ8,Refine(SQfp16)"),
    ],
)
def test_auto_choice(n, dim, budget, expected):
    choice = choose_index_type(n, dim, budget)
    assert choice.factory == expected
    assert choice.bytes_estimate <= 0.8 * budget
    make_index(choice.factory, dim)  # FAISS builds it
    if expected != "Flat":
        assert "nprobe=" in choice.search_params
        assert 0 < choice.train_size <= n


def test_auto_choice_refuses_a_budget_too_small():
    with pytest.raises(UsageError, match=r"need at least .* raise --memory-budget"):
        choose_index_type(10_000_000, 3584, GiB)


def test_factory_strings_are_checked_early():
    with pytest.raises(UsageError) as caught:
        make_index("IVF64,Bogus", DIM)
    message = str(caught.value)
    assert "not a FAISS factory string for dimension 64" in message
    assert "\n" not in message and ".cpp" not in message
    with pytest.raises(UsageError, match="drop the IDMap prefix"):
        make_index("IDMap,Flat", DIM)
    with pytest.raises(UsageError, match="needs at least 256 vectors to train"):
        check_index_spec("IVF256,Flat", DIM, 100)
    check_index_spec("IVF16,Flat", DIM, 100)
    check_index_spec("auto", DIM, 1)


def test_trained_ivf_shards_search_like_one_shard(tmp_path):
    vectors = clustered(3000)
    queries = clustered(40, seed=9)
    spec = "PCA32,IVF16,SQ8"
    # 7 staged shards of 450, packed by 1000: shards of 900, 900, 900 and 300 vectors.
    build(tmp_path / "many", vectors, spec, shard_size=450, packed_shard_size=1000)
    build(tmp_path / "one", vectors, spec, shard_size=5000)
    many = IndexReader(tmp_path / "many", search_params="nprobe=4")
    one = IndexReader(tmp_path / "one", search_params="nprobe=4")
    assert [s.rows for s in many.manifest.shards] == [900, 900, 900, 300]
    assert {s.index_type for s in many.manifest.shards} == {spec}
    # Every shard is a clone of the one trained index: same sample, same training.
    assert many.manifest.trained == one.manifest.trained
    scores_many, ids_many = many.search(queries, 10)
    scores_one, ids_one = one.search(queries, 10)
    np.testing.assert_array_equal(ids_many, ids_one)
    np.testing.assert_allclose(scores_many, scores_one, atol=1e-5)
    assert recall(ids_many, exact_top_k(vectors, queries, 10)) >= 0.6


def test_refined_type_is_close_to_exact(tmp_path):
    vectors = clustered(3000)
    queries = clustered(40, seed=9)
    build(tmp_path / "ix", vectors, "PCA32,IVF16,SQ8,Refine(SQfp16)", shard_size=700)
    reader = IndexReader(tmp_path / "ix")
    assert reader.search_params == "nprobe=16,k_factor_rf=16"
    _, ids = reader.search(queries, 10)
    assert recall(ids, exact_top_k(vectors, queries, 10)) >= 0.95
    assert not reader.exact
    # Vectors come back from the re-ranking copy (fp16): near exact.
    row_ids, stored = reader.all_vectors()
    np.testing.assert_array_equal(row_ids, np.arange(3000))
    cosine = np.sum(stored * vectors, axis=1) / np.linalg.norm(stored, axis=1)
    assert cosine.min() >= 0.99999
    np.testing.assert_allclose(reader.vector(1234), vectors[1234], atol=1e-3)


def test_search_params_change_results(tmp_path):
    vectors = clustered(3000)
    queries = clustered(40, seed=9)
    build(tmp_path / "ix", vectors, "IVF32,SQ8", shard_size=1000)
    truth = exact_top_k(vectors, queries, 10)
    narrow = IndexReader(tmp_path / "ix", search_params="nprobe=1")
    wide = IndexReader(tmp_path / "ix", search_params="nprobe=32")
    assert narrow.search_params == "nprobe=1" and wide.search_params == "nprobe=32"
    assert recall(narrow.search(queries, 10)[1], truth) < recall(wide.search(queries, 10)[1], truth)
    with pytest.raises(UsageError, match=r"'efSearch' does not apply .* it takes: nprobe"):
        IndexReader(tmp_path / "ix", search_params="efSearch=64")
    with pytest.raises(UsageError, match="not name=number"):
        IndexReader(tmp_path / "ix", search_params="nprobe")
    build(tmp_path / "flat", vectors[:100], "Flat", shard_size=1000)
    with pytest.raises(UsageError, match=r"exact \(Flat\): search parameters \(nprobe\)"):
        IndexReader(tmp_path / "flat", search_params="nprobe=4")


@pytest.mark.parametrize("spec", ["Flat", "PCA32,IVF16,SQ8,Refine(SQ8)", "HNSW16"])
def test_mmap_loading_gives_the_same_results(tmp_path, spec):
    vectors = clustered(2000)
    queries = clustered(20, seed=9)
    build(tmp_path / "ix", vectors, spec, shard_size=600)
    mapped = IndexReader(tmp_path / "ix", mmap=True)
    loaded = IndexReader(tmp_path / "ix", mmap=False)
    scores_m, ids_m = mapped.search(queries, 10)
    scores_l, ids_l = loaded.search(queries, 10)
    np.testing.assert_array_equal(ids_m, ids_l)
    np.testing.assert_allclose(scores_m, scores_l, atol=1e-6)
    np.testing.assert_allclose(mapped.vector(7), loaded.vector(7))


def test_manifest_records_the_type_and_the_trained_index(tmp_path, monkeypatch):
    # Make `auto` pick a compressed type at this small size.
    monkeypatch.setattr(index_types, "FLAT_MAX_BYTES", 100_000)
    build(tmp_path / "ix", clustered(3000), "auto", shard_size=1000)
    data = json.loads((tmp_path / "ix" / MANIFEST).read_text())
    assert data["format_version"] == 2
    assert data["index_spec"] == "auto"
    assert data["index_type"] == "IVF128,SQ8,Refine(SQfp16)"
    assert data["search_params"] == "nprobe=16,k_factor_rf=16"
    assert data["trained"]["name"] == TRAINED
    assert data["trained"]["sha256"] == sha256_file(tmp_path / "ix" / TRAINED)
    assert data["trained"]["train_size"] == 3000
    assert [s["index_type"] for s in data["shards"]] == ["IVF128,SQ8,Refine(SQfp16)"]
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == [
        "index.lock",
        "manifest.json",
        "shard-00003.faiss",
        "shard-00003.parquet",
        TRAINED,
    ]


def test_manifest_without_the_new_fields_is_read(tmp_path, vectors=None):
    build(tmp_path / "ix", clustered(50), "Flat", shard_size=20)
    path = tmp_path / "ix" / MANIFEST
    data = json.loads(path.read_text())
    # As written before these fields (and the checksum) were added.
    for key in (
        "index_spec",
        "memory_budget",
        "search_params",
        "packed_shard_size",
        "trained",
        "checksum",
    ):
        del data[key]
    for shard in data["shards"]:
        del shard["last_id"], shard["index_type"]
    path.write_text(json.dumps(data))
    reader = IndexReader(tmp_path / "ix")
    assert reader.manifest.index_spec == "Flat" and reader.manifest.next_id == 50
    assert reader.row(49).path == "img/00049.png"


def test_incremental_run_after_packing(tmp_path):
    vectors = clustered(2600)
    spec = "PCA32,IVF16,SQ8,Refine(SQfp16)"
    build(tmp_path / "ix", vectors[:2000], spec, shard_size=500)
    trained = Manifest.read(tmp_path / "ix").trained
    writer = IndexWriter(tmp_path / "ix", manifest_for(spec, 500))
    for number in range(2000, 2600):
        writer.add(vectors[number], Row(f"img/{number:05d}.png", f"hash{number}"))
    writer.close()
    reader = IndexReader(tmp_path / "ix")
    assert reader.manifest.trained == trained  # trained once, reused
    assert [s.rows for s in reader.manifest.shards] == [2000, 600]
    assert reader.row(2300).path == "img/02300.png"
    _, ids = reader.search(vectors[2300:2301], 1)
    assert ids[0, 0] == 2300


def test_another_type_repacks_a_packed_index(tmp_path):
    vectors = clustered(1000)
    queries = clustered(20, seed=9)
    spec = "IVF16,SQ8,Refine(SQfp16)"
    build(tmp_path / "ix", vectors, spec, shard_size=300)
    packed = IndexReader(tmp_path / "ix")
    codes = packed.vectors(packed.ids)
    paths = packed.paths()
    writer = IndexWriter(tmp_path / "ix", manifest_for(spec, 300))
    writer.set_index_type("flat", None)
    writer.close()
    assert writer.notes == [
        f"index type {spec!r} -> 'Flat'; 1000 vectors unpacked from their {spec} codes to be "
        "packed again; the index is now Flat"
    ]
    flat = IndexReader(tmp_path / "ix")
    manifest = flat.manifest
    assert (manifest.index_spec, manifest.index_type, manifest.trained) == ("Flat", "Flat", None)
    assert [s.rows for s in manifest.shards] == [300, 300, 300, 100]
    assert not (tmp_path / "ix" / TRAINED).exists()
    # The vectors are those the codes held, now searched exactly; rows kept their ids.
    np.testing.assert_allclose(
        flat.vectors(flat.ids), codes / np.linalg.norm(codes, axis=1)[:, None], atol=1e-6
    )
    assert flat.paths() == paths
    np.testing.assert_array_equal(
        flat.search(queries, 10)[1], exact_top_k(flat.vectors(flat.ids), queries, 10)
    )
    # And back to a compressed type: trained again on the staged vectors.
    writer = IndexWriter(tmp_path / "ix", manifest_for("Flat", 300))
    writer.set_index_type("IVF8,Flat", None)
    writer.close()
    again = IndexReader(tmp_path / "ix")
    assert again.manifest.index_type == "IVF8,Flat" and again.manifest.trained is not None
    assert again.paths() == paths


def test_a_failed_pack_records_nothing(tmp_path, monkeypatch):
    build(tmp_path / "ix", clustered(400), "Flat", shard_size=100)
    before = (tmp_path / "ix" / MANIFEST).read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("Error in faiss::Clustering::train at Clustering.cpp:66: boom")

    monkeypatch.setattr(index_pack, "train_index", fail)
    writer = IndexWriter(tmp_path / "ix", manifest_for("Flat", 100))
    writer.set_index_type("IVF8,Flat", None)
    with pytest.raises(IndexStoreError, match=r"^cannot pack index .*: Error in .*boom$"):
        writer.close()
    assert (tmp_path / "ix" / MANIFEST).read_bytes() == before
    assert Manifest.read(tmp_path / "ix").index_spec == "Flat"


def test_crash_while_packing_resumes(tmp_path, monkeypatch):
    vectors = clustered(3000)
    queries = clustered(20, seed=9)
    spec = "PCA32,IVF16,SQ8,Refine(SQfp16)"
    build(tmp_path / "whole", vectors, spec, shard_size=500, packed_shard_size=1000)
    real_write_manifest = index_pack.write_manifest
    calls = []

    def crash_on_second_pack(directory, manifest):
        calls.append(1)
        if len(calls) == 3:  # 1: trained index, 2: first packed shard, 3: the second one
            raise KeyboardInterrupt
        real_write_manifest(directory, manifest)

    monkeypatch.setattr(index_pack, "write_manifest", crash_on_second_pack)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "crashed", vectors, spec, shard_size=500, packed_shard_size=1000)
    monkeypatch.setattr(index_pack, "write_manifest", real_write_manifest)
    half = Manifest.read(tmp_path / "crashed")
    assert [s.index_type == "Flat" for s in half.shards] == [False, True, True, True, True]
    # Searchable as it is, and the next writer removes the orphan files and packs the rest.
    IndexReader(tmp_path / "crashed").search(queries, 5)
    IndexWriter(tmp_path / "crashed", manifest_for(spec, 500)).close()
    resumed = IndexReader(tmp_path / "crashed")
    whole = IndexReader(tmp_path / "whole")
    assert [s.rows for s in resumed.manifest.shards] == [1000, 1000, 1000]
    np.testing.assert_array_equal(resumed.search(queries, 10)[1], whole.search(queries, 10)[1])
    listed = {f"{s.name}{x}" for s in resumed.manifest.shards for x in (".faiss", ".parquet")}
    on_disk = {p.name for p in (tmp_path / "crashed").glob("shard-*")}
    assert on_disk == listed


def test_ids_with_gaps(tmp_path):
    vectors = clustered(300)
    ids = np.arange(300) * 3 + 5
    build(tmp_path / "ix", vectors, "Flat", shard_size=70, ids=ids)
    reader = IndexReader(tmp_path / "ix")
    assert reader.manifest.next_id == 3 * 299 + 6
    assert reader.row(3 * 150 + 5).path == "img/00150.png"
    np.testing.assert_allclose(reader.vector(3 * 150 + 5), vectors[150], atol=1e-6)
    _, found = reader.search(vectors[150:151], 1)
    assert found[0, 0] == 3 * 150 + 5
    with pytest.raises(IndexStoreError, match="no id 6 in"):
        reader.row(6)
    assert reader.paths()[:2] == ["img/00000.png", "img/00001.png"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from dior_search.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("images")
    write_dataset(root, {"test": 12})
    (root / "labels.csv").unlink()
    return root / "test"


def run_cli(folder, indexes, *extra):
    from dior_search.cli import main

    args = ["index", "--images", str(folder), "-c", "object color", "--indexes", str(indexes)]
    return main([*args, "--model", "tiny", "--device", "cpu", *extra])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--index-type", "IVF64,Bogus"], "is not a FAISS factory string for dimension 128"),
        (["--index-type", "IVF64,Flat"], "needs at least 64 vectors to train; this index will"),
        (["--memory-budget", "lots"], "size 'lots' is not a number"),
        (["--part", "1"], "give --part and --parts together"),
        (["--part", "2", "--parts", "2"], "part 2 of 2 does not exist: parts are 0..1"),
    ],
)
def test_cli_refuses_bad_index_options_in_one_line(folder, tmp_path, capsys, extra, message):
    assert run_cli(folder, tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's load report
    assert err.startswith("error: ") and message in err
    assert not list(tmp_path.rglob("shard-*"))  # refused before anything was embedded


def test_cli_index_type_and_query_search_params(folder, tmp_path, capsys):
    from dior_search.cli import main

    assert run_cli(folder, tmp_path / "ivf", "--index-type", "IVF4,Flat") == 0
    (directory,) = (tmp_path / "ivf").glob("*/tiny/*")
    manifest = Manifest.read(directory)
    assert manifest.index_type == "IVF4,Flat" and manifest.search_params == "nprobe=4"
    capsys.readouterr()
    query = ["query", "--id", "3", "--index", str(directory), "--json", "-k", "3"]
    assert main([*query, "--nprobe", "2"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["id"] == 3 and len(hits) == 3
    assert run_cli(folder, tmp_path / "flat", "--index-type", "flat") == 0
    (flat,) = (tmp_path / "flat").glob("*/tiny/*")
    capsys.readouterr()
    assert main(["query", "--id", "3", "--index", str(flat), "--ef-search", "32"]) == 2
    assert "search parameters (efSearch) do not apply" in capsys.readouterr().err
