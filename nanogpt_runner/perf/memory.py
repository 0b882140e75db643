"""How much memory a run will need on each rank, worked out before any tensor exists.

Arithmetic only, no torch: ``nanogpt-plan --estimate-only``, the launcher's refusal and the viewer all use
it. Each part is counted for the rank that holds the most:

- parameters, gradients and optimizer state: fp32 (autocast keeps fp32 master weights), split over the
  ranks that shard them: FSDP over data-parallel ranks, tensor parallelism over the matrices of each
  block, pipeline parallelism over the blocks (a stage's share, the embedding on the first, the head on
  the last); DDP keeps its gradients in its buckets (no copy), FSDP adds the unsharded blocks it gathers for compute;
- activations: what autograd saves per token and per layer in the forward pass, measured for this
  model (``scripts/calibrate_memory.py``): about 16 floats per embedding channel in fp32 (layer norm
  inputs and outputs, q/k/v, the attention output, the MLP's 4x hidden before and after GELU), 40 bytes
  per channel under bf16/fp16 autocast plus the half-precision copies of the weights; explicit (``math``)
  attention, or dropout on a CPU, adds the T x T attention weights per head (a GPU's fused SDPA kernels
  apply dropout without keeping them); recomputation keeps only each block's
  input plus one block's activations; the logits and their loss add a few floats per vocabulary entry;
- the runtime: on a CPU, the allocator and thread pools' growth seen in the process's resident set
  (calibrated on CPU); on a GPU, the cuBLAS workspace.

Accuracy (tests/test_memory.py, measured against the growth of the resident set over the process's
baseline on a CPU; scripts/bench_memory.py against the CUDA allocator's peak on an H200): within 20% of the
measured peak for the presets and layouts tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nanogpt_runner.config.schema import dp_degree, with_changes

GB = 1e9
FP32 = 4
OPTIMIZER_STATES = {"adamw": 2.0, "muon": 1.0}  # fp32 state tensors per parameter (muon: momentum; AdamW 2 moments)

# Bytes autograd saves per token, per layer and per embedding channel, by compute precision (measured with
# saved-tensor hooks on this model: scripts/calibrate_memory.py).
SAVED_PER_CHANNEL = {"fp32": 64, "half": 40}
# ... and per attention weight (token x head x key position) for explicit attention, or SDPA with dropout
# on a CPU (its fused kernels fall back to explicit attention then).
SAVED_PER_SCORE = {("math", "fp32", False): 4, ("math", "half", False): 2, ("math", "fp32", True): 12,
                   ("math", "half", True): 6, ("sdpa", "fp32", True): 12, ("sdpa", "half", True): 12}
# Devices whose SDPA kernels (flash, memory-efficient) apply dropout inside the kernel and keep no attention
# weights (measured on an H200: counting them put the 10.6M model's estimate at 1.6x its peak).
SDPA_FUSES_DROPOUT = {"cuda"}
DROPOUT_PER_CHANNEL = {"fp32": 8, "half": 10}
# The resident-set growth a CPU process shows beyond its tensors (allocator arenas, oneDNN and OpenMP
# scratch), and the workspace cuBLAS takes from the CUDA allocator.
RUNTIME_BYTES = {"cpu": 80e6, "cuda": 32e6}
# Activations as the device's memory counter sees them, per byte autograd saves: on a CPU the resident set
# also holds the freed temporaries of the forward pass that the allocator keeps (measured: 1.3x, from the
# 0.8M to the 10.6M model); the CUDA allocator's peak counts live tensors, plus the backward's transients
# (measured on an H200: 1.05x puts 10 cases, 0.8M to 124M, fp32 and bf16, at 0.88-1.17 of the peak).
ACTIVATION_SLACK = {"cpu": 1.3, "cuda": 1.05}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one rank needs at its peak (the rank that needs the most), by part."""

    parameters: float
    gradients: float
    optimizer: float
    activations: float
    runtime: float
    precision: str
    where: str  # which rank this is: "each rank", "pipeline stage 0 (largest)", ...

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.runtime

    def parts(self) -> dict[str, float]:
        return {"parameters": self.parameters, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "runtime": self.runtime, "total per rank": self.total}

    def as_record(self) -> dict:
        """run.json's ``memory_estimate``: GB per part, the precision assumed, and which rank."""
        return {**{name.replace(" ", "_"): round(value / GB, 4) for name, value in self.parts().items()},
                "precision": self.precision, "where": self.where}


@dataclass(frozen=True)
class Shape:
    """What the estimate needs from a config, in one place (and with the vocabulary from the data)."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    bias: bool
    tie_weights: bool
    dropout: float
    attention: str

    @classmethod
    def of(cls, model_cfg, vocab_size: int) -> Shape:
        m = model_cfg
        return cls(m.n_layer, m.n_head, m.n_embd, m.block_size, vocab_size, m.bias, m.tie_weights,
                   m.dropout, m.attention)

    def block_params(self) -> int:
        c, b = self.n_embd, int(self.bias)
        attention = 4 * (c * c + b * c)
        mlp = c * 4 * c + b * 4 * c + 4 * c * c + b * c
        norms = 2 * (c + b * c)
        return attention + mlp + norms

    def embedding_params(self) -> int:
        return self.vocab_size * self.n_embd + self.block_size * self.n_embd

    def head_params(self) -> int:
        """ln_f and the lm head (the head's weight counted here only when it is not tied)."""
        return self.n_embd * (1 + int(self.bias)) + (0 if self.tie_weights else self.vocab_size * self.n_embd)

    def total_params(self) -> int:
        return self.embedding_params() + self.n_layer * self.block_params() + self.head_params()


def estimate(cfg, vocab_size: int, device_kind: str = "cpu", precision: str | None = None) -> MemoryEstimate:
    """The peak bytes per rank of training ``cfg`` (a composed config) on ``device_kind``.

    ``precision`` overrides ``train.precision``; ``auto`` (not yet decided) takes the larger of fp32 and bf16.
    """
    precision = precision or cfg.train.precision
    if precision == "auto":
        return max((estimate(cfg, vocab_size, device_kind, p) for p in ("fp32", "bf16")), key=lambda e: e.total)
    shape = Shape.of(cfg.model, vocab_size)
    par, t = cfg.parallel, cfg.train
    dp = dp_degree(par)
    tp, pp = max(par.tp, 1), max(par.pp, 1)
    fsdp = par.dp == "fsdp" and dp > 1

    # This rank's share of the parameters: the first pipeline stage (embeddings) is the largest unless the
    # head is untied and larger; tensor parallelism splits the block matrices, not norms or embeddings.
    layers = shape.n_layer // pp
    block_matrices = 12 * shape.n_embd * shape.n_embd
    block = (shape.block_params() - block_matrices) + block_matrices / tp
    ends = max(shape.embedding_params() + (shape.head_params() if pp == 1 else 0),
               shape.head_params() + (shape.vocab_size * shape.n_embd if pp > 1 and shape.tie_weights else 0))
    local_params = layers * block + ends
    shard = dp if fsdp else 1
    parameters = FP32 * local_params / shard
    gradients = parameters
    optimizer = OPTIMIZER_STATES.get(cfg.optimizer.name, 2.0) * parameters
    if fsdp:
        # Gathered for compute: the root (embeddings, head) and two blocks (the current and the prefetched),
        # with their unsharded gradients while they are reduce-scattered. Accumulating over micro-steps without
        # a reduce-scatter (set_requires_gradient_sync(False)) keeps every parameter's unsharded fp32 gradient
        # until the last micro-step instead.
        gathered = FP32 * (ends + 2 * block)
        parameters += gathered
        # A pipeline's schedule does the same over its pieces (one reduce-scatter after the last).
        gradients += FP32 * local_params if t.grad_accum > 1 or pp > 1 else gathered

    slack = ACTIVATION_SLACK.get(device_kind, 1.0)
    if pp == 1:
        tokens = t.batch_size * shape.block_size
        activations = slack * activation_bytes(shape, tokens, precision, t.recompute, layers, tp,
                                               device_kind=device_kind)
        where = "each rank"
    else:
        # Pieces of micro-batch in flight: a step runs microbatches x grad_accum pieces; GPipe runs every piece's
        # forward before any backward; 1F1B keeps up to pp on the first stage, one on the last (which also holds the
        # logits: the larger with a big vocabulary).
        piece_tokens = t.batch_size / par.microbatches * shape.block_size
        per_step = par.microbatches * t.grad_accum
        first = per_step if par.pp_schedule == "gpipe" else min(pp, per_step)
        last = per_step if par.pp_schedule == "gpipe" else 1
        stages = {name: activation_bytes(shape, pieces * piece_tokens, precision, t.recompute, layers, tp,
                                         with_head=name == "last", device_kind=device_kind)
                  for name, pieces in (("first", first), ("last", last))}
        largest = max(stages, key=stages.get)
        activations = slack * stages[largest]
        where = f"the {largest} pipeline stage (the larger)"
    return MemoryEstimate(parameters, gradients, optimizer, activations, RUNTIME_BYTES.get(device_kind, 0.0),
                          precision, where)


def activation_bytes(shape: Shape, tokens: float, precision: str, recompute: bool, layers: int, tp: int = 1,
                     with_head: bool = True, device_kind: str = "cpu") -> float:
    """What the forward pass leaves for the backward pass (plus the largest transient), for ``tokens`` tokens
    through ``layers`` blocks, the embeddings and (``with_head``) the head and loss."""
    kind = "fp32" if precision == "fp32" else "half"
    c, heads_scores = shape.n_embd, shape.n_head * shape.block_size
    dropout = shape.dropout > 0
    per_channel = SAVED_PER_CHANNEL[kind] + (DROPOUT_PER_CHANNEL[kind] if dropout else 0)
    # Layer norms and the residual stream stay whole under tensor parallelism; the rest is split.
    replicated = 4 * FP32
    per_layer = c * (replicated + (per_channel - replicated) / tp)
    if not (shape.attention == "sdpa" and device_kind in SDPA_FUSES_DROPOUT):
        per_layer += heads_scores * SAVED_PER_SCORE.get((shape.attention, kind, dropout), 0) / tp
    per_layer *= tokens
    weight_casts = 0.0 if kind == "fp32" else 2 * 12 * c * c / tp  # autocast's half copies of the block weights
    if recompute:
        # Each block's input; in the backward pass one block's recomputed activations and their gradients.
        saved = layers * tokens * c * FP32 + 2 * per_layer
    else:
        saved = layers * per_layer
    saved += layers * weight_casts
    # Embedding output and token ids; with the head: ln_f in/out, the logits (kept by the caller during
    # backward), their fp32 log-softmax and its gradient.
    ends = tokens * (c * FP32 + 16)
    if with_head:
        v = shape.vocab_size
        ends += tokens * (2 * c * FP32 + (3 * FP32 if kind == "fp32" else 2 + 2 * FP32) * v)
        if kind != "fp32":
            ends += 2 * v * c
    return saved + ends


def available_ram() -> float:
    """Bytes of RAM the kernel says a new allocation can get without swapping (MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return math.inf


def what_fits(cfg, vocab_size: int, device_kind: str, available: float, ranks_here: int = 1) -> list[str]:
    """Overrides that train the same global batch within ``available`` bytes (for ``ranks_here`` ranks):
    recomputation, then the micro-batch halved with accumulation doubled, then both."""
    t = cfg.train
    options = []
    for recompute in (False, True):
        batch, accum = t.batch_size, t.grad_accum
        while batch >= 1:
            if (recompute, batch) != (t.recompute, t.batch_size):
                trial = _with_train(cfg, recompute=recompute, batch_size=batch, grad_accum=accum)
                if ranks_here * estimate(trial, vocab_size, device_kind).total <= available:
                    parts = ["train.recompute=true"] if recompute and not t.recompute else []
                    if batch != t.batch_size:
                        parts.append(f"train.batch_size={batch} train.grad_accum={accum}")
                    options.append(" ".join(parts))
                    break
            if batch % 2:
                break
            batch, accum = batch // 2, accum * 2
    return options


def _with_train(cfg, **changes):
    return with_changes(cfg, train=changes)


def refusal(cfg, vocab_size: int, device_kind: str, available: float, ranks_here: int = 1,
            process_bytes: float = 0.0) -> str | None:
    """A sentence refusing the run when ``ranks_here`` ranks of it (each also costing ``process_bytes`` of
    its own start-up) would not fit in ``available`` bytes; None when it fits."""
    est = estimate(cfg, vocab_size, device_kind)
    needed = ranks_here * (est.total + process_bytes)
    if needed <= available:
        return None
    where = "the CPU's available RAM" if device_kind == "cpu" else "the GPU's free memory"
    per_rank = f" ({ranks_here} ranks on this machine)" if ranks_here > 1 else ""
    fixes = what_fits(cfg, vocab_size, device_kind, available - ranks_here * process_bytes, ranks_here)
    fix = "use " + ", or ".join(fixes) if fixes else "use a smaller model or more devices (parallel=fsdp, tp or pp)"
    return (f"memory: this run needs about {est.total / GB:.2f} GB per rank{per_rank} (parameters "
            f"{est.parameters / GB:.2f}, gradients {est.gradients / GB:.2f}, optimizer {est.optimizer / GB:.2f}, "
            f"activations {est.activations / GB:.2f} GB), more than {where} ({available / GB:.2f} GB): {fix}.")


def size(nbytes: float) -> str:
    """A byte count as people read it: MB below a gigabyte, GB above."""
    return f"{nbytes / 1e6:,.1f} MB" if nbytes < GB else f"{nbytes / GB:,.2f} GB"
