"""``python -m nanogpt_runner.cli.check [--json] [OVERRIDES...]``: compose and validate a config, train nothing.

Exit 0 when ``nanogpt-run`` with the same overrides would start, 2 with every problem listed when it
would not. A ``resume=`` is planned as nanogpt-run plans it, so the config checked is the one the run
would use (the checkpoint's, plus the overrides). With ``--json`` a good config is printed as one JSON
object. The viewer's launch form calls this before it starts a run, so both agree on what is valid, and
the viewer sees what a resumed run would take from its checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nanogpt_runner.config.schema import as_dict
from nanogpt_runner.console import error
from nanogpt_runner.errors import CheckpointError
from nanogpt_runner.launch.app import EXIT_INVALID_CONFIG, check, compose_overrides, resumed_config


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    as_json = bool(overrides) and overrides[0] == "--json"
    overrides = overrides[1:] if as_json else overrides
    cfg, problems = compose_overrides(overrides)
    if problems:
        error(f"invalid config: {problems[0]}")
        return EXIT_INVALID_CONFIG

    def announce(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        if cfg.resume:  # the run dir only matters for a checkpoint outside any run: not used here
            cfg = resumed_config(cfg, Path(cfg.run.root), overrides, announce)[0]
    except CheckpointError as err:
        problems = [str(err)]
    else:
        cfg, problems, _ = check(cfg, overrides, announce=announce)
    if problems:
        error("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))
        return EXIT_INVALID_CONFIG
    print(json.dumps(as_dict(cfg), default=str) if as_json else "ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
