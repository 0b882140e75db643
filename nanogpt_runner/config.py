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
DEVICES = ("auto", "cpu", "cuda")


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
    name: str = "single"
    nproc_per_node: int = 1


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
        problems.append(f"model.attention={m.attention!r} is unknown: use one of {', '.join(ATTENTION_IMPLEMENTATIONS)}.")

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
        problems.append(f"data.path={d.path} does not exist: point it at a UTF-8 text file (or a folder of .txt files).")
    if d.name == "text_file" and d.path is None:
        problems.append("data=text_file needs data.path=FILE_OR_FOLDER: the text to train on.")
    if not 0.0 < d.val_fraction < 1.0:
        problems.append(f"data.val_fraction={d.val_fraction} must be in (0, 1), e.g. 0.1.")

    if cfg.parallel.nproc_per_node != 1:
        problems.append(
            f"parallel.nproc_per_node={cfg.parallel.nproc_per_node}: this version trains in one process; "
            f"set parallel.nproc_per_node=1."
        )
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


def data_problems(cfg, split_sizes: dict[str, int]) -> list[str]:
    """Problems only visible once the dataset is prepared: a block that does not fit a split."""
    needed = cfg.model.block_size + 1
    return [
        f"model.block_size={cfg.model.block_size} needs at least {needed} tokens in every split, but the "
        f"{split} split has {size}: lower block_size or use more text."
        for split, size in split_sizes.items()
        if size < needed
    ]
