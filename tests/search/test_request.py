"""The request's own checks (search.request), the one home of the rules the CLI and the
server apply before a search, and search parameters parsed once (store.stores.SearchParams)."""

import numpy as np
import pytest

from dior_search.cli.query import CLI_WORDING
from dior_search.errors import UsageError
from dior_search.search.request import (
    MAX_ID,
    MAX_RESULTS,
    SearchRequest,
    Wording,
    check_query_given,
)
from dior_search.search.terms import Term
from dior_search.serve.app import SERVER_WORDING
from dior_search.store.stores import SearchParams

VECTOR = np.ones(4, dtype=np.float32)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (SearchRequest(id=1), "give at least one condition"),
        (SearchRequest(("color", "color"), id=1), "a condition is repeated in ['color', 'color']"),
        (SearchRequest(("color",), id=1, words=("red", None)), "give one word (or none) per"),
        (SearchRequest(("color",), id=1, k=0), f"k must be between 1 and {MAX_RESULTS}"),
        (SearchRequest(("color",), id=1, k=MAX_RESULTS + 1), "k must be between 1 and"),
        (SearchRequest(("color",), id=MAX_ID + 1), f"an id must be between 0 and {MAX_ID}"),
        (SearchRequest(("color",), id=-1), "an id must be between 0 and"),
        (SearchRequest(("color",), id=1, distinct=2.0), "--distinct takes a similarity"),
        (SearchRequest(("color",)), "give a query image or an id (one of them)"),
        (SearchRequest(("color",), id=1, vectors=(VECTOR,)), "give a query image or an id"),
        (SearchRequest(("color",), id=1, words=("red",)), "every condition has a word"),
        (
            SearchRequest(("color", "shape"), vectors=(VECTOR, VECTOR), words=("red", None)),
            "give one query vector per condition searched by image",
        ),
        (SearchRequest(terms=(Term("color", id=1),), id=2), "conflicting terms"),
    ],
)
def test_a_request_no_index_could_answer_is_refused(request_, message):
    with pytest.raises(UsageError) as raised:
        request_.check()
    assert str(raised.value).startswith(message)


def test_a_request_is_checked_against_its_searchers_limit():
    SearchRequest(("color",), id=1, k=100).check(max_k=100)
    with pytest.raises(UsageError, match=r"^k must be between 1 and 100$"):
        SearchRequest(("color",), id=1, k=101).check(max_k=100)


def test_good_requests_pass():
    SearchRequest(("color",), id=1).check()
    SearchRequest(("color", "shape"), vectors=(VECTOR,), words=(None, "round")).check()
    SearchRequest(("color",), words=("red",)).check()
    SearchRequest(terms=(Term("color", id=1), Term("color", id=2, positive=False))).check()


@pytest.mark.parametrize(
    ("wording", "one_query", "words_only", "terms_alone"),
    [
        (
            Wording(),
            "give a query image or an id (one of them)",
            "every condition has a word to ask about",
            "conflicting terms: give the examples as terms, with no separate image or id",
        ),
        (
            Wording(**CLI_WORDING),
            "give a query IMAGE or --id ID (one of them), or --example terms",
            "every --condition has a --text word: give no IMAGE or --id",
            "conflicting terms: give the examples as terms, with no separate image or id",
        ),
        (
            SERVER_WORDING,
            "give exactly one of upload (an uploaded image) or id (an indexed one)",
            "every condition has a word to ask about",
            "conflicting terms: give the examples as terms, with no upload or id",
        ),
    ],
)
def test_each_front_end_words_the_same_rules(wording, one_query, words_only, terms_alone):
    for by_image, given, composed, message in [
        (True, 0, False, one_query),
        (True, 2, False, one_query),
        (False, 1, False, words_only),
        (True, 1, True, terms_alone),
    ]:
        with pytest.raises(UsageError) as raised:
            check_query_given(by_image, given, composed, wording)
        assert str(raised.value).startswith(message)
    check_query_given(True, 1, False, wording)
    check_query_given(False, 0, False, wording)
    check_query_given(False, 0, True, wording)


def test_search_params_are_parsed_and_checked_once():
    params = SearchParams.parse("k_factor_rf=4", nprobe=32, ef_search=64)
    assert params.text == "k_factor_rf=4,nprobe=32,efSearch=64"
    assert dict(params.values) == {"k_factor_rf": 4.0, "nprobe": 32.0, "efSearch": 64.0}
    assert SearchParams.parse(None) == SearchParams()
    with pytest.raises(UsageError, match=r"^search parameter nprobe must be a whole number"):
        SearchParams.parse(None, nprobe=0)
    with pytest.raises(UsageError, match="is not name=number"):
        SearchParams.parse("nprobe")
