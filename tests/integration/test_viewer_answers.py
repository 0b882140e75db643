"""The page leads with the answer, checked in a real browser (Debian's chromium, headless) over the showcase
folder (a sweep, a technique study, a failed run, a run stopped at its target, a running run): the first
columns are the outcome, no setting the same in every run is a column, sweep jobs are named by their
overrides, no empty panel is drawn, the analysis opens with its conclusion, the Study tab shows the card,
and a running run's row follows its new lines without a reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanogpt_runner.viewer.showcase import write_showcase

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 120_000  # generous: a loaded CI machine; nothing here asserts on time
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-extensions",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium "
                                                              "(.ci/run installs it: apt-get install chromium)")

HEADERS = "(table) => [...table.querySelectorAll('thead th')].map(th => th.innerText.trim()).filter(Boolean)"


@pytest.fixture
def page(tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    from nanogpt_runner.viewer.app import free_port, serve

    live = write_showcase(tmp_path / "runs")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    demo, url = serve(tmp_path / "runs", port=free_port("127.0.0.1", 7930), refresh_s=1.0, token=None)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            yield page, live
            browser.close()
    finally:
        live.close()
        demo.close()


def test_the_page_leads_with_the_answer(page):
    from playwright.sync_api import expect

    page, live = page
    expect.set_options(timeout=WAIT_MS)
    table = page.locator("#runs-table")
    expect(table.get_by_text("lr=3e-3 · accum=4", exact=True).first).to_be_visible()  # a sweep job by its overrides
    headers = table.evaluate(HEADERS)
    assert headers[:4] == ["name", "status", "best val loss", "last train loss"], headers
    assert "model.n_layer" not in headers and "data.path" not in headers  # the same in every run: not shown
    assert "optimizer.lr" in headers and "precision" not in headers  # swept; every run used fp32
    expect(table.locator("[role=row]").filter(has_text="failed: non-finite loss at step 2")).to_have_count(1)
    expect(table.locator("[role=row]").filter(has_text="stopped: target 1.95 reached at step 120")).to_have_count(1)
    assert table.locator("span[title]").first.get_attribute("title")  # 4 digits shown, the full value on hover

    # A running run's row follows its new lines, no reload.
    live.log("train", step=150, tokens=150 * 384, loss=1.0)
    expect(table.locator("[role=row]").filter(has_text="running").filter(has_text="150")).to_have_count(1)

    # Compare: the conclusion first, no empty chart (no target: no time-to-target), whole legends.
    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#analysis")).to_contain_text("Conclusion.")
    expect(page.locator("#plot-loss canvas, #plot-loss svg.marks").first).to_be_visible()
    expect(page.locator("#bar-to_target")).to_be_hidden()
    labels = page.locator("#bar-time .role-legend-label text")
    expect(labels.first).to_be_visible()
    legend = labels.all_text_contents()
    assert "failed-lr1 ✗ diverged" in legend and not any(t.endswith("…") for t in legend), legend  # whole names

    # The Study tab shows the card: one sentence per arm.
    page.get_by_role("tab", name="Study").click()
    card = page.locator("#study-card")
    expect(card).to_contain_text("recompute: 0.70x memory, 0.75x speed")
    expect(card).to_contain_text("accum2:")
    expect(page.locator("#study-table")).to_be_visible()
