"""How long a checkpoint takes to write and to load, for a model preset (default: shakespeare, 10.65M).

    python scripts/bench_checkpoint.py [--model shakespeare] [--repeats 3] [--dir /tmp/bench-ckpt]

Measures the real code paths: ``save_checkpoint`` (state dicts, files, fsync, manifest hashes, rename,
pointer) for the full and the sharded (DCP) layout, ``read_meta`` (the integrity check alone), and
``load_checkpoint`` into a fresh model and optimizer. The optimizer has taken one step so its state
(two moments per parameter) is the size it has in training. Prints the median of the repeats.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from nanogpt_runner.checkpoint import folder as folders
from nanogpt_runner.checkpoint import state as ck
from nanogpt_runner.config.schema import CONF_DIR, ModelConfig, OptimizerConfig
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.model.optimizers import Optimizers, build_optimizers

VOCAB = tuple(chr(c) for c in range(32, 97))


def build(preset: str) -> tuple[GPT, Optimizers]:
    cfg = ModelConfig(**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{preset}.yaml")))
    model = GPT(cfg, len(VOCAB))
    optimizer = build_optimizers(model, OptimizerConfig())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad()
    return model, optimizer


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shakespeare", help="a preset in conf/model (default: shakespeare)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.dir))
    model, optimizer = build(args.model)
    fresh_model, fresh_optimizer = build(args.model)
    print(f"model {args.model}: {model.num_params() / 1e6:.2f}M parameters; {torch.get_num_threads()} threads; "
          f"writing under {root}")
    try:
        for layout, sharded in (("full", False), ("sharded (DCP)", True)):
            folder = root / layout.split()[0]
            saves, checks, loads = [], [], []
            for step in range(1, args.repeats + 1):
                state = ck.TrainState(step=step, tokens=step)
                saves.append(timed(ck.save_checkpoint, folder, state, model, optimizer, config={}, vocab=VOCAB,
                                   sharded=sharded))
                path = folder / folders.checkpoint_name(step)
                checks.append(timed(folders.read_meta, path))
                loads.append(timed(ck.load_checkpoint, path, fresh_model, fresh_optimizer))
            size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
            print(f"{layout:>14}: {size:6.1f} MB | write {statistics.median(saves):.2f} s | "
                  f"integrity check {statistics.median(checks):.2f} s | load (incl. check) "
                  f"{statistics.median(loads):.2f} s")
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     fresh_model.state_dict().values(), strict=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
