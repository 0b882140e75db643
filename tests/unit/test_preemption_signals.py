"""What SLURM's pre-emption needs of the signal handling, in one process: the first stop signal is the one recorded,
the rank server's ignored stop signals are given back to a rank, and the launcher waits for ranks that outlive the
torchrun agent (tests/integration/test_slurm.py runs the whole path)."""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time

from nanogpt_runner.launch.torchrun import wait_for_ranks
from nanogpt_runner.runs.rundir import RANKS_LOCK_FILE
from nanogpt_runner.train import worker
from nanogpt_runner.train.signals import LATE_SIGNALS, StopSignals, ignore_stop_signals, restore_stop_signals
from nanogpt_runner.train.worker import hold_while_alive


def test_the_first_stop_signal_is_the_one_recorded():
    with StopSignals() as stop:
        signal.raise_signal(signal.SIGUSR2)  # SLURM's pre-emption
        signal.raise_signal(signal.SIGTERM)  # then the launcher watch, or SLURM's requeue
    assert stop.signum == signal.SIGUSR2 and stop.requested()


def test_a_rank_gets_the_default_stop_signals_back_from_the_rank_server():
    previous = {sig: signal.getsignal(sig) for sig in LATE_SIGNALS}
    try:
        ignore_stop_signals()
        assert all(signal.getsignal(sig) is signal.SIG_IGN for sig in LATE_SIGNALS)
        restore_stop_signals()
        assert all(signal.getsignal(sig) is signal.SIG_DFL for sig in LATE_SIGNALS)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _rank(run_dir, saving_s: float) -> threading.Thread:
    """A rank that holds the ranks' lock (as worker.run_in does) and lets go ``saving_s`` later, as its end would."""
    held = threading.Event()

    def live() -> None:
        hold_while_alive(run_dir)
        handle = worker._held.pop()
        held.set()
        time.sleep(saving_s)
        (run_dir / "saved").touch()
        handle.close()

    thread = threading.Thread(target=live)
    thread.start()
    held.wait()
    return thread


def test_the_launcher_waits_for_a_rank_still_saving_and_holds_a_signal_meanwhile(tmp_path):
    rank = _rank(tmp_path, saving_s=1.0)
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR2)).start()
    held = wait_for_ranks(tmp_path, timeout_s=60)
    assert (tmp_path / "saved").exists() and held == signal.SIGUSR2
    rank.join()
    with open(tmp_path / RANKS_LOCK_FILE) as lock:  # nothing holds it any more
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_the_launcher_gives_up_waiting_after_the_timeout(tmp_path):
    rank = _rank(tmp_path, saving_s=3.0)  # a rank that hangs longer than the launcher waits
    assert wait_for_ranks(tmp_path, timeout_s=0.2) is None
    assert not (tmp_path / "saved").exists()
    rank.join()
