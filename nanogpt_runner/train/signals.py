"""How the loop notices a stop signal (the ways a run ends are nanogpt_runner.errors).

``StopSignals`` turns SIGTERM, SIGINT,
SIGHUP and SIGUSR2 into a request the loop polls between steps (so the last completed step is saved first), and
``until_the_end_is_recorded`` keeps a late one from killing the process before run.json says how the run
ended; nanogpt_runner.train.nonfinite decides what a NaN or infinite loss does.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

# The stop signals that may come again after the loop saw one: SLURM's SIGTERM goes to every process of a
# job step, a rank's launcher watch (nanogpt_runner.train.worker) sends one when the launcher ends first, and
# a closing terminal or SSH session sends SIGHUP to everything it started.
LATE_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP)
_recording_the_end = False  # inside until_the_end_is_recorded (signal handlers are per process, as this is)


@contextlib.contextmanager
def until_the_end_is_recorded() -> Iterator[None]:
    """Around a run's training and the record of how it ended (nanogpt_runner.train.worker.execute).

    Before the loop, a stop signal keeps its usual effect (the default ends the process at once, even while
    it waits in the process group's rendezvous); during the loop StopSignals turns it into a checkpoint.
    From the loop's end until this block ends, SIGTERM, SIGUSR2 and SIGHUP are ignored: the process is leaving
    the group and writing run.json, and a late signal would kill it in between, leaving run.json saying
    "running" for ever. A process that hangs there still ends by the SIGKILL that torchrun and SLURM send
    after their grace period. The handlers found on entry are put back on exit."""
    global _recording_the_end
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in LATE_SIGNALS} if main else {}
    _recording_the_end = main
    try:
        yield
    finally:
        _recording_the_end = False
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopSignals:
    """SIGTERM, SIGINT, SIGHUP and SIGUSR2 become a request the loop polls at step boundaries, so the run can
    save the last completed step and stop cleanly. A second SIGINT stops at once (KeyboardInterrupt).

    ``agree`` turns this process's flag into the group's decision (an all-reduce of the flag, so every
    rank stops at the same step); without it the flag is local and read at every poll. The group is asked
    only every ``every``-th poll (a collective is a device sync on a GPU): every rank polls at the same
    steps, so all still agree, at most ``every - 1`` steps after the signal."""

    # SIGUSR2: SLURM's warning before the time limit (the slurm_torchrun preset asks for it signal_delay_s
    # ahead), forwarded to every rank by torchrun (nanogpt_runner.launch.torchrun); it ends in a checkpoint too.
    # SIGHUP: the terminal or SSH session that started the run was closed (its default would end the run
    # with no checkpoint and run.json still saying "running").
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)

    def __init__(self, agree: Callable[[bool], bool] | None = None, every: int = 1):
        self.received: int | None = None
        self._agree, self._every, self._polls = agree, max(every, 1), 0
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            ending = _recording_the_end and sig in LATE_SIGNALS
            signal.signal(sig, signal.SIG_IGN if ending else handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        # The first signal is the one recorded: the SIGTERM a rank's launcher watch sends, or SLURM's after a
        # requeue, must not turn a SIGUSR2 pre-emption into something else in run.json.
        if self.received is None:
            self.received = signum
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    def requested(self) -> bool:
        """Poll at a step boundary: True when the run should save and stop now."""
        flag = self.received is not None
        if self._agree is None:
            return flag
        self._polls += 1
        return self._agree(flag) if (self._polls - 1) % self._every == 0 else False

    @property
    def signum(self) -> int:
        return self.received if self.received is not None else signal.SIGTERM


def ignore_stop_signals() -> None:
    """For the rank server (nanogpt_runner.launch.rank_server): SLURM's ``--signal`` and ``scancel -s`` signal
    every process of a job step, and the server's default action (the end) would make the torchrun agent see
    every rank it forked as failed, mid-checkpoint. (multiprocessing's forkserver ignores SIGINT itself.)"""
    for sig in LATE_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def restore_stop_signals() -> None:
    """For a rank forked from the rank server, which inherits the ignored stop signals: the defaults again,
    before the loop's StopSignals takes them over (until then a stop signal ends the rank, as it should)."""
    for sig in LATE_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
