"""``nanogpt-plan``: the command line of nanogpt_runner.perf.plan (its docstring is the help)."""

from __future__ import annotations

import sys

from rich.console import Console

from nanogpt_runner.console import error
from nanogpt_runner.launch.app import EXIT_INVALID_CONFIG, check, compose_overrides
from nanogpt_runner.perf import hardware, memory, plan
from nanogpt_runner.perf.plan import PlanError, available_memory, cached_plan, estimate_table, plan_device, plan_table


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(args):
        print(plan.__doc__)
        return 0
    estimate_only = "--estimate-only" in args
    overrides = [a for a in args if a != "--estimate-only"]
    console = Console(highlight=False)

    def say(message: str) -> None:
        print(message, file=sys.stderr)

    cfg, problems = compose_overrides(overrides)
    if not problems:
        cfg.train.plan = "auto"  # the plan finds what fits: the memory refusal is its job here
        cfg, problems, data = check(cfg, overrides, announce=say)
    if problems:
        error("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))
        return EXIT_INVALID_CONFIG
    kind = hardware.device_kind(cfg.train.device)
    available = available_memory(cfg)
    console.print(estimate_table(memory.estimate(cfg, data.vocab_size, kind), available, kind))
    if estimate_only:
        return 0
    device = plan_device(kind)
    try:
        chosen = cached_plan(cfg, data.vocab_size, device, available, say)
    except PlanError as err:
        error(str(err))
        return 1
    console.print(plan_table(chosen))
    console.print(f"winner: nanogpt-run {' '.join([*overrides, *chosen.best.overrides()])}", soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
