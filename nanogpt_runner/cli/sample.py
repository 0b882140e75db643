"""``nanogpt-sample``'s command line: RUN_DIR_OR_CHECKPOINT and key=value options, each checked and converted
(what it does: nanogpt_runner.weights.sample, whose docstring is the description)."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

from nanogpt_runner.console import error
from nanogpt_runner.errors import CheckpointError
from nanogpt_runner.weights.sample import EXIT_USAGE, SEPARATOR, SampleError, SampleOptions, sample


def parse_args(args: list[str]) -> tuple[Path, SampleOptions]:
    """RUN_DIR_OR_CHECKPOINT followed by key=value options, each checked and converted to its type."""
    usage = ("usage: nanogpt-sample RUN_DIR_OR_CHECKPOINT [prompt=TEXT] [num_samples=N] [max_new_tokens=N] "
             "[temperature=T] [top_k=K] [seed=S] [which=best|latest] [device=auto|cpu|cuda]")
    positional = [a for a in args if "=" not in a]
    if len(positional) != 1:
        raise SampleError(usage)
    known = {f.name: f for f in fields(SampleOptions)}
    options = SampleOptions()
    for arg in args:
        if "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        if key not in known:
            raise SampleError(f"unknown option {key}=: the options are {', '.join(f'{k}=' for k in known)}")
        setattr(options, key, _convert(key, value))
    problems = []
    if options.num_samples < 1:
        problems.append(f"num_samples={options.num_samples} must be 1 or more")
    if options.max_new_tokens < 0:
        problems.append(f"max_new_tokens={options.max_new_tokens} must be 0 or more")
    if options.temperature <= 0:
        problems.append(f"temperature={options.temperature} must be positive (e.g. 0.8; lower is more conservative)")
    if options.top_k is not None and options.top_k < 0:
        problems.append(f"top_k={options.top_k} must be positive, or 0/none for no limit")
    if options.which not in ("best", "latest"):
        problems.append(f"which={options.which} is unknown: use best or latest")
    if options.device not in ("auto", "cpu", "cuda"):
        problems.append(f"device={options.device} is unknown: use auto, cpu or cuda")
    if not options.prompt:
        problems.append('prompt is empty: give at least one character (the default is a newline)')
    if problems:
        raise SampleError("; ".join(problems))
    return Path(positional[0]), options


def _convert(key: str, value: str):
    if key in ("prompt", "which", "device"):
        return value
    if key == "top_k" and value.lower() in ("0", "none", "null"):
        return None
    try:
        return float(value) if key == "temperature" else int(value)
    except ValueError:
        kind = "a number" if key == "temperature" else "an integer"
        raise SampleError(f"{key}={value!r} is not {kind}") from None


def main(argv: list[str] | None = None) -> None:
    try:
        target, options = parse_args(sys.argv[1:] if argv is None else argv)
        texts = sample(target, options)
    except (SampleError, CheckpointError) as err:
        error(str(err))
        sys.exit(EXIT_USAGE)
    print(f"\n{SEPARATOR}\n".join(texts))


if __name__ == "__main__":
    main()
