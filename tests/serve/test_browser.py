"""The web page in headless Chromium: upload an image, switch the condition, read the grid; ask
in words and filter by the model's answers.

Needs the Playwright package and a system Chromium (Debian's `chromium`); Playwright's own
browser downloads are never used. Without them the test is skipped, unless
DIOR_REQUIRE_BROWSER=1 (as in CI), where it fails instead.
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from dior_search.data.synthetic import make_item

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("DIOR_CHROMIUM"), "chromium", "/usr/bin/chromium"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable, missing = None, "the playwright package is not installed"
    else:
        missing = "no chromium on PATH (apt-get install chromium)"
    if executable is None:
        if os.environ.get("DIOR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DIOR_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def top_labels(page, condition: str, n: int = 10) -> list[str]:
    cards = page.locator("#results .hit").all()[:n]
    return [json.loads(card.get_attribute("data-labels") or "{}")[condition] for card in cards]


def wait_until(page, script: str, what: str) -> None:
    """Poll `script` in the page (wait_for_function evaluates strings, which the page's
    Content-Security-Policy, no 'unsafe-eval', refuses)."""
    deadline = time.monotonic() + 30
    while not page.evaluate(script):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def chip(page, condition: str, answer: str):
    return page.locator(f".chips[data-facets={condition}] .chip[data-answer={answer}]")


def test_upload_switch_condition_and_see_the_grid_follow(browser, live_url, tmp_path, served):
    item, image = make_item(0, "extra", 11)
    query_file = tmp_path / "query.png"
    image.save(query_file)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.url) if "/api/uploads" in r.url else None)
    page.goto(live_url)
    page.wait_for_selector("body[data-ready=true]")

    page.set_input_files("#file", str(query_file))
    page.wait_for_selector("#results[data-state=ready][data-conditions=background] .hit")
    by_background = top_labels(page, "background")
    assert sum(label == item.background for label in by_background) >= 8, by_background
    ids_before = [card.get_attribute("data-id") for card in page.locator("#results .hit").all()]

    page.click("#conditions button[data-condition=color]")
    page.wait_for_selector("#results[data-state=ready][data-conditions=color] .hit")
    by_color = top_labels(page, "color")
    assert sum(label == item.color for label in by_color) >= 8, by_color
    ids_after = [card.get_attribute("data-id") for card in page.locator("#results .hit").all()]
    assert ids_after != ids_before
    assert len(uploads) == 1, uploads  # re-ranked without uploading again

    # Both conditions at once: every card shows its two scores.
    page.check("#combine")
    page.click("#conditions button[data-condition=background]")
    page.wait_for_selector("#results[data-state=ready][data-conditions='color+background'] .hit")
    both = zip(top_labels(page, "color"), top_labels(page, "background"), strict=True)
    assert sum(c == item.color and b == item.background for c, b in both) >= 3
    assert len(uploads) == 1

    # The chips count the model's answers, as the facets API does.
    wait_until(page, "document.body.dataset.facets", "facets did not load")
    counts = dict(served.service.searcher.facets("synthetic", "color").counts)
    word = "red" if item.color != "red" else "blue"
    assert chip(page, "color", word).locator(".count").inner_text() == str(counts[word])

    # A word under color: the images the model calls that colour first, by background.
    page.fill("input[data-word=color]", word)
    page.press("input[data-word=color]", "Enter")
    page.wait_for_selector("#results[data-state=ready][data-conditions='background+color'] .hit")
    assert set(top_labels(page, "color")) == {word}

    # A background chip filters; the word still ranks within what passes.
    chip(page, "background", item.background).click()
    selector = f"#results[data-state=ready][data-where='background={item.background}'] .hit"
    page.wait_for_selector(selector)
    backgrounds = top_labels(page, "background", 20)
    assert set(backgrounds) == {item.background}
    colors = top_labels(page, "color", 20)
    asked = [color == word for color in colors]
    assert asked[0] and asked == sorted(asked, reverse=True), colors  # word first, then others
    assert "on" in (chip(page, "background", item.background).get_attribute("class") or "")
    assert len(uploads) == 1

    loaded = (
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth)"
    )
    wait_until(page, loaded, "thumbnails did not load")
    shot = Path(os.environ.get("DIOR_SCREENSHOT", tmp_path / "page.png"))
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # Clicked again, the chip clears its filter.
    chip(page, "background", item.background).click()
    page.wait_for_selector("#results[data-state=ready][data-where=''] .hit")
    assert "on" not in (chip(page, "background", item.background).get_attribute("class") or "")
    assert set(top_labels(page, "color")) == {word}
    page.close()


def test_per_condition_examples_feedback_marks_and_albums(browser, live_url, tmp_path, served):
    """The colour of one image and the background of another, each dropped on its condition;
    feedback marks re-rank in one request without a model call; albums open as result lists."""
    colour_item, colour_image = make_item(1, "extra", 21)
    background_item, background_image = make_item(2, "extra", 22)
    colour_file, background_file = tmp_path / "colour.png", tmp_path / "background.png"
    colour_image.save(colour_file)
    background_image.save(background_file)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    queries: list[str] = []
    page.on(
        "request", lambda r: queries.append(r.post_data or "") if "/api/query" in r.url else None
    )
    page.goto(live_url)
    page.wait_for_selector("body[data-ready=true]")
    # Word boxes suggest an answer of their condition, never its name.
    wait_until(page, "document.body.dataset.facets", "facets did not load")
    placeholder = page.get_attribute("input[data-word=color]", "placeholder") or ""
    assert placeholder.startswith("a word, e.g. ") and "color" not in placeholder

    page.check("#combine")
    page.click("#conditions button[data-condition=color]")  # background is the first one on
    page.click("#conditions .slot[data-slot=color]")
    page.set_input_files("#slot-file", str(colour_file))
    page.wait_for_selector("#terms .term[data-term='example:color']")
    page.click("#conditions .slot[data-slot=background]")
    page.set_input_files("#slot-file", str(background_file))
    page.wait_for_selector("#terms .term[data-term='example:background']")
    page.wait_for_selector("#results[data-state=ready][data-conditions='background+color'] .hit")
    both = zip(top_labels(page, "color"), top_labels(page, "background"), strict=True)
    wanted = (colour_item.color, background_item.background)
    assert sum((c, b) == wanted for c, b in both) >= 3
    body = json.loads(queries[-1])
    assert {(t["condition"], "upload" in t) for t in body["terms"]} == {
        ("color", True),
        ("background", True),
    }
    # File names are on the cards, not only in a tooltip.
    first = page.locator("#results .hit").first
    assert first.locator(".name").inner_text().endswith(".png")

    # "Less like this" on the top card: one request of id terms, the card drops out of the top.
    top_id = first.get_attribute("data-id")
    sent = len(queries)
    first.locator(".mark-less").click()
    page.wait_for_selector(f"#terms .term.negative[data-term='mark:{top_id}']")
    page.wait_for_selector("#results[data-state=ready] .hit")
    wait_until(page, f"document.querySelector('#results .hit').dataset.id !== '{top_id}'", "rerank")
    assert len(queries) == sent + 1
    marked = [t for t in json.loads(queries[-1])["terms"] if t.get("id") == int(top_id)]
    assert {t["polarity"] for t in marked} == {"negative"} and len(marked) == 2
    # Removing the mark brings the ranking back.
    page.click(f"#terms .term[data-term='mark:{top_id}'] button")
    wait_until(page, f"document.querySelector('#results .hit').dataset.id === '{top_id}'", "undo")
    assert page.locator("#terms .term.negative").count() == 0
    # "Less like this" under one condition only: one negative term, under that condition.
    second = page.locator("#results .hit").nth(1)
    second_id = second.get_attribute("data-id")
    second.locator(".mark-less-one[data-condition=color]").click()
    page.wait_for_selector(f"#terms .term.negative[data-term='mark:{second_id}:color']")
    wait_until(page, "!!document.querySelector('#results[data-state=ready] .hit')", "rerank")
    marked = [t for t in json.loads(queries[-1])["terms"] if t.get("id") == int(second_id)]
    assert [(t["condition"], t["polarity"]) for t in marked] == [("color", "negative")]
    page.click(f"#terms .term[data-term='mark:{second_id}:color'] button")
    page.wait_for_selector("#results[data-state=ready] .hit")

    # Albums: the groups of the first selected condition, each opening its members.
    page.click("#groups-button")
    page.wait_for_selector("#albums .album")
    counts = dict(served.service.searcher.facets("synthetic", "background").counts)
    album = page.locator("#albums .album").first
    name = album.get_attribute("data-group")
    assert name in counts
    album.click()
    page.wait_for_selector(f"#results[data-album='{name}'] .hit")
    answers = [
        json.loads(c.get_attribute("data-labels") or "{}")
        for c in page.locator("#results .hit").all()
    ]
    assert len(answers) > 0
    page.close()


def test_the_header_follows_a_word_search(browser, live_url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(live_url)
    page.wait_for_selector("body[data-ready=true]")
    page.fill("input[data-word=color]", "red")
    page.press("input[data-word=color]", "Enter")
    page.wait_for_selector("#results[data-state=ready][data-conditions=color] .hit")
    assert "on" in (page.get_attribute("#conditions button[data-condition=color]", "class") or "")
    page.close()
