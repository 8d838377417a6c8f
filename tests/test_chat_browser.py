"""Drives the real chat UI in headless Chromium (Debian's `chromium` package) through Playwright.

Skipped when chromium or the playwright package is missing; CI installs both (`.ci/run`, the `test` extra).
Playwright's own browser download is not used: it launches the system chromium.
"""

import json
import shutil

import pytest

from kit import chat, sft
from kit.recipe import load_recipe
from tests.test_chat import add_student

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)"),
]

# Every text change in the answer columns and their stats lines, recorded in the page as it happens.
RECORD_CHANGES = """() => {
  window.kitSeen = [];
  const record = () => {
    const columns = [...document.querySelectorAll('[id^="answer-"]')].map(e => e.innerText.length);
    const stats = [...document.querySelectorAll('[id^="stats-"]')].map(e => e.innerText.trim());
    window.kitSeen.push({columns, stats});
  };
  new MutationObserver(record).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def visible(text: str) -> str:
    """What a page shows of a tiny random model's bytes: control characters and spacing differ."""
    return "".join(ch for ch in text if ch.isprintable() and not ch.isspace())


def test_browser_streams_answers_votes_and_saves_preferences(tiny_recipe, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    recipe = load_recipe(tiny_recipe(chat={"blind": True, "max_new_tokens": 48}), ["sft.max_steps=2"])
    sft.run(recipe)
    add_student(recipe)
    app = chat.run(recipe, block=False)
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(60_000)
            page.goto(app.local_url)
            # Blind mode: three columns labelled A, B, C (which model is where is random).
            page.wait_for_function("document.querySelectorAll('[id^=\"answer-\"]').length === 3")
            page.locator("#vote-0").get_by_text("A is best").wait_for()
            assert [page.locator(f"#vote-{i}").inner_text() for i in range(3)] == ["A is best", "B is best", "C is best"]
            column_labels = [page.locator(f"#answer-{i} [data-testid=block-label]").inner_text().strip() for i in range(3)]
            assert column_labels == ["A", "B", "C"]

            page.evaluate(RECORD_CHANGES)
            page.locator("#message textarea").fill("where is my order")
            page.locator("#send").click()
            page.wait_for_function(
                "[...document.querySelectorAll('[id^=\"stats-\"]')].every(e => e.innerText.includes('tokens/s'))"
            )
            page.locator("#vote-0:not([disabled])").wait_for()
            seen = page.evaluate("window.kitSeen")
            answers = [page.locator(f"#answer-{i} .bot").last.inner_text().strip() for i in range(3)]
            assert all(answers), answers
            # Streamed: the page showed "generating..." and partial answers before the final ones.
            assert any("generating..." in line for state in seen for line in state["stats"])
            lengths_a = sorted({state["columns"][0] for state in seen})
            print(f"\ncolumn A rendered {len(lengths_a)} distinct lengths while streaming: {lengths_a}")

            page.locator("#vote-0").click()  # "A is best"
            page.locator("#vote-status").get_by_text("A chosen as best").wait_for()
            page.wait_for_function("document.querySelector('#tally').innerText.includes('1 vote so far')")
            assert "best answer:" not in page.locator("#tally").inner_text()  # would tell who A is
            page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
            shutil.copy(tmp_path / "chat.png", "/tmp/chat.png")

            # A new conversation reveals who was who.
            page.locator("#new").click()
            reveal = page.locator("#vote-status").get_by_text("Last conversation:")
            reveal.wait_for()
            model_a = reveal.inner_text().split("A = ", 1)[1].split(",", 1)[0].strip()
            page.locator("#tally").get_by_text(f"{model_a} 1").wait_for()  # counts return with the names
            browser.close()
    finally:
        app.close()

    path = recipe.run_dir / "feedback" / "preferences.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert 1 <= len(rows) <= 2  # one row per other model, minus any identical answer
    for row in rows:
        assert row["prompt"][-1] == {"role": "user", "content": "where is my order"}
        assert visible(row["chosen"][0]["content"]) == visible(answers[0])
        assert visible(row["rejected"][0]["content"]) in [visible(a) for a in answers[1:]]
        assert row["metadata"]["chosen_model"] == model_a and row["metadata"]["blind"] is True
    assert {row["metadata"]["rejected_model"] for row in rows} <= {"base", "tuned", "student"} - {model_a}
