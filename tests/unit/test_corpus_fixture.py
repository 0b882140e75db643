"""The suite's corpus is the tiny-shakespeare shipped in the package: no test needs a folder beside the checkout
(../shared), a download, or a generated stand-in whose characters differ."""

from __future__ import annotations

from pathlib import Path

import nanogpt_runner

TESTS = Path(__file__).resolve().parents[1]
OUTSIDE_THE_CHECKOUT = ("../shared", '/ "shared"')


def test_the_suites_corpus_is_the_packaged_tiny_shakespeare(corpus_path):
    assert corpus_path.resolve().is_relative_to(Path(nanogpt_runner.__file__).resolve().parent)
    text = corpus_path.read_text(encoding="utf-8")
    assert len(text) == 1_115_394 and len(set(text)) == 65 and text.startswith("First Citizen:")


def test_no_test_reaches_outside_the_checkout_for_data():
    for path in TESTS.rglob("*.py"):
        if path.resolve() == Path(__file__).resolve():
            continue
        source = path.read_text(encoding="utf-8")
        assert not [needle for needle in OUTSIDE_THE_CHECKOUT if needle in source], path
