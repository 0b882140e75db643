"""The model made parallel in one documented order, and what the training loop calls on the result.

``parallelize`` applies a process's ``Layout`` (process_group.py: the mesh ``(pp, dp, tp)``) to a freshly
built, identically seeded GPT, built on the CPU so that no device ever holds the whole model, in this order:

1. pipeline split: keep this stage's blocks; embeddings on the first stage, head on the last;
2. placement: without FSDP the stage moves to the device whole; with FSDP it stays on the CPU and
   ``fully_shard`` moves each unit's parameters to the device as it shards them;
3. tensor parallel: DTensor ``parallelize_module`` per block (q/k/v and fc column-wise, the two
   output projections row-wise), so attention runs on each rank's own heads; the vocabulary sharded over tp
   (the embedding row-wise, the head column-wise, tied again) with the loss taken by ``loss_parallel``, so no
   rank computes the whole logits;
4. activation recomputation: per block, non-reentrant (``GPT.recompute``);
5. compile: per block (``nn.Module.compile`` keeps parameter names: no ``_orig_mod.`` prefixes), and the head with its
   loss (``GPT.head_and_loss``, on the stage that has the head);
6. data parallel: FSDP2 ``fully_shard`` per block, then the root (which keeps the tied embedding and
   head together in one unit), with bf16/fp16 parameters for compute and fp32 gradient reduction
   (``MixedPrecisionPolicy``), or DDP around the whole (stage) model;
7. the tied embedding/head pair of a pipeline is looked up last, once FSDP has replaced the Parameters.

The order is forced: FSDP must see the final (TP-sharded, compiled) blocks, and the pipeline split
must come first so that every later step works on the stage alone. ``Parallelized`` is what the
training loop talks to: one micro-step forward+backward (a pipeline: the whole step's micro-batches in one schedule
step), an eval forward, the gradient norm across meshes, and the mean of a number over the replicas. With one
process all of it reduces to plain calls.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from nanogpt_runner.distributed.process_group import MESH_DIMS, Layout
from nanogpt_runner.fsutil import write_atomic
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.model.precision import DTYPES

LAYOUT_FILE = "layout.json"


class Parallelized:
    """The local model (a pipeline stage, TP-sharded, FSDP/DDP-wrapped) and the operations the loop needs.

    ``module`` is the local GPT with the original parameter names (for optimizers and state dicts);
    ``train_module`` is what forward runs through (the DDP wrapper, or the module itself).
    """

    def __init__(self, model: GPT, layout: Layout, cfg):
        self.layout = layout
        self.module = model
        self.train_module: nn.Module = model
        self.schedule = None  # a pipeline's training schedule: a step's grad_accum micro-batches in one fill and drain
        self.eval_schedule = None  # a pipeline's forward-only schedule for one micro-batch (eval_loss, eval_logits)
        self.pipeline_pieces = 0  # pieces of micro-batch per training schedule step (layout.json records it)
        self.tied: nn.Parameter | None = None  # the tied embedding/head weight when it lives on two stages
        self._tie_group = None
        self.average_gradients = False  # pipeline stage replicated over dp ranks without the DDP wrapper
        # Under tp the loss is computed from vocabulary-sharded logits: forward and backward in loss_parallel.
        self.loss_context = contextlib.nullcontext

    @functools.cached_property
    def parameters(self) -> list[nn.Parameter]:
        """This rank's parameters, each once (a tied pair is one), as the layout left them: collected once, as
        walking the modules every step cost a small model a few percent of its step."""
        return list({id(p): p for p in self.module.parameters()}.values())

    # -- training ---------------------------------------------------------------------------------
    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, scale: float, sync: bool, autocast,
                         scaler) -> torch.Tensor:
        """One micro-step: forward, backward of ``loss * scale``; returns the unscaled mean loss (detached).

        ``sync=False`` skips the gradient all-reduce / reduce-scatter (all but the last accumulation
        micro-step). A pipeline takes ``pipeline_forward_backward`` instead.
        """
        if isinstance(self.train_module, nn.parallel.DistributedDataParallel) and not sync:
            context = self.train_module.no_sync()
        else:
            context = contextlib.nullcontext()
            if hasattr(self.module, "set_requires_gradient_sync"):  # FSDP2
                self.module.set_requires_gradient_sync(sync)
        with context, self.loss_context():
            with autocast:
                _, loss = self.train_module(x, y)
            scaler.scale(loss * scale).backward()
        return loss.detach()

    def pipeline_forward_backward(self, x: torch.Tensor, y: torch.Tensor, autocast) -> torch.Tensor:
        """A pipeline's whole optimizer step: ``x``/``y`` hold the step's ``grad_accum`` micro-batches of this replica,
        run as one schedule step of ``microbatches x grad_accum`` pieces (the same pieces, in the same order, as one
        schedule step per micro-step), so the pipeline fills and drains once per optimizer step: at pp=2 with 2
        pieces a step per micro-step left a third of every micro-step idle. The schedule synchronises the gradients
        (FSDP's reduce-scatter) after its last piece. Returns the step's mean loss (0 on a stage without the loss)."""
        return self._pipeline_step(self.schedule, x, y, autocast, train=True)

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor, autocast) -> torch.Tensor:
        if self.schedule is not None:
            return self._pipeline_step(self.eval_schedule, x, y, autocast, train=False)
        with autocast, self.loss_context():
            _, loss = self.module(x, y)
        return loss

    @torch.no_grad()
    def eval_logits(self, x: torch.Tensor, autocast) -> torch.Tensor | None:
        """The logits of a batch (the task scoring of ``evals/``), on the ranks that hold the head: every rank
        without a pipeline, the last stage with one (None elsewhere). A pipeline needs the training batch's
        shape, and its schedule a target on the last stage (its loss is computed and dropped)."""
        if self.schedule is None:
            with autocast:
                return self.module(x)[0]
        args = (x,) if self.layout.first_stage else ()
        kwargs = {"target": torch.zeros_like(x)} if self.layout.last_stage else {}
        with autocast:
            return self.eval_schedule.eval(*args, **kwargs)

    def _pipeline_step(self, schedule, x, y, autocast, train: bool) -> torch.Tensor:
        """One schedule step (or forward-only pass) over ``x``; the sum of its pieces' losses: their mean."""
        losses: list[torch.Tensor] = []
        args = (x,) if self.layout.first_stage else ()
        kwargs = {"target": y, "losses": losses} if self.layout.last_stage else {}
        with autocast:
            if train:
                schedule.step(*args, return_outputs=False, **kwargs)
            else:
                schedule.eval(*args, **kwargs)
        if not losses:
            return torch.zeros((), device=self.layout.device)
        return torch.stack([loss.detach() for loss in losses]).sum()

    def finish_gradients(self) -> None:
        """After the last micro-step: average a pipeline stage's gradients over its data-parallel replicas,
        and sum the tied embedding/head gradient of the first and last stage."""
        if self.average_gradients:
            grads = [p.grad for p in self.parameters if p.grad is not None]
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat, group=self.layout.group("dp"))
            flat /= self.layout.dp
            for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
                grad.copy_(synced)
        if self.tied is not None and self.tied.grad is not None:
            grad = self.tied.grad
            dist.all_reduce(grad.to_local() if hasattr(grad, "to_local") else grad, group=self._tie_group)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Total gradient norm over every rank's parameters (each counted once), and clip to ``max_norm``.

        ``clip_grad_norm_`` refuses parameters on different meshes (plain tensors next to DTensors under
        TP, 1-D and 2-D DTensors under FSDP x TP), so the norm is taken per mesh, combined, and summed over
        the pipeline stages; the tied weight's copy on the last stage is not counted twice. Each mesh's list
        takes the fused multi-tensor kernels (``foreach``, torch's choice where the device has them; DTensors of
        one mesh run them whatever their placements): one kernel per parameter cost a small model on a GPU 15% of
        its step in launches.
        """
        groups: dict[object, list[nn.Parameter]] = {}
        for p in self.parameters:
            if p.grad is None or (p is self.tied and self.layout.last_stage):
                continue
            groups.setdefault(getattr(p.grad, "device_mesh", None), []).append(p)
        squares = torch.zeros((), device=self.layout.device)
        for params in groups.values():
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            squares = squares + norm.float() ** 2
        if self.layout.pp > 1:
            dist.all_reduce(squares, group=self.layout.group("pp"))
        total = squares.sqrt()
        if max_norm > 0 and math.isfinite(max_norm):
            if self.tied is not None and self.layout.last_stage and self.tied.grad is not None:
                groups.setdefault(getattr(self.tied.grad, "device_mesh", None), []).append(self.tied)
            for params in groups.values():
                torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total

    # -- reductions and records -------------------------------------------------------------------
    def max_over_ranks(self, values: list[float]) -> list[float]:
        """Each number's maximum over all ranks (memory: the busiest rank is what must fit a device)."""
        if self.layout.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.layout.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def mean_over_replicas(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a per-replica number (a loss) over the data-parallel replicas.

        Summed over the whole world and divided by dp*tp: tensor-parallel ranks hold the same number, and
        under pipeline parallelism only the last stage holds a loss (the others contribute 0)."""
        if self.layout.world == 1:
            return value
        value = value.detach().clone().float()
        dist.all_reduce(value)
        return value / (self.layout.dp * self.layout.tp)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when it is True on any: a stop request seen by one rank stops all at the same step."""
        if self.layout.world == 1:
            return flag
        value = torch.tensor(float(flag), device=self.layout.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def local_shapes(self) -> dict[str, list[int]]:
        """Each parameter's shape on this rank: the sharding made visible (and tested)."""
        shapes = {}
        for name, p in self.module.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            shapes[name] = list(local.shape)
        return shapes

    def write_layout(self, run_dir: Path, **per_rank) -> None:
        """Rank 0 writes layout.json: every rank's mesh coordinates, local parameter shapes and ``per_rank``
        values (each rank its own, e.g. its peak memory). Collective: every rank calls it."""
        mine = {"rank": self.layout.rank, "coords": {d: self.layout.coord(d) for d in MESH_DIMS},
                "params": self.local_shapes(), **per_rank}
        ranks = [mine]
        if self.layout.world > 1:
            ranks = [None] * self.layout.world
            dist.all_gather_object(ranks, mine)
        if self.layout.is_main:
            record = {**self.layout.as_record(), "ranks": ranks}
            if self.pipeline_pieces:
                record["pipeline_pieces_per_step"] = self.pipeline_pieces
            write_atomic(Path(run_dir) / LAYOUT_FILE, json.dumps(record, indent=1))


def parallelize(model: GPT, layout: Layout, cfg, precision: str) -> Parallelized:
    """Apply the layout to ``model`` (built identically on every rank, on the CPU): pipeline split ->
    placement -> tensor parallel -> activation recomputation -> compile -> FSDP2 (per block, then root) or
    DDP -> the tied pair of a pipeline."""
    par = Parallelized(model, layout, cfg)
    fsdp = layout.dp > 1 and layout.dp_mode == "fsdp"
    if layout.pp > 1:
        _split_pipeline_stage(par)
    if not fsdp:
        model.to(layout.device)
    if layout.tp > 1:
        _apply_tensor_parallel(model, layout.mesh["tp"])
        _shard_vocabulary(model, layout.mesh["tp"])
        from torch.distributed.tensor.parallel import loss_parallel

        par.loss_context = loss_parallel
    model.recompute = cfg.train.recompute
    if cfg.train.compile:  # null was decided before (the trainer's compile_decision): here it is eager
        for block in model.blocks.values():
            block.compile()
        if model.lm_head is not None:  # the stage with the head: its norm, logits and loss compiled too
            model.head_and_loss = torch.compile(model.head_and_loss)
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        options = fsdp_options(precision, pipeline=layout.pp > 1)
        for block in model.blocks.values():
            fully_shard(block, mesh=layout.mesh["dp"], **options)
        fully_shard(model, mesh=layout.mesh["dp"], **options)
    elif layout.dp > 1 and layout.dp_mode == "ddp" and layout.pp == 1:
        # The gradients are views into DDP's buckets: no second copy of them (and no copy into the buckets).
        par.train_module = nn.parallel.DistributedDataParallel(model, process_group=layout.group("dp"),
                                                               gradient_as_bucket_view=True)
    elif layout.dp > 1 and layout.dp_mode == "ddp":
        # A pipeline stage runs one backward per pipeline micro-batch, outside DDP's forward/backward pairing
        # (its reducer then fails an internal assert, or with static_graph skips the all-reduce): the stage's
        # replicas average their gradients with one bucketed all-reduce per step instead, DDP's arithmetic.
        par.average_gradients = True
    if layout.pp > 1:
        if cfg.model.tie_weights:
            _tie_pipeline_ends(par)
        _build_schedules(par, cfg)
    return par


def fsdp_options(precision: str, pipeline: bool) -> dict:
    """``fully_shard``'s options, as torchtitan sets them.

    Mixed precision: parameters are all-gathered and computed in bf16/fp16 and gradients reduce-scattered
    in fp32 (autocast alone would all-gather the fp32 shards: twice the bytes). Under a pipeline the
    parameters stay gathered after forward: each pipeline micro-batch would otherwise all-gather them again."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    policy = MixedPrecisionPolicy() if precision == "fp32" else \
        MixedPrecisionPolicy(param_dtype=DTYPES[precision], reduce_dtype=torch.float32)
    return {"mp_policy": policy, "reshard_after_forward": not pipeline}


def _split_pipeline_stage(par: Parallelized) -> None:
    """Keep this stage's contiguous share of blocks; embeddings on the first stage, ln_f + head on the last.

    Tied weights (Megatron's way): the first stage keeps the token embedding, the last keeps the head
    whose weight is the same tensor at init (same seed everywhere); see ``_tie_pipeline_ends``.
    """
    model, layout = par.module, par.layout
    per_stage = len(model.blocks) // layout.pp
    keep = {str(i) for i in range(layout.pp_rank * per_stage, (layout.pp_rank + 1) * per_stage)}
    for name in [n for n in model.blocks if n not in keep]:
        del model.blocks[name]
    if not layout.first_stage:
        model.tok_emb = None
        model.pos_emb = None
    if not layout.last_stage:
        model.ln_f = None
        model.lm_head = None
    # A stage passes a tensor on: drop the (output, loss) tuple; the schedule computes the loss itself.
    model.register_forward_hook(lambda _module, _args, output: output[0])


def _tie_pipeline_ends(par: Parallelized) -> None:
    """The first stage's embedding and the last stage's head are two copies of the tied weight: their
    gradients are summed after each step, so both take identical updates and stay equal to the single model.

    Looked up after everything else: ``fully_shard`` replaces each Parameter with a new (DTensor) one, and a
    Parameter found before it would be a stale object whose gradient is never summed (the copies drift apart,
    and clipping counts the weight twice). Under FSDP both ends are sharded alike over the same dp mesh, so
    the local shards of one (dp, tp) coordinate hold the same rows."""
    model, layout = par.module, par.layout
    par.tied = model.tok_emb.weight if layout.first_stage else model.lm_head.weight if layout.last_stage else None
    par._tie_group = _tie_group(layout)


def _tie_group(layout: Layout):
    """The group of the first and last stage at this rank's (dp, tp) coordinates (every rank creates all)."""
    ranks = layout.mesh.mesh  # tensor of global ranks, shape (pp, dp, tp)
    mine = None
    for d in range(layout.dp):
        for t in range(layout.tp):
            members = sorted({int(ranks[0, d, t]), int(ranks[-1, d, t])})
            group = dist.new_group(members)
            if layout.rank in members:
                mine = group
    return mine


def _pipeline_loss(logits: torch.Tensor, targets: torch.Tensor, pieces: int) -> torch.Tensor:
    """Per piece of a pipeline step: mean cross-entropy over ``pieces``, so the pieces sum to the step's mean loss
    and their gradients to the step's mean gradient (the schedule's own ``scale_grads`` is off: it divides the
    gradients, not the losses)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1)) / pieces


def _build_schedules(par: Parallelized, cfg) -> None:
    """The training schedule (``microbatches x grad_accum`` pieces: one step per optimizer step) and a forward-only
    one of ``microbatches`` pieces for evaluation, which takes one micro-batch at a time. Each has its own
    ``PipelineStage`` over the same module: a stage's buffers are sized for its schedule's number of pieces."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    layout, micro = par.layout, cfg.parallel.microbatches
    schedule_class = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[cfg.parallel.pp_schedule]

    def schedule(pieces: int):
        stage = PipelineStage(par.train_module, layout.pp_rank, layout.pp, layout.device, group=layout.group("pp"))
        return schedule_class(stage, n_microbatches=pieces, scale_grads=False,
                              loss_fn=functools.partial(_pipeline_loss, pieces=pieces))

    par.pipeline_pieces = micro * cfg.train.grad_accum
    par.schedule = schedule(par.pipeline_pieces)
    par.eval_schedule = schedule(micro)


def _apply_tensor_parallel(model: GPT, tp_mesh) -> None:
    """Megatron's split per block: column-wise q/k/v (whole heads per rank) and fc, row-wise projections.

    ``use_local_output=True`` hands attention plain local tensors: SDPA has no CPU DTensor strategy, and
    the model views heads as -1 so each rank attends over its own heads."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = {
        "attn.query": ColwiseParallel(use_local_output=True),
        "attn.key": ColwiseParallel(use_local_output=True),
        "attn.value": ColwiseParallel(use_local_output=True),
        "attn.proj": RowwiseParallel(),
        "mlp.fc": ColwiseParallel(),
        "mlp.proj": RowwiseParallel(),
    }
    for block in model.blocks.values():
        parallelize_module(block, tp_mesh, plan)


def _shard_vocabulary(model: GPT, tp_mesh) -> None:
    """The embedding and the head split by vocabulary rows over tp, so no rank holds or computes the whole
    ``vocab x n_embd`` matrix nor the ``tokens x vocab`` logits (50,304 wide for GPT-2).

    The embedding is row-wise (each rank looks up the tokens in its rows, the partial sums all-reduced); the head
    column-wise with its logits left a DTensor sharded on the vocabulary, which ``loss_parallel`` turns into the
    cross-entropy without gathering them. ``parallelize_module`` gives each its own new Parameter, so a tied pair is
    tied again after both (the same rows on the same ranks, equal at init). The head's function is replaced by
    ``_vocab_parallel_head_and_loss``: it masks the padding rows with a sharded bias and returns the logits whole
    only when there is no target (the task scoring's ``eval_logits``)."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tied = model.lm_head.weight is model.tok_emb.weight
    parallelize_module(model, tp_mesh, {
        "tok_emb": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        "lm_head": ColwiseParallel(output_layouts=Shard(-1), use_local_output=False),
    })
    if tied:
        model.lm_head.weight = model.tok_emb.weight
    rows = model.lm_head.weight.size(0)
    padding = None
    if rows > model.vocab_size:  # -inf on the padding rows' logits, added shard by shard
        bias = torch.zeros(rows, device=model.lm_head.weight.device)
        bias[model.vocab_size:] = float("-inf")
        padding = distribute_tensor(bias, tp_mesh, [Shard(0)])
    model.head_and_loss = functools.partial(_vocab_parallel_head_and_loss, model, padding)


def _vocab_parallel_head_and_loss(model: GPT, padding, x: torch.Tensor, targets: torch.Tensor | None):
    """``GPT.head_and_loss`` with vocabulary-sharded logits (called inside ``loss_parallel``, as is the backward):
    the loss comes back a plain tensor; the logits stay sharded beside a loss (cropping them would gather them) and
    are gathered and cropped when there is no target."""
    logits = model.lm_head(model.ln_f(x))
    if padding is not None:
        logits = logits + padding
    if targets is None:
        return logits.full_tensor()[..., : model.vocab_size], None
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.reshape(-1))
    return logits, loss.to_local()

