"""End to end in a real browser (Debian's chromium, headless): the page shows the runs and their plots,
rows select runs, and the Launch tab starts real nanogpt-run processes that show up running, stop on
request (interrupted) and complete; a run has one colour in every plot and bar, and can be tagged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nanogpt_runner.viewer.synthetic import config, write_run

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 120_000  # generous: a loaded CI machine; nothing here asserts on time

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium "
                                                              "(.ci/run installs it: apt-get install chromium)")


@pytest.fixture
def page_url(tmp_path, monkeypatch, corpus_path):
    from nanogpt_runner.viewer.app import free_port, serve

    root = tmp_path / "outputs"
    write_run(root / "base", 80, cfg=config(), mem_gb=1.0, start_time=1).close()
    write_run(root / "recompute", 80, cfg=config(**{"train.recompute": True}), mem_gb=0.7, start_time=2).close()
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where runs started from the page cache data
    demo, url = serve(root, port=free_port("127.0.0.1", 7890), refresh_s=1.0, token="browser-token",
                      data_dirs=(corpus_path.parent,))  # the page trains on files from --data-dir folders only
    yield f"{url}?token=browser-token"  # as printed: the first visit sets the cookie the page's requests carry
    demo.close()


@pytest.fixture
def page(page_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        page.goto(page_url)
        yield page
        browser.close()


def row(page, *texts: str):
    locator = page.locator("#runs-table [role=row]")
    for text in texts:
        locator = locator.filter(has_text=text)
    return locator


def launch(page, name: str, extra: str) -> None:
    page.get_by_role("tab", name="Launch").click()
    page.get_by_label("run name").fill(name)
    page.locator("#extra-overrides textarea").fill(extra)
    page.locator("#launch-button").click()


def test_dashboard_shows_compares_and_launches_runs(page, corpus_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    # The runs table and the default selection (the newest runs).
    expect(row(page, "recompute", "completed")).to_have_count(1)
    expect(page.locator("#selection .token")).to_have_count(2)

    # Compare: the plots are drawn and the analysis names what recomputation saved.
    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#plot-loss canvas, #plot-loss svg.marks").first).to_be_visible()
    expect(page.locator("#analysis")).to_contain_text("train.recompute False → True (recompute vs base)")

    # A click on a row takes that run out of the comparison.
    page.get_by_role("tab", name="Runs").click()
    row(page, "base").first.locator("[role=gridcell]").first.click()
    expect(page.locator("#selection .token")).to_have_count(1)

    # A launch with a setting outside the page's allowlist is refused in the page, and nothing starts.
    launch(page, "refused", "-m hydra/launcher=basic")
    expect(page.locator("#launch-status")).to_contain_text("Not started")
    expect(page.locator("#launch-status")).to_contain_text("'-m' is not a setting the page may change")

    tiny = (f"model=tiny train.eval_iters=2 train.batch_size=4 train.precision=fp32 optimizer.warmup_iters=5 "
            f"data.path={corpus_path}")

    # A long run appears as running; Stop interrupts it (the runner checkpoints and says so in run.json).
    launch(page, "e2e-long", f"{tiny} train.max_iters=100000 train.eval_interval=1000 train.log_interval=10")
    expect(page.locator("#launch-status")).to_contain_text("Started pid")
    page.get_by_role("tab", name="Runs").click()
    expect(row(page, "e2e-long", "running")).to_have_count(1)
    page.get_by_role("tab", name="Launch").click()
    page.get_by_role("button", name="Stop (SIGTERM)").click()
    expect(page.locator("#launch-status")).to_contain_text("sent SIGTERM")
    page.get_by_role("tab", name="Runs").click()
    expect(row(page, "e2e-long", "interrupted")).to_have_count(1)

    # A short run completes.
    launch(page, "e2e-short", f"{tiny} train.max_iters=20 train.eval_interval=10 train.log_interval=5")
    expect(page.locator("#launch-status")).to_contain_text("Started pid")
    page.get_by_role("tab", name="Runs").click()
    expect(row(page, "e2e-short", "completed")).to_have_count(1)

    # Sample from its checkpoint (nanogpt-sample in a child process: the viewer stays torch-free).
    page.get_by_role("tab", name="Sample").click()
    page.locator("#sample-run input").click()
    page.get_by_role("option", name="e2e-short", exact=False).first.click()
    page.get_by_label("prompt").fill("ROMEO:")
    page.get_by_label("new tokens").fill("20")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#sample-out textarea")).to_have_value(re.compile(r"^ROMEO:.{20}", re.DOTALL))


LEGEND_COLOURS = """(plot) => {
    const labels = [...plot.querySelectorAll('.role-legend-label text')].map(t => t.textContent);
    const symbols = [...plot.querySelectorAll('.role-legend-symbol path')].map(
        p => [p.getAttribute('stroke'), p.getAttribute('fill')].find(c => c && c !== 'transparent' && c !== 'none'));
    return Object.fromEntries(labels.map((label, i) => [label, symbols[i]]));
}"""


def test_a_run_has_the_same_colour_in_every_plot_and_can_be_tagged(page):
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    page.get_by_role("tab", name="Compare").click()
    legends = {}
    for plot in ("#plot-loss", "#plot-val_loss", "#plot-lr", "#bar-time"):
        page.locator(plot).scroll_into_view_if_needed()
        expect(page.locator(f"{plot} .role-legend-label text")).to_have_count(2)
        legends[plot] = page.locator(plot).evaluate(LEGEND_COLOURS)
    assert set(legends["#plot-loss"]) == {"base", "recompute"}
    assert all(colour.startswith("#") for colour in legends["#plot-loss"].values())
    assert legends["#plot-loss"]["base"] != legends["#plot-loss"]["recompute"]
    assert all(legend == legends["#plot-loss"] for legend in legends.values()), legends

    # Tag a run from the page: the sidecar is written and the tag filters the table.
    page.get_by_role("tab", name="Runs").click()
    page.get_by_text("Manage a run: tags, note, archive, delete").click()
    page.locator("#manage-run input").click()
    page.get_by_role("option", name="recompute", exact=False).first.click()
    # Type only once the run's current tags are loaded: the load fills the boxes, overwriting what was typed.
    expect(page.locator("#manage-status")).to_contain_text("Editing recompute")
    page.locator("#manage-tags input").fill("memory-saver")
    page.locator("#manage-save").click()
    expect(page.locator("#manage-status")).to_contain_text("Saved.")
    expect(row(page, "recompute", "memory-saver")).to_have_count(1)
