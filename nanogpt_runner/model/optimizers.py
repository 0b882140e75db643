"""The run's optimizers: built by name from a registry, held as one object, stepped on one schedule.

``build_optimizers(model, opt)`` looks ``optimizer.name`` up in ``OPTIMIZERS``; each entry
splits the model's parameters between one or more torch optimizers. ``Optimizers`` holds them as one, so
the training loop, the grad scaler and the checkpoint never ask how many there are (the checkpoint hands
them to torch.distributed.checkpoint's state-dict functions, which take several optimizers and key every
state by parameter name). A new optimizer is one registry entry.

- ``adamw``: nanoGPT's groups: matrices (embeddings, linear weights) decayed; biases and norms not.
- ``muon``: ``torch.optim.Muon`` for the hidden matrices (the 2-D weights inside the transformer blocks)
  and AdamW for the rest (embeddings, the head, norms, biases), the split the nanoGPT speedrun uses. Muon
  orthogonalises each matrix's whole update, so it needs every matrix whole on its rank: validation.validate
  refuses the layouts that shard them.

Every param group follows one schedule shape between its own peak and floor: linear warm-up to the peak,
cosine decay to the floor. AdamW's groups go from optimizer.lr to optimizer.min_lr; Muon's from
optimizer.muon_lr to min_lr scaled by the same ratio (muon_lr * min_lr / lr).

Under tensor parallelism the parameters live on more than one device mesh (plain tensors next to DTensors, or
1-D and 2-D meshes under fsdp x tp), and torch's fused and foreach AdamW kernels take one mesh per call, so
AdamW is one optimizer per mesh, each fused. A checkpoint still holds one group per kind of parameter
(``Optimizers.layout_free``), so any layout resumes any other's checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from nanogpt_runner.config.schema import OptimizerConfig


def lr_at(step: int, peak: float, floor: float, warmup_iters: int, decay_iters: int) -> float:
    """Learning rate for optimizer update ``step`` (0-based): linear warm-up, cosine decay to ``floor``.

    Defined for every step whatever the lengths: a warm-up longer than the run only warms up (the run
    ends below the peak), and past ``decay_iters`` the rate stays at ``floor``."""
    if step < warmup_iters:
        return peak * (step + 1) / (warmup_iters + 1)
    if step >= decay_iters:
        return floor
    progress = (step - warmup_iters) / max(decay_iters - warmup_iters, 1)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


@dataclass(frozen=True)
class GroupPlan:
    """What a param group's own dict cannot keep (loading a checkpoint replaces the dicts, and a resumed run
    may change the lr): its lr ends, and the group a checkpoint saves it in (``saved_as``: one per kind of
    parameter, however many optimizers a layout splits that kind between)."""

    peak: float
    floor: float
    saved_as: int


class Optimizers:
    """The run's torch optimizers as one: step, zero_grad, the lr schedule, and iteration (what the grad
    scaler and torch.distributed.checkpoint's state-dict functions take). ``plans`` holds each param group's
    GroupPlan, in the order of ``param_groups``."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], plans: list[GroupPlan], warmup_iters: int,
                 decay_iters: int | None):
        self.optimizers = optimizers
        self.plans = plans
        self.warmup_iters, self.decay_iters = warmup_iters, decay_iters
        if len(plans) != len(self.param_groups):
            raise ValueError(f"{len(plans)} group plans for {len(self.param_groups)} param groups")

    def __iter__(self) -> Iterator[torch.optim.Optimizer]:
        return iter(self.optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def set_lr(self, step: int, total_steps: int) -> float:
        """Set every group's lr for update ``step`` (0-based) of a run of ``total_steps`` (the decay ends
        there unless optimizer.decay_iters says otherwise); returns the first group's lr (optimizer.lr's
        schedule, the one the metrics log)."""
        decay_iters = self.decay_iters or total_steps
        lrs = [lr_at(step, plan.peak, plan.floor, self.warmup_iters, decay_iters) for plan in self.plans]
        for group, lr in zip(self.param_groups, lrs, strict=True):
            group["lr"] = lr
        return lrs[0]

    def unscale_(self, scaler: torch.amp.GradScaler) -> None:
        for optimizer in self.optimizers:
            scaler.unscale_(optimizer)

    def step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Apply the update, through the grad scaler when there is one (it skips an overflowing fp16 step)."""
        for optimizer in self.optimizers:
            scaler.step(optimizer) if scaler is not None else optimizer.step()

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def describe(self) -> list[dict]:
        """Each torch optimizer of this rank: its class, whether it runs the fused kernel, how many tensors."""
        return [{"optimizer": type(optimizer).__name__, "fused": bool(optimizer.defaults.get("fused")),
                 "tensors": sum(len(group["params"]) for group in optimizer.param_groups)}
                for optimizer in self.optimizers]

    def layout_free(self, state_dict: dict) -> dict:
        """``state_dict`` (torch.distributed.checkpoint's, parameters by name) with one param group per
        ``saved_as``, in that order: what every layout saves and loads, whichever optimizers hold the groups.

        Each group keeps its own parameter names, so torch's ``set_optimizer_state_dict`` hands every parameter
        its state and hyperparameters back, however this layout splits the groups."""
        merged: dict[int, dict] = {}
        for group, plan in zip(state_dict["param_groups"], self.plans, strict=True):
            if plan.saved_as in merged:
                merged[plan.saved_as]["params"] = [*merged[plan.saved_as]["params"], *group["params"]]
            else:
                merged[plan.saved_as] = dict(group)
        return {**state_dict, "param_groups": [merged[index] for index in sorted(merged)]}


def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Named trainable parameters, each once (a tied embedding and head are one parameter)."""
    seen, named = set(), []
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            named.append((name, param))
    return named


def _adamw(groups: list[dict], opt: OptimizerConfig) -> tuple[list[torch.optim.Optimizer], list[GroupPlan]]:
    """AdamW over ``groups``: one fused optimizer per device mesh (the fused kernel takes one mesh per call;
    plain tensors count as one mesh), each group saved as its position in ``groups``."""
    meshes: dict[object, list[tuple[int, dict]]] = {}
    for index, group in enumerate(groups):
        by_mesh: dict[object, list] = {}
        for p in group["params"]:
            by_mesh.setdefault(getattr(p, "device_mesh", None), []).append(p)
        for mesh, params in by_mesh.items():
            meshes.setdefault(mesh, []).append((index, {**group, "params": params}))
    optimizers, plans = [], []
    for split in meshes.values():
        optimizers.append(_fused_adamw([group for _, group in split], opt))
        plans += [GroupPlan(opt.lr, opt.min_lr, saved_as=index) for index, _ in split]
    return optimizers, plans


def _fused_adamw(groups: list[dict], opt: OptimizerConfig) -> torch.optim.AdamW:
    kwargs = {"lr": opt.lr, "betas": tuple(opt.betas)}
    try:  # plain tensors, or DTensors on one mesh: DTensor runs the fused kernel on each rank's shards
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused AdamW is not available for this device or dtype
        return torch.optim.AdamW(groups, **kwargs)


def _decay_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """nanoGPT's AdamW groups: matrices decayed, vectors (biases, norm weights) not."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def build_adamw(model: torch.nn.Module, opt: OptimizerConfig) -> tuple[list[torch.optim.Optimizer], list[GroupPlan]]:
    return _adamw(_decay_groups([p for _, p in _trainable(model)], opt.weight_decay), opt)


def is_hidden_matrix(name: str, param: torch.nn.Parameter) -> bool:
    """A 2-D weight inside a transformer block: Muon's. Embeddings and the head are matrices too, but
    they map tokens, not hidden states, and stay with AdamW (as in the nanoGPT speedrun)."""
    return param.dim() == 2 and name.startswith("blocks.")


def build_muon(model: torch.nn.Module, opt: OptimizerConfig) -> tuple[list[torch.optim.Optimizer], list[GroupPlan]]:
    named = _trainable(model)
    hidden = [p for name, p in named if is_hidden_matrix(name, p)]
    # A pipeline stage between the ends has no embedding: its AdamW has the norms' group only.
    rest = [group for group in _decay_groups([p for name, p in named if not is_hidden_matrix(name, p)],
                                             opt.weight_decay) if group["params"]]
    optimizers, plans = _adamw(rest, opt)
    if hidden:  # a pipeline stage may hold only the embeddings or the head
        optimizers.append(torch.optim.Muon(hidden, lr=opt.muon_lr, momentum=opt.muon_momentum,
                                           weight_decay=opt.muon_weight_decay))
        plans.append(GroupPlan(opt.muon_lr, opt.min_lr * opt.muon_lr / opt.lr, saved_as=len(rest)))
    return optimizers, plans


# optimizer.name -> how the model's parameters are split between torch optimizers, with each group's plan.
Build = Callable[[torch.nn.Module, OptimizerConfig], tuple[list[torch.optim.Optimizer], list[GroupPlan]]]
OPTIMIZERS: dict[str, Build] = {
    "adamw": build_adamw,
    "muon": build_muon,
}


def build_optimizers(model: torch.nn.Module, opt: OptimizerConfig) -> Optimizers:
    """The optimizers ``optimizer.name`` names for this rank's part of the model."""
    optimizers, plans = OPTIMIZERS[str(opt.name)](model, opt)
    return Optimizers(optimizers, plans, opt.warmup_iters, opt.decay_iters)
