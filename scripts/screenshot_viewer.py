"""Train a small real sweep and photograph the dashboard comparing it: docs/viewer-screenshot.png.

    python scripts/screenshot_viewer.py [--data FILE] [--runs-dir DIR] [--out docs/viewer-screenshot.png]

The sweep is ``nanogpt-run -m`` over activation recomputation x gradient accumulation on the tiny
model (four jobs), the question the viewer exists to answer. With --runs-dir pointing at a folder
that already holds runs, nothing is trained. Needs Debian's chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def train_sweep(root: Path, data: Path, cache: Path) -> None:
    command = [str(Path(sys.executable).with_name("nanogpt-run")), "-m", "model=tiny", "train.max_iters=300",
               "train.eval_interval=50", "train.eval_iters=4", "train.log_interval=10", "train.precision=fp32",
               "optimizer.warmup_iters=20", "train.recompute=false,true", "train.grad_accum=1,4",
               f"data.path={data}", f"data.cache_dir={cache}", f"run.root={root}", "run.progress=false"]
    subprocess.run(command, check=True)


def photograph(root: Path, out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from nanogpt_runner.viewer.app import free_port, serve

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    token = secrets.token_urlsafe(16)
    demo, url = serve(root, port=free_port("127.0.0.1", 7880), refresh_s=2.0, token=token)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                                 args=["--no-sandbox", "--disable-gpu",
                                                       "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}?token={token}")  # the printed URL: the cookie it sets serves the page's requests
            page.get_by_role("tab", name="Compare").click()
            smoothing = page.get_by_label("number input for EMA smoothing (train curves)")
            smoothing.fill("0.6")
            smoothing.press("Enter")
            expect(page.locator("#analysis")).to_contain_text("Across the selected runs", timeout=120_000)
            page.wait_for_timeout(3000)  # let the plots finish drawing
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        demo.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_TEXT, help="a text file to train on")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="where the sweep goes (default: a temporary folder); runs already there are reused")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "viewer-screenshot.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.runs_dir or Path(tmp) / "outputs"
        if not any(root.rglob("run.json")):
            if not args.data.exists():
                parser.error(f"{args.data} does not exist: pass --data with a text file to train on")
            train_sweep(root, args.data, Path(tmp) / "cache")
        photograph(root, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
