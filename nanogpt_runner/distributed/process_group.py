"""The process group: where each process sits in the mesh, joining and leaving the group, shared decisions.

A run's ranks form a device mesh ``(pp, dp, tp)``: tensor parallelism innermost (it talks every layer,
so its ranks should be closest), pipeline outermost (it only passes activations between stages).
``setup`` joins the group torchrun prepared (one key-value store namespace per restart attempt), pins
threads and builds the mesh; ``Layout`` is this process's place in it, which every other module asks
(its rank, stage, device, group per mesh dimension); ``broadcast_object`` shares rank 0's decisions;
``shutdown`` leaves the group however the run ended. Per rank: ``seed_micro_batch`` (dropout masks that do
not depend on the layout) and ``NullWriter`` (only rank 0 writes the run directory). Making the model
parallel on that mesh is parallel.py's job. With one process there is no group, and every function here
reduces to the plain answer.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from nanogpt_runner.config.schema import dp_degree, threads_per_rank, world_size

MESH_DIMS = ("pp", "dp", "tp")
# torchrun's attempt number: 0 for the first, n after the group was restarted n times.
RESTART_COUNT_ENV = "TORCHELASTIC_RESTART_COUNT"


@dataclass
class Layout:
    """Where this process sits: global rank, its coordinates in the (pp, dp, tp) mesh, its device."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world: int = 1
    dp: int = 1
    tp: int = 1
    pp: int = 1
    dp_mode: str = "none"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mesh: object = None  # torch.distributed.device_mesh.DeviceMesh when world > 1

    def coord(self, dim: str) -> int:
        return 0 if self.mesh is None else self.mesh.get_local_rank(dim)

    @property
    def dp_rank(self) -> int:
        return self.coord("dp")

    @property
    def pp_rank(self) -> int:
        return self.coord("pp")

    @property
    def first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes run.json, metrics.jsonl and the console."""
        return self.rank == 0

    def group(self, dim: str):
        return self.mesh[dim].get_group()

    def describe(self) -> str:
        if self.world == 1:
            return "single"
        parts = [f"{self.dp_mode} {self.dp}" if self.dp > 1 else "", f"tp {self.tp}" if self.tp > 1 else "",
                 f"pp {self.pp}" if self.pp > 1 else ""]
        return " x ".join(p for p in parts if p) or f"{self.world} ranks"

    def as_record(self) -> dict:
        return {"world_size": self.world, "layout": self.describe(),
                "mesh": {"pp": self.pp, "dp": self.dp, "tp": self.tp, "dp_mode": self.dp_mode}}


def env_rank() -> int:
    """This process's global rank as torchrun announced it (0 outside torchrun), before any group exists."""
    return int(os.environ.get("RANK", "0"))


def restart_count() -> int:
    """This group's attempt (``parallel.max_restarts``): keys the rendezvous store apart per attempt, and a
    restarted attempt continues from the run's latest checkpoint (resume.Checkpointer). 0 outside torchrun."""
    return int(os.environ.get(RESTART_COUNT_ENV, "0"))


def setup(par, device_kind: str) -> Layout:
    """Join the process group torchrun prepared (if any), pin threads, and build the mesh.

    Threads: ranks x threads must not exceed the cores (2 ranks x 2 threads on 2 cores ran 2-6x slower),
    so each rank takes ``threads_per_rank`` or its share of the cores.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    expected = world_size(par)
    if world != expected:
        raise RuntimeError(f"{world} processes started but parallel.* asks for {expected}: start runs with nanogpt-run")
    if device_kind == "cpu" and (par.threads_per_rank or local_world > 1):
        torch.set_num_threads(threads_per_rank(par))
    if device_kind == "cuda":
        if local_world > torch.cuda.device_count():
            raise RuntimeError(f"parallel.nproc_per_node={local_world} but this node has {torch.cuda.device_count()} "
                               f"GPUs: use one rank per GPU")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    layout = Layout(world=world, rank=env_rank(), local_rank=local_rank, local_world=local_world,
                    dp=dp_degree(par), tp=par.tp, pp=par.pp, dp_mode=par.dp, device=device)
    if world == 1:
        return layout
    from torch.distributed.device_mesh import init_device_mesh

    backend = par.backend if par.backend != "auto" else ("nccl" if device_kind == "cuda" else "gloo")
    # An explicit collective timeout (NCCL's default is 10 minutes): a rank that waits while another writes a
    # large checkpoint to slow storage must not be killed as hung.
    timeout = timedelta(minutes=par.timeout_min)
    if par.nnodes == 1:
        os.environ.update(loopback_sockets_env())
    dist.init_process_group(backend=backend, store=_attempt_store(layout, timeout), rank=layout.rank,
                            world_size=world, timeout=timeout, device_id=device if device_kind == "cuda" else None)
    layout.mesh = init_device_mesh(device.type, (layout.pp, layout.dp, layout.tp), mesh_dim_names=MESH_DIMS)
    return layout


def loopback_sockets_env() -> dict[str, str]:
    """For a one-node group: gloo's and NCCL's sockets on the loopback interface, whatever was set.

    Both listen on the address of the interface they pick: gloo, by default, the address this host's name
    resolves to (often the LAN's), NCCL any interface but loopback. One node needs none of them, and a socket
    there is one more thing others can reach (the rendezvous store is on loopback too: launch.loopback_rendezvous).
    Empty where no loopback interface is known by name (the defaults then)."""
    names = {name for _index, name in socket.if_nameindex()}
    loopback = next((name for name in ("lo", "lo0") if name in names), None)
    return {"GLOO_SOCKET_IFNAME": loopback, "NCCL_SOCKET_IFNAME": loopback} if loopback else {}


def _attempt_store(layout: Layout, timeout: timedelta):
    """torchrun's key-value store, with a key prefix per attempt.

    After an elastic restart (parallel.max_restarts) torchrun hands the new workers the same store, which
    still holds the failed attempt's keys: gloo then dials the dead ranks' ports and fails. Prefixing every
    key with the restart count keeps the attempts apart."""
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), layout.world,
                          is_master=not agent_store and layout.rank == 0, timeout=timeout)
    return dist.PrefixStore(f"nanogpt/attempt{restart_count()}", store)


def broadcast_object(layout: Layout, obj):
    """Rank 0's ``obj`` on every rank (a decision all ranks must share)."""
    if layout.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(completed: bool) -> None:
    """Leave the process group, however the run ended (call it in a ``finally``).

    After a completed run every rank meets at a barrier first: without it gloo ranks sometimes abort at exit.
    After a failure there is no barrier: a rank that died, or one stopped at another step, would never come
    to it, and the survivors would hang until the collective timeout."""
    if dist.is_available() and dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()


def seed_micro_batch(seed: int, step: int, index: int, device: torch.device) -> None:
    """Seed this rank's generator for one micro-batch: dropout masks become a function of (seed, step, index
    of the micro-batch in the global batch), as a different seed per data-parallel rank (nanoGPT's offset)
    would make them differ between replicas, but independent of how the global batch is split. So a
    data-parallel run with dropout equals the single process that takes the same micro-batches one after
    the other, tensor-parallel ranks of one replica (same index) draw the same masks, and a resumed run
    continues with the masks it would have drawn. Only this rank's device is seeded: a CPU run never
    initialises CUDA."""
    value = int(np.random.SeedSequence([seed, step, index]).generate_state(1, np.uint64)[0] >> 1)
    if device.type == "cuda":
        torch.cuda.manual_seed(value)
    else:
        torch.default_generator.manual_seed(value)


class NullWriter:
    """Stands in for the RunWriter on ranks other than 0: the run directory has one writer."""

    record: dict = {}

    def __getattr__(self, _name):
        return lambda *args, **kwargs: None
