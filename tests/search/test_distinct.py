"""`distinct`: copies of a better-ranked hit's picture are hidden, judged on picture
fingerprints; against brute force over the image files on both stores, on known copies, and
with a picture gone from disk."""

import numpy as np
import pytest
from PIL import Image
from stores import STORE_KINDS, opened

from dior_search.data.collections import open_dataset
from dior_search.data.fingerprints import (
    Fingerprints,
    fingerprint_similarity,
    picture_fingerprint,
)
from dior_search.data.synthetic import COPY_KINDS, copy_kind, write_copies, write_dataset
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings
from dior_search.search.searcher import Searcher, SearchRequest

N = 60
COPIES = 18


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """60 synthetic images plus copies of the first 18 (each alteration six times), indexed
    under colour in each store kind: (data folder, searcher per kind)."""
    root = tmp_path_factory.mktemp("distinct")
    data = root / "datasets" / "synthetic"
    write_dataset(data, {"test": N})
    write_copies(data, COPIES)
    collection = open_dataset("synthetic", root / "datasets")
    embedder = DiorEmbedder(DiorSettings(model="tiny", device="cpu", batch_size=16))
    found, stores = {}, []
    for kind in (k if isinstance(k, str) else k.values[0] for k in STORE_KINDS):
        try:
            store = opened(kind, root)
        except pytest.skip.Exception:
            continue
        stores.append(store)
        settings = IndexSettings(indexes_dir=root / "indexes", index_type="flat")
        index_collection(collection, ("color",), embedder, settings, store=store)
        found[kind] = Searcher.open(store, collection="synthetic")
    yield data, found
    for store in stores:
        store.close()


def fingerprint_file(path):
    with Image.open(path) as image:
        return picture_fingerprint(image.convert("RGB"))


def paths_by_id(searcher):
    reader = searcher.reader(searcher.condition(searcher.collection("synthetic"), "color"))
    return dict(zip(reader.ids.tolist(), reader.paths(), strict=True))


def test_copies_are_alike_and_other_pictures_are_not(indexed):
    data, _ = indexed
    names = sorted(p.relative_to(data).as_posix() for p in data.glob("test/*.png"))
    prints = {n: fingerprint_file(data / n) for n in names}
    copies = [n for n in names if "-copy" in n]
    assert {copy_kind(n) for n in copies} == set(COPY_KINDS)
    for copy in copies:
        original = copy.replace("-copy", "")
        assert fingerprint_similarity(prints[copy], prints[original]) >= 0.99, copy
        # Symmetric: the best framing of either against the other.
        assert fingerprint_similarity(prints[original], prints[copy]) == pytest.approx(
            fingerprint_similarity(prints[copy], prints[original])
        )
    originals = [n for n in names if "-copy" not in n]
    nearest_other = [
        max(fingerprint_similarity(prints[a], prints[b]) for b in originals if b != a)
        for a in originals
    ]
    assert np.median(nearest_other) < 0.95


@pytest.mark.parametrize("kind", [k if isinstance(k, str) else k.values[0] for k in STORE_KINDS])
def test_distinct_equals_brute_force_over_the_pictures(indexed, kind):
    data, found = indexed
    if kind not in found:
        pytest.skip(f"{kind} not available")
    searcher = found[kind]
    paths = paths_by_id(searcher)
    prints = {i: fingerprint_file(data / p) for i, p in paths.items()}
    for query in (0, 1, 2, 7):
        plain = searcher.search(SearchRequest(("color",), id=query, k=len(paths))).hits
        for threshold in (0.999, 0.99, 0.95):
            result = searcher.search(SearchRequest(("color",), id=query, k=10, distinct=threshold))
            kept, hidden = [], 0
            for hit in plain:
                if (
                    kept
                    and max(fingerprint_similarity(prints[hit.id], prints[i]) for i in kept)
                    >= threshold
                ):
                    hidden += 1
                    continue
                kept.append(hit.id)
                if len(kept) == 10:
                    break
            assert [h.id for h in result.hits] == kept, (query, threshold)
            assert result.hidden == hidden


def test_no_top_20_holds_a_picture_and_its_copy(indexed):
    _, found = indexed
    searcher = found["folder"]
    paths = paths_by_id(searcher)
    picture = {i: p.replace("-copy", "") for i, p in paths.items()}
    with_pairs = {"plain": 0, "distinct": 0}
    for query, path in paths.items():
        if "-copy" in path:
            continue
        for name, threshold in (("plain", None), ("distinct", 0.99)):
            hits = searcher.search(
                SearchRequest(("color",), id=query, k=20, distinct=threshold)
            ).hits
            shown = [picture[h.id] for h in hits]
            with_pairs[name] += len(shown) != len(set(shown))
    # Without --distinct the copies do show up together (else this test could not fail).
    assert with_pairs["plain"] > 0
    assert with_pairs["distinct"] == 0


def test_a_picture_gone_from_disk_is_kept_and_compared_with_nothing(indexed, tmp_path):
    data, found = indexed
    searcher = Searcher(found["folder"].entries)
    paths = paths_by_id(searcher)
    copy_id = next(i for i, p in paths.items() if p.endswith("-copy.png"))
    original_id = next(i for i, p in paths.items() if p == paths[copy_id].replace("-copy", ""))
    copy_file = data / paths[copy_id]
    moved = tmp_path / "moved.png"
    copy_file.rename(moved)
    try:
        hits = searcher.search(
            SearchRequest(("color",), id=original_id, k=N + COPIES, distinct=0.99)
        ).hits
    finally:
        moved.rename(copy_file)
    # Unreadable, so not judged a copy: still listed.
    assert copy_id in [h.id for h in hits]


def test_fingerprints_are_kept_per_content_and_bounded(indexed):
    data, _ = indexed
    import hashlib

    kept = Fingerprints(capacity=2)
    names = ["test/00000.png", "test/00001.png", "test/00002.png"]
    hashes = [hashlib.sha256((data / n).read_bytes()).hexdigest() for n in names]
    for name, content in zip(names, hashes, strict=True):
        found = kept.of(data, name, content)
        assert found is not None
        np.testing.assert_array_equal(found, fingerprint_file(data / name))
    assert len(kept._kept) == 2
    # A file whose content is not the indexed one has no fingerprint.
    assert kept.of(data, names[0], "0" * 64) is None
    # Nor has a path that leaves the collection's folder.
    assert kept.of(data / "test", "../labels.csv", hashes[0]) is None
