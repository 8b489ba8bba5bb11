"""The index follows a changing folder: random adds, deletes, overwrites, renames, copies,
a copy then a move of the original, links that dangle or loop where a file was, a file
replaced by a folder, the folder emptied, index runs (of some conditions), compactions and
queries, checked against a fresh build of the folder after every index run, on every store."""

import io
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from PIL import Image
from stores import opened
from sync_helpers import (
    AnsweringCache,
    assert_fresh_build,
    contents,
    folder_state,
    hit_rows,
    index_rows,
    sha256,
)

from dior_search.data.collections import open_folder
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings
from dior_search.search.searcher import Searcher, SearchRequest
from dior_search.store.backend import IndexEntry, IndexLocation

CONDITIONS = ("color", "background")
NAMES = ("a.png", "b.png", "c.png", "d.png", "e.png", "f.png", "sub/g.png", "sub/h.png")
MAX_FILES = 6
CONTENTS = contents(10)


@pytest.fixture(scope="module")
def cached_tiny():
    """The tiny model with its answers: a copy then takes its source's vector and answer."""
    return AnsweringCache(DiorEmbedder(DiorSettings(model="tiny", device="cpu", batch_size=8)))


class FolderFollowing(RuleBasedStateMachine):
    """The folder as a dict (path -> content number); per condition, what its index must
    hold as of its last index run (path -> content hash) and the ids it gave."""

    embedder: AnsweringCache
    # The store the indexes are in: folder, milvus-lite or milvus-server (one per example).
    store_kind: ClassVar[str] = "folder"
    # Steps taken, and index runs and queries checked, over every example.
    ran: ClassVar[Counter[str]] = Counter()

    def __init__(self) -> None:
        super().__init__()
        self.work = Path(tempfile.mkdtemp(prefix="sync-property-"))
        self.folder = self.work / "images"
        self.folder.mkdir()
        self.store = opened(self.store_kind, self.work)
        self.files: dict[str, int] = {}
        self.indexed: dict[str, dict[str, str]] = {}
        self.ids: dict[str, dict[tuple[str, str], int]] = {}
        self.given: dict[str, set[int]] = {}
        self.directories: dict[str, IndexLocation] = {}
        self.searcher: Searcher | None = None
        self.searched: list[str] = []
        # Loops made so far: each loop's outside link in a folder of its own (a name looped
        # twice, or a file and later a folder of one name, must not meet there).
        self.loops = 0

    @invariant()
    def count(self) -> None:
        self.ran["steps"] += 1

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def clear(self, name: str) -> None:
        """Nothing at `name`: a link there removed, a folder there with its files."""
        path = self.folder / name
        if path.is_symlink():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
            for inside in [f for f in self.files if f.startswith(f"{name}/")]:
                del self.files[inside]

    def write(self, name: str, content: int) -> None:
        self.clear(name)
        (self.folder / name).parent.mkdir(parents=True, exist_ok=True)
        (self.folder / name).write_bytes(CONTENTS[content])
        self.files[name] = content

    @initialize(content=st.integers(0, len(CONTENTS) - 1))
    def first_image(self, content):
        self.write(NAMES[0], content)

    # -- the folder changes ---------------------------------------------------------------

    @precondition(lambda self: len(self.files) < MAX_FILES)
    @rule(name=st.sampled_from(NAMES), content=st.integers(0, len(CONTENTS) - 1))
    def add(self, name, content):
        if name not in self.files:
            self.write(name, content)

    @precondition(lambda self: len(self.files) > 1)
    @rule(data=st.data())
    def delete(self, data):
        name = data.draw(st.sampled_from(sorted(self.files)))
        (self.folder / name).unlink()
        del self.files[name]

    @precondition(lambda self: self.files)
    @rule(data=st.data(), content=st.integers(0, len(CONTENTS) - 1))
    def overwrite(self, data, content):
        self.write(data.draw(st.sampled_from(sorted(self.files))), content)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), to=st.sampled_from(NAMES))
    def rename(self, data, to):
        source = data.draw(st.sampled_from(sorted(self.files)))
        if to not in self.files and not source.startswith(f"{to}/"):
            self.clear(to)
            (self.folder / to).parent.mkdir(parents=True, exist_ok=True)
            (self.folder / source).rename(self.folder / to)
            self.files[to] = self.files.pop(source)

    @precondition(lambda self: 0 < len(self.files) < MAX_FILES)
    @rule(data=st.data(), to=st.sampled_from(NAMES))
    def copy(self, data, to):
        source = data.draw(st.sampled_from(sorted(self.files)))
        if to not in self.files:
            self.write(to, self.files[source])

    @precondition(lambda self: len(self.files) > 1)
    @rule(data=st.data())
    def duplicate_content(self, data):
        source, target = data.draw(st.permutations(sorted(self.files)))[:2]
        self.write(target, self.files[source])

    @precondition(lambda self: self.files)
    @rule()
    def empty(self):
        """Every image removed: the collection is empty, and its indexes sync to empty."""
        for name in list(self.files):
            (self.folder / name).unlink()
        self.files.clear()

    @precondition(lambda self: self.files)
    @rule(data=st.data(), kind=st.sampled_from(["dangling", "loop"]))
    def link(self, data, kind):
        """A file replaced by a link to nothing, or by a loop of links: a file gone."""
        name = data.draw(st.sampled_from(sorted(self.files)))
        path = self.folder / name
        path.unlink()
        del self.files[name]
        if kind == "dangling":
            path.symlink_to(self.work / "nowhere.png")
        else:
            # The loop's other link is outside the folder: never scanned itself.
            self.loops += 1
            partner = self.work / "loops" / str(self.loops) / name
            partner.parent.mkdir(parents=True)
            path.symlink_to(partner)
            partner.symlink_to(path)

    @precondition(lambda self: any(f.count("/") < 2 for f in self.files))
    @rule(data=st.data(), content=st.integers(0, len(CONTENTS) - 1))
    def folder_for_file(self, data, content):
        """A file replaced by a folder of that name, holding an image."""
        name = data.draw(st.sampled_from(sorted(f for f in self.files if f.count("/") < 2)))
        (self.folder / name).unlink()
        del self.files[name]
        self.write(f"{name}/inner.png", content)

    @precondition(lambda self: 0 < len(self.files) < MAX_FILES - 1)
    @rule(
        data=st.data(),
        names=st.permutations(NAMES),
        conditions=st.sampled_from([CONDITIONS, CONDITIONS[:1]]),
    )
    def copy_then_move(self, data, names, conditions):
        """cp a copy; index; mv a moved; index (Milvus Lite once aborted on the second run)."""
        free = [n for n in names if not os.path.lexists(self.folder / n)]
        if len(free) < 2:
            return
        source = data.draw(st.sampled_from(sorted(self.files)))
        self.write(free[0], self.files[source])
        self.index(conditions)
        (self.folder / free[1]).parent.mkdir(parents=True, exist_ok=True)
        (self.folder / source).rename(self.folder / free[1])
        self.files[free[1]] = self.files.pop(source)
        self.index(conditions)

    # -- the index ------------------------------------------------------------------------

    @rule(conditions=st.sampled_from([CONDITIONS, CONDITIONS[:1], CONDITIONS[1:]]))
    def index_run(self, conditions):
        self.index(conditions)

    def index(self, conditions):
        if not self.files and not set(conditions) & set(self.directories):
            return  # a folder without images and without an index is refused (exit 3)
        report = index_collection(
            open_folder(self.folder),
            conditions,
            self.embedder,
            IndexSettings(
                indexes_dir=self.work / "indexes",
                shard_size=3,
                images_per_step=4,
            ),
            confirm_removal=lambda removals: True,
            store=self.store,
        )
        self.ran["index"] += 1
        expected = folder_state(self.folder)
        for condition in conditions:
            self.directories[condition] = report.indexes[condition]
            reader = self.store.reader(report.indexes[condition])
            assert_fresh_build(reader, self.folder, expected, self.embedder, condition)
            # A row that stayed keeps its id; a new row never gets an id given before.
            ids = dict(zip(index_rows(reader), reader.ids.tolist(), strict=True))
            before = self.ids.get(condition, {})
            assert all(ids[key] == before[key] for key in ids.keys() & before.keys())
            given = self.given.setdefault(condition, set())
            assert not {i for key, i in ids.items() if key not in before} & given
            given.update(ids.values())
            self.ids[condition] = ids
            self.indexed[condition] = expected

    @precondition(lambda self: self.directories)
    @rule(threshold=st.sampled_from([0.0, 0.2]))
    def compact(self, threshold):
        for condition, directory in self.directories.items():
            self.store.compact(directory, threshold)
            reader = self.store.reader(directory)
            assert sorted(index_rows(reader)) == sorted(self.indexed[condition].items())
            if threshold == 0:
                assert reader.deleted == 0

    def current_searcher(self) -> Searcher:
        """One Searcher for as long as no condition is indexed for the first time: it must
        follow every generation of the indexes by itself."""
        wanted = sorted(self.directories)
        if self.searcher is None or sorted(self.searched) != wanted:
            entries = [
                IndexEntry(self.directories[c], self.store.manifest_at(self.directories[c]))
                for c in wanted
            ]
            self.searcher = Searcher(entries, embedder=self.embedder)
            self.searched = wanted
        return self.searcher

    @precondition(lambda self: self.directories)
    @rule(data=st.data(), content=st.integers(0, len(CONTENTS) - 1))
    def query(self, data, content):
        """Each hit is a file as the last run of its condition found it, and every such file
        is a hit (k covers them all); the query's own content ranks first."""
        choices = [(c,) for c in CONDITIONS if c in self.directories]
        if len(choices) == len(CONDITIONS):
            choices.append(CONDITIONS)
        names = data.draw(st.sampled_from(choices))
        searcher = self.current_searcher()
        with Image.open(io.BytesIO(CONTENTS[content])) as opened:
            query = opened.convert("RGB")
        vectors = tuple(self.embedder.embed([query], list(names))[0])
        result = searcher.search(SearchRequest(conditions=names, k=50, vectors=vectors))
        first = searcher.reader(searcher.condition(result.collection, names[0]))
        hits = hit_rows(first, [hit.id for hit in result.hits])
        others = [set(self.indexed[c].values()) for c in names[1:]]
        expected = {
            (path, content_hash)
            for path, content_hash in self.indexed[names[0]].items()
            if all(content_hash in other for other in others)
        }
        assert len(hits) == len(set(hits)) and set(hits) == expected
        self.ran["query"] += 1
        if sha256(CONTENTS[content]) in {h for _, h in expected}:
            assert hits[0][1] == sha256(CONTENTS[content])
            assert result.hits[0].score >= 0.9999


def follow(embedder, store_kind: str, examples: int) -> Counter[str]:
    """Run the state machine on a store; what it did."""
    FolderFollowing.embedder = embedder
    FolderFollowing.store_kind = store_kind
    FolderFollowing.ran.clear()
    run_state_machine_as_test(
        FolderFollowing,
        settings=settings(
            max_examples=examples,
            stateful_step_count=40,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    return FolderFollowing.ran


@pytest.mark.slow
def test_the_index_follows_the_folder(cached_tiny):
    ran = follow(cached_tiny, "folder", 40)
    assert ran["steps"] >= 200 and ran["index"] >= 40 and ran["query"] >= 20, ran


@pytest.mark.slow
def test_a_milvus_lite_index_follows_the_folder(cached_tiny):
    ran = follow(cached_tiny, "milvus-lite", 20)
    assert ran["steps"] >= 400 and ran["index"] >= 20 and ran["query"] >= 5, ran


@pytest.mark.slow
def test_a_milvus_server_index_follows_the_folder(cached_tiny, tmp_path):
    opened("milvus-server", tmp_path).close()  # skips (or fails, in CI) without a server
    # 7 examples: the derandomized runs' first 6 hold no query (their sequence is fixed by
    # this file's source; the folder store's run with 7 makes 29 index runs and 10 queries).
    ran = follow(cached_tiny, "milvus-server", 7)
    assert ran["steps"] >= 80 and ran["index"] >= 8 and ran["query"] >= 2, ran
