"""Imported first by the rank server (nanogpt_runner.launch.torchrun.start_rank_server), and nowhere else: the server
leaves the launcher's session.

A signal to the launcher's process group (the viewer's Stop, ``kill -TERM -PGID``, a terminal's hangup) must
reach the launcher, which tells the ranks and waits for their checkpoints, and not end the server the ranks
were forked from: the torchrun agent would see its ranks' parent vanish mid-run. The server still ends with
the launcher: it exits once the launcher and every rank it forked have closed their end of its pipe.
It also ignores the stop signals that SLURM sends to every process of a job step (signals.ignore_stop_signals);
each rank puts the defaults back first thing (nanogpt_runner.train.worker.run_rank).
"""

import os

from nanogpt_runner.train.signals import ignore_stop_signals

os.setsid()
ignore_stop_signals()
