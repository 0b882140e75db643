"""The config schema and its meaning checks.

The dataclasses are registered with Hydra's ConfigStore as the schema under conf/config.yaml, so an
unknown key, a wrong type or a value outside a choice field's enum is refused by Hydra itself while
composing (all but a key forced in with ``+``, which ``unknown_keys`` names). ``validate`` then checks
what types cannot express (divisibility, ranges, the device) and returns every problem at once, each in
words that name the field, its value and a fix. This module imports no torch: the viewer uses it.

Defaults live here, once: every field's default is its dataclass default, and the YAML under conf/
states only what differs from it (conf/config.yaml picks the groups; a group file such as
conf/model/tiny.yaml names what makes that preset; an experiment preset names what differs from the
defaults). The model's shape (n_layer, n_head, n_embd, block_size) has no default: a model preset or
the command line gives it. ``nanogpt-run --cfg job`` prints every field with its value. Choice fields
are ``Choice`` enums, which compare, hash, format and serialise as their value ("fp32"), so code and
run.json see plain strings.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import stat
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

from omegaconf import MISSING

# The shipped configs, found through the package: nanogpt_runner.conf is the top-level conf/ (pyproject.toml
# maps it), so an editable install reads edits there at once and a wheel carries the files inside the package.
CONF_DIR = Path(str(importlib.resources.files("nanogpt_runner.conf")))


class Choice(str, Enum):
    """A choice field's value: equal to, hashed, formatted and serialised as its string (a StrEnum)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    auto = "auto"  # the faster of fp32 and bf16 for this model, timed on this machine (nanogpt_runner.autotune)


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ResumeMode(Choice):
    auto = "auto"  # continue a run dir that already has checkpoints
    never = "never"  # refuse to reuse one


class NanPolicy(Choice):
    stop = "stop"  # fail at a non-finite loss or grad norm
    skip_step = "skip_step"  # drop that update (counted)


class PlanMode(Choice):
    off = "off"  # train with the settings as given
    auto = "auto"  # time candidate settings first (nanogpt-plan, cached) and train with the fastest that fits


class Attention(Choice):
    sdpa = "sdpa"
    math = "math"


class Activation(Choice):
    gelu = "gelu"  # exact GELU (nanoGPT's)
    gelu_tanh = "gelu_tanh"  # GPT-2's tanh approximation


class OptimizerName(Choice):
    adamw = "adamw"  # AdamW for every parameter (nanoGPT's decay groups)
    muon = "muon"  # Muon for the blocks' 2-D weights, AdamW for embeddings, head, norms and biases


class DataParallel(Choice):
    ddp = "ddp"
    fsdp = "fsdp"
    none = "none"


class Backend(Choice):
    auto = "auto"  # nccl on CUDA, gloo on the CPU
    gloo = "gloo"
    nccl = "nccl"


class TokenizerName(Choice):
    char = "char"  # one id per character of the corpus
    gpt2 = "gpt2"  # GPT-2's BPE (tiktoken)
    bpe = "bpe"  # a byte-level BPE trained on the corpus (data.vocab_size ids)
    auto = "auto"  # data=bin only: the folder's meta.pkl characters, else GPT-2's BPE


class Dataset(Choice):  # the conf/data presets
    shakespeare_char = "shakespeare_char"
    shakespeare = "shakespeare"
    pystdlib_char = "pystdlib_char"
    text_file = "text_file"
    bin = "bin"


class Objective(Choice):  # what a sweep job returns to a search sweeper
    val_loss = "val_loss"
    val_bpb = "val_bpb"
    tok_per_s = "tok_per_s"
    time_to_target = "time_to_target"


# "1f1b" is not a Python name, hence the functional form.
PipelineSchedule = Choice("PipelineSchedule", [("gpipe", "gpipe"), ("1f1b", "1f1b")])


def choices(enum: type[Choice]) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


PRECISIONS = choices(Precision)
ATTENTION_IMPLEMENTATIONS = choices(Attention)
NAN_POLICIES = choices(NanPolicy)
DP_MODES = choices(DataParallel)
PP_SCHEDULES = choices(PipelineSchedule)
BACKENDS = choices(Backend)
# Which way each sweep objective is better.
OBJECTIVES = {Objective.val_loss: "minimize", Objective.val_bpb: "minimize", Objective.tok_per_s: "maximize",
              Objective.time_to_target: "minimize"}


@dataclass
class ModelConfig:
    name: str = MISSING
    n_layer: int = MISSING  # the shape comes from a model preset (conf/model/) or the command line
    n_head: int = MISSING
    n_embd: int = MISSING
    block_size: int = MISSING
    dropout: float = 0.0
    bias: bool = False
    tie_weights: bool = True
    attention: Attention = Attention.sdpa
    activation: Activation = Activation.gelu
    # scratch | gpt2, gpt2-medium, gpt2-large, gpt2-xl (Hugging Face cache) | a Hugging Face GPT-2 folder,
    # a nanoGPT ckpt.pt, or a run / checkpoint of this runner: the weights a new run starts from.
    init_from: str = "scratch"


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adamw
    lr: float = 1e-3  # AdamW's peak lr (with muon: the embeddings', head's, norms' and biases')
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_iters: int = 100  # linear warm-up steps (more than train.max_iters: the run only warms up)
    decay_iters: int | None = None  # cosine decay to min_lr ends here; None: at train.max_iters
    # name=muon only: torch.optim.Muon for the blocks' 2-D weights (peak lr; its floor is muon_lr * min_lr / lr).
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0


@dataclass
class DataConfig:
    name: Dataset = Dataset.shakespeare_char
    path: str | None = None  # text_file: a file or folder of .txt/.md/.jsonl/.parquet; bin: a nanoGPT data folder
    url: str = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    download_timeout_s: float = 10.0
    cache_dir: str | None = None  # None: $XDG_CACHE_HOME/nanogpt-runner or ~/.cache/nanogpt-runner
    val_fraction: float = 0.1
    tokenizer: TokenizerName = TokenizerName.char
    vocab_size: int = 4096  # tokenizer=bpe: ids to learn (256 bytes and end-of-text included)
    text_field: str = "text"  # .jsonl and .parquet: the field (column) holding each document
    num_proc: int | None = None  # tokenizer processes while preparing; None: one per CPU core


@dataclass
class ParallelConfig:
    """The process layout: world = nnodes * nproc_per_node = dp_degree * tp * pp (dp_degree is what is left)."""

    name: str = "single"
    nproc_per_node: int = 1
    nnodes: int = 1
    dp: DataParallel = DataParallel.ddp  # how the data-parallel replicas (world / (tp*pp)) are kept in sync
    tp: int = 1  # tensor-parallel degree: heads and MLP width split across this many ranks
    pp: int = 1  # pipeline-parallel degree: layers split into this many stages
    pp_schedule: PipelineSchedule = PipelineSchedule["1f1b"]
    microbatches: int = 2  # pipeline micro-batches per micro-step (must divide train.batch_size)
    backend: Backend = Backend.auto
    threads_per_rank: int | None = None  # CPU threads per rank; None: the cores divided by the local ranks
    max_restarts: int = 0  # torchrun restarts the whole group this many times after a failure
    rdzv_endpoint: str | None = None  # HOST:PORT of the c10d rendezvous; needed when nnodes > 1
    rdzv_id: str = "nanogpt"  # rendezvous id shared by the nodes of one run
    timeout_min: int = 30  # collective timeout, and how long torchrun lets ranks checkpoint after a stop signal


@dataclass
class TrainConfig:
    max_iters: int = 2000  # optimizer steps
    batch_size: int = 12  # micro-batch: sequences per forward pass (per data-parallel rank)
    grad_accum: int = 1  # micro-batches per optimizer step
    eval_interval: int = 250  # steps between evaluations (also at step 0 and at the end)
    eval_iters: int = 20  # batches per evaluation of each split
    log_interval: int = 10  # steps between metrics lines
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    precision: Precision = Precision.auto
    compile: bool = False  # torch.compile the model
    recompute: bool = False  # activation recomputation per block (less memory, more compute)
    seed: int = 1337
    ckpt_interval: int = 500  # steps between checkpoints (0: only at the end); a new best val loss saves too
    keep_last: int = 2  # newest checkpoints kept, besides the best-by-val one
    # true: save only when an eval sets a new best val loss (and on a stop signal), nanoGPT's
    # always_save_checkpoint=False: no interval or end saves, so an overfitting fine-tune keeps its best
    ckpt_only_on_improvement: bool = False
    resume: ResumeMode = ResumeMode.auto
    nan_policy: NanPolicy = NanPolicy.stop
    device: Device = Device.auto
    tf32: bool = True  # precision=fp32 on an Ampere+ GPU: TF32 tensor cores for matmuls; false: IEEE fp32
    plan: PlanMode = PlanMode.off
    # Early stops and budgets (None: off). Each ends the run as completed, with its stop_reason in run.json.
    target_loss: float | None = None  # stop at the first eval whose val loss is at or below this
    early_stop_patience: int | None = None  # stop after this many evals without a new best val loss
    divergence_factor: float | None = None  # stop when val loss exceeds this many times the best so far
    max_time_s: float | None = None  # training wall-clock budget (the lr schedule follows the time used)
    max_tokens: int | None = None  # token budget: the run trains min(max_iters, the steps that fit) steps
    max_flops: float | None = None  # FLOPs budget (tokens x the model's training FLOPs per token), like max_tokens


@dataclass
class PlanConfig:
    budget_s: float = 6.0  # seconds nanogpt-plan (and train.plan=auto) may spend timing candidates: <10% of a baby run


@dataclass
class SweepConfig:
    objective: Objective = Objective.val_loss  # what a sweep job returns to Hydra's sweeper


@dataclass
class RunConfig:
    name: str = "${model.name}"
    root: str = "outputs"
    progress: bool = True  # rich progress bar when the console is a terminal
    group: str | None = None  # runs sharing a group are one configuration over seeds (null: same config but seed)
    tags: list[str] = field(default_factory=list)  # labels to filter runs by (viewer, trackers): run.tags=[a,b]
    notes: str = ""  # a free-text note on the run (the viewer edits it later in the run's annotations.json)


# Trackers the run's metrics are mirrored to (nanogpt_runner.loggers): pick with logger=[tensorboard,wandb].
@dataclass
class TensorBoardLogger:
    enabled: bool = False
    dir: str = "tensorboard"  # event files, under the run directory


@dataclass
class WandbLogger:
    enabled: bool = False  # WANDB_MODE=offline (or wandb offline) keeps the run on disk, for wandb sync later
    project: str = "nanogpt-runner"
    entity: str | None = None  # the team or user (null: wandb's default)


@dataclass
class TrackioLogger:
    enabled: bool = False  # local-first: a SQLite store under ~/.cache/huggingface/trackio (TRACKIO_DIR moves it)
    project: str = "nanogpt-runner"


@dataclass
class MlflowLogger:
    enabled: bool = False
    tracking_uri: str | None = None  # null: MLFLOW_TRACKING_URI, else mlflow's default (sqlite:///mlflow.db here)
    experiment: str = "nanogpt-runner"


@dataclass
class LoggerConfig:
    tensorboard: TensorBoardLogger = field(default_factory=TensorBoardLogger)
    wandb: WandbLogger = field(default_factory=WandbLogger)
    trackio: TrackioLogger = field(default_factory=TrackioLogger)
    mlflow: MlflowLogger = field(default_factory=MlflowLogger)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    resume: str | None = None  # a run dir or checkpoint folder to continue in place (README: Checkpoints and resume)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}: configs compared and shown field by field (lists and empty
    sections stay values)."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def register_schema() -> None:
    """Make the schema available to conf/config.yaml's defaults list as ``schema``."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="schema", node=Config)
    # ${floordiv:32,${train.grad_accum}}: a micro-batch that keeps the global batch fixed (hparams_search=batch_accum).
    OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b), replace=True)


@dataclass(frozen=True)
class DeviceCaps:
    """What the machine can do, found by nanogpt_runner.hardware (which imports torch)."""

    kind: str  # "cpu" or "cuda"
    bf16: bool
    cuda_available: bool


# A run's name is part of its folder name and shows in tables and terminals: a plain name only.
RUN_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_NOTES_CHARS = 2000  # a run's note (run.notes, the viewer's note box)
DOWNLOAD_SCHEMES = ("http", "https")


def data_source_problems(data) -> list[str]:
    """Where data may come from: a download only over http(s) (a file:// URL would read any local file into
    the corpus; data.path is the way to name one), and a path only to a regular file or a folder (a FIFO,
    device or socket would block the run or never end)."""
    problems = []
    url = urlsplit(data.url or "")
    if url.scheme.lower() == "file":
        problems.append(f"data.url={data.url} is a local file: use data.path={url.path or 'FILE'} (with "
                        f"data=text_file) instead; data.url downloads over http or https only.")
    elif data.url and (url.scheme.lower() not in DOWNLOAD_SCHEMES or not url.netloc):
        problems.append(f"data.url={data.url!r} is not an http(s) address: use https://HOST/PATH, or data.path for a "
                        f"local file.")
    if data.path is not None:
        try:
            mode = os.stat(Path(data.path).expanduser()).st_mode
        except OSError:
            mode = None  # a missing path has its own message
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            problems.append(f"data.path={data.path} is not a regular file or a folder (a FIFO, device or socket): "
                            f"point it at a text file or a folder of them.")
    return problems


def validate(cfg: Config, device: DeviceCaps | None = None) -> list[str]:
    """Every meaning problem in ``cfg`` as one sentence each; empty when the config is runnable."""
    problems: list[str] = unknown_keys(cfg)
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
    if o.decay_iters is not None and o.decay_iters < max(o.warmup_iters, 1):
        problems.append(
            f"optimizer.decay_iters={o.decay_iters} must be at least warmup_iters={o.warmup_iters} (and 1); "
            f"leave it unset (null) to decay over max_iters."
        )
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        problems.append(f"optimizer.betas={list(o.betas)} must be two numbers in [0, 1), e.g. [0.9,0.99].")
    if o.weight_decay < 0:
        problems.append(f"optimizer.weight_decay={o.weight_decay} must be zero or positive.")
    problems += _muon_problems(o)

    if t.grad_clip < 0:
        problems.append(f"train.grad_clip={t.grad_clip} must be zero (off) or positive.")
    if t.ckpt_interval < 0:
        problems.append(f"train.ckpt_interval={t.ckpt_interval} must be zero (only at the end) or positive.")
    if t.keep_last < 1:
        problems.append(f"train.keep_last={t.keep_last} must be 1 or more: resuming needs the latest checkpoint.")
    problems += _stop_problems(t, cfg.sweep)
    if cfg.plan.budget_s <= 0:
        problems.append(f"plan.budget_s={cfg.plan.budget_s} must be positive: the seconds the plan may spend, e.g. 8.")
    if device is not None:
        problems += _precision_problems(t.precision, device)
    if t.device == "cuda" and device is not None and not device.cuda_available:
        problems.append("train.device=cuda but no CUDA GPU is visible to torch: use train.device=cpu or auto.")

    if d.path is not None and not Path(d.path).expanduser().exists():
        problems.append(
            f"data.path={d.path} does not exist: point it at a text, .jsonl or .parquet file, or a folder of them."
        )
    if d.name == "text_file" and d.path is None:
        problems.append("data=text_file needs data.path=FILE_OR_FOLDER: the text to train on.")
    if d.name == "bin" and (d.path is None or not Path(d.path).expanduser().is_dir()):
        problems.append("data=bin needs data.path=FOLDER: a folder nanoGPT's prepare.py wrote (train.bin, val.bin).")
    if (d.name == "bin") != (d.tokenizer == TokenizerName.auto):
        problems.append(
            "data=bin takes its tokenizer from the folder: use data.tokenizer=auto with it"
            if d.name == "bin" else
            f"data.tokenizer=auto is for data=bin only: use data.tokenizer=char, gpt2 or bpe with data={d.name}."
        )
    if d.tokenizer == TokenizerName.bpe and d.vocab_size < 257:
        problems.append(f"data.vocab_size={d.vocab_size} is too small for a byte-level BPE: it needs 256 byte ids and "
                        f"end-of-text, so at least 257 (e.g. 4096).")
    if d.num_proc is not None and d.num_proc < 1:
        problems.append(f"data.num_proc={d.num_proc} must be 1 or more, or null (one per CPU core).")
    if not d.text_field:
        problems.append("data.text_field is empty: name the .jsonl field / parquet column holding the text.")
    if not 0.0 < d.val_fraction < 1.0:
        problems.append(f"data.val_fraction={d.val_fraction} must be in (0, 1), e.g. 0.1.")

    problems += data_source_problems(d)
    for tag in cfg.run.tags:
        if not RUN_NAME.match(str(tag)):
            problems.append(f"run.tags has {str(tag)!r}: a tag is 1-64 letters, digits, '.', '_' or '-' "
                            f"(e.g. run.tags=[baseline,lr-sweep]).")
    if len(cfg.run.notes) > MAX_NOTES_CHARS:
        problems.append(f"run.notes is {len(cfg.run.notes)} characters: keep a note to {MAX_NOTES_CHARS} at most.")
    if not RUN_NAME.match(str(cfg.run.name)):
        problems.append(f"run.name={cfg.run.name!r} must be 1-64 letters, digits, '.', '_' or '-': it becomes part of "
                        f"the run's folder name (e.g. run.name=lr3e-4_ddp).")
    problems += layout_problems(cfg, device)
    return problems


def _muon_problems(o) -> list[str]:
    """Muon's fields: usable numbers under optimizer=muon, left alone (they would do nothing) otherwise."""
    muon_fields = ("muon_lr", "muon_momentum", "muon_weight_decay")
    if o.name != OptimizerName.muon:
        return [f"optimizer.{name}={o[name]} only applies to optimizer=muon: add optimizer=muon, or drop it."
                for name in muon_fields if o[name] != getattr(OptimizerConfig, name)]
    return [f"optimizer.{name}={o[name]} must be {rule}."
            for name, rule, ok in (("muon_lr", "positive, e.g. 0.02", o.muon_lr > 0),
                                   ("muon_momentum", "in [0, 1), e.g. 0.95", 0 <= o.muon_momentum < 1),
                                   ("muon_weight_decay", "zero or positive", o.muon_weight_decay >= 0))
            if not ok]


def _stop_problems(t, sweep) -> list[str]:
    """The early stops and budgets: each off (null) or a usable number."""
    problems = [
        f"train.{name}={t[name]} must be positive (or null: no {what})."
        for name, what in (("target_loss", "target"), ("max_time_s", "time budget"), ("max_tokens", "token budget"),
                           ("max_flops", "FLOPs budget"))
        if t[name] is not None and t[name] <= 0
    ]
    if t.early_stop_patience is not None and t.early_stop_patience < 1:
        problems.append(f"train.early_stop_patience={t.early_stop_patience} must be 1 or more evals (or null: off).")
    if t.divergence_factor is not None and t.divergence_factor <= 1:
        problems.append(f"train.divergence_factor={t.divergence_factor} must be above 1 (e.g. 2: stop when val loss "
                        f"is twice the best so far), or null: off.")
    if sweep.objective == "time_to_target" and t.target_loss is None:
        problems.append("sweep.objective=time_to_target needs train.target_loss=LOSS: the val loss whose time it "
                        "measures (the run also stops there).")
    return problems


def unknown_keys(cfg: Config) -> list[str]:
    """Keys the schema does not have, one sentence each.

    Composition cannot refuse them all: Hydra applies a ``+key=value`` override with ``force_add``, which
    opens even a structured (schema-typed) node, so ``+model.something=1`` composes; the worker, which
    merges the saved config into the schema again, would then fail after the run directory was made."""
    import dataclasses
    import typing

    from omegaconf import OmegaConf

    def walk(node: dict, schema: type, prefix: str) -> list[str]:
        fields, problems = typing.get_type_hints(schema), []
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key not in fields:
                known = ", ".join(fields)
                problems.append(f"{path} is not a setting of the runner (was it added with +{path}=...?): remove "
                                f"it{f'; the {prefix[:-1]} settings are {known}' if prefix else ''}.")
            elif dataclasses.is_dataclass(fields[key]) and isinstance(value, dict):
                problems += walk(value, fields[key], f"{path}.")
        return problems

    return walk(OmegaConf.to_container(cfg), Config, "")


def _precision_problems(precision: str, device: DeviceCaps) -> list[str]:
    if precision == "fp16" and device.kind == "cpu":
        return [
            "train.precision=fp16 on the CPU: CPUs have no fast fp16 matmul (here about 1000x slower than "
            "fp32); use train.precision=bf16 or fp32."
        ]
    if precision == "bf16" and device.kind == "cuda" and not device.bf16:
        return ["train.precision=bf16 but this GPU has no bf16 support: use train.precision=fp16 or fp32."]
    return []


def dp_degree(par) -> int:
    """Data-parallel replicas: the ranks left once tensor and pipeline parallelism took theirs."""
    return max(par.nproc_per_node * par.nnodes // max(par.tp * par.pp, 1), 1)


def available_cores() -> int:
    """The CPUs this process may run on: a SLURM job's or a container's share (its affinity), not the node's."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this OS (macOS)
        return os.cpu_count() or 1


def threads_per_rank(par, cores: int | None = None) -> int:
    """CPU threads each rank uses: ``parallel.threads_per_rank``, or the available cores shared by the node's
    ranks (ranks x threads above the cores ran 2-6x slower)."""
    return par.threads_per_rank or max((cores or available_cores()) // par.nproc_per_node, 1)


def layout_problems(cfg: Config, device: DeviceCaps | None = None) -> list[str]:
    """Why a parallel layout cannot run as asked, one sentence per problem (empty when it can)."""
    par, m, t = cfg.parallel, cfg.model, cfg.train
    problems = [
        f"parallel.{name}={par[name]} must be a positive integer: set it to 1 or more."
        for name in ("nproc_per_node", "nnodes", "tp", "pp", "microbatches")
        if par[name] < 1
    ]
    if par.max_restarts < 0:
        problems.append(f"parallel.max_restarts={par.max_restarts} must be zero or positive.")
    if par.timeout_min < 1:
        problems.append(f"parallel.timeout_min={par.timeout_min} must be 1 or more (minutes).")
    if par.threads_per_rank is not None and par.threads_per_rank < 1:
        problems.append(f"parallel.threads_per_rank={par.threads_per_rank} must be 1 or more, or null (automatic).")
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
    sharded = par.dp == "fsdp" and dp_degree(par) > 1 or par.tp > 1 or par.pp > 1
    if sharded and t.precision == "fp16":
        problems.append(
            "train.precision=fp16 needs loss scaling, which this runner only synchronises for one process or DDP: "
            "use train.precision=bf16 (no scaler needed) with fsdp, tp or pp."
        )
    elif sharded and t.precision == "auto" and device is not None and device.kind == "cuda" and not device.bf16:
        problems.append(
            "train.precision=auto picks fp16 on this GPU (no native bf16 below compute capability 8.0), and fp16 "
            "needs loss scaling, which this runner only synchronises for one process or DDP: use "
            "train.precision=fp32 with fsdp, tp or pp on this GPU."
        )
    if device is not None:
        if par.backend == "nccl" and device.kind != "cuda":
            problems.append("parallel.backend=nccl needs CUDA GPUs, but this run is on the CPU: use backend=gloo.")
        if par.backend == "gloo" and device.kind == "cuda" and sharded:
            problems.append(
                "parallel.backend=gloo on CUDA GPUs runs only all-reduce and broadcast on GPU tensors, but fsdp "
                "needs all-gather and reduce-scatter, tp scatter and all-gather, pp send and recv: use "
                "parallel.backend=nccl (or auto), or train.device=cpu."
            )
    if par.nnodes > 1 and not par.rdzv_endpoint:
        problems.append(
            f"parallel.nnodes={par.nnodes} needs parallel.rdzv_endpoint=HOST:PORT, an address of the first node that "
            f"every node can reach (submitit jobs on SLURM fill it in themselves)."
        )
    return problems


def config_warnings(cfg: Config, cpu_count: int | None = None) -> list[str]:
    """What runs but is probably not what the user meant: printed before training, never refused."""
    o, t = cfg.optimizer, cfg.train
    found = []
    if o.warmup_iters > t.max_iters >= 1:
        found.append(
            f"optimizer.warmup_iters={o.warmup_iters} is more than train.max_iters={t.max_iters}: the lr only warms "
            f"up (to {t.max_iters / (o.warmup_iters + 1):.0%} of its peak at the last step) and never decays; "
            f"lower warmup_iters for the full schedule.")
    return found + layout_warnings(cfg, cpu_count)


def layout_warnings(cfg: Config, cpu_count: int | None = None) -> list[str]:
    """Layouts that run but probably not as the user hopes: more CPU threads than cores."""
    par = cfg.parallel
    cores = cpu_count or available_cores()
    threads = threads_per_rank(par, cores)
    if cfg.train.device != "cuda" and par.nproc_per_node * threads > cores:
        return [
            f"{par.nproc_per_node} ranks x {threads} threads on {cores} CPU cores: the ranks compete for cores and "
            f"every step waits for the slowest; fine for testing a layout, slow for training."
        ]
    return []


def data_problems(cfg: Config, split_sizes: dict[str, int]) -> list[str]:
    """Problems only visible once the dataset is prepared: a split too short for one micro-batch.

    A micro-batch is train.batch_size windows of block_size + 1 tokens; a split shorter than that many
    distinct windows can only repeat its text within every batch (and a block near the split's length
    makes each step cost as much as a pass over it), so such a run is refused before it starts."""
    t, block = cfg.train, cfg.model.block_size
    needed = t.batch_size * (block + 1)
    size, split = min((size, split) for split, size in split_sizes.items())  # the shortest split decides
    if size >= needed:
        return []
    return [f"model.block_size={block} with train.batch_size={t.batch_size} needs {needed} tokens in every split "
            f"(one micro-batch of distinct sequences), but the {split} split has {size}: lower block_size or "
            f"batch_size, or use more text."]
