"""Evaluation's share of a run: ``eval_iters`` counts global batches (``eval_iters`` x ``grad_accum`` micro-batches
per replica, forward only, for each of 2 splits), so a preset that copies nanoGPT's micro-batch count with a large
``grad_accum`` evaluates 40 times as much as nanoGPT (gpt2_owt spent about 13% of its time evaluating)."""

from __future__ import annotations

from conftest import compose_config


def eval_share(t) -> float:
    """About the fraction of training time spent evaluating: a forward pass is a third of a training step's."""
    return 2 * t.eval_iters / (3 * t.eval_interval)


def test_the_gpt2_preset_evaluates_as_much_as_nanogpt_and_at_most_3_percent_of_the_run():
    t = compose_config(["+experiment=gpt2_owt"]).train
    assert t.eval_iters * t.grad_accum == 200  # nanoGPT's eval_iters, in micro-batches
    assert eval_share(t) <= 0.03
