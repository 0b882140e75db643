"""The package map the architecture tests hold the code to (docs/ARCHITECTURE.md draws it): the floors, lowest
first, what the viewer may import, and the packages that never load torch."""

from __future__ import annotations

from pathlib import Path

import nanogpt_runner

PACKAGE = Path(nanogpt_runner.__file__).parent
GROUND = {"console", "errors", "fsutil", "safe_pickle"}
FLOORS = [GROUND, {"config"}, {"runs"}, {"analysis", "data"}, {"model"}, {"distributed"}, {"checkpoint"},
          {"weights"}, {"perf"}, {"evals"}, {"train"}, {"launch"}, {"cli"}]
VIEWER_MAY_IMPORT = GROUND | {"config", "runs", "analysis", "viewer"}
TORCH_FREE = ["config", "runs", "analysis", "data", "viewer"]


def module_name(path: Path) -> str:
    return ".".join(("nanogpt_runner", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
