"""`POST /api/query` with `terms` and `distinct`: the same hits as the library, uploads
embedded once per condition, and each bad term a one-line JSON error with its status."""

import pytest
from serving import assert_one_line_error
from starlette.testclient import TestClient

from dior_search.search.searcher import SearchRequest
from dior_search.search.terms import Term
from dior_search.serve.app import create_app


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served.service), base_url="http://localhost") as test_client:
        yield test_client


def query(client, **body):
    body.setdefault("collection", "synthetic")
    return client.post("/api/query", json=body)


def library(served, terms, **fields):
    result = served.service.searcher.search(
        SearchRequest(collection="synthetic", terms=tuple(terms), **fields)
    )
    return [h.id for h in result.hits], result


def test_terms_by_id_and_word_equal_the_library(client, served):
    terms = [
        {"condition": "background", "id": 4},
        {"condition": "color", "id": 9, "weight": 2},
        {"condition": "color", "word": "red", "polarity": "negative"},
    ]
    response = query(client, terms=terms, k=8)
    assert response.status_code == 200, response.text
    body = response.json()
    want = [
        Term("background", id=4),
        Term("color", id=9, weight=2.0),
        Term("color", word="red", positive=False),
    ]
    ids, result = library(served, want, k=8)
    assert [h["id"] for h in body["hits"]] == ids
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in result.hits])
    assert [t["polarity"] for t in body["terms"]] == ["positive", "positive", "negative"]
    assert body["hidden"] == 0


def test_an_uploaded_example_per_condition(client, served):
    a = client.post(
        "/api/uploads", files={"image": ("a.png", served.image(2).read_bytes(), "image/png")}
    ).json()["upload"]
    b = client.post(
        "/api/uploads", files={"image": ("b.png", served.image(5).read_bytes(), "image/png")}
    ).json()["upload"]
    response = query(
        client,
        terms=[{"condition": "color", "upload": a}, {"condition": "background", "upload": b}],
    )
    assert response.status_code == 200, response.text
    ids, _ = library(served, [Term("color", id=2), Term("background", id=5)])
    # An indexed image's upload embeds to its stored vector: the same top hits.
    assert [h["id"] for h in response.json()["hits"]][:5] == ids[:5]


def test_distinct_reports_what_it_hid(client):
    response = query(client, conditions=["color"], id=3, distinct=0.9)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["hidden"], int) and len(body["hits"]) == 10


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"terms": [{"condition": "shape", "id": 1}]}, 404, "no index for condition 'shape'"),
        (
            {"terms": [{"condition": "color", "id": 1, "polarity": "negative"}]},
            400,
            "at least one positive",
        ),
        ({"terms": [{"condition": "color", "word": "chartreuse"}]}, 400, "no image's answer"),
        (
            {
                "terms": [
                    {"condition": "color", "id": 1},
                    {"condition": "color", "id": 1, "polarity": "negative"},
                ]
            },
            400,
            "conflicting terms",
        ),
        ({"terms": [{"condition": "color", "id": 1}], "id": 2}, 400, "conflicting terms"),
        ({"terms": [{"condition": "color"}]}, 400, "exactly one example"),
        ({"terms": [{"condition": "color", "id": 1, "weight": 0}]}, 400, "positive finite"),
        ({"terms": [{"condition": "color", "id": 1, "sign": 1}]}, 400, "unknown term field"),
        ({"terms": [{"condition": "color", "upload": "ab"}]}, 400, "64-hex-digit"),
        ({"terms": [{"condition": "color", "upload": "a" * 64}]}, 404, "no upload"),
        ({"terms": []}, 400, "non-empty list"),
        ({"terms": [{"condition": "color", "id": 1}], "distinct": "x"}, 400, "distinct"),
        ({"terms": [{"condition": "color", "id": 1}], "distinct": 3}, 400, "similarity in"),
    ],
)
def test_bad_terms_are_one_line_errors(client, body, status, fragment):
    assert_one_line_error(query(client, **body), status, fragment)


def test_groups_endpoint_equals_the_library(client, served):
    from dior_search.search.groups import group_images

    response = client.get("/api/collections/synthetic/groups?condition=color&members=3")
    assert response.status_code == 200, response.text
    body = response.json()
    want = group_images(served.service.searcher, "synthetic", "color")
    assert body["k"] == want.k and body["k_chosen_by"] == "answers"
    assert [(g["name"], g["size"]) for g in body["groups"]] == [
        (g.name, g.size) for g in want.groups
    ]
    first = body["groups"][0]["members"]
    assert [m["id"] for m in first] == want.groups[0].ids[:3]
    assert first[0]["thumbnail"].startswith("/api/thumbnail/synthetic/color/")
    assert client.get(first[0]["thumbnail"]).status_code == 200


@pytest.mark.parametrize(
    ("query_string", "status", "fragment"),
    [
        ("", 400, "give ?condition=NAME"),
        ("?condition=shape", 404, "no index for condition 'shape'"),
        ("?condition=color&k=0", 400, "k must be between 1 and"),
        ("?condition=color&k=x", 400, "k must be an integer"),
    ],
)
def test_bad_groups_requests(client, query_string, status, fragment):
    response = client.get("/api/collections/synthetic/groups" + query_string)
    assert_one_line_error(response, status, fragment)
