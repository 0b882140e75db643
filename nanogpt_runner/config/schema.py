"""The config schema: what a run can be told, and each field's one default.

The dataclasses are registered with Hydra's ConfigStore as the schema under conf/config.yaml, so an
unknown key, a wrong type or a value outside a choice field's enum is refused by Hydra itself while
composing (all but a key forced in with ``+``, which validation.unknown_keys names). What types cannot
express (divisibility, ranges, the device) is validation.py's job. This module imports no torch: the viewer
uses it.

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
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from omegaconf import MISSING

# The shipped configs, found through the package: nanogpt_runner.conf is the top-level conf/ (pyproject.toml
# maps it), so an editable install reads edits there at once and a wheel carries the files inside the package.
CONF_DIR = Path(str(importlib.resources.files("nanogpt_runner.conf")))
# Where the packaged tiny-shakespeare (nanogpt_runner/data/corpora) came from; data.url may name it to download.
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


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
    auto = "auto"  # the faster of fp32 and bf16 for this model, timed on this machine (nanogpt_runner.perf.autotune)


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


SCRATCH = "scratch"  # model.init_from for random weights


def starts_from_weights(cfg) -> bool:
    """A new run that starts from weights (``model.init_from``); a resumed run continues from its own."""
    return cfg.model.init_from != SCRATCH and not cfg.resume


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
    init_from: str = SCRATCH


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
    # shakespeare_char/shakespeare: None trains on the tiny-shakespeare copy shipped in the package; an http(s)
    # address is downloaded once instead (TINY_SHAKESPEARE_URL is the copy's origin)
    url: str | None = None
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
    # global batches per evaluation of each split (eval_iters x grad_accum micro-batches per replica, forward only);
    # 10 every 250 steps keeps evaluation under 3% of the default run's compute (docs/configuration.md)
    eval_iters: int = 10
    log_interval: int = 10  # steps between metrics lines
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    precision: Precision = Precision.auto
    # torch.compile the blocks and the head; null (default): off on a CPU; on a GPU decided before the model is built
    # from the expected compile time against the run's steps x the step time it saves (perf/compile_decision.py)
    compile: bool | None = None
    recompute: bool = False  # activation recomputation per block (less memory, more compute)
    seed: int = 1337
    ckpt_interval: int = 500  # steps between checkpoints (0: only at the end); a new best val loss saves too
    keep_last: int = 2  # newest checkpoints kept, besides the best-by-val one
    # true: save only when an eval sets a new best val loss (and on a stop signal), nanoGPT's
    # always_save_checkpoint=False: no interval or end saves, so an overfitting fine-tune keeps its best
    ckpt_only_on_improvement: bool = False
    # true: a run of several processes (DCP's sharded checkpoints) writes each checkpoint in a background thread,
    # training on meanwhile; latest/meta.json name it once its write completed (refused for one process)
    async_checkpoint: bool = False
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


TASK_SUFFIXES = (".jsonl", ".parquet")  # the task files eval.tasks names (data/tasks.py reads them)
NAMED_TASK_NAMES = ("hellaswag",)  # the tasks eval.tasks may name, downloaded once (data/tasks.py: NAMED_TASKS)


@dataclass
class EvalConfig:
    """Downstream multiple-choice tasks scored by the model's own loss during training (docs/evals.md)."""

    tasks: list[str] = field(default_factory=list)  # .jsonl/.parquet task files, or named tasks (hellaswag)
    task_interval: int | None = None  # steps between task scorings, a multiple of train.eval_interval; None: every eval
    max_items: int | None = None  # score the first items of each task only (None: all)


@dataclass
class PlanConfig:
    budget_s: float = 6.0  # seconds nanogpt-plan (and train.plan=auto) may spend timing candidates: <10% of a baby run


@dataclass
class SweepConfig:
    objective: Objective = Objective.val_loss  # what a sweep job returns to Hydra's sweeper


@dataclass
class StudyConfig:
    """A study (``+study=techniques`` or ``+study=scaling``, docs/studies.md): which card the sweep ends with,
    and the dials its presets derive the runs from."""

    kind: str | None = None  # techniques | scaling: the card printed at the end of the sweep (null: not a study)
    arm: str = "baseline"  # techniques: this run's arm (conf/technique/); it changes one thing against baseline
    global_batch: int = 12  # techniques: sequences per optimizer step, kept by every arm (accumulation, layouts)
    depth: int = 2  # scaling: the one dial of the model: n_layer = depth, n_embd = depth x aspect
    aspect: int = 64  # scaling: model width per layer (nanochat's 64)
    head_dim: int = 32  # scaling: width per attention head, so n_head = n_embd / head_dim


@dataclass
class RunConfig:
    name: str = "${model.name}"
    root: str = "outputs"
    progress: bool = True  # rich progress bar when the console is a terminal
    group: str | None = None  # runs sharing a group are one configuration over seeds (null: same config but seed)
    tags: list[str] = field(default_factory=list)  # labels to filter runs by (viewer, trackers): run.tags=[a,b]
    notes: str = ""  # a free-text note on the run (the viewer edits it later in the run's annotations.json)


# Trackers the run's metrics are mirrored to (nanogpt_runner.runs.trackers): pick with logger=[tensorboard,wandb].
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
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
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


def to_config(source) -> Config:
    """The run-time config: the schema's dataclass, whatever it was built from (Hydra's composed DictConfig, a
    run's config.yaml, a checkpoint's saved dict). Converted once, where the launcher's checks begin and where
    the worker reads the run directory, so the loop reads plain attributes (a DictConfig read costs ~25 us,
    a sixth of a small GPU model's step) and the annotation ``Config`` is what the object is."""
    if isinstance(source, Config):
        return source
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), source))


def as_dict(cfg) -> dict:
    """``cfg`` (a Config or a DictConfig) as plain values, choices as strings: what run.json, config.yaml and a
    checkpoint's meta record."""
    import dataclasses

    from omegaconf import OmegaConf

    node = OmegaConf.structured(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def with_changes(cfg, **sections: dict) -> Config:
    """A copy of ``cfg`` with fields of the named sections changed: ``with_changes(cfg, train={"batch_size": 4})``
    (what a plan candidate or a memory trial computes with)."""
    import dataclasses

    cfg = to_config(cfg)
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **changes)
                                       for name, changes in sections.items()})


def register_schema() -> None:
    """Make the schema available to conf/config.yaml's defaults list as ``schema``."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="schema", node=Config)
    # ${floordiv:32,${train.grad_accum}}: a micro-batch that keeps the global batch fixed (hparams_search=batch_accum).
    OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b), replace=True)
    # ${mul:${study.depth},${study.aspect}}: the scaling study's width from its depth dial (conf/study/scaling.yaml).
    OmegaConf.register_new_resolver("mul", lambda a, b: int(a) * int(b), replace=True)


@dataclass(frozen=True)
class DeviceCaps:
    """What the machine can do, found by nanogpt_runner.perf.hardware (which imports torch)."""

    kind: str  # "cpu" or "cuda"
    bf16: bool
    cuda_available: bool
    gpus: int = 0  # the GPUs this process sees (CUDA_VISIBLE_DEVICES narrows them): one rank each at most


# A run's name is part of its folder name and shows in tables and terminals: a plain name only.
RUN_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_NOTES_CHARS = 2000  # a run's note (run.notes, the viewer's note box)
DOWNLOAD_SCHEMES = ("http", "https")


def world_size(par) -> int:
    """Processes in the run: one trains alone; more are a torchrun process group."""
    return par.nproc_per_node * par.nnodes


def dp_degree(par) -> int:
    """Data-parallel replicas: the ranks left once tensor and pipeline parallelism took theirs."""
    return max(world_size(par) // max(par.tp * par.pp, 1), 1)


def available_cores() -> int:
    """The CPUs this process may run on: a SLURM job's or a container's share (its affinity), not the node's."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this OS (macOS)
        return os.cpu_count() or 1


# A CPU run's most ranks per node, per available core. Two still run, with the oversubscription warning (the 2-D
# layouts' 4 ranks are tested on 2-core machines); 64 ranks on 2 cores would only thrash the machine.
CPU_RANKS_PER_CORE = 2


def threads_per_rank(par, cores: int | None = None) -> int:
    """CPU threads each rank uses: ``parallel.threads_per_rank``, or the available cores shared by the node's
    ranks (ranks x threads above the cores ran 2-6x slower)."""
    return par.threads_per_rank or max((cores or available_cores()) // par.nproc_per_node, 1)


def planned_steps(t, tokens_per_step: int, flops_per_token: float) -> tuple[int, str]:
    """The steps the run takes unless it stops early, and which limit sets them (at least one step)."""
    steps, reason = t.max_iters, "max_iters"
    budgets = (("max_tokens", t.max_tokens, tokens_per_step), ("max_flops", t.max_flops,
                                                               tokens_per_step * flops_per_token))
    for name, budget, per_step in budgets:
        if budget is not None and budget // per_step < steps:
            steps, reason = max(int(budget // per_step), 1), name
    return steps, reason
