"""GPT-2's and nanoGPT's weights <-> this runner's: the one table of names and layouts, both directions.

The same GPT-2 architecture has three spellings:

- this runner (model.py): ``tok_emb``, ``pos_emb``, ``blocks.{i}.attn.query|key|value|proj``,
  ``blocks.{i}.mlp.fc|proj``, ``ln_f``, ``lm_head``; torch ``Linear`` weights are (out, in); the
  vocabulary rows are padded (model.padded_vocab_size);
- nanoGPT: ``transformer.wte|wpe``, ``transformer.h.{i}.attn.c_attn`` (q, k and v fused along the output
  dimension), ``attn.c_proj``, ``mlp.c_fc|c_proj``, ``transformer.ln_f``, ``lm_head``; Linear layout;
  biases only when ``bias=True``; ``lm_head`` and ``wte`` always the same tensor;
- Hugging Face ``GPT2LMHeadModel``: nanoGPT's names (the hub's own files drop the ``transformer.`` prefix),
  but the four projections are OpenAI's ``Conv1D``, stored (in, out), and every layer has a bias.

Every conversion goes through nanoGPT's spelling: ours <-> nanoGPT renames, fuses or splits q/k/v and
crops or pads the vocabulary; nanoGPT <-> Hugging Face transposes the Conv1D weights and adds zero biases
where a model has none (exactly the same function: a zero bias adds nothing).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from nanogpt_runner.model.gpt import padded_vocab_size

LAYER_NORM_EPS = 1e-5  # model.LayerNorm's, and GPT-2's layer_norm_epsilon

# Per block: our name -> nanoGPT's (and Hugging Face's). q/k/v are fused separately (FUSED_QKV).
BLOCK_NAMES = {
    "ln_1.weight": "ln_1.weight",
    "ln_1.bias": "ln_1.bias",
    "attn.proj.weight": "attn.c_proj.weight",
    "attn.proj.bias": "attn.c_proj.bias",
    "ln_2.weight": "ln_2.weight",
    "ln_2.bias": "ln_2.bias",
    "mlp.fc.weight": "mlp.c_fc.weight",
    "mlp.fc.bias": "mlp.c_fc.bias",
    "mlp.proj.weight": "mlp.c_proj.weight",
    "mlp.proj.bias": "mlp.c_proj.bias",
}
QKV = ("attn.query", "attn.key", "attn.value")
FUSED_QKV = "attn.c_attn"
TOP_NAMES = {
    "tok_emb.weight": "transformer.wte.weight",
    "pos_emb.weight": "transformer.wpe.weight",
    "ln_f.weight": "transformer.ln_f.weight",
    "ln_f.bias": "transformer.ln_f.bias",
    "lm_head.weight": "lm_head.weight",
}
VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight")
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal masks old transformers saved; not weights
HF_PREFIX = "transformer."

# Hugging Face's activation_function values that compute our activations (gelu_new and
# gelu_pytorch_tanh are the same formula, rounded differently: ~1e-7).
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
HF_EXPORT_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
# GPT-2 config switches whose non-default value is a different computation than model.py's.
HF_UNSUPPORTED = {
    "scale_attn_weights": (True, "attention scores unscaled by 1/sqrt(head_dim)"),
    "scale_attn_by_inverse_layer_idx": (False, "attention scaled by 1/layer index"),
    "add_cross_attention": (False, "cross-attention layers"),
}


class WeightsError(Exception):
    """Weights that cannot be used as asked: the message names the file or field and the fix."""


@dataclass(frozen=True)
class Architecture:
    """What a set of weights fixes about the model; ``vocab_size`` counts real tokens (no padding)."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    bias: bool = True
    tie_weights: bool = True
    activation: str = "gelu_tanh"

    def model_fields(self) -> dict:
        """The model.* config fields these weights decide."""
        fields = asdict(self)
        del fields["vocab_size"]
        return fields


# ------------------------------------------------------------------------------ ours <-> nanoGPT

def ours_to_nanogpt(state: dict[str, torch.Tensor], arch: Architecture) -> dict[str, torch.Tensor]:
    """Our state dict in nanoGPT's names and layout, the vocabulary cropped to its real tokens."""
    out = {}
    for ours, theirs in TOP_NAMES.items():
        if ours in state:
            out[theirs] = state[ours]
    for i in range(arch.n_layer):
        prefix, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, name in BLOCK_NAMES.items():
            if prefix + ours in state:
                out[theirs + name] = state[prefix + ours]
        for kind in ("weight", "bias"):
            parts = [state.get(f"{prefix}{proj}.{kind}") for proj in QKV]
            if all(p is not None for p in parts):
                out[f"{theirs}{FUSED_QKV}.{kind}"] = torch.cat(parts, dim=0)
    for name in VOCAB_ROWS:
        if name in out:
            out[name] = out[name][: arch.vocab_size]
    if arch.tie_weights:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def nanogpt_to_ours(state: dict[str, torch.Tensor], arch: Architecture) -> dict[str, torch.Tensor]:
    """nanoGPT-named weights as our state dict: q/k/v split, vocabulary rows cut to ``arch.vocab_size``
    (a nanoGPT model's own padding dropped) and padded with zeros to our row count."""
    state = dict(state)
    rows = padded_vocab_size(arch.vocab_size)
    for name in VOCAB_ROWS:
        if name in state:
            table = state[name][: arch.vocab_size]
            state[name] = torch.cat([table, table.new_zeros(rows - arch.vocab_size, table.size(1))])
    if arch.tie_weights:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    out = {ours: state[theirs] for ours, theirs in TOP_NAMES.items() if theirs in state}
    for i in range(arch.n_layer):
        prefix, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, name in BLOCK_NAMES.items():
            if theirs + name in state:
                out[prefix + ours] = state[theirs + name]
        for kind in ("weight", "bias"):
            fused = state.get(f"{theirs}{FUSED_QKV}.{kind}")
            if fused is not None:
                for proj, part in zip(QKV, fused.split(arch.n_embd, dim=0), strict=True):
                    out[f"{prefix}{proj}.{kind}"] = part
    return {k: v.contiguous() for k, v in out.items()}


def strip_compile_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nanoGPT saves a compiled model's weights as ``_orig_mod.<name>``."""
    return {k.removeprefix("_orig_mod."): v for k, v in state.items()}


# ----------------------------------------------------------------------- nanoGPT <-> Hugging Face

def hf_to_nanogpt(state: dict[str, torch.Tensor], arch: Architecture) -> dict[str, torch.Tensor]:
    """A GPT2LMHeadModel's (or GPT2Model's) weights in nanoGPT's names and Linear layout."""
    out = {}
    for key, tensor in state.items():
        if key.endswith(HF_BUFFERS):
            continue
        name = key if key.startswith(HF_PREFIX) or key == "lm_head.weight" else HF_PREFIX + key
        out[name] = tensor.t() if name.endswith(CONV1D) else tensor
    if arch.tie_weights and "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def nanogpt_to_hf(state: dict[str, torch.Tensor], arch: Architecture) -> dict[str, torch.Tensor]:
    """nanoGPT-named weights as GPT2LMHeadModel's: Conv1D weights transposed, a zero bias for each one a
    bias-free model lacks, and ``lm_head`` left out when tied (Hugging Face ties it on load)."""
    out = {k: (v.t() if k.endswith(CONV1D) else v).contiguous() for k, v in state.items()}
    for key in list(out):
        if key.endswith(".weight") and key != "lm_head.weight" and "wte" not in key and "wpe" not in key:
            bias = key.removesuffix(".weight") + ".bias"
            if bias not in out:
                width = out[key].size(-1) if key.endswith(CONV1D) else out[key].size(0)
                out[bias] = out[key].new_zeros(width)
    if arch.tie_weights:
        out.pop("lm_head.weight", None)
    return out


# ------------------------------------------------------------------------- configs <-> Architecture

def hf_architecture(config: dict, where: str) -> Architecture:
    """The Architecture of a Hugging Face GPT-2 ``config.json``; WeightsError for a model model.py cannot
    compute exactly (another model type, activation, layer-norm epsilon, MLP width or attention scaling)."""
    if config.get("model_type", "gpt2") != "gpt2":
        raise WeightsError(f"{where} is a {config.get('model_type')!r} model, not GPT-2: only GPT-2 weights load")
    activation = config.get("activation_function", "gelu_new")
    n_embd = config.get("n_embd", 768)
    problems = []
    if activation not in HF_ACTIVATIONS:
        problems.append(f"activation_function={activation!r} (supported: {', '.join(HF_ACTIVATIONS)})")
    if config.get("n_inner") not in (None, 4 * n_embd):
        problems.append(f"n_inner={config['n_inner']} (the MLP must be 4 x n_embd = {4 * n_embd} wide)")
    if config.get("layer_norm_epsilon", LAYER_NORM_EPS) != LAYER_NORM_EPS:
        problems.append(f"layer_norm_epsilon={config['layer_norm_epsilon']} (model.py uses {LAYER_NORM_EPS})")
    for key, (default, meaning) in HF_UNSUPPORTED.items():
        if config.get(key, default) != default:
            problems.append(f"{key}={config[key]} ({meaning})")
    if problems:
        raise WeightsError(f"{where} describes a GPT-2 variant this runner cannot compute exactly: "
                           f"{'; '.join(problems)}")
    return Architecture(
        n_layer=config.get("n_layer", 12), n_head=config.get("n_head", 12), n_embd=n_embd,
        block_size=config.get("n_positions", 1024), vocab_size=config.get("vocab_size", 50257), bias=True,
        tie_weights=config.get("tie_word_embeddings", True), activation=HF_ACTIVATIONS[activation],
    )


def hf_config(arch: Architecture, dropout: float, special_ids: dict[str, int]) -> dict:
    """A GPT2LMHeadModel config.json for ``arch``: the same computation, biases on (zeros where the model
    had none), the model's activation under Hugging Face's name, and ``special_ids`` (bos_token_id,
    eos_token_id, pad_token_id: ids of the vocabulary, hf_tokenizer.generation_config)."""
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "n_layer": arch.n_layer, "n_head": arch.n_head, "n_embd": arch.n_embd, "n_positions": arch.block_size,
        "n_ctx": arch.block_size, "vocab_size": arch.vocab_size, "n_inner": None,
        "activation_function": HF_EXPORT_ACTIVATION[arch.activation], "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout,
        "tie_word_embeddings": arch.tie_weights, "scale_attn_weights": True, "initializer_range": 0.02,
        "torch_dtype": "float32",
    }
    config.update(special_ids)
    return config


def nanogpt_architecture(model_args: dict, where: str) -> Architecture:
    """The Architecture of a nanoGPT checkpoint's ``model_args`` (nanoGPT: exact GELU, tied weights)."""
    try:
        return Architecture(
            n_layer=int(model_args["n_layer"]), n_head=int(model_args["n_head"]), n_embd=int(model_args["n_embd"]),
            block_size=int(model_args["block_size"]), vocab_size=int(model_args["vocab_size"]),
            bias=bool(model_args["bias"]), tie_weights=True, activation="gelu",
        )
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"{where} is not a nanoGPT checkpoint: its model_args lack {err}") from None


def nanogpt_model_args(arch: Architecture, dropout: float) -> dict:
    """nanoGPT's ``model_args`` (its GPTConfig's fields) for ``arch``."""
    return {"n_layer": arch.n_layer, "n_head": arch.n_head, "n_embd": arch.n_embd, "block_size": arch.block_size,
            "bias": arch.bias, "vocab_size": arch.vocab_size, "dropout": dropout}
