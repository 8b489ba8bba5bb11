"""The web page in headless Chromium: upload an image, switch the condition, read the grid.

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


def test_upload_switch_condition_and_see_the_grid_follow(browser, live_url, tmp_path):
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

    # Polled from here: wait_for_function's in-page polling evaluates strings, which the
    # page's Content-Security-Policy (no 'unsafe-eval') refuses.
    loaded = (
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth)"
    )
    deadline = time.monotonic() + 30
    while not page.evaluate(loaded):
        assert time.monotonic() < deadline, "thumbnails did not load"
        time.sleep(0.05)
    shot = Path(os.environ.get("DIOR_SCREENSHOT", tmp_path / "page.png"))
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # Both conditions at once: every card shows its two scores.
    page.check("#combine")
    page.click("#conditions button[data-condition=background]")
    page.wait_for_selector("#results[data-state=ready][data-conditions='color+background'] .hit")
    both = zip(top_labels(page, "color"), top_labels(page, "background"), strict=True)
    assert sum(c == item.color and b == item.background for c, b in both) >= 3
    assert len(uploads) == 1
    page.close()
