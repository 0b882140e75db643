"""A one-node group's rendezvous store listens on loopback only (torch's own --standalone store listens on every
interface), and one node's ranks pin gloo's and NCCL's sockets to the loopback interface."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch.distributed as dist
from conftest import compose_config
from listening_sockets import is_loopback, listening

from nanogpt_runner.distributed.process_group import loopback_sockets_env
from nanogpt_runner.launch import loopback_rendezvous
from nanogpt_runner.launch.torchrun import LOOPBACK_BACKEND, torchrun_args

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")


def _own_sockets_on(port: int) -> set[tuple[str, int]]:
    return {sock for sock in listening({os.getpid()}).get(os.getpid(), set()) if sock[1] == port}


def test_torchs_own_store_listens_on_every_interface():
    """Why the backend exists: a TCPStore server given 127.0.0.1 still binds the wildcard address."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True)
    assert not all(is_loopback(address) for address, _ in _own_sockets_on(store.port))


def test_the_one_node_store_listens_on_loopback_only_and_serves_the_ranks():
    loopback_rendezvous.register(LOOPBACK_BACKEND)
    params = dist.elastic.rendezvous.RendezvousParameters(backend=LOOPBACK_BACKEND, endpoint="", run_id="r",
                                                          min_nodes=1, max_nodes=1)
    handler = dist.elastic.rendezvous.rendezvous_handler_registry.create_handler(params)
    first, second = handler.next_rendezvous(), handler.next_rendezvous()
    bootstrap = first.bootstrap_store_info
    assert (bootstrap.master_addr, first.rank, first.world_size) == ("127.0.0.1", 0, 1)
    assert handler.use_agent_store and handler.num_nodes_waiting() == 0 and handler.get_backend() == LOOPBACK_BACKEND
    sockets = _own_sockets_on(bootstrap.master_port)
    assert sockets and all(is_loopback(address) for address, _ in sockets), sockets

    rank = dist.TCPStore("127.0.0.1", bootstrap.master_port, is_master=False)  # a rank, as process_group joins
    rank.set("key", "value")
    first.store.set("round", "1")
    assert not second.store.check(["round"])  # an elastic restart's round does not read the last one's keys
    assert first.store.get("round") == b"1" and rank.get("key") == b"value"
    handler.shutdown()
    assert handler.is_closed()


def test_a_one_node_command_line_uses_it_and_several_nodes_keep_c10d(tiny_overrides):
    single = torchrun_args(compose_config([*tiny_overrides, "parallel=ddp"]).parallel, "RUN")
    assert f"--rdzv-backend={LOOPBACK_BACKEND}" in single and not any(a.startswith("--rdzv-endpoint") for a in single)
    nodes = compose_config([*tiny_overrides, "parallel=ddp", "parallel.nnodes=2",
                            "parallel.rdzv_endpoint=node-a:29400"]).parallel
    assert {"--rdzv-backend=c10d", "--rdzv-endpoint=node-a:29400"} <= set(torchrun_args(nodes, "RUN"))


def test_one_node_ranks_pin_gloo_and_nccl_to_the_loopback_interface():
    env = loopback_sockets_env()
    names = {name for _index, name in socket.if_nameindex()}
    assert env == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"} if "lo" in names else env == {}
