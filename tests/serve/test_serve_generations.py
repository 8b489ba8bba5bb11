"""`serve` while an `index` run deletes and adds images: every answer is one generation of the
index, and the server switches to the new one without a restart."""

import hashlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from kill_runs import index_command
from serving import post_json, running

import dior_search
from dior_search.data.collections import open_folder
from dior_search.data.synthetic import write_dataset
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings
from dior_search.search.searcher import Searcher
from dior_search.serve.service import SearchService, ServeSettings

CLIENTS = 20


def folder_paths(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.png")}


@pytest.mark.slow
def test_serve_answers_from_one_generation_while_an_index_run_changes_it(tmp_path):
    write_dataset(tmp_path / "data", {"test": 36})
    pool = sorted((tmp_path / "data" / "test").glob("*.png"))
    folder = tmp_path / "images"
    folder.mkdir()
    for path in pool[:28]:
        shutil.copy(path, folder / path.name)
    embedder = DiorEmbedder(DiorSettings(model="tiny", device="cpu", batch_size=8))
    indexes = tmp_path / "indexes"
    index_collection(
        open_folder(folder), ["color"], embedder, IndexSettings(indexes_dir=indexes, shard_size=2)
    )
    old = folder_paths(folder)
    # The next run deletes 8 images and adds 8 others, in several commits (shards of 2).
    for path in pool[:8]:
        (folder / path.name).unlink()
    for path in pool[28:]:
        shutil.copy(path, folder / path.name)
    new = folder_paths(folder)
    assert len(set(old.values()) | set(new.values())) == 36  # every content differs
    settings = ServeSettings(indexes_dir=indexes, device="cpu")
    searcher = Searcher.open(indexes, options=settings.search_options())
    service = SearchService(Searcher(searcher.entries, searcher.options, embedder), settings)
    collection = open_folder(folder).name
    answers: list[frozenset[str]] = []
    failures: list[str] = []

    with running(service) as url:
        upload = service.add_upload((pool[0]).read_bytes()).digest
        body = {"collection": collection, "conditions": ["color"], "k": 100, "upload": upload}

        def ask() -> None:
            status, answer = post_json(f"{url}/api/query", body)
            if status != 200:
                failures.append(f"{status}: {answer}")
                return
            paths = [hit["path"] for hit in answer["hits"]]
            if len(paths) != len(set(paths)):
                failures.append(f"a path twice: {paths}")
            answers.append(frozenset(paths))

        def client(stop: threading.Event) -> None:
            while not stop.is_set():
                ask()
                time.sleep(0.02)

        stop = threading.Event()
        clients = [threading.Thread(target=client, args=(stop,)) for _ in range(CLIENTS)]
        for thread in clients:
            thread.start()
        package = str(Path(dior_search.__file__).resolve().parents[1])
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([package, os.environ.get("PYTHONPATH", "")]),
        }
        run = subprocess.run(
            [*index_command(folder, indexes, ["color"], shard_size=2), "--yes"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        stop.set()
        for thread in clients:
            thread.join()
        assert run.returncode == 0, run.stderr[-2000:]
        assert "color: 8 added, 0 changed, 0 moved, 8 removed, 20 unchanged" in run.stdout
        during = list(answers)
        answers.clear()
        # After the run: 20 at once, all of the new generation.
        after = [threading.Thread(target=ask) for _ in range(CLIENTS)]
        for thread in after:
            thread.start()
        for thread in after:
            thread.join()

    assert not failures, failures[:3]
    assert len(answers) == CLIENTS and set(answers) == {frozenset(new)}
    # Every answer during the run is the old generation or one between it and the new one:
    # the images kept, some of the new ones, none of the deleted ones once they are gone.
    assert all(a == frozenset(old) or a <= frozenset(new) for a in during)
    assert frozenset(old) in during, "no answer came from before the run's first commit"
    assert any(a != frozenset(old) for a in during), "the server never saw a newer generation"
