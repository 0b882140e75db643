"""``nanogpt-sample RUN_DIR_OR_CHECKPOINT [key=value ...]``: text from a trained run.

    nanogpt-sample outputs/2026-01-01/12-00-00_baby prompt="ROMEO:" num_samples=3 max_new_tokens=300 \\
        temperature=0.8 top_k=200 seed=7 which=best

The checkpoint is the run's best-by-val one (``which=latest`` for the newest), or the checkpoint folder
given. Everything the model needs comes from the checkpoint (architecture, the run's tokenizer: characters,
GPT-2's BPE or the BPE trained on its corpus), so a copied checkpoint folder samples the same as the run it
came from; only a character vocabulary refuses a prompt (a character it does not have). With the same
seed the text is the same. The model meta.json describes is checked against the tensors the checkpoint's
files hold (bounded by their sizes) before it is built, so a small checkpoint whose meta.json claims a
huge model is refused in one line instead of allocating that model.
Samples go to stdout, separated by a dashed line; a problem is one ``error:`` line on stderr and exit
code 2. The viewer calls ``sample()`` through this command.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path

EXIT_USAGE = 2
SEPARATOR = "-" * 40


@dataclass
class SampleOptions:
    prompt: str = "\n"
    num_samples: int = 1
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200  # 0 or none: sample from the whole distribution
    seed: int = 1337
    which: str = "best"  # best | latest: which of a run's checkpoints
    device: str = "auto"  # auto | cpu | cuda


class SampleError(Exception):
    """A problem with the request (options, checkpoint, prompt): the message names it and the fix."""


def sample(target: Path, options: SampleOptions, announce=lambda message: print(message, file=sys.stderr)) -> list[str]:
    """``options.num_samples`` texts, each the prompt followed by ``max_new_tokens`` sampled tokens, encoded
    and decoded with the tokenizer the checkpoint records (its run's).

    Raises SampleError (or CheckpointError) with a message fit to show a user."""
    import torch

    from nanogpt_runner.checkpoint.folder import resolve
    from nanogpt_runner.checkpoint.state import load_model_state
    from nanogpt_runner.config.schema import ModelConfig
    from nanogpt_runner.data.tokenizers import TokenizerError, TokenizerUnavailable, from_description
    from nanogpt_runner.model.gpt import GPT

    path, meta = resolve(target, options.which, announce)
    try:
        tokenizer = from_description(meta["vocab"])
        prompt = tokenizer.encode(options.prompt)
    except TokenizerUnavailable as err:
        raise SampleError(str(err)) from None
    except TokenizerError as err:  # only a character vocabulary refuses text
        raise SampleError(f"the prompt has {err}; remove or replace them") from None
    if options.device == "cuda" and not torch.cuda.is_available():
        raise SampleError("device=cuda but no CUDA GPU is visible: use device=cpu or auto")
    device = torch.device("cuda" if options.device != "cpu" and torch.cuda.is_available() else "cpu")

    saved = meta["config"]["model"]
    model_cfg = ModelConfig(**{f.name: saved[f.name] for f in fields(ModelConfig) if f.name in saved})
    weights = load_model_state(path, meta)
    check_shapes(path, model_cfg, tokenizer.vocab_size, weights)
    model = GPT(model_cfg, tokenizer.vocab_size)
    model.load_state_dict(weights)
    model.to(device).eval()

    generator = torch.Generator(device=device).manual_seed(options.seed)
    context = torch.as_tensor(prompt, dtype=torch.long, device=device)[None]
    texts = []
    for _ in range(options.num_samples):
        out = model.generate(context, options.max_new_tokens, options.temperature, options.top_k, generator)
        texts.append(tokenizer.decode(out[0].tolist()))
    return texts


def check_shapes(path: Path, model_cfg, vocab_size: int, weights: dict) -> None:
    """Raise SampleError unless the model ``model_cfg`` describes has exactly the tensors in ``weights`` (read
    from the checkpoint's files, so bounded by their sizes). The model is laid out on the meta device, which
    allocates nothing; a layer count beyond the tensors' count, or heads that do not divide the embedding
    (which no shape shows), are refused before even that."""
    import torch

    from nanogpt_runner.model.gpt import GPT

    problem = None
    if not isinstance(model_cfg.n_layer, int) or not 0 < model_cfg.n_layer <= len(weights):
        problem = f"n_layer={model_cfg.n_layer!r} but its weights hold {len(weights)} tensors in all"
    elif not isinstance(model_cfg.n_head, int) or model_cfg.n_head < 1 or model_cfg.n_embd % model_cfg.n_head:
        problem = f"n_head={model_cfg.n_head!r} does not divide n_embd={model_cfg.n_embd!r}"  # shapes do not show it
    else:
        try:
            with torch.device("meta"):
                expected = {name: tuple(t.shape) for name, t in GPT(model_cfg, vocab_size).state_dict().items()}
        except (AssertionError, ValueError, TypeError, RuntimeError) as err:
            raise SampleError(f"checkpoint {path}: the model its meta.json describes cannot be built ({err}); "
                              f"sample another checkpoint") from None
        found = {name: tuple(t.shape) for name, t in weights.items()}
        differing = sorted(set(expected) ^ set(found)) or [n for n in expected if expected[n] != found[n]]
        if differing:
            name = differing[0]
            problem = (f"{len(differing)} tensor(s) differ from the model it describes, e.g. {name}: "
                       f"{found.get(name, 'absent')} in the weights, {expected.get(name, 'absent')} in the model")
    if problem:
        raise SampleError(f"checkpoint {path} does not match its meta.json ({problem}): the checkpoint is damaged "
                          f"or its meta.json was edited; sample another checkpoint")
