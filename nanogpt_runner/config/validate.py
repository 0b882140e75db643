"""Does a composed config make sense? Every problem at once, in words.

Types and choices are the schema's job (config.py: Hydra refuses a wrong type or an unknown choice while
composing). What they cannot express lives here: divisibility, ranges, layouts the ranks cannot form, data
sources, the device. Each check returns sentences that name the field, its value and a fix, so a refused run
prints all of them and exits before any run directory exists; ``config_warnings`` names what runs but is
unusual. No torch: the viewer's launch form uses it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

from nanogpt_runner.config.schema import (
    CPU_RANKS_PER_CORE,
    DOWNLOAD_SCHEMES,
    MAX_NOTES_CHARS,
    NAMED_TASK_NAMES,
    RUN_NAME,
    TASK_SUFFIXES,
    Config,
    DeviceCaps,
    OptimizerConfig,
    OptimizerName,
    TokenizerName,
    available_cores,
    dp_degree,
    threads_per_rank,
    world_size,
)


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

    if not 0 <= t.seed < 2**64:  # the batch sampler hashes it as an unsigned 64-bit number
        problems.append(f"train.seed={t.seed} must be a whole number from 0 to 2**64-1, e.g. train.seed=1337.")
    if t.grad_clip < 0:
        problems.append(f"train.grad_clip={t.grad_clip} must be zero (off) or positive.")
    if t.ckpt_interval < 0:
        problems.append(f"train.ckpt_interval={t.ckpt_interval} must be zero (only at the end) or positive.")
    if t.keep_last < 1:
        problems.append(f"train.keep_last={t.keep_last} must be 1 or more: resuming needs the latest checkpoint.")
    problems += _stop_problems(t, cfg.sweep)
    problems += eval_problems(cfg.eval, t.eval_interval)
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


def eval_problems(ev, eval_interval: int) -> list[str]:
    """The tasks scored during training: their names or files, how often, how many items (what a task file
    holds is checked by the launcher once the data's tokenizer is known)."""
    problems = [f"eval.tasks has {spec!r}: name a .jsonl or .parquet task file, or a named task "
                f"({', '.join(NAMED_TASK_NAMES)})."
                for spec in ev.tasks if spec not in NAMED_TASK_NAMES and not str(spec).endswith(TASK_SUFFIXES)]
    problems += [f"eval.tasks has {spec}, which does not exist: give the path of a task file."
                 for spec in ev.tasks if str(spec).endswith(TASK_SUFFIXES) and not Path(spec).expanduser().exists()]
    if ev.task_interval is not None and (ev.task_interval < 1 or ev.task_interval % eval_interval):
        problems.append(f"eval.task_interval={ev.task_interval} must be a positive multiple of train.eval_interval="
                        f"{eval_interval} (tasks are scored at evaluations), e.g. {eval_interval * 4}, or null: "
                        f"every evaluation.")
    if ev.max_items is not None and ev.max_items < 1:
        problems.append(f"eval.max_items={ev.max_items} must be 1 or more, or null: every item.")
    if (ev.task_interval is not None or ev.max_items is not None) and not ev.tasks:
        problems.append("eval.task_interval and eval.max_items apply to eval.tasks, which is empty: add "
                        "eval.tasks=[FILE.jsonl], or drop them.")
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

    world = world_size(par)
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
    if t.async_checkpoint and world == 1:
        problems.append(
            "train.async_checkpoint=true needs a run of several processes: one process saves full state dicts, "
            "which are not written in the background; drop it, or use a parallel layout (DCP's sharded checkpoints)."
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
    if too_many := ranks_problem(par.nproc_per_node, cfg.train.device, device):
        problems.append(too_many)
    if par.nnodes > 1 and not par.rdzv_endpoint:
        problems.append(
            f"parallel.nnodes={par.nnodes} needs parallel.rdzv_endpoint=HOST:PORT, an address of the first node that "
            f"every node can reach (submitit jobs on SLURM fill it in themselves)."
        )
    return problems


def ranks_problem(nproc: int, requested_device: str, device: DeviceCaps | None = None) -> str | None:
    """Why ``nproc`` ranks per node cannot run on this node, or None: one per visible GPU, or CPU_RANKS_PER_CORE
    per available core on the CPU (a mistake, or a resumed checkpoint's layout, would otherwise start dozens of
    processes). Without the device's caps (before torch is imported) only a ``train.device=cpu`` run is checked."""
    if device is not None and device.kind == "cuda":
        if device.gpus == 0 or nproc <= device.gpus:  # (no GPU at all is its own problem: train.device=cuda)
            return None
        return (f"parallel.nproc_per_node={nproc} but this node has {device.gpus} visible GPU(s), one rank each: use "
                f"parallel.nproc_per_node={device.gpus} or fewer (or train.device=cpu).")
    if device is None and requested_device != "cpu":
        return None
    cores = available_cores()
    limit = CPU_RANKS_PER_CORE * cores
    if nproc <= limit:
        return None
    return (f"parallel.nproc_per_node={nproc} on {cores} CPU core(s): a CPU run has at most {CPU_RANKS_PER_CORE} "
            f"ranks per core; use parallel.nproc_per_node={limit} or fewer.")


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
