"""The HTTP API in words: `words` and `where` in a query, the facets route."""

import pytest
from serving import assert_one_line_error
from starlette.testclient import TestClient

from dior_search.search.searcher import SearchRequest
from dior_search.serve.app import create_app


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served.service), base_url="http://localhost") as test_client:
        yield test_client


def query(client, **body):
    body.setdefault("collection", "synthetic")
    return client.post("/api/query", json=body)


def test_conditions_say_whether_they_have_answers(client):
    conditions = client.get("/api/collections").json()["collections"][0]["conditions"]
    assert {c["name"]: c["answers"] for c in conditions} == {
        "background": "stored",
        "color": "stored",
    }


def test_a_query_in_words_alone(client, served):
    response = query(client, conditions=["color"], words={"color": "Blue"}, k=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["conditions"] == [{"name": "color", "word": "blue"}]
    assert body["query"] == {"upload": None}
    assert [h["scored_by"] for h in body["hits"]] == [{"color": "answer"}] * 5
    expected = served.service.searcher.search(
        SearchRequest(conditions=("color",), words=("blue",), k=5)
    )
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected.hits]


def test_an_image_a_word_and_a_filter(client, served):
    data = served.image(7).read_bytes()
    digest = client.post("/api/uploads", files={"image": ("q.png", data, "image/png")})
    upload = digest.json()["upload"]
    response = query(
        client,
        conditions=["background", "color"],
        words={"color": "red"},
        upload=upload,
        where=["background=black"],
        k=8,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["conditions"] == [
        {"name": "background", "weight": 1.0},
        {"name": "color", "word": "red"},
    ]
    assert body["where"] == ["background=black"]
    assert body["hits"] and all(h["answers"]["background"] == "black" for h in body["hits"])
    asked = [h["scored_by"]["color"] == "answer" for h in body["hits"]]
    assert asked == sorted(asked, reverse=True)
    # The same as a one-shot multipart form.
    form = {"collection": "synthetic", "condition": ["background", "color"], "k": "8"}
    form |= {"word": "color=red", "where": "background=black"}
    by_form = client.post("/api/query", data=form, files={"image": ("q.png", data, "image/png")})
    assert [h["id"] for h in by_form.json()["hits"]] == [h["id"] for h in body["hits"]]


def test_facets(client, served):
    response = client.get(
        "/api/collections/synthetic/facets",
        params={"condition": "color", "top": 3, "where": "label:background=white"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = served.service.searcher.facets("synthetic", "color", ("label:background=white",), 3)
    assert body["answers"] == [{"answer": a, "count": n} for a, n in expected.counts]
    assert body["where"] == ["label:background=white"] and body["images"] == expected.images


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("query", {"conditions": ["color"], "words": {"color": ""}}, 400, "holds no word"),
        ("query", {"conditions": ["color"], "words": {"size": "big"}}, 400, "not among"),
        ("query", {"conditions": ["color"], "words": ["red"]}, 400, "words must be an object"),
        ("query", {"conditions": ["color"], "id": 1, "where": "a=b"}, 400, "where must be a list"),
        ("query", {"conditions": ["color"], "id": 1, "where": ["=b"]}, 400, "CONDITION=WORD"),
        ("query", {"conditions": ["color"], "id": 1, "where": ["size=big"]}, 404, "'size'"),
        (
            "query",
            {"conditions": ["background", "color"], "words": {"color": "red"}},
            400,
            "one of",
        ),
        ("facets?condition=size", None, 404, "no index for condition 'size'"),
        ("facets", None, 400, "?condition=NAME"),
    ],
)
def test_bad_words_filters_and_facets(client, path, body, status, fragment):
    if body is None:
        response = client.get(f"/api/collections/synthetic/{path}")
    else:
        response = query(client, **body)
    assert_one_line_error(response, status, fragment)


def test_a_filter_nothing_passes_answers_no_hits(client):
    response = query(client, conditions=["color"], id=1, where=["background=pink"])
    assert response.status_code == 200 and response.json()["hits"] == []
