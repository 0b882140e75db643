"""``nanogpt-export RUN_OR_CHECKPOINT OUT_DIR --format hf|nanogpt``: a trained model for other tools.

    nanogpt-export outputs/2026-01-01/12-00-00_gpt2 exported/ --format hf        # transformers
    nanogpt-export outputs/2026-01-01/12-00-00_gpt2 exported/ --format nanogpt   # nanoGPT's sample.py

``hf`` writes config.json and model.safetensors that ``GPT2LMHeadModel.from_pretrained(OUT_DIR)`` loads
and that give the runner's logits (a model without biases gets zero biases; exact GELU is Hugging Face's
``gelu``), plus GPT-2's tokenizer files when the run used GPT-2's BPE and they are at hand. ``nanogpt``
writes the ``ckpt.pt`` nanoGPT's train.py would have saved (model_args, model, iter_num, best_val_loss,
config; no optimizer state), and for a character vocabulary the ``meta.pkl`` its sample.py decodes with.
Either works from any checkpoint of the runner, sharded ones included. The output folder appears whole
or not at all; an existing non-empty one is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import sys
from pathlib import Path

from nanogpt_runner.config.schema import SCRATCH
from nanogpt_runner.console import error
from nanogpt_runner.weights.gpt2_layouts import (
    Architecture,
    WeightsError,
    hf_config,
    nanogpt_model_args,
    nanogpt_to_hf,
    ours_to_nanogpt,
)

FORMATS = ("hf", "nanogpt")
EXIT_USAGE = 2


def export(target: Path, out_dir: Path, fmt: str, which: str = "best", say=print) -> list[str]:
    """Write checkpoint ``target`` (a run directory or checkpoint folder) to ``out_dir`` in format ``fmt``;
    returns the warnings (differences the format cannot express). Raises WeightsError or CheckpointError."""
    from nanogpt_runner.checkpoint.folder import resolve
    from nanogpt_runner.checkpoint.state import load_model_state
    from nanogpt_runner.weights.init_from import checkpoint_architecture, tokenizer_kind

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise WeightsError(f"{out_dir} already exists and is not empty: choose a new OUT_DIR (nothing is overwritten)")
    path, meta = resolve(Path(target), which, say)
    tokenizer = tokenizer_kind(meta["vocab"])
    arch = checkpoint_architecture(meta)
    dropout = meta["config"]["model"].get("dropout", 0.0)
    nanogpt_state = ours_to_nanogpt(load_model_state(path, meta), arch)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if fmt == "hf":
            warnings = _write_hf(tmp, nanogpt_state, arch, dropout, meta, tokenizer, say)
        else:
            warnings = _write_nanogpt(tmp, nanogpt_state, arch, dropout, meta, tokenizer, say)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"exported {path} (step {meta['step']}) as {fmt} to {out_dir}")
    return warnings


def _write_hf(folder: Path, state: dict, arch: Architecture, dropout: float, meta: dict, tokenizer: str,
              say) -> list[str]:
    from safetensors.torch import save_file

    gpt2_bpe = tokenizer == "gpt2"
    save_file(nanogpt_to_hf(state, arch), folder / "model.safetensors", metadata={"format": "pt"})
    end_of_text = arch.vocab_size - 1 if gpt2_bpe else None  # GPT-2's <|endoftext|> is its last id (50256)
    (folder / "config.json").write_text(json.dumps(hf_config(arch, dropout, end_of_text), indent=2) + "\n")
    if not arch.bias:
        say("note: the model has no biases; GPT-2 always has them, so they are written as zeros (the same logits)")
    if not gpt2_bpe:
        say(f"note: the run's tokenizer ({tokenizer}, {arch.vocab_size} ids, described in the checkpoint's "
            f"meta.json) is not GPT-2's BPE, so no Hugging Face tokenizer files are written")
        return []
    files = _gpt2_tokenizer_files(meta)
    for file in files:
        shutil.copyfile(file, folder / file.name)
    if files:
        say(f"tokenizer: copied {', '.join(f.name for f in files)} from {files[0].parent}")
        return []
    return ["GPT-2's tokenizer files were not found (neither beside the weights the run started from nor in the "
            "Hugging Face cache): load the tokenizer with AutoTokenizer.from_pretrained('gpt2') instead"]


def _gpt2_tokenizer_files(meta: dict) -> list[Path]:
    """GPT-2's BPE files: beside the Hugging Face weights the run started from, else gpt2's cached ones."""
    from nanogpt_runner.weights.init_from import cached_snapshot, resolve_source, tokenizer_files

    folders = []
    init_from = meta["config"]["model"].get("init_from", SCRATCH)
    if init_from != SCRATCH:
        try:
            source = resolve_source(init_from, download=False)
            folders += [source.path] if source.kind == "huggingface" else []
        except WeightsError:
            pass  # the weights a run started from may be gone by now; the cache may still have the files
    folders.append(cached_snapshot("gpt2"))
    return next((files for folder in folders if folder and (files := tokenizer_files(folder))), [])


def _write_nanogpt(folder: Path, state: dict, arch: Architecture, dropout: float, meta: dict, tokenizer: str,
                   say) -> list[str]:
    import torch

    if not arch.tie_weights:
        raise WeightsError("nanoGPT always ties lm_head to the token embedding, and this model was trained with "
                           "model.tie_weights=false: export it with --format hf instead")
    warnings = []
    if arch.activation != "gelu":
        warnings.append(f"nanoGPT's MLP computes exact GELU, and this model was trained with {arch.activation} "
                        f"(GPT-2's tanh approximation): nanoGPT's logits will differ slightly from the runner's")
    best = meta.get("best_val_loss")
    data = meta["config"]["data"]
    checkpoint = {
        "model": state,
        "model_args": nanogpt_model_args(arch, dropout),
        "iter_num": meta["step"],
        "best_val_loss": best if best is not None else math.inf,
        "config": {"dataset": data["name"], "nanogpt_runner": meta["config"]},
    }
    torch.save(checkpoint, folder / "ckpt.pt")
    if tokenizer == "char":  # nanoGPT decodes GPT-2's BPE itself, and knows no other tokenizer
        vocab = list(meta["vocab"])
        with open(folder / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": len(vocab), "itos": dict(enumerate(vocab)),
                         "stoi": {s: i for i, s in enumerate(vocab)}}, f)
        say(f"vocabulary: meta.pkl ({len(vocab)} symbols); nanoGPT's sample.py reads it from "
            f"data/{data['name']}/meta.pkl (config['dataset'] is {data['name']!r})")
    return warnings


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanogpt-export", description="Write a run's checkpoint for Hugging Face "
                                     "transformers (GPT2LMHeadModel) or for nanoGPT's sample.py.")
    parser.add_argument("target", metavar="RUN_OR_CHECKPOINT", help="a run directory or one of its checkpoints")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="a new (or empty) folder to write")
    parser.add_argument("--format", choices=FORMATS, required=True, help="hf: transformers GPT2LMHeadModel; "
                        "nanogpt: nanoGPT's ckpt.pt")
    parser.add_argument("--which", choices=("best", "latest"), default="best",
                        help="for a run directory: its best-by-val checkpoint (default) or the newest")
    return parser


def main(argv: list[str] | None = None) -> None:
    from nanogpt_runner.errors import CheckpointError

    args = argument_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        warnings = export(Path(args.target), Path(args.out_dir), args.format, args.which)
    except (WeightsError, CheckpointError) as err:
        error(str(err))
        sys.exit(EXIT_USAGE)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


if __name__ == "__main__":
    main()
