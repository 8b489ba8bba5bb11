"""One Searcher for `query`, `serve` and `bench`: index discovery, and the same answers."""

import json
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import pytest
from descriptions import made_up_manifest

from dior_search.cli import main
from dior_search.data.collections import open_folder
from dior_search.data.synthetic import make_item
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.models.generative import GenerativeEmbedder
from dior_search.models.settings import GenerativeSettings
from dior_search.search.searcher import Searcher, SearchRequest
from dior_search.store.schema import Row
from dior_search.store.writer import IndexWriter, compact_index


def cli_json(args: list[str]) -> list[dict]:
    out = StringIO()
    with redirect_stdout(out):
        assert main(args) == 0
    return json.loads(out.getvalue())


@pytest.mark.slow
def test_query_finds_the_dior_index_beside_a_generative_one(tmp_path, baseline_model_dirs):
    """bench builds a generative index with the same model beside the DIOR one: `query` must
    still find exactly one index per condition (the DIOR one), not refuse with a --model
    hint that cannot tell the two apart."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(12):
        make_item(0, "test", index)[1].save(folder / f"{index:02d}.png")
    indexes = tmp_path / "indexes"
    base = ["--images", str(folder), "-c", "object color", "--indexes", str(indexes)]
    assert main(["index", *base, "--model", "tiny", "--device", "cpu"]) == 0
    generative = GenerativeEmbedder(
        GenerativeSettings(model="tiny", text_encoder=str(baseline_model_dirs["bert"]))
    )
    index_collection(
        open_folder(folder), ["object color"], generative, IndexSettings(indexes_dir=indexes)
    )
    collection_dir = next(indexes.iterdir())
    assert sorted(p.name.split("-")[0] for p in collection_dir.iterdir()) == [
        "generative",
        "tiny",
    ]
    by_collection = cli_json(["query", str(folder / "03.png"), *base, "--json"])
    (dior_dir,) = [p for p in (collection_dir / "tiny").iterdir() if p.is_dir()]
    by_directory = cli_json(["query", str(folder / "03.png"), "--index", str(dior_dir), "--json"])
    assert by_collection == by_directory
    assert by_collection[0]["path"] == "03.png"
    assert by_collection[0]["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_query_and_serve_give_the_same_hits(served):
    from starlette.testclient import TestClient

    from dior_search.serve.app import create_app

    with TestClient(create_app(served.service), base_url="http://localhost") as client:
        check_same_hits(served, client)


def check_same_hits(served, client):
    image = served.image(17)
    for conditions in (["color"], ["color", "background"]):
        args = ["query", str(image), "--dataset", "synthetic", "--json", "-k", "12"]
        args += [*served.store_args, "--device", "cpu"]
        for condition in conditions:
            args += ["-c", condition]
        from_cli = cli_json(args)
        response = client.post(
            "/api/query",
            data={"collection": "synthetic", "condition": conditions, "k": "12"},
            files={"image": ("q.png", image.read_bytes(), "image/png")},
        )
        assert response.status_code == 200
        from_server = response.json()["hits"]
        assert [h["id"] for h in from_cli] == [h["id"] for h in from_server]
        np.testing.assert_allclose(
            [h["score"] for h in from_cli], [h["score"] for h in from_server], atol=1e-6
        )
        for cli_hit, server_hit in zip(from_cli, from_server, strict=True):
            assert cli_hit == {k: v for k, v in server_hit.items() if k != "thumbnail"} | {
                "score": cli_hit["score"],
                "scores": cli_hit["scores"],
            }


def test_a_searcher_follows_new_generations_of_its_indexes(tmp_path):
    vectors = np.random.default_rng(2).normal(size=(30, 16)).astype(np.float32)
    with IndexWriter(tmp_path / "ix", made_up_manifest(root=str(tmp_path))) as writer:
        for number, vector in enumerate(vectors):
            writer.add(vector, Row(f"{number}.png", f"h{number}"))
    searcher = Searcher.of_directories([tmp_path / "ix"])
    request = SearchRequest(conditions=("color",), k=50, vectors=(vectors[3],))
    assert len(searcher.search(request).hits) == 30
    condition = searcher.condition(searcher.collection("c"), "color")
    old = searcher.reader(condition)

    writer = IndexWriter.existing(tmp_path / "ix")
    writer.delete(list(range(10)))
    writer.commit()
    writer.abort()
    compact_index(tmp_path / "ix")
    hits = searcher.search(request).hits
    assert sorted(hit.path for hit in hits) == [f"{n}.png" for n in range(10, 30)]
    assert searcher.collection("c").conditions["color"].rows == 20
    # A reader handed out before keeps its generation; the searcher keeps only the new one.
    assert len(old) == 30 and old.row(3).path == "3.png"
    new = searcher.reader(condition)
    assert new.generation > old.generation
    assert [j.readers[0] for j in searcher.cache.joins()] == [new]
