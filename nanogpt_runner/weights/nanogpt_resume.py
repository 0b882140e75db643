"""``resume=NANOGPT_OUT_DIR``: continue a run nanoGPT's train.py saved (its ``ckpt.pt``), here.

``model.init_from`` takes a nanoGPT checkpoint's weights only (a new run, a fresh optimizer at step 0);
``resume=`` continues it: the weights, the AdamW moments (nanogpt_format converts nanoGPT's two groups into
ours), ``iter_num`` as the step the run is at and ``best_val_loss``. The run is a new run directory of this
runner (nanoGPT's out_dir is never written), trained on the data the command line names, whose
vocabulary must be the model's. The config is the command line's, with the architecture from the
checkpoint's ``model_args`` and the optimizer schedule and batch from its ``config`` (numbers of the
expected types only; whatever the command line sets wins).

The launcher calls ``nanogpt_checkpoint`` (cheap, no torch) for every ``resume=``; ``resume_config``
before the config check and ``import_checkpoint`` after the data is prepared, which writes the checkpoint
as this runner's first checkpoint of the new run, so the training process resumes it the usual way.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import OmegaConf

from nanogpt_runner.errors import CheckpointError

CKPT = "ckpt.pt"
RUN_MARKERS = ("meta.json", "checkpoints", "run.json")  # a folder of this runner is resumed as one


def nanogpt_checkpoint(spec: str) -> Path | None:
    """The ckpt.pt that ``resume=spec`` names when it is nanoGPT's (an out_dir holding ckpt.pt, or the file
    itself), else None (a run or checkpoint of this runner, or nothing)."""
    path = Path(spec).expanduser()
    if path.is_file() and path.name == CKPT:
        return path
    if path.is_dir() and (path / CKPT).is_file() and not any((path / m).exists() for m in RUN_MARKERS):
        return path / CKPT
    return None


def _load(path: Path) -> tuple[dict, object]:
    """The checkpoint (read weights-only) and its Source (nanoGPT's architecture)."""
    from nanogpt_runner.weights.gpt2_layouts import WeightsError
    from nanogpt_runner.weights.init_from import Source, _load_weights_only, nanogpt_architecture

    try:
        ckpt = _load_weights_only(path, mmap=True)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_args"), dict) or "model" not in ckpt:
            raise WeightsError(f"{path} is not a nanoGPT checkpoint (it needs 'model_args' and 'model')")
        source = Source(str(path), "nanogpt", path, nanogpt_architecture(ckpt["model_args"], str(path)))
    except WeightsError as err:
        raise CheckpointError(f"resume={path}: {err}") from None
    if "optimizer" not in ckpt or not isinstance(ckpt.get("iter_num"), int) or ckpt["iter_num"] < 0:
        raise CheckpointError(f"resume={path}: nanoGPT saved no optimizer state or iteration in it; start a new "
                              f"run from its weights with model.init_from={path} instead")
    return ckpt, source


def _setting(key: str, value, kind: type):
    """A nanoGPT setting from the checkpoint, refused unless a finite, non-negative number of ``kind``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if not ok or (kind is int and not isinstance(value, int)):
        raise CheckpointError(f"the nanoGPT checkpoint's config has {key}={value!r}, not a {kind.__name__} >= 0: "
                              f"set the runner's value on the command line, or use model.init_from= (weights only)")
    return kind(value)


def resume_config(cfg, ckpt_path: Path, overrides: list[str], conf_dir: Path):
    """The config of a run continuing ``ckpt_path``: the command line's, with nanoGPT's architecture and
    training settings where the command line does not set them. CheckpointError on a contradiction."""
    from nanogpt_runner.checkpoint.resume_plan import override_paths
    from nanogpt_runner.weights.init_from import architecture_problems, with_architecture
    from nanogpt_runner.weights.nanogpt_format import CONFIG_KEYS

    ckpt, source = _load(ckpt_path)
    settings = ckpt["config"] if isinstance(ckpt.get("config"), dict) else {}
    user_set = override_paths(overrides, conf_dir)
    problems = architecture_problems(cfg.model, source, user_set)
    named = set(user_set)
    if "model.block_size" in named and cfg.model.block_size != source.arch.block_size:
        problems.append(f"model.block_size={cfg.model.block_size}: a resumed run keeps the checkpoint's "
                        f"{source.arch.block_size}")
    if cfg.optimizer.name != "adamw" and "optimizer.name" in named:
        problems.append(f"optimizer.name={cfg.optimizer.name}: nanoGPT's optimizer state is AdamW's")
    if problems:
        reasons = "; ".join(problems).replace("model.init_from=", "resume=")
        raise CheckpointError(f"cannot resume {ckpt_path}: {reasons}")
    cfg = with_architecture(cfg, source, user_set)
    cfg.model.block_size, cfg.optimizer.name, cfg.model.init_from = source.arch.block_size, "adamw", "scratch"
    for key, (path, kind) in CONFIG_KEYS.items():
        if key in settings and not any(path == p or path.startswith(p + ".") for p in named):
            OmegaConf.update(cfg, path, _setting(key, settings[key], kind))
    if "optimizer.betas" not in named and {"beta1", "beta2"} <= set(settings):
        cfg.optimizer.betas = [_setting(k, settings[k], float) for k in ("beta1", "beta2")]
    if settings.get("decay_lr") is False and "optimizer.min_lr" not in named:
        cfg.optimizer.min_lr, cfg.optimizer.warmup_iters = cfg.optimizer.lr, 0  # nanoGPT's constant rate
    return cfg


def import_checkpoint(ckpt_path: Path, cfg, run_dir: Path, tokenizer, announce=print):
    """Write nanoGPT's checkpoint as this runner's checkpoint in ``run_dir`` (model, AdamW state, step) and
    return ``cfg`` resuming from it. CheckpointError when the data's vocabulary is not the model's."""
    import torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    from nanogpt_runner.checkpoint.folder import checkpoint_dir
    from nanogpt_runner.checkpoint.state import TrainState, save_checkpoint
    from nanogpt_runner.config.schema import as_dict, dp_degree, to_config
    from nanogpt_runner.model.gpt import GPT
    from nanogpt_runner.model.optimizers import build_optimizers
    from nanogpt_runner.weights.gpt2_layouts import Architecture, WeightsError
    from nanogpt_runner.weights.init_from import initialize, vocabulary_problem
    from nanogpt_runner.weights.nanogpt_format import optimizer_from_nanogpt

    ckpt, source = _load(ckpt_path)
    if problem := vocabulary_problem(source, tokenizer):
        raise CheckpointError(problem.replace("model.init_from=", "resume="))
    step = ckpt["iter_num"]
    if step >= cfg.train.max_iters:
        raise CheckpointError(f"nothing to train: {ckpt_path} is at iteration {step} and train.max_iters="
                              f"{cfg.train.max_iters}; raise train.max_iters to continue the run")
    torch.manual_seed(cfg.train.seed)
    cfg = to_config(cfg)
    model = GPT(cfg.model, tokenizer.vocab_size)
    optimizers = build_optimizers(model, cfg.optimizer)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    try:
        initialize(model, source)
        arch = Architecture(**{**source.arch.model_fields(), "vocab_size": tokenizer.vocab_size})
        moments = optimizer_from_nanogpt(ckpt["optimizer"], arch)
        optim_sd = get_optimizer_state_dict(model, optimizers, options=full)
        for name, state in optim_sd["state"].items():
            state.update({k: v.to(state[k].dtype) for k, v in moments[name].items()})
    except (WeightsError, KeyError) as err:
        raise CheckpointError(f"resume={ckpt_path}: {err}") from None
    set_optimizer_state_dict(model, optimizers, optim_sd, options=full)
    best = ckpt.get("best_val_loss", math.inf)
    tokens = step * cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size * dp_degree(cfg.parallel)
    state = TrainState(step=step, tokens=tokens, best_val_loss=float(best))
    folder = save_checkpoint(checkpoint_dir(run_dir), state, model, optimizers, sharded=False,
                             config=as_dict(cfg), vocab=tokenizer.describe())
    announce(f"continuing nanoGPT's {ckpt_path} at iteration {step} (its weights and AdamW state) in {run_dir}")
    cfg.resume = str(folder)
    return cfg
