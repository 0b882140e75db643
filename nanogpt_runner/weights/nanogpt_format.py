"""nanoGPT's checkpoint format, both ways: what ``nanogpt-export --format nanogpt`` writes, and what
``resume=NANOGPT_OUT_DIR`` continues.

nanoGPT's train.py saves ``ckpt.pt`` = {model, optimizer, model_args, iter_num, best_val_loss, config}: the
model in its names (gpt2_layouts), the state dict of one ``torch.optim.AdamW`` with two param groups
(every >= 2-D tensor decayed, then every 1-D one not, each in ``named_parameters()`` order, the tied
lm_head counted once), ``iter_num`` updates done, and ``config`` its global settings. sample.py decodes
with ``data/<config['dataset']>/meta.pkl`` relative to its working directory; ``os.path.join`` drops that
prefix for an absolute path, so an export whose ``dataset`` is its own absolute path is found from any
directory. Our own AdamW has the same two groups, so the optimizer state converts tensor by tensor
(renamed, q/k/v fused or split, vocabulary rows cropped or padded: exactly what the weights go through).
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch

from nanogpt_runner.weights.gpt2_layouts import Architecture, WeightsError, nanogpt_to_ours, ours_to_nanogpt

CKPT = "ckpt.pt"
META_PKL = "meta.pkl"
RESUME_CONFIG = "resume_config.py"
ADAM_FIELDS = ("exp_avg", "exp_avg_sq")
# nanoGPT config key -> our config path, and the type its value must have (a checkpoint is hostile input).
CONFIG_KEYS = {
    "learning_rate": ("optimizer.lr", float), "min_lr": ("optimizer.min_lr", float),
    "weight_decay": ("optimizer.weight_decay", float), "warmup_iters": ("optimizer.warmup_iters", int),
    "lr_decay_iters": ("optimizer.decay_iters", int), "max_iters": ("train.max_iters", int),
    "batch_size": ("train.batch_size", int), "gradient_accumulation_steps": ("train.grad_accum", int),
    "grad_clip": ("train.grad_clip", float), "eval_interval": ("train.eval_interval", int),
    "eval_iters": ("train.eval_iters", int), "log_interval": ("train.log_interval", int),
    "dropout": ("model.dropout", float),
}


def parameter_groups(arch: Architecture) -> tuple[list[str], list[str]]:
    """nanoGPT's AdamW groups as parameter names, in its order: (decayed matrices, undecayed vectors)."""
    bias = (".bias",) if arch.bias else ()

    def linear(name: str) -> list[str]:
        return [name + ".weight", *(name + b for b in bias)]

    order = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(arch.n_layer):
        block = f"transformer.h.{i}."
        for part in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            order += linear(block + part)
    order += linear("transformer.ln_f")
    vector = [n for n in order if n.endswith(".bias") or ".ln_" in n]
    return [n for n in order if n not in vector], vector


def _adamw_groups(lr: float, betas: tuple[float, float], weight_decay: float) -> list[dict]:
    """The two param groups of the installed torch's AdamW (every key it saves), params still empty."""
    groups = [{"params": [torch.zeros(1)], "weight_decay": weight_decay},
              {"params": [torch.zeros(1)], "weight_decay": 0.0}]
    saved = torch.optim.AdamW(groups, lr=lr, betas=betas).state_dict()["param_groups"]
    return [{**group, "params": []} for group in saved]


def optimizer_to_nanogpt(state: dict[str, dict[str, torch.Tensor]], arch: Architecture, optimizer: dict) -> dict:
    """Our AdamW's per-parameter state (keyed by our names) as the state dict of nanoGPT's AdamW."""
    missing = [name for name in ("tok_emb.weight", "ln_f.weight") if name not in state or "exp_avg" not in state[name]]
    if missing:
        raise WeightsError(f"the checkpoint's optimizer state has no AdamW moments for {', '.join(missing)}")
    moments = {field: ours_to_nanogpt({n: s[field] for n, s in state.items()}, arch) for field in ADAM_FIELDS}
    step = float(next(iter(state.values()))["step"])
    decay, vector = parameter_groups(arch)
    groups = _adamw_groups(optimizer["lr"], tuple(optimizer["betas"]), optimizer["weight_decay"])
    out_state = {}
    for index, name in enumerate(decay + vector):
        out_state[index] = {"step": torch.tensor(step), **{f: moments[f][name] for f in ADAM_FIELDS}}
    groups[0]["params"] = list(range(len(decay)))
    groups[1]["params"] = list(range(len(decay), len(decay) + len(vector)))
    return {"state": out_state, "param_groups": groups}


def optimizer_from_nanogpt(optimizer: dict, arch: Architecture) -> dict[str, dict[str, torch.Tensor]]:
    """nanoGPT's AdamW state dict as per-parameter state keyed by our names (padding rows zero)."""
    decay, vector = parameter_groups(arch)
    try:
        groups = [list(group["params"]) for group in optimizer["param_groups"]]
        state = optimizer["state"]
        if [len(g) for g in groups] != [len(decay), len(vector)]:
            raise ValueError(f"param groups of {[len(g) for g in groups]} tensors, nanoGPT's model has "
                             f"{[len(decay), len(vector)]}")
        by_name = {name: state[index] for name, index in zip(decay + vector, groups[0] + groups[1], strict=True)}
        moments = {f: nanogpt_to_ours({n: s[f] for n, s in by_name.items()}, arch) for f in ADAM_FIELDS}
        step = float(next(iter(by_name.values()))["step"])
    except (KeyError, TypeError, ValueError, StopIteration) as err:
        raise WeightsError(f"the nanoGPT checkpoint's optimizer is not nanoGPT's AdamW ({err})") from None
    return {name: {"step": torch.tensor(step), **{f: moments[f][name] for f in ADAM_FIELDS}}
            for name in moments["exp_avg"]}


def nanogpt_config(config: dict, folder: Path, dp: int) -> dict:
    """nanoGPT's ``config`` (train.py's settings) for a run of ours: the same training, read from ``folder``."""
    model, opt, train = config["model"], config["optimizer"], config["train"]
    return {
        "out_dir": str(folder), "init_from": "resume", "dataset": str(folder),
        "eval_interval": train["eval_interval"], "eval_iters": train["eval_iters"],
        "log_interval": train["log_interval"],
        "batch_size": train["batch_size"], "gradient_accumulation_steps": train["grad_accum"] * dp,
        "block_size": model["block_size"], "n_layer": model["n_layer"], "n_head": model["n_head"],
        "n_embd": model["n_embd"], "dropout": model.get("dropout", 0.0), "bias": model["bias"],
        "learning_rate": opt["lr"], "max_iters": train["max_iters"], "weight_decay": opt["weight_decay"],
        "beta1": opt["betas"][0], "beta2": opt["betas"][1], "grad_clip": train["grad_clip"], "decay_lr": True,
        "warmup_iters": opt["warmup_iters"], "lr_decay_iters": opt.get("decay_iters") or train["max_iters"],
        "min_lr": opt["min_lr"],
    }


def resume_config_file(settings: dict) -> str:
    """A config file for nanoGPT's train.py (``python train.py EXPORT/resume_config.py``): one assignment per
    setting, each value a Python literal (repr of a number, bool or string: nothing to execute)."""
    lines = ["# nanoGPT settings of the exported run: python train.py THIS_FILE [--device=cpu --compile=False]"]
    lines += [f"{key} = {value!r}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def meta_pkl(description: list | dict) -> dict | None:
    """sample.py's meta.pkl (stoi, itos, vocab_size) for a tokenizer; None for GPT-2's BPE, which sample.py
    decodes itself when no meta.pkl is found. A learned BPE maps each id to its text and each character
    that is a single token to its id: nanoGPT encodes a prompt symbol by symbol (no merges)."""
    from nanogpt_runner.data.tokenizers import from_description

    tokenizer = from_description(description)
    if tokenizer.kind == "gpt2":
        return None
    if tokenizer.kind == "char":
        itos = dict(enumerate(tokenizer.chars))
    else:
        itos = {i: tokenizer.hf.decode([i], skip_special_tokens=False) for i in range(tokenizer.vocab_size)}
    stoi = {}
    for i, text in itos.items():
        if len(text) == 1 and text != "\ufffd":
            stoi.setdefault(text, i)
    return {"vocab_size": tokenizer.vocab_size, "itos": itos, "stoi": stoi}


def write_meta_pkl(folder: Path, meta: dict) -> None:
    with open(folder / META_PKL, "xb") as f:
        pickle.dump(meta, f)


def checkpoint(model_state: dict, arch: Architecture, dropout: float, meta: dict, settings: dict,
               optimizer: dict | None) -> dict:
    """The ``ckpt.pt`` dict nanoGPT's train.py would have saved at this step."""
    from nanogpt_runner.weights.gpt2_layouts import nanogpt_model_args

    best = meta.get("best_val_loss")
    ckpt = {"model": model_state, "model_args": nanogpt_model_args(arch, dropout), "iter_num": int(meta["step"]),
            "best_val_loss": float(best) if best is not None else math.inf,
            "config": {**settings, "nanogpt_runner": meta["config"]}}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer
    return ckpt
