"""One node's rendezvous, listening on loopback only.

torch's own one-node rendezvous (``torchrun --standalone``: the c10d backend on ``localhost:0``) starts two
TCPStore servers in the agent, the rendezvous store and the store it shares with the ranks
(``DynamicRendezvousHandler._create_tcp_store_server``), and a TCPStore server binds the wildcard address
whatever host it is given (both of its backends, libuv and the legacy one: ``*:PORT``, every interface, IPv4
and IPv6). Anyone who can reach the machine could then write into the group's store, whose rendezvous state
the c10d backend unpickles. TCPStore takes a socket that is already listening (``master_listen_fd``), so this
backend makes one socket bound to 127.0.0.1 and one store on it, which serves both the agent and its ranks
(``use_agent_store``: the ranks connect to it as clients, as they do to torch's shared store). With one node and
one agent the rendezvous itself is trivial: this agent is node 0 of 1, in a fresh key namespace per round (an
elastic restart is a new round). The ranks' own listening sockets (gloo's pairs, NCCL's bootstrap) are pinned to
the loopback interface by ``distributed.process_group``. Several nodes keep torch's c10d rendezvous on
``parallel.rdzv_endpoint``, which must listen where the other nodes can reach it.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import (
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStoreInfo,
    rendezvous_handler_registry,
)

LOOPBACK = "127.0.0.1"


def loopback_store(timeout: timedelta) -> dist.TCPStore:
    """A TCPStore server whose only listening socket is bound to 127.0.0.1 (on a free port)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((LOOPBACK, 0))
        listener.listen(socket.SOMAXCONN)
        port = listener.getsockname()[1]
        return dist.TCPStore(LOOPBACK, port, is_master=True, multi_tenant=True, wait_for_workers=False,
                             timeout=timeout, master_listen_fd=listener.detach())
    finally:
        listener.close()  # a no-op once detached: the store owns the socket then


class LoopbackRendezvous(RendezvousHandler):
    """The rendezvous of the only agent of a one-node group, over a store on loopback that it hosts."""

    def __init__(self, backend: str, run_id: str, timeout: timedelta):
        self._backend, self._run_id = backend, run_id
        self._store = loopback_store(timeout)
        self._round = 0
        self._closed = False

    def get_backend(self) -> str:
        return self._backend

    @property
    def use_agent_store(self) -> bool:
        """The ranks use this store (MASTER_ADDR:MASTER_PORT) rather than rank 0 hosting one of its own."""
        return True

    def next_rendezvous(self) -> RendezvousInfo:
        """Node 0 of 1, with the round's own key namespace (an elastic restart must not read the last one's)."""
        self._round += 1
        store = dist.PrefixStore(f"nanogpt/round{self._round}", self._store)
        return RendezvousInfo(store, 0, 1, RendezvousStoreInfo(LOOPBACK, self._store.port))

    def is_closed(self) -> bool:
        return self._closed

    def set_closed(self) -> None:
        self._closed = True

    def num_nodes_waiting(self) -> int:
        return 0  # no other node can join a one-node group

    def get_run_id(self) -> str:
        return self._run_id

    def shutdown(self) -> bool:
        self._closed = True
        return True


def _create_handler(params: RendezvousParameters) -> LoopbackRendezvous:
    return LoopbackRendezvous(params.backend, params.run_id, timedelta(seconds=int(params.get("read_timeout", 60))))


def register(backend: str) -> None:
    """Make ``--rdzv-backend=BACKEND`` (torchrun.LOOPBACK_BACKEND) name this rendezvous for torch's agent, in this
    process (again with the same name: nothing)."""
    rendezvous_handler_registry.register(backend, _create_handler)
