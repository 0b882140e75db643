"""Imported first by the rank server (nanogpt_runner.launch.torchrun.start_rank_server), and nowhere else: the server
leaves the launcher's session.

A signal to the launcher's process group (the viewer's Stop, ``kill -TERM -PGID``, a terminal's hangup) must
reach the launcher, which tells the ranks and waits for their checkpoints, and not end the server the ranks
were forked from: the torchrun agent would see its ranks' parent vanish mid-run. The server still ends with
the launcher: it exits once the launcher and every rank it forked have closed their end of its pipe.
"""

import os

os.setsid()
