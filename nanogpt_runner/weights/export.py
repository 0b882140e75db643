"""``nanogpt-export RUN_OR_CHECKPOINT OUT_DIR --format hf|nanogpt``: a trained model for other tools, used as they are.

    nanogpt-export outputs/2026-01-01/12-00-00_baby exported/ --format hf        # transformers
    nanogpt-export outputs/2026-01-01/12-00-00_baby exported/ --format nanogpt   # nanoGPT's sample.py, train.py

``hf`` writes what ``pipeline("text-generation", model=OUT_DIR)`` needs: config.json and model.safetensors
(GPT2LMHeadModel, the runner's logits: a model without biases gets zero biases), the run's tokenizer as
tokenizer.json (hf_tokenizer: characters, the learned BPE, or GPT-2's BPE rebuilt from tiktoken's ranks)
with tokenizer_config.json, and generation_config.json; every bos/eos/pad id is one of the vocabulary's.
``nanogpt`` writes the ``ckpt.pt`` nanoGPT's train.py would have saved (nanogpt_format: model, its AdamW
state, model_args, iter_num, best_val_loss, config), meta.pkl for sample.py (not for GPT-2's BPE, which
sample.py decodes itself) and resume_config.py for train.py; ``config['dataset']`` is the export's absolute
path, so ``python sample.py --init_from=resume --out_dir=OUT_DIR`` finds meta.pkl from any directory, and with
``--data PREPARED_DIR`` (a folder the user names) train.py finds the corpus's train.bin and val.bin there too.

Either works from any checkpoint of the runner, sharded ones included. Files are derived from the
checkpoint alone: nothing is copied from a path the checkpoint names. ``--tokenizer-from DIR`` copies GPT-2's
tokenizer files from a folder the user names (regular files only, never through a symlink), for when
tiktoken's files are not on this machine; otherwise they come from the Hugging Face cache's gpt2, if there.
The output folder comes from the command line only: it is written through a fresh private folder and
moved in file by file through directory descriptors, never through a symlink; an existing OUT_DIR must be
an empty folder, unless ``--force``, which replaces the export's own file names in it and leaves the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from nanogpt_runner.fsutil import open_nofollow
from nanogpt_runner.weights.gpt2_layouts import (
    Architecture,
    WeightsError,
    hf_config,
    nanogpt_to_hf,
    ours_to_nanogpt,
)

FORMATS = ("hf", "nanogpt")
EXIT_USAGE = 2
GPT2_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def export(target: Path, out_dir: Path, fmt: str, which: str = "best", say=print, force: bool = False,
           tokenizer_from: Path | None = None, data: Path | None = None) -> list[str]:
    """Write checkpoint ``target`` (a run directory or checkpoint folder) to ``out_dir`` in format ``fmt``;
    returns the warnings (what the format cannot express). Raises WeightsError or CheckpointError."""
    if data is not None and fmt != "nanogpt":
        raise WeightsError("--data is for --format nanogpt (train.bin and val.bin for nanoGPT's train.py)")
    from nanogpt_runner.checkpoint.folder import resolve
    from nanogpt_runner.checkpoint.state import load_model_state
    from nanogpt_runner.weights.init_from import checkpoint_architecture

    out_dir = Path(out_dir).absolute()
    _check_destination(out_dir, force)
    path, meta = resolve(Path(target), which, say)
    arch = checkpoint_architecture(meta)
    state = ours_to_nanogpt(load_model_state(path, meta), arch)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp", dir=out_dir.parent))  # private (0700), new
    try:
        if fmt == "hf":
            warnings = _write_hf(work, state, arch, meta, tokenizer_from, say)
        else:
            warnings = _write_nanogpt(work, out_dir, state, arch, path, meta, data, say)
        _move_into(work, out_dir, force)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"exported {path} (step {meta['step']}) as {fmt} to {out_dir}")
    return warnings


def _check_destination(out_dir: Path, force: bool) -> None:
    """OUT_DIR must be new, or an empty folder (any folder with --force); never a symlink."""
    try:
        info = os.lstat(out_dir)
    except FileNotFoundError:
        if not out_dir.parent.is_dir():
            raise WeightsError(f"{out_dir.parent} does not exist: create it, or choose another OUT_DIR") from None
        return
    if stat.S_ISLNK(info.st_mode):
        raise WeightsError(f"{out_dir} is a symlink, and an export is never written through one: choose a real "
                           f"folder as OUT_DIR")
    if not stat.S_ISDIR(info.st_mode):
        raise WeightsError(f"{out_dir} exists and is not a folder: choose a new OUT_DIR")
    if any(out_dir.iterdir()) and not force:
        raise WeightsError(f"{out_dir} already exists and is not empty: choose a new OUT_DIR, or pass --force to "
                           f"replace the export's files in it (nothing is overwritten otherwise)")


def _move_into(work: Path, out_dir: Path, force: bool) -> None:
    """Publish the files written in ``work``: a new OUT_DIR is ``work`` renamed; into an existing one each
    file is renamed through directory descriptors opened with O_NOFOLLOW (a rename replaces a planted
    symlink itself, it never writes where it points)."""
    try:
        os.rename(work, out_dir)  # OUT_DIR absent (or an empty folder): appears whole
        return
    except OSError:
        if not force:
            raise WeightsError(f"{out_dir} was created or filled while exporting: choose a new OUT_DIR") from None
    source, target = os.open(work, _DIR_FLAGS), None
    try:
        try:
            target = os.open(out_dir, _DIR_FLAGS)
        except OSError as err:
            raise WeightsError(f"{out_dir} cannot be written as a folder ({err.strerror}): choose a new "
                               f"OUT_DIR") from None
        for name in sorted(os.listdir(source)):
            os.replace(name, name, src_dir_fd=source, dst_dir_fd=target)
    finally:
        os.close(source)
        if target is not None:
            os.close(target)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "x", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _write_hf(folder: Path, state: dict, arch: Architecture, meta: dict, tokenizer_from: Path | None,
              say) -> list[str]:
    from safetensors.torch import save_file

    from nanogpt_runner.weights import hf_tokenizer

    description = meta["vocab"]
    gpt2 = isinstance(description, dict) and description.get("kind") == "gpt2"
    if tokenizer_from is not None and not gpt2:
        raise WeightsError("--tokenizer-from is for runs with GPT-2's BPE: this run's tokenizer is in its checkpoint")
    save_file(nanogpt_to_hf(state, arch), folder / "model.safetensors", metadata={"format": "pt"})
    if not arch.bias:
        say("note: the model has no biases; GPT-2 always has them, so they are written as zeros (the same logits)")
    built = None if tokenizer_from is not None else hf_tokenizer.built_tokenizer(description)
    copied = _copy_gpt2_files(folder, tokenizer_from) if gpt2 and built is None else []
    if built is not None:
        built.save(str(folder / "tokenizer.json"))
    specials = hf_tokenizer.special_ids(description, arch.vocab_size)
    dropout = meta["config"]["model"].get("dropout", 0.0)
    _write_json(folder / "config.json", hf_config(arch, dropout, specials))
    _write_json(folder / "generation_config.json", specials)
    _write_json(folder / "tokenizer_config.json",
                hf_tokenizer.tokenizer_config(description, arch.block_size, copied=bool(copied)))
    if copied:
        say(f"tokenizer: copied {', '.join(copied)}")
    if built is None and not copied:
        return ["GPT-2's BPE files are neither in tiktoken's cache nor in the Hugging Face cache: pass "
                "--tokenizer-from FOLDER (a folder holding GPT-2's tokenizer.json or vocab.json and merges.txt), "
                "or load the tokenizer with AutoTokenizer.from_pretrained('gpt2')"]
    return []


def _copy_gpt2_files(folder: Path, named: Path | None) -> list[str]:
    """GPT-2's tokenizer files from the folder the user named, else from the Hugging Face cache's gpt2;
    regular files only. Returns what was copied (source paths)."""
    from nanogpt_runner.weights.init_from import cached_snapshot, hub_cache_dir

    if named is not None:
        sources = {name: Path(named) / name for name in GPT2_TOKENIZER_FILES}
        allowed_root = None
    else:
        snapshot = cached_snapshot("gpt2")
        if snapshot is None:
            return []
        sources = {name: snapshot / name for name in GPT2_TOKENIZER_FILES}
        allowed_root = snapshot.parent.parent.resolve()  # models--gpt2/: its snapshots link into its blobs/
        if hub_cache_dir().resolve() not in allowed_root.parents:
            return []
    copied = []
    for name, source in sources.items():
        data = _read_source(source, allowed_root)
        if data is not None:
            with open(folder / name, "xb") as f:
                f.write(data)
            copied.append(str(source))
    if named is not None and not copied:
        raise WeightsError(f"--tokenizer-from {named} holds none of {', '.join(GPT2_TOKENIZER_FILES)} as a "
                           f"regular file")
    return copied


def _read_source(path: Path, allowed_root: Path | None) -> bytes | None:
    """The bytes of ``path`` when it is a regular file (not a symlink); in the Hugging Face cache
    (``allowed_root`` its model folder) a snapshot's link into the same model's blobs is followed, no other."""
    if allowed_root is not None and path.is_symlink():
        real = Path(os.path.realpath(path))
        if allowed_root / "blobs" != real.parent:
            return None
        path = real
    try:
        with open_nofollow(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _write_nanogpt(folder: Path, out_dir: Path, state: dict, arch: Architecture, path: Path, meta: dict,
                   data: Path | None, say) -> list[str]:
    import torch

    from nanogpt_runner.checkpoint.state import load_optimizer_state
    from nanogpt_runner.config.schema import Config, dp_degree
    from nanogpt_runner.weights import nanogpt_format

    if not arch.tie_weights:
        raise WeightsError("nanoGPT always ties lm_head to the token embedding, and this model was trained with "
                           "model.tie_weights=false: export it with --format hf instead")
    warnings = []
    if arch.activation != "gelu":
        warnings.append(f"nanoGPT's MLP computes exact GELU, and this model was trained with {arch.activation} "
                        f"(GPT-2's tanh approximation): nanoGPT's logits will differ slightly from the runner's")
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(Config), meta["config"]))
    settings = nanogpt_format.nanogpt_config(config, out_dir, dp_degree(OmegaConf.create(config["parallel"])))
    optimizer = None
    if config["optimizer"]["name"] == "adamw":
        optimizer = nanogpt_format.optimizer_to_nanogpt(load_optimizer_state(path, meta), arch, config["optimizer"])
    else:
        warnings.append(f"the run trained with optimizer.name={config['optimizer']['name']}, which nanoGPT does "
                        f"not have: ckpt.pt carries no optimizer state, so nanoGPT's train.py cannot resume it")
    dropout = config["model"].get("dropout", 0.0)
    ckpt = nanogpt_format.checkpoint(state, arch, dropout, meta, settings, optimizer)
    with open(folder / nanogpt_format.CKPT, "xb") as f:
        torch.save(ckpt, f)
    (folder / nanogpt_format.RESUME_CONFIG).write_text(nanogpt_format.resume_config_file(settings), encoding="utf-8")
    vocabulary = nanogpt_format.meta_pkl(meta["vocab"])
    if vocabulary is not None:
        nanogpt_format.write_meta_pkl(folder, vocabulary)
    if data is not None:
        _copy_corpus(folder, Path(data), meta["vocab"])
    found = "meta.pkl there" if vocabulary else "no meta.pkl, so GPT-2's BPE, as the run"
    train = f"python train.py {out_dir / nanogpt_format.RESUME_CONFIG}"
    say(f"nanoGPT: python sample.py --init_from=resume --out_dir={out_dir}  (in nanoGPT's folder; it finds {found}); "
        + (f"to continue training: {train}" if data is not None else
           f"to continue training, export again with --data PREPARED_DIR (the corpus the run trained on: run.json's "
           f"dataset.dir), or put this tokenizer's train.bin and val.bin in {out_dir}, then {train}"))
    return warnings


def _copy_corpus(folder: Path, data: Path, vocab: list | dict) -> None:
    """train.bin and val.bin of the prepared corpus the user named, where nanoGPT's train.py reads them
    (``config['dataset']`` is the export itself). The corpus must be tokenized as the run was and hold uint16
    ids (train.py's memmap); only files in the folder itself are copied, never through a symlink (a folder
    that uses a nanoGPT folder's bins in place names them in its meta.json, which is not followed)."""
    import numpy as np

    from nanogpt_runner.data.prepared import DataError, load_prepared

    try:
        prepared = load_prepared(data)
    except DataError as err:
        raise WeightsError(f"--data {data}: {err}; name a prepared corpus folder (run.json's dataset.dir)") from None
    if json.loads(json.dumps(prepared.tokenizer.describe())) != json.loads(json.dumps(vocab)):
        raise WeightsError(f"--data {data} is tokenized differently from the run ({prepared.tokenizer.kind}, "
                           f"{prepared.vocab_size} ids): name the corpus the run trained on (run.json's dataset.dir)")
    if prepared.dtype != np.uint16:
        raise WeightsError(f"--data {data} holds {prepared.dtype} ids ({prepared.vocab_size} do not fit 16 bits), "
                           f"and nanoGPT's train.py reads uint16: it cannot train on this vocabulary")
    for split in ("train", "val"):
        try:
            with open_nofollow(data / f"{split}.bin") as source, open(folder / f"{split}.bin", "xb") as target:
                shutil.copyfileobj(source, target, 16 << 20)
        except OSError as err:
            raise WeightsError(f"--data {data}: {split}.bin is not a regular file in that folder ({err.strerror}); "
                               f"prepare the corpus again there") from None
