"""``python -m nanogpt_runner.check [--json] [OVERRIDES...]``: compose and validate a config, train nothing.

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

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nanogpt_runner.config import CONF_DIR, register_schema
from nanogpt_runner.console import error
from nanogpt_runner.launch import EXIT_INVALID_CONFIG, check, composition_error
from nanogpt_runner.pretrained import apply_init_from
from nanogpt_runner.resume import plan_resume
from nanogpt_runner.run_control import CheckpointError


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    as_json = bool(overrides) and overrides[0] == "--json"
    overrides = overrides[1:] if as_json else overrides
    register_schema()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        error(f"invalid config: {composition_error(err)}")
        return EXIT_INVALID_CONFIG

    def announce(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        if cfg.resume:  # the run dir only matters for a checkpoint outside any run: not used here
            cfg = plan_resume(cfg, Path(cfg.run.root), overrides, CONF_DIR, announce).cfg
    except CheckpointError as err:
        problems = [str(err)]
    else:
        cfg, problems = apply_init_from(cfg, overrides, CONF_DIR, announce)
        problems += check(cfg, announce=announce)[0]
    if problems:
        error("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))
        return EXIT_INVALID_CONFIG
    print(json.dumps(OmegaConf.to_container(cfg, resolve=True), default=str) if as_json else "ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
