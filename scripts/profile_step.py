"""Where a training step's time goes, by kind of work, from torch.profiler's self CPU time.

    python scripts/profile_step.py [--model shakespeare] [--batch 16] [--precision fp32 bf16] [--steps 3]

Profiles whole single-process training steps (forward under autocast, backward, clipping, the runner's own
optimizers: fused AdamW) after one warm-up step, and groups the operators into matmuls, attention, layer
norm, GELU, dtype casts, optimizer, cross-entropy and the rest.
A CPU that emulates bf16 (no AVX512-BF16/AMX) takes minutes per bf16 step of the 10.6M model: use a
small --batch there.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

import torch
from hydra import compose, initialize_config_dir
from torch.profiler import ProfilerActivity, profile

from nanogpt_runner.config.schema import CONF_DIR, register_schema
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.model.optimizers import build_optimizers
from nanogpt_runner.perf import hardware

KINDS = (  # first match wins
    ("attention", r"scaled_dot_product|flash_attention|softmax|_masked|masked_fill|tril"),
    ("matmul", r"addmm|\bmm\b|bmm|matmul|linear|mkldnn|onednn"),
    ("layer norm", r"layer_norm"),
    ("GELU", r"gelu"),
    ("optimizer", r"adam|_foreach|optimizer|lerp|addcdiv|sqrt_"),
    ("dtype casts", r"aten::to\b|_to_copy|copy_|convert"),
    ("cross-entropy", r"log_softmax|nll_loss|cross_entropy"),
    ("embedding", r"embedding"),
    ("clip / norms", r"norm\b|linalg_vector_norm|clamp|clip"),
)


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def profile_precision(cfg, precision: str, batch: int, steps: int) -> tuple[dict[str, float], list]:
    torch.manual_seed(0)
    model = GPT(cfg.model, 65)
    optimizers = build_optimizers(model, cfg.optimizer)
    autocast = hardware.autocast("cpu", precision)
    x = torch.randint(0, 65, (batch, cfg.model.block_size))

    def step() -> None:
        with autocast:
            _, loss = model(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizers.step()
        optimizers.zero_grad()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    by_kind: dict[str, float] = defaultdict(float)
    by_op = {event.key: event.self_cpu_time_total / 1e6 / steps for event in prof.key_averages()}
    for name, seconds in by_op.items():
        by_kind[kind_of(name)] += seconds
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:8]
    return dict(by_kind), top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shakespeare")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={args.model}", "model.dropout=0"])
    print(f"machine: {hardware.describe(torch.device('cpu'))}; model={args.model}, batch {args.batch} x "
          f"{cfg.model.block_size}, self CPU time per step")
    for precision in args.precision:
        by_kind, top = profile_precision(cfg, precision, args.batch, args.steps)
        total = sum(by_kind.values())
        print(f"\n{precision}: {total * 1000:.0f} ms per step")
        for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:<14}{seconds * 1000:>9.1f} ms {seconds / total:>6.1%}")
        print("  largest operators: " + ", ".join(f"{name} {seconds / total:.1%}" for name, seconds in top))


if __name__ == "__main__":
    main()
