"""One contract, every store: the folder store and Milvus Lite index, resume, follow a changing
folder, filter, join conditions, refuse other models and split a run into parts alike."""

import dataclasses

import numpy as np
import pytest
from descriptions import made_up_manifest
from PIL import Image
from stores import STORE_KINDS, opened
from sync_helpers import (
    AnsweringCache,
    CachedEmbedder,
    assert_fresh_build,
    contents,
    folder_state,
    index_rows,
)

from dior_search.data.collections import open_folder
from dior_search.errors import IndexStoreError
from dior_search.indexing.job import IndexSettings, PartSpec
from dior_search.indexing.run import index_collection
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings
from dior_search.search.searcher import Searcher, SearchRequest
from dior_search.store.backend import EXACT_FILTER_MAX
from dior_search.store.schema import Row

CONTENTS = contents(16, seed=3)


@pytest.fixture(params=STORE_KINDS)
def store(request, tmp_path):
    opened_store = opened(request.param, tmp_path)
    yield opened_store
    opened_store.close()


@pytest.fixture(scope="module")
def tiny():
    return CachedEmbedder(DiorEmbedder(DiorSettings(model="tiny", device="cpu", batch_size=8)))


@pytest.fixture(scope="module")
def answering():
    return AnsweringCache(DiorEmbedder(DiorSettings(model="tiny", device="cpu", batch_size=8)))


class Counting:
    """An embedder counting the images it embeds; raises KeyboardInterrupt (as Ctrl+C would)
    once it has embedded `stop_after` images."""

    def __init__(self, inner, stop_after: int | None = None) -> None:
        self.inner, self.stop_after, self.images = inner, stop_after, 0

    @property
    def dim(self):
        return self.inner.dim

    def describe(self):
        return self.inner.describe()

    def check_size(self, width, height):
        self.inner.check_size(width, height)

    def embed(self, images, conditions, on_progress=None):
        if self.stop_after is not None and self.images + len(images) > self.stop_after:
            raise KeyboardInterrupt
        self.images += len(images)
        return self.inner.embed(images, conditions)


class OtherWeights:
    """An embedder of the same model name with other weights (no model behind it)."""

    def __init__(self, inner) -> None:
        self.dim = inner.dim
        self.description = dataclasses.replace(inner.describe(), weights_fingerprint="other")

    def describe(self):
        return self.description

    def check_size(self, width, height):
        return None

    def embed(self, images, conditions, on_progress=None):
        raise AssertionError("an index of other weights must be refused before embedding")


def write_images(folder, names_and_contents):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in names_and_contents.items():
        (folder / name).write_bytes(CONTENTS[content])


def run(store, folder, embedder, conditions=("color",), **settings):
    settings = {"shard_size": 3, "images_per_step": 4, **settings}
    return index_collection(
        open_folder(folder),
        conditions,
        embedder,
        IndexSettings(indexes_dir=folder.parent / "indexes", **settings),
        confirm_removal=lambda removals: True,
        store=store,
    )


def test_an_interrupted_run_resumes_where_it_stopped(store, tmp_path, tiny):
    folder = tmp_path / "images"
    write_images(folder, {f"{n:02d}.png": n for n in range(10)})
    with pytest.raises(KeyboardInterrupt):
        run(store, folder, Counting(tiny, stop_after=6))
    location = store.location(open_folder(folder).name, tiny.describe(), "color")
    committed = len(store.reader(location))
    assert 0 < committed < 10
    counting = Counting(tiny)
    report = run(store, folder, counting)
    reader = store.reader(report.indexes["color"])
    assert_fresh_build(reader, folder, folder_state(folder), tiny, "color")
    # The ids a single run gives, and only the images not committed before are embedded.
    assert reader.ids.tolist() == list(range(10))
    assert reader.paths() == sorted(folder_state(folder))
    assert counting.images == 10 - committed
    assert report.counts["color"].added == 10 - committed
    assert report.counts["color"].unchanged == committed


def test_the_index_follows_adds_deletes_overwrites_renames_and_copies(store, tmp_path, tiny):
    folder = tmp_path / "images"
    write_images(folder, {"a.png": 0, "b.png": 1, "c.png": 2, "d.png": 3, "e.png": 4})
    first = store.reader(run(store, folder, tiny).indexes["color"])
    ids_before = dict(zip(index_rows(first), first.ids.tolist(), strict=True))
    (folder / "b.png").unlink()
    write_images(folder, {"f.png": 5, "c.png": 6, "h.png": 4})
    (folder / "d.png").rename(folder / "g.png")
    counting = Counting(tiny)
    report = run(store, folder, counting)
    counts = report.counts["color"]
    assert (counts.added, counts.changed, counts.moved, counts.removed, counts.unchanged) == (
        2,
        1,
        1,
        1,
        2,
    )
    assert counting.images == 2  # f and the new c; the rename and the copy keep their vectors
    reader = store.reader(report.indexes["color"])
    assert_fresh_build(reader, folder, folder_state(folder), tiny, "color")
    ids_after = dict(zip(index_rows(reader), reader.ids.tolist(), strict=True))
    for key in ids_after.keys() & ids_before.keys():
        assert ids_after[key] == ids_before[key]
    new = [i for key, i in ids_after.items() if key not in ids_before]
    assert min(new) > max(ids_before.values())


def test_a_copy_then_a_move_of_the_original_keeps_both(store, tmp_path, answering):
    """cp a c; index; mv a m; index: the move copies the vector (and answer) of the row
    just deleted, on every store (Milvus Lite once aborted: "no stored row 0")."""
    folder = tmp_path / "images"
    write_images(folder, {"a.png": 0, "b.png": 1})
    run(store, folder, answering)
    write_images(folder, {"c.png": 0})
    run(store, folder, answering)
    (folder / "a.png").rename(folder / "m.png")
    report = run(store, folder, answering)
    counts = report.counts["color"]
    assert (counts.added, counts.moved, counts.removed, counts.unchanged) == (0, 1, 0, 2)
    reader = store.reader(report.indexes["color"])
    assert reader.manifest.answers == "stored"
    assert_fresh_build(reader, folder, folder_state(folder), answering, "color")
    answers = dict(zip(reader.paths(), reader.column("answer"), strict=True))
    assert answers["m.png"] == answers["c.png"] is not None


def brute_force(vectors, ids, queries, allowed, k):
    """The exact top k of the allowed ids: (scores, ids), ties by lower id."""
    keep = np.isin(ids, allowed)
    scores = queries @ vectors[keep].T
    kept = ids[keep]
    order = np.lexsort((np.broadcast_to(kept, scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), kept[order]


def test_allowed_ids_are_the_only_answers(store):
    rng = np.random.default_rng(5)
    n, dim = 20_000, 8
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    manifest = made_up_manifest(dim=dim, shard_size=5000)
    location = store.location("c", manifest.embedder, "color")
    with store.writer(location, manifest) as writer:
        for number, vector in enumerate(vectors):
            colour = ("red", "green", "blue")[number % 3]
            writer.add(vector, Row(f"{number}.png", f"{number:064x}", {"color": colour}))
    with store.writer(location, manifest) as writer:
        writer.delete(list(range(0, n, 7)))
    reader = store.reader(location)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = unit[rng.integers(0, n, 4)] + 0.1 * rng.standard_normal((4, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    red = reader.ids[np.array(reader.labels("color")) == "red"]
    cases = {
        "few": rng.choice(n, 10, replace=False),
        "more than are scored exactly": rng.choice(n, EXACT_FILTER_MAX + 900, replace=False),
        "more than a filter expression holds": rng.choice(n, 18_000, replace=False),
        "a label": red,
        "unknown and deleted ids": np.array([0, 7, n + 5, 3]),
        "none": np.array([], dtype=np.int64),
    }
    for name, allowed in cases.items():
        scores, ids = reader.search(queries, 10, allowed_ids=allowed)
        live = np.setdiff1d(allowed, np.arange(0, n, 7))
        want_scores, want_ids = brute_force(unit, np.arange(n), queries, live, 10)
        width = want_ids.shape[1]
        assert (ids[:, width:] == -1).all(), name
        np.testing.assert_array_equal(ids[:, :width], want_ids, err_msg=name)
        np.testing.assert_allclose(scores[:, :width], want_scores, atol=1e-5, err_msg=name)


def test_several_conditions_rank_by_their_weighted_cosines(store, tmp_path, tiny):
    folder = tmp_path / "images"
    write_images(folder, {f"{n:02d}.png": n for n in range(12)})
    run(store, folder, tiny, conditions=("color", "background"))
    searcher = Searcher.open(store, collection=open_folder(folder).name)
    readers = [
        searcher.reader(searcher.condition(searcher.collection(None), c))
        for c in ("color", "background")
    ]
    with Image.open(folder / "03.png") as opened_image:
        query = tiny.embed([opened_image.convert("RGB")], ["color", "background"])[0]
    result = searcher.search(
        SearchRequest(
            conditions=("color", "background"), weights=(3, 1), vectors=tuple(query), k=12
        )
    )
    units = [q / np.linalg.norm(q) for q in query]
    expected = 0.75 * (readers[0].vectors(readers[0].ids) @ units[0]) + 0.25 * (
        readers[1].vectors(readers[1].ids) @ units[1]
    )
    order = np.argsort(-expected, kind="stable")
    assert [h.id for h in result.hits] == readers[0].ids[order].tolist()
    np.testing.assert_allclose([h.score for h in result.hits], expected[order], atol=1e-5)
    assert result.hits[0].path == "03.png"


def test_another_model_is_refused(store, tmp_path, tiny):
    folder = tmp_path / "images"
    write_images(folder, {"a.png": 0, "b.png": 1})
    location = run(store, folder, tiny).indexes["color"]
    other = OtherWeights(tiny)
    manifest = dataclasses.replace(store.manifest_at(location), embedder=other.describe())
    with pytest.raises(IndexStoreError, match="was built with"):
        store.writer(location, manifest)
    entries = store.find(collection=open_folder(folder).name)
    with pytest.raises(IndexStoreError, match="was built with"):
        Searcher(entries, embedder=other)
    with pytest.raises(IndexStoreError, match="was built with"):
        run(store, folder, other)
    assert len(store.reader(location)) == 2


def test_vectors_of_another_source_are_refused(store, tmp_path, tiny):
    """An index of last-input vectors never takes, nor is queried with, answer-token vectors
    (same model and weights): the source is part of the embedder's identity, read back from
    the manifest; a manifest without it means the last input."""
    folder = tmp_path / "images"
    write_images(folder, {"a.png": 0, "b.png": 1})
    location = run(store, folder, tiny).indexes["color"]
    stored = store.manifest_at(location)
    assert stored.embedder.source == "last_input"
    other = OtherWeights(tiny)
    settings = dataclasses.replace(stored.embedder.settings, source="first_output")
    other.description = dataclasses.replace(stored.embedder, settings=settings)
    with pytest.raises(IndexStoreError, match="source 'last_input' \\(asked: 'first_output'\\)"):
        store.writer(location, dataclasses.replace(stored, embedder=other.describe()))
    entries = store.find(collection=open_folder(folder).name)
    with pytest.raises(IndexStoreError, match="was built with source"):
        Searcher(entries, embedder=other)
    fields = stored.embedder.to_fields()
    assert fields["source"] == "last_input"
    del fields["source"]  # a manifest written before sources existed
    assert type(stored.embedder).from_fields(fields).differences(stored.embedder) == []
    assert len(store.reader(location)) == 2


def test_parts_run_one_after_another_give_the_single_run(store, tmp_path, tiny):
    folder = tmp_path / "images"
    write_images(folder, {f"{n:02d}.png": n for n in range(9)})
    single = tmp_path / "single"
    single.mkdir()
    single_store = opened("folder", single)
    want = single_store.reader(run(single_store, folder, tiny).indexes["color"])
    first = run(store, folder, tiny, part=PartSpec(0, 2))
    assert first.waiting == {"color": [1]}
    location = first.indexes["color"]
    # A part's rows are not searchable alone.
    assert store.manifest_at(location) is None or len(store.reader(location)) == 0
    run(store, folder, tiny, part=PartSpec(0, 2))  # a re-run of a complete part does nothing
    last = run(store, folder, tiny, part=PartSpec(1, 2))
    assert last.merged == ["color"] and not last.waiting
    got = store.reader(location)
    assert got.ids.tolist() == want.ids.tolist()
    assert got.paths() == want.paths()
    np.testing.assert_allclose(got.vectors(got.ids), want.vectors(want.ids), atol=1e-6)
    assert_fresh_build(got, folder, folder_state(folder), tiny, "color")
