"""``python -m nanogpt_runner.check [OVERRIDES...]``: compose and validate a config, train nothing.

Exit 0 when ``nanogpt-run`` with the same overrides would start, 2 with every problem listed when it
would not. The viewer's launch form calls this before it starts a run, so both agree on what is valid.
"""

from __future__ import annotations

import sys

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from nanogpt_runner.config import register_schema
from nanogpt_runner.console import error
from nanogpt_runner.launch import CONF_DIR, EXIT_INVALID_CONFIG, check


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    register_schema()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        error(f"bad override: {err}")
        return EXIT_INVALID_CONFIG
    problems, _ = check(cfg, announce=lambda message: print(message, file=sys.stderr))
    if problems:
        error("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))
        return EXIT_INVALID_CONFIG
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
