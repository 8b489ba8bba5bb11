"""Asking in words: text queries ranked by the model's own answers, filters (`--where`) and
facets, on the synthetic test split indexed by the tiny model (answers stored by default)."""

import json
from collections import Counter
from contextlib import redirect_stdout
from io import StringIO
from itertools import pairwise

import numpy as np
import pytest
from safetensors import safe_open

from dior_search.cli import main
from dior_search.data.synthetic import LABEL_VALUES
from dior_search.models.answers import surface_forms
from dior_search.models.loading import resolve_model_source
from dior_search.search.joined import normalize_weights
from dior_search.search.searcher import Searcher, SearchRequest
from dior_search.store.reader import IndexReader


@pytest.fixture(scope="module")
def searcher(synthetic_workspace):
    return Searcher.open(synthetic_workspace / "indexes", collection="synthetic")


def reader_of(searcher, condition) -> IndexReader:
    return searcher.reader(searcher.condition(searcher.collection("synthetic"), condition))


def words(searcher, k=10, where=(), **asked):
    request = SearchRequest(
        conditions=tuple(asked), words=tuple(asked.values()), k=k, where=tuple(where)
    )
    return searcher.search(request)


def cli(workspace, *args) -> tuple[int, str]:
    out = StringIO()
    with redirect_stdout(out):
        code = main([*args, "--dataset", "synthetic", "--indexes", str(workspace / "indexes")])
    return code, out.getvalue()


@pytest.mark.slow
def test_the_acceptance_figures(searcher):
    """Answer accuracy >= 0.90 per condition, text-to-image precision@10 >= 0.90 for every
    label value, facet counts within 10% of the label counts."""
    for condition, values in LABEL_VALUES.items():
        reader = reader_of(searcher, condition)
        labels = reader.labels(condition)
        answers = reader.column("answer")
        accuracy = np.mean([a == label for a, label in zip(answers, labels, strict=True)])
        assert accuracy >= 0.90, (condition, accuracy)
        for value in values:
            hits = words(searcher, **{condition: value}).hits
            precision = np.mean([hit.labels[condition] == value for hit in hits])
            assert len(hits) == 10 and precision >= 0.90, (condition, value, precision)
        counted = dict(searcher.facets("synthetic", condition).counts)
        for value, count in Counter(labels).items():
            assert abs(counted.get(value, 0) - count) <= 0.1 * count, (condition, value)


def first_token_truth(reader: IndexReader, word: str) -> np.ndarray:
    """log p(first token | h) of every row, from scratch: the raw vectors, the tiny model's
    whole output matrix (its tied input embeddings), the full log-partition."""
    from transformers import AutoTokenizer

    source = resolve_model_source("tiny")
    tokenizer = AutoTokenizer.from_pretrained(source)
    with safe_open(f"{source}/model.safetensors", framework="numpy") as handle:
        key = next(k for k in handle.keys() if k.endswith("embed_tokens.weight"))  # noqa: SIM118
        head = handle.get_tensor(key).astype(np.float64)
    tokens = sorted(
        {tokenizer(f, add_special_tokens=False)["input_ids"][0] for f in surface_forms(word)}
    )
    _, raw = reader.all_vectors(raw=True)
    logits = raw.astype(np.float64) @ head.T
    top = logits.max(axis=1, keepdims=True)
    partition = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    np.testing.assert_allclose(reader.column("log_partition"), partition, rtol=1e-5)
    chosen = logits[:, tokens]
    return np.log(np.exp(chosen - top).sum(axis=1)) + top[:, 0] - partition


@pytest.mark.slow
def test_answered_rows_first_then_the_rest_by_first_token(searcher):
    reader = reader_of(searcher, "color")
    result = words(searcher, k=len(reader), color="purple")
    answered = [a == "purple" for a in reader.column("answer")]
    hits = result.hits
    n_answered = sum(answered)
    assert [h.scored_by["color"] for h in hits] == ["answer"] * n_answered + ["first-token"] * (
        len(reader) - n_answered
    )
    first, rest = hits[:n_answered], hits[n_answered:]
    logprobs = dict(zip(reader.ids.tolist(), reader.column("answer_logprob"), strict=True))
    assert [h.score for h in first] == sorted((logprobs[h.id] for h in first), reverse=True)
    truth = dict(zip(reader.ids.tolist(), first_token_truth(reader, "purple"), strict=True))
    np.testing.assert_allclose([h.score for h in rest], [truth[h.id] for h in rest], atol=1e-4)
    assert all(a.score >= b.score for a, b in pairwise(rest))
    assert all(h.answers["color"] == "purple" for h in first)


@pytest.mark.slow
def test_several_words_rank_by_how_many_were_answered(searcher):
    result = words(searcher, k=60, color="red", pattern="stripes")
    tiers = [sum(h.scored_by[c] == "answer" for c in ("color", "pattern")) for h in result.hits]
    assert tiers == sorted(tiers, reverse=True) and tiers[0] == 2
    both = [h for h, tier in zip(result.hits, tiers, strict=True) if tier == 2]
    assert all(h.labels["color"] == "red" and h.labels["pattern"] == "stripes" for h in both)
    assert all(h.score == pytest.approx(sum(h.scores.values())) for h in result.hits)


def exact_ranking(searcher, conditions, query_id, weights, passing_ids):
    """Brute force: weighted cosine of every passing image to image `query_id`."""
    readers = [reader_of(searcher, c) for c in conditions]
    scores = 0.0
    for reader, weight in zip(readers, normalize_weights(weights, len(readers)), strict=True):
        _, vectors = reader.all_vectors()
        scores = scores + weight * (vectors @ vectors[reader.positions([query_id])[0]])
    ids = readers[0].ids
    keep = np.isin(ids, passing_ids)
    order = np.lexsort((ids[keep], -scores[keep]))
    return ids[keep][order].tolist()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("conditions", "where"),
    [
        (("background",), ("color=red",)),
        (("background",), ("label:size=small", "pattern=dots")),
        (("background", "size"), ("color=blue",)),
        (("color", "background"), ("label:pattern=solid",)),
    ],
)
def test_filters_give_the_exact_ranking_of_the_passing_images(searcher, conditions, where):
    answers = {c: reader_of(searcher, c).column("answer") for c in LABEL_VALUES}
    labels = {c: reader_of(searcher, c).labels(c) for c in LABEL_VALUES}
    ids = reader_of(searcher, conditions[0]).ids
    passing = np.ones(len(ids), dtype=bool)
    for one in where:
        name, value = one.removeprefix("label:").split("=")
        source = labels if one.startswith("label:") else answers
        passing &= np.asarray(source[name], dtype=object) == value
    truth = exact_ranking(searcher, conditions, 3, None, ids[passing])
    found = searcher.search(SearchRequest(conditions=conditions, id=3, k=15, where=where))
    assert len(found.hits) == min(15, int(passing.sum())) > 0
    assert [h.id for h in found.hits] == truth[:15]


@pytest.mark.slow
def test_an_image_with_a_word_ranks_the_answered_images_first_by_the_image(searcher):
    found = searcher.search(
        SearchRequest(conditions=("background", "color"), words=(None, "green"), id=3, k=30)
    )
    answered = [h.scored_by["color"] == "answer" for h in found.hits]
    assert answered == sorted(answered, reverse=True) and answered[0]
    reader = reader_of(searcher, "color")
    green = reader.ids[np.asarray(reader.column("answer"), dtype=object) == "green"]
    truth = exact_ranking(searcher, ("background",), 3, None, green)
    n = sum(answered)
    assert [h.id for h in found.hits[:n]] == truth[:n]
    assert all(h.score == h.scores["background"] for h in found.hits)


@pytest.mark.slow
def test_facets_count_the_answers(searcher):
    answers = reader_of(searcher, "color").column("answer")
    facets = searcher.facets("synthetic", "color", top=3)
    assert facets.counts == sorted(Counter(answers).items(), key=lambda x: (-x[1], x[0]))[:3]
    assert facets.images == 400 and facets.distinct == len(set(answers))
    labels = reader_of(searcher, "color").labels("background")
    teal = [a for a, b in zip(answers, labels, strict=True) if b == "teal"]
    filtered = searcher.facets("synthetic", "color", where=("label:background=teal",))
    assert dict(filtered.counts) == Counter(teal) and filtered.images == len(teal)


@pytest.mark.slow
def test_the_command_line(synthetic_workspace):
    code, out = cli(
        synthetic_workspace, "query", "--text", "Red", "-c", "color", "--json", "-k", "3"
    )
    hits = json.loads(out)
    assert code == 0 and [h["scored_by"] for h in hits] == [{"color": "answer"}] * 3
    assert all(h["answers"]["color"] == "red" for h in hits)
    code, out = cli(synthetic_workspace, "facets", "-c", "size", "--json")
    assert code == 0
    assert {a["answer"] for a in json.loads(out)["size"]["answers"]} == {"small", "large"}
    code, out = cli(
        synthetic_workspace, "query", "--id", "3", "-c", "size", "--where", "color=red", "--json"
    )
    assert code == 0 and {h["answers"].get("size") for h in json.loads(out)} <= {"small", "large"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--text", "", "-c", "color"], 2, "error: --text '' holds no word"),
        (["--text", "light blue", "-c", "color"], 2, "is not one word"),
        (["--text", "red"], 2, "asks about no condition"),
        (["--text", "red", "--text", "blue", "-c", "color"], 2, "write --text CONDITION=WORD"),
        (["--id", "3", "--text", "red", "-c", "color"], 2, "write --text CONDITION=WORD"),
        (["--id", "3", "--text", "color=red", "-c", "color"], 2, "give no IMAGE or --id"),
        (["--id", "3", "-c", "color", "--where", "red"], 2, "write CONDITION=WORD"),
        (["--id", "3", "-c", "color", "--where", "label:shape=round"], 2, "no label 'shape'"),
        (["--id", "3", "-c", "color", "--where", "texture=red"], 5, "no index for condition"),
    ],
)
def test_bad_words_and_filters_are_one_line(synthetic_workspace, capsys, args, code, message):
    assert cli(synthetic_workspace, "query", *args)[0] == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.slow
def test_a_filter_no_image_passes_is_an_empty_answer(synthetic_workspace, capsys):
    code, out = cli(
        synthetic_workspace, "query", "--id", "3", "-c", "color", "--where", "size=huge"
    )
    assert code == 0 and out == ""
    assert "no image passes the filters" in capsys.readouterr().err
    code, out = cli(
        synthetic_workspace, "query", "--id", "3", "-c", "color", "--where", "size=huge", "--json"
    )
    assert code == 0 and json.loads(out) == []
