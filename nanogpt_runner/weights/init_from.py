"""``model.init_from``: the weights a new run starts from.

    scratch                               random initialisation (the default)
    gpt2 | gpt2-medium | gpt2-large | gpt2-xl
                                          OpenAI's GPT-2, from the local Hugging Face cache (downloaded
                                          into it when huggingface_hub is installed and the hub reachable)
    PATH/ with config.json                a Hugging Face GPT-2 folder (model.safetensors, or
                                          pytorch_model.bin read weights-only), e.g. from save_pretrained
    PATH/ckpt.pt (or its folder)          a nanoGPT checkpoint (model_args + model), read weights-only
    RUN_DIR or RUN_DIR/checkpoints/step_N a run of this runner (a run's best checkpoint)

The launcher resolves the source once, before any run directory exists: the architecture fields
(model.n_layer, n_head, n_embd, bias, tie_weights, activation, and block_size unless set smaller) are
taken from the weights, a command-line value that contradicts them is refused, and the weights'
vocabulary must be the data tokenizer's. The training process then loads the weights into the new model
(``initialize``); a resumed run continues from its own checkpoint and never reads ``init_from`` again.
Nothing here runs code from a file: JSON, safetensors, and ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from nanogpt_runner.config.schema import SCRATCH, Config, starts_from_weights
from nanogpt_runner.model.gpt import padded_vocab_size
from nanogpt_runner.weights.gpt2_layouts import (
    HF_BUFFERS,
    Architecture,
    WeightsError,
    hf_architecture,
    hf_to_nanogpt,
    nanogpt_architecture,
    nanogpt_to_ours,
    strip_compile_prefix,
)

HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
             "tokenizer_config.json", "generation_config.json"]
HF_CONFIG = "config.json"
HF_SAFETENSORS = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_BIN = "pytorch_model.bin"
NANOGPT_CKPT = "ckpt.pt"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")
# Architecture fields the weights decide; block_size may be set smaller (the position table is cropped).
ARCHITECTURE_FIELDS = ("n_layer", "n_head", "n_embd", "bias", "tie_weights", "activation")


@dataclass(frozen=True)
class Source:
    """Resolved ``model.init_from``: what the user wrote, which format, where, and its architecture.
    ``tokenizer`` is the tokenizer description of a run of this runner (nanogpt_runner.data.tokenizers; None for
    GPT-2 and nanoGPT weights, which record only a vocabulary size)."""

    spec: str
    kind: str  # huggingface | nanogpt | runner
    path: Path
    arch: Architecture
    tokenizer: list | dict | None = None

    def as_record(self) -> dict:
        """run.json's ``init_from``: where the run started from."""
        return {"spec": self.spec, "kind": self.kind, "path": str(self.path.resolve())}


def tokenizer_files(folder: Path) -> list[Path]:
    """GPT-2's BPE files in a Hugging Face folder (vocab.json, merges.txt, tokenizer.json, ...)."""
    return [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]


# --------------------------------------------------------------------------- the Hugging Face cache

def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def cached_snapshot(name: str, cache: Path | None = None) -> Path | None:
    """The cached snapshot folder of hub model ``name`` that has a config and weights, or None.

    The hub's cache layout is ``models--{org}--{name}/snapshots/{revision}/`` with ``refs/main`` naming
    the revision; GPT-2 is cached as ``gpt2`` or under its current id ``openai-community/gpt2``."""
    cache = cache or hub_cache_dir()
    for repo in (name, f"openai-community/{name}"):
        folder = cache / ("models--" + repo.replace("/", "--"))
        snapshots = folder / "snapshots"
        if not snapshots.is_dir():
            continue
        try:
            main = (folder / "refs" / "main").read_text().strip()
        except OSError:
            main = ""
        named = [snapshots / main] if main.isalnum() else []  # a commit hash, never a path
        for snapshot in named + sorted(snapshots.iterdir()):
            if (snapshot / HF_CONFIG).is_file() and _hf_weights_file(snapshot) is not None:
                return snapshot
    return None


def _download(name: str, announce) -> Path | None:
    """Fetch hub model ``name`` into the cache with huggingface_hub (an optional package); None when it is
    not installed, or the hub cannot be reached (offline, HF_HUB_OFFLINE=1)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    announce(f"downloading {name} from the Hugging Face hub into {hub_cache_dir()} (once)")
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as err:  # huggingface_hub raises many kinds (offline mode, DNS, HTTP): each means "not here"
        announce(f"the download of {name} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return None


def _not_cached(name: str) -> WeightsError:
    return WeightsError(
        f"model.init_from={name}: {name}'s weights are not in the Hugging Face cache ({hub_cache_dir()}) and could "
        f"not be downloaded: on a machine with network run `hf download {name} {' '.join(HUB_FILES[:4])}` "
        f"(pip install huggingface_hub; older versions: huggingface-cli download) and copy its models--{name} "
        f"folder into {hub_cache_dir()} here, or pass model.init_from=/path/to/a/gpt2/folder")


# ------------------------------------------------------------------------------------------ sources

def resolve_source(spec: str, announce=print, download: bool = True) -> Source | None:
    """The Source ``spec`` (model.init_from) names; None for scratch. WeightsError says why it cannot be used.

    ``download``: fetch a missing hub model (the launcher does, once, before training; training processes
    only read the cache)."""
    if spec == SCRATCH:
        return None
    if spec in HUB_MODELS:
        folder = cached_snapshot(spec) or (_download(spec, announce) if download else None)
        if folder is None:
            raise _not_cached(spec)
        return _huggingface(spec, folder)
    path = Path(spec).expanduser()
    if not path.exists():
        raise WeightsError(f"model.init_from={spec} does not exist: use scratch, {', '.join(HUB_MODELS)}, a Hugging "
                           f"Face GPT-2 folder, a nanoGPT ckpt.pt, or a run directory of this runner")
    if path.is_dir() and (path / HF_CONFIG).is_file():
        return _huggingface(spec, path)
    if path.is_file() and path.suffix in (".pt", ".pth", ".ckpt"):
        return _nanogpt(spec, path)
    if path.is_dir() and (path / NANOGPT_CKPT).is_file():
        return _nanogpt(spec, path / NANOGPT_CKPT)
    if path.is_dir():
        return _runner(spec, path, announce)
    raise WeightsError(f"model.init_from={spec} is a file this runner does not read as weights: give a Hugging "
                       f"Face folder (config.json + model.safetensors), a nanoGPT ckpt.pt, or a run directory")


def _hf_weights_file(folder: Path) -> Path | None:
    for name in (HF_SAFETENSORS, HF_SAFETENSORS_INDEX, HF_BIN):
        if (folder / name).is_file():
            return folder / name
    return None


def _huggingface(spec: str, folder: Path) -> Source:
    if _hf_weights_file(folder) is None:
        raise WeightsError(f"model.init_from={spec}: {folder} has a {HF_CONFIG} but no {HF_SAFETENSORS} or {HF_BIN}")
    try:
        config = json.loads((folder / HF_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise WeightsError(f"model.init_from={spec}: {folder / HF_CONFIG} is unreadable ({err})") from err
    if not isinstance(config, dict):
        raise WeightsError(f"model.init_from={spec}: {folder / HF_CONFIG} is not a JSON object")
    if (folder / HF_BIN) == _hf_weights_file(folder):
        _load_weights_only(folder / HF_BIN, mmap=True)  # refused now, before any run exists, if it holds code
    return Source(spec, "huggingface", folder, hf_architecture(config, str(folder / HF_CONFIG)))


def _load_weights_only(path: Path, mmap: bool = False) -> object:
    """torch.load that builds tensors and plain containers only: a file that would run code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise WeightsError(f"{path} holds objects other than tensors and plain data (code that would run on "
                           f"loading); refusing to read it: save the weights as a state dict or safetensors "
                           f"({str(err).splitlines()[0]})") from None
    except (RuntimeError, OSError, EOFError) as err:
        raise WeightsError(f"{path} is not a readable torch file ({str(err).splitlines()[0]})") from None


def _nanogpt(spec: str, path: Path) -> Source:
    ckpt = _load_weights_only(path, mmap=True)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_args"), dict) or "model" not in ckpt:
        raise WeightsError(f"model.init_from={spec}: {path} is not a nanoGPT checkpoint (it needs 'model_args' and "
                           f"'model', as nanoGPT's train.py saves them)")
    return Source(spec, "nanogpt", path, nanogpt_architecture(ckpt["model_args"], str(path)))


def _runner(spec: str, path: Path, announce) -> Source:
    from nanogpt_runner.checkpoint.folder import resolve
    from nanogpt_runner.errors import CheckpointError

    try:
        checkpoint, meta = resolve(path, "best", announce)
    except CheckpointError as err:  # not a run, or no usable checkpoint: the message says which
        raise WeightsError(f"model.init_from={spec}: {err}") from None
    return Source(spec, "runner", checkpoint, checkpoint_architecture(meta), meta["vocab"])


def checkpoint_architecture(meta: dict) -> Architecture:
    """The Architecture a runner checkpoint was trained with (its config, and the vocabulary size its
    tokenizer description records)."""
    from nanogpt_runner.data.tokenizers import vocab_size_of

    model = meta["config"]["model"]
    return Architecture(
        n_layer=model["n_layer"], n_head=model["n_head"], n_embd=model["n_embd"], block_size=model["block_size"],
        vocab_size=vocab_size_of(meta["vocab"]), bias=model["bias"], tie_weights=model["tie_weights"],
        activation=model.get("activation", "gelu"),
    )


def tokenizer_kind(description: list | dict) -> str:
    """char, gpt2 or bpe, from a tokenizer description (a character vocabulary is a plain list)."""
    return "char" if isinstance(description, list) else str(description.get("kind"))


# ------------------------------------------------------------------------------- config and checks

def architecture_problems(model_cfg, source: Source, user_set: list[str]) -> list[str]:
    """Why the model config cannot start from ``source``: a field the command line set to another value
    than the weights have, or a block_size larger than their position table."""
    problems = []
    for name in ARCHITECTURE_FIELDS:
        via = _named(f"model.{name}", user_set)
        if via and model_cfg[name] != getattr(source.arch, name):
            problems.append(
                f"model.{name}={model_cfg[name]}{'' if via == f'model.{name}' else f' (from {via}=...)'} conflicts "
                f"with model.init_from={source.spec}, whose weights have {name}={getattr(source.arch, name)} (the "
                f"architecture comes from the weights): drop that override")
    if _named("model.block_size", user_set) and model_cfg.block_size > source.arch.block_size:
        problems.append(
            f"model.block_size={model_cfg.block_size} is larger than the {source.arch.block_size} positions "
            f"model.init_from={source.spec} was trained with: use at most {source.arch.block_size} (a smaller "
            f"block_size crops the position table)")
    return problems


def apply_init_from(cfg: Config, overrides: list[str], conf_dir: Path, announce=print) -> tuple[object, list[str]]:
    """For a new run: ``cfg`` with the architecture of the weights ``model.init_from`` names, and the
    problems (an unusable source, a command-line override that contradicts the weights). ``cfg`` is
    returned as it is for scratch and for a resumed run (which continues from its own checkpoint)."""
    from nanogpt_runner.checkpoint.resume_plan import override_paths

    if not starts_from_weights(cfg):
        return cfg, []
    try:
        source = resolve_source(cfg.model.init_from, announce)
    except WeightsError as err:
        return cfg, [str(err)]
    user_set = override_paths(overrides, conf_dir)
    problems = architecture_problems(cfg.model, source, user_set)
    return (cfg, problems) if problems else (with_architecture(cfg, source, user_set), [])


def vocabulary_problems(cfg, tokenizer) -> list[str]:
    """The data check of a new run that starts from weights: their vocabulary must be the data tokenizer's."""
    if not starts_from_weights(cfg):
        return []
    try:
        problem = vocabulary_problem(resolve_source(cfg.model.init_from, download=False), tokenizer)
    except WeightsError:
        return []  # apply_init_from, which runs first, has reported why the weights cannot be used
    return [problem] if problem else []


def with_architecture(cfg, source: Source, user_set: list[str]):
    """``cfg`` with the model's architecture fields taken from ``source`` (block_size too, unless the user
    set a smaller one). Call after architecture_problems found none."""
    cfg = copy.deepcopy(cfg)
    for name in ARCHITECTURE_FIELDS:
        cfg.model[name] = getattr(source.arch, name)
    if not _named("model.block_size", user_set):
        cfg.model.block_size = source.arch.block_size
    return cfg


def vocabulary_problem(source: Source, tokenizer) -> str | None:
    """A refusal when the weights were made for another vocabulary than the data tokenizer's.

    GPT-2 and nanoGPT weights only record a size: it must be the data's (or nanoGPT's padding of it,
    50,304 for 50,257); a run of this runner records its tokenizer, which must be the data's."""
    size = tokenizer.vocab_size
    if source.tokenizer is not None:
        if source.tokenizer == tokenizer.describe():
            return None
        detail = (f"its {tokenizer_kind(source.tokenizer)} tokenizer ({source.arch.vocab_size:,} tokens) is not "
                  f"the data's {tokenizer.kind} tokenizer ({size:,})")
    elif source.arch.vocab_size in (size, padded_vocab_size(size)):
        return None
    else:
        detail = f"its vocabulary has {source.arch.vocab_size:,} tokens, the data's {tokenizer.kind} tokenizer {size:,}"
    hint = " (GPT-2's BPE: data.tokenizer=gpt2, e.g. data=shakespeare)" if source.arch.vocab_size in (50257, 50304) \
        else ""
    return (f"model.init_from={source.spec} was made for another vocabulary: {detail}; train on data tokenized "
            f"the way the weights were{hint}")


def _named(field: str, user_set: list[str]) -> str | None:
    """The command-line path (``model.n_layer``, or a group such as ``model``) that sets ``field``, if any."""
    return next((path for path in user_set if field == path or field.startswith(path + ".")), None)


# ------------------------------------------------------------------------------------- the weights

def load_state(source: Source, vocab_size: int, block_size: int) -> dict[str, torch.Tensor]:
    """``source``'s weights as this runner's state dict for ``vocab_size`` tokens and ``block_size``
    positions (the position table cropped, as nanoGPT's crop_block_size)."""
    arch = Architecture(**{**source.arch.model_fields(), "vocab_size": vocab_size})
    if source.kind == "runner":
        from nanogpt_runner.checkpoint.folder import read_meta
        from nanogpt_runner.checkpoint.state import load_model_state

        state = dict(load_model_state(source.path, read_meta(source.path)))
    elif source.kind == "nanogpt":
        raw = strip_compile_prefix(_load_weights_only(source.path, mmap=True)["model"])
        state = nanogpt_to_ours({k: v for k, v in raw.items() if not k.endswith(HF_BUFFERS)}, arch)
    else:
        state = nanogpt_to_ours(hf_to_nanogpt(_read_hf_weights(_hf_weights_file(source.path)), arch), arch)
    if "pos_emb.weight" in state:
        state["pos_emb.weight"] = state["pos_emb.weight"][:block_size]
    return state


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if path.name == HF_SAFETENSORS_INDEX:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(path.parent / Path(shard).name).items()}
        if path.name == HF_SAFETENSORS:
            return load_file(path)
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file ({err})") from None
    state = _load_weights_only(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return state


def initialize(model: torch.nn.Module, source: Source) -> None:
    """Copy ``source``'s weights into a freshly built GPT (before any parallel layout is applied)."""
    state = load_state(source, model.vocab_size, model.cfg.block_size)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for what, keys in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise WeightsError(f"the weights of model.init_from={source.spec} do not fit the model ({detail})")
    with torch.no_grad():
        model.load_state_dict(state)


def load_initial_weights(model: torch.nn.Module, cfg) -> dict | None:
    """Start a new run's model from ``model.init_from``; returns run.json's ``init_from`` record (None for
    scratch and for a resumed run, whose checkpoint replaces the weights anyway)."""
    from nanogpt_runner.errors import CheckpointError

    if not starts_from_weights(cfg):
        return None
    try:
        source = resolve_source(cfg.model.init_from, download=False)
        initialize(model, source)
    except WeightsError as err:
        raise CheckpointError(str(err)) from None
    return source.as_record()
