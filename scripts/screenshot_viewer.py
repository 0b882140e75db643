"""Photograph the viewer's pages the docs show: docs/viewer-runs.png, viewer-compare.png, viewer-study.png.

    python scripts/screenshot_viewer.py [--runs-dir DIR] [--out-dir docs]

By default over the showcase folder (nanogpt_runner.viewer.showcase: a learning-rate x accumulation sweep,
a technique study, a failed run, one stopped at its target and a running one), written to a temporary folder;
with --runs-dir, over the runs already there. Needs Debian's chromium at /usr/bin/chromium. Rerun it when
the page changes and commit the PNGs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-extensions"]
COMPARED = ["sweep/0", "sweep/1", "sweep/2", "sweep/3", "failed-lr1"]  # what the Compare picture compares


def photograph(root: Path, out_dir: Path, compared: list[str]) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    from nanogpt_runner.viewer.app import free_port, serve

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    token = secrets.token_urlsafe(16)
    demo, url = serve(root, port=free_port("127.0.0.1", 7880), refresh_s=2.0, token=token)
    shots = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)
            page.goto(f"{url}?token={token}")  # the printed URL: the cookie it sets serves the page's requests
            expect(page.locator("#runs-table [role=row]").nth(2)).to_be_visible()
            shots.append(_shot(page, out_dir / "viewer-runs.png"))
            if compared:
                _select(page, compared)
            page.get_by_role("tab", name="Compare").click()
            expect(page.locator("#analysis")).to_contain_text("Conclusion.")
            shots.append(_shot(page, out_dir / "viewer-compare.png"))
            page.get_by_role("tab", name="Study").click()
            expect(page.locator("#study-card")).to_contain_text("study")
            shots.append(_shot(page, out_dir / "viewer-study.png"))
            browser.close()
    finally:
        demo.close()
    return shots


def _select(page, run_ids: list[str]) -> None:
    """Make the comparison exactly these runs: clear the selection, then click their rows."""
    page.locator("#selection").get_by_role("button", name="Clear").first.click()
    for run_id in run_ids:
        page.locator("#runs-table [role=row]").filter(has_text=run_id).first.locator("[role=gridcell]").first.click()
        page.wait_for_timeout(2000)  # the page's update runs between clicks


def _shot(page, path: Path) -> Path:
    page.wait_for_timeout(3000)  # let the plots finish drawing
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=None, help="photograph these runs (default: the showcase)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, compared = args.runs_dir, []
        if root is None:
            from nanogpt_runner.viewer.showcase import write_showcase

            root, compared = Path(tmp) / "runs", COMPARED
            write_showcase(root).close()
        elif not any(root.rglob("run.json")):
            parser.error(f"{root} holds no runs (no run.json): pass the folder nanogpt-run wrote them to")
        for path in photograph(root, args.out_dir, compared):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
