"""Evaluation's share of a run: ``eval_iters`` counts global batches (``eval_iters`` x ``grad_accum`` micro-batches
per replica, forward only, for each of 2 splits), so a preset that copies nanoGPT's micro-batch count with a large
``grad_accum`` evaluates 40 times as much as nanoGPT (gpt2_owt spent about 13% of its time evaluating).

The default and every preset keep evaluation at or under 3% of a run's compute, except the presets that copy one of
nanoGPT's own runs on purpose (their comment says so, with the share)."""

from __future__ import annotations

import pytest
from conftest import compose_config

from nanogpt_runner.config.schema import CONF_DIR

MAX_SHARE = 0.03
FORWARD_SHARE = 1 / 3  # a forward pass is about a third of a training micro-step (forward + backward)
# preset -> the preset file whose comment says it copies nanoGPT's evaluation (and what that costs)
NANOGPT_COPIES = {"baby_cpu": "baby_cpu", "baby_cpu_seeds": "baby_cpu", "shakespeare_char": "shakespeare_char",
                  "finetune_shakespeare": "finetune_shakespeare"}
PRESETS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))


def eval_share(t) -> float:
    """The fraction of a run's compute spent evaluating, counted in micro-batches per rank: each evaluation (at step
    0, every ``eval_interval`` steps and at the end) runs 2 splits x ``eval_iters`` x ``grad_accum`` forward passes,
    training ``max_iters`` x ``grad_accum`` forward and backward passes."""
    evaluations = 1 + t.max_iters // t.eval_interval + (t.max_iters % t.eval_interval != 0)
    evaluating = evaluations * 2 * t.eval_iters * t.grad_accum * FORWARD_SHARE
    return evaluating / (evaluating + t.max_iters * t.grad_accum)


def test_the_default_run_evaluates_at_most_3_percent():
    assert eval_share(compose_config([]).train) <= MAX_SHARE


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_evaluates_at_most_3_percent_unless_it_copies_nanogpt(preset):
    share = eval_share(compose_config([f"+experiment={preset}"]).train)
    if preset not in NANOGPT_COPIES:
        assert share <= MAX_SHARE, f"{preset} evaluates {share:.1%} of its run"
        return
    comment = [line for line in (CONF_DIR / "experiment" / f"{NANOGPT_COPIES[preset]}.yaml").read_text().splitlines()
               if "eval" in line and "#" in line]
    assert any("nanoGPT" in line and f"{round(share * 100)}%" in line for line in comment), (preset, share, comment)


def test_the_gpt2_preset_evaluates_as_much_as_nanogpt():
    t = compose_config(["+experiment=gpt2_owt"]).train
    assert t.eval_iters * t.grad_accum == 200  # nanoGPT's eval_iters, in micro-batches
