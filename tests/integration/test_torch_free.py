"""The torch-free packages (the viewer, the config, the run-directory readers, data preparation) never load torch:
they start fast and run on machines without it. A fresh interpreter imports every one of their modules."""

from __future__ import annotations

import json
import subprocess
import sys

from package_map import GROUND, PACKAGE, TORCH_FREE, module_name


def test_torch_free_packages_never_import_torch():
    """Every module of a torch-free package, imported in a fresh interpreter, leaves torch unloaded."""
    modules = sorted(module_name(path) for name in TORCH_FREE for path in (PACKAGE / name).rglob("*.py"))
    modules += [f"nanogpt_runner.{name}" for name in sorted(GROUND)]
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout) == [], "a torch-free package imported torch"
