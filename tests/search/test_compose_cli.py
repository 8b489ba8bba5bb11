"""`dior-search query`'s composed forms: per-condition examples, negatives, words, --text
CONDITION=WORD, --distinct; each equal to the library's terms, each error one line with its
exit code."""

import json
import re

import pytest

from dior_search.cli import main
from dior_search.data.synthetic import write_dataset
from dior_search.search.searcher import Searcher, SearchRequest
from dior_search.search.terms import Term

N = 60


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """60 synthetic images indexed under color and pattern (answers stored) by the CLI."""
    root = tmp_path_factory.mktemp("compose-cli")
    write_dataset(root / "datasets" / "synthetic", {"test": N})
    args = ["index", "--dataset", "synthetic", "--datasets-dir", str(root / "datasets")]
    args += ["--indexes", str(root / "indexes"), "--device", "cpu", "--batch-size", "16"]
    assert main([*args, "-c", "color", "-c", "pattern"]) == 0
    return root


def query(root, capsys, *args):
    """(exit code, stdout, stderr) of `query --dataset synthetic ...`."""
    code = main(["query", "--dataset", "synthetic", "--indexes", str(root / "indexes"), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def image(root, row_id):
    return root / "datasets" / "synthetic" / "test" / f"{row_id:05d}.png"


def ids_of(out):
    return [h["id"] for h in json.loads(out)]


def library(root, terms, **fields):
    searcher = Searcher.open(root / "indexes", collection="synthetic")
    return [h.id for h in searcher.search(SearchRequest(terms=tuple(terms), **fields)).hits]


def test_per_condition_examples_and_negatives_equal_the_library(workspace, capsys):
    a, b, c = image(workspace, 1), image(workspace, 2), image(workspace, 3)
    code, out, _ = query(
        workspace, capsys, "--example", f"pattern={a}", "--example", f"color={b}", "--json"
    )
    assert code == 0
    # An image's stored vector is its embedding: the same ranking by id as by file.
    assert ids_of(out) == library(workspace, [Term("pattern", id=1), Term("color", id=2)])
    code, out, _ = query(
        workspace,
        capsys,
        "--example-id",
        "pattern=1",
        "--not-id",
        "color=1",
        "--word",
        "color=red",
        "--not-word",
        "pattern=dots",
        "-k",
        "7",
        "--json",
    )
    assert code == 0
    want = [
        Term("pattern", id=1),
        Term("color", word="red"),
        Term("pattern", word="dots", positive=False),
        Term("color", id=1, positive=False),
    ]
    assert ids_of(out) == library(workspace, want, k=7)
    # --not without a condition: less like C under every condition searched by example.
    code, out, _ = query(
        workspace, capsys, str(a), "-c", "pattern", "-c", "color", "--not", str(c), "--json"
    )
    want = [Term("pattern", id=1), Term("color", id=1)]
    want += [Term("pattern", id=3, positive=False), Term("color", id=3, positive=False)]
    assert code == 0 and ids_of(out) == library(workspace, want)
    code, out, _ = query(
        workspace, capsys, "--id", "1", "-c", "pattern", "-c", "color", "--not-id", "3", "--json"
    )
    want = [Term("pattern", id=1), Term("color", id=1, id_condition="pattern")]
    want += [Term("pattern", id=3, positive=False), Term("color", id=3, positive=False)]
    assert code == 0 and ids_of(out) == library(workspace, want)


def test_text_condition_equals_word_form(workspace, capsys):
    code, new, _ = query(workspace, capsys, "--text", "color=red", "--json", "-k", "5")
    assert code == 0
    code, old, _ = query(workspace, capsys, "--text", "red", "-c", "color", "--json", "-k", "5")
    assert code == 0 and ids_of(new) == ids_of(old)
    assert all(h["answers"]["color"] == "red" for h in json.loads(new)[:3])
    # Mixed with an image: the word's condition is named in its value.
    code, out, _ = query(
        workspace, capsys, "--id", "4", "-c", "pattern", "--text", "color=red", "--json"
    )
    assert code == 0 and len(json.loads(out)) == 10


def test_distinct_says_how_many_it_hid(workspace, capsys):
    # Different pictures of one synthetic set are alike at 0.5: some are hidden.
    code, _, err = query(workspace, capsys, "--id", "5", "-c", "color", "--distinct", "0.5")
    assert code == 0
    hidden = re.search(r"(\d+) copies of better-ranked results hidden \(--distinct 0.5\)", err)
    assert hidden and int(hidden.group(1)) > 0, err
    # At 1 only identical pictures are copies: none here, and it says so.
    code, _, err = query(workspace, capsys, "--id", "5", "-c", "color", "--distinct", "1")
    assert code == 0
    assert "0 copies of better-ranked results hidden (--distinct 1)" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--example", "shape={a}"], 5, "no index for condition 'shape'"),
        (["--not-id", "color=3"], 2, "at least one positive"),
        (["--word", "color=chartreuse"], 2, "no image's answer under 'color' is 'chartreuse'"),
        (["--example-id", "color=3", "--not-id", "color=3"], 2, "conflicting terms"),
        (["--text", "color=red", "--example-id", "color=3"], 2, "conflicting terms"),
        (["--text", "color=red", "--text", "color=blue"], 2, "conflicting terms"),
        (["--example", "color"], 2, "--example takes CONDITION=VALUE"),
        (["--example-id", "color=x"], 2, "a non-negative integer"),
        (["--example", "color=missing.png"], 3, "image not found"),
        (["--id", "3", "-c", "color", "--text", "red"], 2, "write --text CONDITION=WORD"),
        (["--id", "3", "-c", "color", "--distinct", "2"], 2, "similarity in (-1, 1]"),
        (["--example-id", "color=999"], 5, "no id 999"),
    ],
)
def test_bad_composed_queries_are_one_line(workspace, capsys, args, code, message):
    args = [a.format(a=image(workspace, 1)) for a in args]
    got, _, err = query(workspace, capsys, *args)
    assert got == code, err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_groups_are_named_by_their_most_common_answer(workspace, capsys):
    from collections import Counter

    from dior_search.search.groups import MIN_ANSWER_SHARE, group_images

    searcher = Searcher.open(workspace / "indexes", collection="synthetic")
    reader = searcher.reader(searcher.condition(searcher.collection("synthetic"), "color"))
    answers = dict(zip(reader.ids.tolist(), reader.column("answer"), strict=True))
    found = group_images(searcher, "synthetic", "color")
    common = [a for a, c in Counter(answers.values()).items() if c >= MIN_ANSWER_SHARE * N]
    assert found.k_chosen_by == "answers" and found.k == max(2, len(common))
    assert sum(g.size for g in found.groups) == N
    assert sorted(i for g in found.groups for i in g.ids) == sorted(answers)
    for group in found.groups:
        counted = Counter(answers[i] for i in group.ids)
        top = max(counted.values())
        assert group.named_by == "answer" and counted[group.name] == top
        assert group.answer_share == pytest.approx(top / group.size)
    code, out, _ = groups(workspace, capsys, "-c", "pattern", "--k", "3", "--json")
    body = json.loads(out)
    assert code == 0 and body["k"] == 3 and body["k_chosen_by"] == "given"
    assert all(len(g["members"]) <= 5 for g in body["groups"])
    code, out, _ = groups(workspace, capsys, "-c", "color")
    assert code == 0 and "k by answers" in out


def groups(root, capsys, *args):
    code = main(["groups", "--dataset", "synthetic", "--indexes", str(root / "indexes"), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-c", "color", "--k", "0"], 2, "--k must be between 1 and"),
        (["-c", "shape"], 5, "no index for condition 'shape'"),
        ([], 2, "--condition is required"),
    ],
)
def test_bad_groups_are_one_line(workspace, capsys, args, code, message):
    got, _, err = groups(workspace, capsys, *args)
    assert got == code and len(err.strip().splitlines()) == 1 and message in err, err
