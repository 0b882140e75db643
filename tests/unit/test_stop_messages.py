"""What a stopped run says: the exact command that continues it, and never a checkpoint that does not exist
nor a precision already in use."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch

from nanogpt_runner.errors import Interrupted, NonFiniteLoss, how_to_continue
from nanogpt_runner.train.nonfinite import NonFiniteGuard

RUN = Path("/runs/2026-01-01/12-00-00_baby run")  # a space: the command must still work when pasted


def test_an_interrupt_prints_the_command_that_continues_the_run():
    saved = RUN / "checkpoints" / "step_00000040"
    message = str(Interrupted(signal.SIGHUP, 40, saved, saved, RUN))
    assert message.startswith("stopped by SIGHUP after step 40; checkpoint ")
    assert message.endswith(f"continue with: nanogpt-run resume='{RUN}'")


def test_an_interrupt_with_nothing_new_names_the_checkpoint_there_is():
    older = RUN / "checkpoints" / "step_00000030"
    assert f"nothing trained since {older}" in str(Interrupted(signal.SIGTERM, 30, None, older, RUN))
    elsewhere = Path("/runs/first/checkpoints/step_00000020")  # resumed from another run, nothing saved here yet
    assert str(Interrupted(signal.SIGTERM, 20, None, elsewhere, RUN)).endswith(f"nanogpt-run resume={elsewhere}")


def test_an_interrupt_before_any_checkpoint_names_none():
    message = str(Interrupted(signal.SIGTERM, 0, None, None, RUN))
    assert str(RUN) not in message and "resume=" not in message  # no path: there is nothing to point at
    assert message.endswith(how_to_continue(RUN, None)) and "start over" in message


def diverged(precision: str, last_good: Path | None) -> str:
    guard = NonFiniteGuard("stop", None, precision=precision, last_good=lambda: last_good)
    guard.observe(2, torch.tensor(math.nan), torch.tensor(1.0))
    with pytest.raises(NonFiniteLoss) as stopped:
        guard.check()
    return str(stopped.value)


@pytest.mark.parametrize("precision, suggested", [("bf16", "train.precision=fp32"),
                                                  ("fp16", "train.precision=bf16 or fp32"), ("fp32", None)])
def test_a_divergence_suggests_only_a_precision_not_in_use(precision, suggested):
    message = diverged(precision, None)
    assert message.startswith("non-finite loss at step 2")
    if suggested is None:
        assert "train.precision" not in message
    else:
        assert suggested in message and f"precision={precision}" not in message


def test_a_divergence_names_the_last_checkpoint_only_when_there_is_one():
    assert "no checkpoint was saved before it" in diverged("fp32", None)
    assert "last checkpoint" not in diverged("fp32", None)
    saved = RUN / "checkpoints" / "step_00000010"
    assert f"{saved} holds the last good state" in diverged("fp32", saved)


def test_torchrun_forwards_every_stop_signal_to_the_ranks_once():
    from nanogpt_runner.launch.torchrun import HANDLED_SIGNALS
    from nanogpt_runner.train.signals import StopSignals

    assert len(HANDLED_SIGNALS) == len(set(HANDLED_SIGNALS))
    assert {sig.name for sig in StopSignals.SIGNALS} >= {"SIGHUP", "SIGTERM", "SIGINT", "SIGUSR2"}
    assert {sig.name for sig in StopSignals.SIGNALS} <= set(HANDLED_SIGNALS)
