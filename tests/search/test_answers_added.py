"""Indexes without answers: built with --no-answers, at another layer, or before answers
existed. They open and search as before; text queries and facets say how to add answers, and
`index --answers` adds them by embedding the images again."""

import json
from contextlib import redirect_stdout
from io import StringIO

import pytest

from dior_search.cli import main
from dior_search.data.synthetic import make_item
from dior_search.store.manifest import MANIFEST, content_checksum
from dior_search.store.reader import IndexReader

CONDITION = "object color"


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for number in range(12):
        make_item(0, "test", number)[1].save(images / f"{number:02d}.png")
    return images


def run(folder, indexes, verb, *args) -> tuple[int, str]:
    out = StringIO()
    with redirect_stdout(out):
        code = main([verb, "--images", str(folder), "--indexes", str(indexes), *args])
    return code, out.getvalue()


def index_dir(indexes):
    return next(indexes.glob("*/*/object-color*"))


def written_before_answers(directory):
    """The manifest as dior-search wrote it before answers existed: no `answers` field."""
    data = json.loads((directory / MANIFEST).read_text())
    del data["answers"]
    data["checksum"] = content_checksum(data)
    (directory / MANIFEST).write_text(json.dumps(data))


@pytest.mark.slow
def test_an_old_index_searches_and_gets_answers_when_asked(folder, tmp_path, capsys):
    indexes = tmp_path / "indexes"
    model = ["--model", "tiny", "--device", "cpu"]
    assert run(folder, indexes, "index", "-c", CONDITION, "--no-answers", *model)[0] == 0
    directory = index_dir(indexes)
    assert IndexReader(directory).manifest.answers == "off"
    written_before_answers(directory)
    reader = IndexReader(directory)
    assert reader.manifest.answers == "off" and "answer" not in reader.column_names()

    code, before = run(folder, indexes, "query", "--id", "4", "-c", CONDITION, "--json")
    assert code == 0 and len(json.loads(before)) == 10
    capsys.readouterr()
    for verb, args in (
        ("query", ["--text", "red", "-c", CONDITION]),
        ("facets", ["-c", CONDITION]),
    ):
        assert run(folder, indexes, verb, *args)[0] == 5  # README: index error
        err = capsys.readouterr().err.strip()
        hint = f"dior-search index --images {folder} -c {CONDITION} --answers"
        assert len(err.splitlines()) == 1 and "stores no answers" in err and hint in err, err
    code, _ = run(
        folder, indexes, "query", "--id", "4", "-c", CONDITION, "--where", "object color=red"
    )
    assert code == 5

    # A plain re-run leaves it as it is; --answers embeds every image again, with answers.
    assert run(folder, indexes, "index", "-c", CONDITION, *model)[0] == 0
    assert IndexReader(directory).manifest.answers == "off"
    code, summary = run(folder, indexes, "index", "-c", CONDITION, "--answers", *model)
    assert code == 0 and "12 changed" in summary
    upgraded = IndexReader(directory)
    assert upgraded.manifest.answers == "stored" and len(upgraded) == 12 and upgraded.deleted == 0
    fresh_indexes = tmp_path / "fresh"
    assert run(folder, fresh_indexes, "index", "-c", CONDITION, *model)[0] == 0
    fresh = IndexReader(index_dir(fresh_indexes))
    assert dict(zip(upgraded.paths(), upgraded.column("answer"), strict=True)) == dict(
        zip(fresh.paths(), fresh.column("answer"), strict=True)
    )
    code, out = run(folder, indexes, "query", "--text", "red", "-c", CONDITION, "--json", "-k", "3")
    assert code == 0 and len(json.loads(out)) == 3
    # The same images under the image query, whatever their new ids.
    code, after = run(
        folder, indexes, "query", "--id", str(upgraded.ids[4]), "-c", CONDITION, "--json"
    )
    assert [h["path"] for h in json.loads(after)] == [h["path"] for h in json.loads(before)]


@pytest.mark.slow
def test_a_layer_other_than_the_last_has_no_answers(folder, tmp_path, capsys):
    indexes = tmp_path / "indexes"
    model = ["--model", "tiny", "--device", "cpu", "--layer", "2"]
    assert run(folder, indexes, "index", "-c", CONDITION, *model)[0] == 0
    assert IndexReader(index_dir(indexes)).manifest.answers == "not-last-layer"
    capsys.readouterr()
    assert run(folder, indexes, "query", "--text", "red", "-c", CONDITION)[0] == 5
    assert "answers come with the last layer's only" in capsys.readouterr().err
    assert run(folder, indexes, "index", "-c", CONDITION, "--answers", *model)[0] == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: --answers: the index of 'object color' cannot have answers")
