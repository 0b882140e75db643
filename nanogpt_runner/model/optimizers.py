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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

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


class Optimizers:
    """The run's torch optimizers as one: step, zero_grad, the lr schedule, and iteration (what the grad
    scaler and torch.distributed.checkpoint's state-dict functions take).

    ``ends`` holds each param group's (peak, floor) lr, in the order of ``param_groups``; it is kept here, not
    in the groups, because loading a checkpoint replaces the groups (and a resumed run may change the lr)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], ends: list[tuple[float, float]], warmup_iters: int,
                 decay_iters: int | None):
        self.optimizers = optimizers
        self.ends = ends
        self.warmup_iters, self.decay_iters = warmup_iters, decay_iters
        if len(ends) != len(self.param_groups):
            raise ValueError(f"{len(ends)} (peak, floor) pairs for {len(self.param_groups)} param groups")

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
        lrs = [lr_at(step, peak, floor, self.warmup_iters, decay_iters) for peak, floor in self.ends]
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


def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Named trainable parameters, each once (a tied embedding and head are one parameter)."""
    seen, named = set(), []
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            named.append((name, param))
    return named


def _adamw(groups: list[dict], opt: OptimizerConfig) -> torch.optim.AdamW:
    params = [p for group in groups for p in group["params"]]
    kwargs = {"lr": opt.lr, "betas": tuple(opt.betas)}
    if len({getattr(p, "device_mesh", None) for p in params}) > 1:
        # Plain tensors next to DTensors (tp's replicated norms and position embeddings) or DTensors on two meshes
        # (fsdp x tp): the fused and foreach kernels refuse a mix of meshes in one call, so one parameter at a time.
        # (Each mesh's parameters alone do run fused, whatever their placements; one AdamW per mesh would, but it
        # would split the param groups a checkpoint of this layout holds from those of every other layout.)
        return torch.optim.AdamW(groups, foreach=False, **kwargs)
    try:  # all plain tensors, or all DTensors on one mesh (fsdp): DTensor shards the fused kernel too
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused AdamW is not available for this device or dtype
        return torch.optim.AdamW(groups, **kwargs)


def _decay_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """nanoGPT's AdamW groups: matrices decayed, vectors (biases, norm weights) not."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def build_adamw(model: torch.nn.Module, opt: OptimizerConfig) -> tuple[list[torch.optim.Optimizer], list[tuple]]:
    groups = _decay_groups([p for _, p in _trainable(model)], opt.weight_decay)
    return [_adamw(groups, opt)], [(opt.lr, opt.min_lr)] * len(groups)


def is_hidden_matrix(name: str, param: torch.nn.Parameter) -> bool:
    """A 2-D weight inside a transformer block: Muon's. Embeddings and the head are matrices too, but
    they map tokens, not hidden states, and stay with AdamW (as in the nanoGPT speedrun)."""
    return param.dim() == 2 and name.startswith("blocks.")


def build_muon(model: torch.nn.Module, opt: OptimizerConfig) -> tuple[list[torch.optim.Optimizer], list[tuple]]:
    named = _trainable(model)
    hidden = [p for name, p in named if is_hidden_matrix(name, p)]
    # A pipeline stage between the ends has no embedding: its AdamW has the norms' group only.
    rest = [group for group in _decay_groups([p for name, p in named if not is_hidden_matrix(name, p)],
                                             opt.weight_decay) if group["params"]]
    optimizers: list[torch.optim.Optimizer] = [_adamw(rest, opt)] if rest else []
    ends = [(opt.lr, opt.min_lr)] * len(rest)
    if hidden:  # a pipeline stage may hold only the embeddings or the head
        optimizers.append(torch.optim.Muon(hidden, lr=opt.muon_lr, momentum=opt.muon_momentum,
                                           weight_decay=opt.muon_weight_decay))
        ends.append((opt.muon_lr, opt.min_lr * opt.muon_lr / opt.lr))
    return optimizers, ends


# optimizer.name -> how the model's parameters are split between torch optimizers, with each group's lr ends.
OPTIMIZERS: dict[str, Callable[[torch.nn.Module, OptimizerConfig], tuple[list[torch.optim.Optimizer], list]]] = {
    "adamw": build_adamw,
    "muon": build_muon,
}


def build_optimizers(model: torch.nn.Module, opt: OptimizerConfig) -> Optimizers:
    """The optimizers ``optimizer.name`` names for this rank's part of the model."""
    optimizers, ends = OPTIMIZERS[str(opt.name)](model, opt)
    return Optimizers(optimizers, ends, opt.warmup_iters, opt.decay_iters)
