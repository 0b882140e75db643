"""The config schema and its meaning checks.

The dataclasses are registered with Hydra's ConfigStore as the schema under conf/config.yaml, so an
unknown key or a wrong type is refused by Hydra itself while composing. ``validate`` then checks what
types cannot express (divisibility, ranges, the device) and returns every problem at once, each in
words that name the field, its value and a fix. This module imports no torch: the viewer uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DATASETS = ("shakespeare_char", "pystdlib_char", "text_file")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "math")
ACTIVATIONS = ("gelu", "gelu_tanh")  # exact GELU (nanoGPT's) | GPT-2's tanh approximation
DEVICES = ("auto", "cpu", "cuda")
RESUME_MODES = ("auto", "never")
NAN_POLICIES = ("stop", "skip_step")
# What a sweep job can return to a search sweeper, and which way is better.
OBJECTIVES = {"val_loss": "minimize", "val_bpb": "minimize", "tok_per_s": "maximize", "time_to_target": "minimize"}


@dataclass
class ModelConfig:
    name: str = MISSING
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = False
    tie_weights: bool = True
    attention: str = "sdpa"
    activation: str = "gelu"
    # scratch | gpt2, gpt2-medium, gpt2-large, gpt2-xl (Hugging Face cache) | a Hugging Face GPT-2 folder,
    # a nanoGPT ckpt.pt, or a run / checkpoint of this runner: the weights a new run starts from.
    init_from: str = "scratch"


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_iters: int = 100
    decay_iters: int | None = None


@dataclass
class DataConfig:
    name: str = "shakespeare_char"
    path: str | None = None
    url: str = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    download_timeout_s: float = 10.0
    cache_dir: str | None = None
    val_fraction: float = 0.1


@dataclass
class ParallelConfig:
    """The process layout: world = nnodes * nproc_per_node = dp_degree * tp * pp (dp_degree is what is left)."""

    name: str = "single"
    nproc_per_node: int = 1
    nnodes: int = 1
    dp: str = "ddp"  # ddp | fsdp | none: how the data-parallel replicas (world / (tp*pp)) are kept in sync
    tp: int = 1  # tensor-parallel degree: heads and MLP width split across this many ranks
    pp: int = 1  # pipeline-parallel degree: layers split into this many stages
    pp_schedule: str = "1f1b"  # gpipe | 1f1b
    microbatches: int = 2  # pipeline micro-batches per micro-step (must divide train.batch_size)
    backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | gloo | nccl
    threads_per_rank: int | None = None  # CPU threads per rank; None: the cores divided by the local ranks
    max_restarts: int = 0  # torchrun restarts the whole group this many times after a failure
    rdzv_endpoint: str | None = None  # HOST:PORT of the c10d rendezvous; needed when nnodes > 1
    rdzv_id: str = "nanogpt"  # rendezvous id shared by the nodes of one run


@dataclass
class TrainConfig:
    max_iters: int = 2000
    batch_size: int = 12
    grad_accum: int = 1
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    grad_clip: float = 1.0
    precision: str = "auto"
    compile: bool = False
    recompute: bool = False
    seed: int = 1337
    ckpt_interval: int = 500
    keep_last: int = 2  # newest checkpoints kept, besides the best-by-val one
    resume: str = "auto"  # auto: continue a run dir that has checkpoints | never: refuse to reuse one
    nan_policy: str = "stop"  # stop: fail at a non-finite loss/grad norm | skip_step: drop that update
    device: str = "auto"


@dataclass
class RunConfig:
    name: str = "run"
    root: str = "outputs"
    progress: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    resume: str | None = None


def register_schema() -> None:
    """Make the schema available to conf/config.yaml's defaults list as ``schema``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="schema", node=Config)


@dataclass(frozen=True)
class DeviceCaps:
    """What the machine can do, found by nanogpt_runner.device (which imports torch)."""

    kind: str  # "cpu" or "cuda"
    bf16: bool
    fp16_fast: bool
    cuda_available: bool


def validate(cfg, device: DeviceCaps | None = None) -> list[str]:
    """Every meaning problem in ``cfg`` as one sentence each; empty when the config is runnable."""
    problems: list[str] = []
    m, o, t, d = cfg.model, cfg.optimizer, cfg.train, cfg.data

    for section, names in (
        ("model", ("n_layer", "n_head", "n_embd", "block_size")),
        ("train", ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval")),
    ):
        for name in names:
            value = cfg[section][name]
            if value < 1:
                problems.append(f"{section}.{name}={value} must be a positive integer: set it to 1 or more.")
    if m.n_head >= 1 and m.n_embd % m.n_head:
        lower = m.n_embd - m.n_embd % m.n_head
        problems.append(
            f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}: each head needs an equal "
            f"share of the embedding; use n_embd={lower or m.n_head} or {lower + m.n_head}, or another n_head."
        )
    if not 0.0 <= m.dropout < 1.0:
        problems.append(f"model.dropout={m.dropout} is outside [0, 1): use e.g. 0.0 or 0.2.")
    if m.attention not in ATTENTION_IMPLEMENTATIONS:
        choices = ", ".join(ATTENTION_IMPLEMENTATIONS)
        problems.append(f"model.attention={m.attention!r} is unknown: use one of {choices}.")
    if m.activation not in ACTIVATIONS:
        problems.append(f"model.activation={m.activation!r} is unknown: use one of {', '.join(ACTIVATIONS)}.")

    if o.lr <= 0:
        problems.append(f"optimizer.lr={o.lr} must be positive: e.g. optimizer.lr=1e-3.")
    if o.min_lr < 0:
        problems.append(f"optimizer.min_lr={o.min_lr} must be zero or positive.")
    elif o.min_lr > o.lr > 0:
        problems.append(
            f"optimizer.min_lr={o.min_lr} is larger than optimizer.lr={o.lr}: the cosine schedule decays "
            f"from lr to min_lr; set min_lr to at most {o.lr} (nanoGPT uses lr/10)."
        )
    if o.warmup_iters < 0:
        problems.append(f"optimizer.warmup_iters={o.warmup_iters} must be zero or positive.")
    elif o.warmup_iters > t.max_iters >= 1:
        problems.append(
            f"optimizer.warmup_iters={o.warmup_iters} is more than train.max_iters={t.max_iters}: the run "
            f"would end before warm-up does; lower warmup_iters or raise max_iters."
        )
    if o.decay_iters is not None and o.decay_iters < max(o.warmup_iters, 1):
        problems.append(
            f"optimizer.decay_iters={o.decay_iters} must be at least warmup_iters={o.warmup_iters} (and 1); "
            f"leave it unset (null) to decay over max_iters."
        )
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        problems.append(f"optimizer.betas={list(o.betas)} must be two numbers in [0, 1), e.g. [0.9,0.99].")
    if o.weight_decay < 0:
        problems.append(f"optimizer.weight_decay={o.weight_decay} must be zero or positive.")
    if o.name != "adamw":
        problems.append(f"optimizer.name={o.name!r} is unknown: the runner trains with adamw.")

    if t.grad_clip < 0:
        problems.append(f"train.grad_clip={t.grad_clip} must be zero (off) or positive.")
    if t.ckpt_interval < 0:
        problems.append(f"train.ckpt_interval={t.ckpt_interval} must be zero (only at the end) or positive.")
    if t.keep_last < 1:
        problems.append(f"train.keep_last={t.keep_last} must be 1 or more: resuming needs the latest checkpoint.")
    for name, allowed in (("resume", RESUME_MODES), ("nan_policy", NAN_POLICIES)):
        if t[name] not in allowed:
            problems.append(f"train.{name}={t[name]!r} is unknown: use one of {', '.join(allowed)}.")
    if t.device not in DEVICES:
        problems.append(f"train.device={t.device!r} is unknown: use one of {', '.join(DEVICES)}.")
    if t.precision not in PRECISIONS:
        problems.append(f"train.precision={t.precision!r} is unknown: use one of {', '.join(PRECISIONS)}.")
    elif device is not None:
        problems += _precision_problems(t.precision, device)
    if t.device == "cuda" and device is not None and not device.cuda_available:
        problems.append("train.device=cuda but no CUDA GPU is visible to torch: use train.device=cpu or auto.")

    if d.name not in DATASETS:
        problems.append(f"data.name={d.name!r} is unknown: use data=shakespeare_char, pystdlib_char or text_file.")
    if d.path is not None and not Path(d.path).expanduser().exists():
        problems.append(
            f"data.path={d.path} does not exist: point it at a UTF-8 text file (or a folder of .txt files)."
        )
    if d.name == "text_file" and d.path is None:
        problems.append("data=text_file needs data.path=FILE_OR_FOLDER: the text to train on.")
    if not 0.0 < d.val_fraction < 1.0:
        problems.append(f"data.val_fraction={d.val_fraction} must be in (0, 1), e.g. 0.1.")

    problems += layout_problems(cfg, device)
    return problems


def _precision_problems(precision: str, device: DeviceCaps) -> list[str]:
    if precision == "fp16" and device.kind == "cpu":
        return [
            "train.precision=fp16 on the CPU: CPUs have no fast fp16 matmul (here about 1000x slower than "
            "fp32); use train.precision=bf16 or fp32."
        ]
    if precision == "bf16" and device.kind == "cuda" and not device.bf16:
        return ["train.precision=bf16 but this GPU has no bf16 support: use train.precision=fp16 or fp32."]
    return []


DP_MODES = ("ddp", "fsdp", "none")
PP_SCHEDULES = ("gpipe", "1f1b")
BACKENDS = ("auto", "gloo", "nccl")


def dp_degree(par) -> int:
    """Data-parallel replicas: the ranks left once tensor and pipeline parallelism took theirs."""
    return max(par.nproc_per_node * par.nnodes // max(par.tp * par.pp, 1), 1)


def layout_problems(cfg, device: DeviceCaps | None = None) -> list[str]:
    """Why a parallel layout cannot run as asked, one sentence per problem (empty when it can)."""
    par, m, t = cfg.parallel, cfg.model, cfg.train
    problems = [
        f"parallel.{name}={par[name]} must be a positive integer: set it to 1 or more."
        for name in ("nproc_per_node", "nnodes", "tp", "pp", "microbatches")
        if par[name] < 1
    ]
    if par.max_restarts < 0:
        problems.append(f"parallel.max_restarts={par.max_restarts} must be zero or positive.")
    if par.threads_per_rank is not None and par.threads_per_rank < 1:
        problems.append(f"parallel.threads_per_rank={par.threads_per_rank} must be 1 or more, or null (automatic).")
    for name, allowed in (("dp", DP_MODES), ("pp_schedule", PP_SCHEDULES), ("backend", BACKENDS)):
        if par[name] not in allowed:
            problems.append(f"parallel.{name}={par[name]!r} is unknown: use one of {', '.join(allowed)}.")
    if problems:
        return problems

    world = par.nproc_per_node * par.nnodes
    if world % (par.tp * par.pp):
        problems.append(
            f"world size {world} (nnodes {par.nnodes} x nproc_per_node {par.nproc_per_node}) is not a multiple of "
            f"tp*pp = {par.tp}*{par.pp}: world size must equal dp*tp*pp; change nproc_per_node, tp or pp."
        )
    elif par.dp == "none" and world != par.tp * par.pp:
        problems.append(
            f"parallel.dp=none but world size {world} != tp*pp = {par.tp * par.pp}: the extra ranks would "
            f"be data-parallel replicas; set parallel.dp=ddp or fsdp, or use tp*pp ranks in all."
        )
    if par.tp > 1:
        if m.n_head % par.tp:
            problems.append(
                f"model.n_head={m.n_head} is not divisible by parallel.tp={par.tp}: tensor parallelism gives "
                f"each rank whole heads; use a tp that divides n_head."
            )
        if (4 * m.n_embd) % par.tp:
            problems.append(
                f"the MLP width 4*n_embd={4 * m.n_embd} is not divisible by parallel.tp={par.tp}: "
                f"use a tp that divides it."
            )
        if par.dp == "ddp" and dp_degree(par) > 1:
            problems.append(
                "parallel.dp=ddp with parallel.tp>1 and several data-parallel replicas: DDP does not compose "
                "with tensor-parallel (DTensor) parameters; use parallel.dp=fsdp (FSDP2 does)."
            )
        if par.pp > 1:
            problems.append(
                "parallel.tp>1 together with parallel.pp>1 is not supported: use tensor or pipeline parallelism "
                "(each combines with data parallelism)."
            )
    if par.pp > 1:
        if m.n_layer % par.pp:
            problems.append(
                f"model.n_layer={m.n_layer} is not divisible by parallel.pp={par.pp}: every pipeline stage gets an "
                f"equal number of layers; use a pp that divides n_layer."
            )
        if t.batch_size % par.microbatches:
            problems.append(
                f"train.batch_size={t.batch_size} is not divisible by parallel.microbatches={par.microbatches}: the "
                f"pipeline splits each micro-batch into equal parts; use a batch_size that is a multiple of it."
            )
        if par.pp_schedule == "1f1b" and par.microbatches < par.pp:
            problems.append(
                f"parallel.pp_schedule=1f1b needs parallel.microbatches >= pp ({par.microbatches} < {par.pp}): "
                f"raise microbatches or use pp_schedule=gpipe."
            )
    if t.precision == "fp16" and (par.dp == "fsdp" and dp_degree(par) > 1 or par.tp > 1 or par.pp > 1):
        problems.append(
            "train.precision=fp16 needs loss scaling, which this runner only synchronises for one process or DDP: "
            "use train.precision=bf16 (no scaler needed) with fsdp, tp or pp."
        )
    if device is not None:
        if par.backend == "nccl" and device.kind != "cuda":
            problems.append("parallel.backend=nccl needs CUDA GPUs, but this run is on the CPU: use backend=gloo.")
    if par.nnodes > 1 and not par.rdzv_endpoint:
        problems.append(
            f"parallel.nnodes={par.nnodes} needs parallel.rdzv_endpoint=HOST:PORT, an address of the first node that "
            f"every node can reach (submitit jobs on SLURM fill it in themselves)."
        )
    return problems


def layout_warnings(cfg, cpu_count: int | None = None) -> list[str]:
    """Layouts that run but probably not as the user hopes: more CPU threads than cores."""
    import os

    par = cfg.parallel
    cores = cpu_count or os.cpu_count() or 1
    threads = par.threads_per_rank or max(cores // par.nproc_per_node, 1)
    if cfg.train.device != "cuda" and par.nproc_per_node * threads > cores:
        return [
            f"{par.nproc_per_node} ranks x {threads} threads on {cores} CPU cores: the ranks compete for cores and "
            f"every step waits for the slowest; fine for testing a layout, slow for training."
        ]
    return []


def data_problems(cfg, split_sizes: dict[str, int]) -> list[str]:
    """Problems only visible once the dataset is prepared: a block that does not fit a split."""
    needed = cfg.model.block_size + 1
    return [
        f"model.block_size={cfg.model.block_size} needs at least {needed} tokens in every split, but the "
        f"{split} split has {size}: lower block_size or use more text."
        for split, size in split_sizes.items()
        if size < needed
    ]
