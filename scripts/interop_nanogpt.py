"""Our exports against nanoGPT's own scripts, and nanoGPT's checkpoint against our runner; prints the loss continuity.

    python scripts/interop_nanogpt.py --nanogpt PATH/TO/nanoGPT [--work DIR] [--steps 40]

PATH is a checkout of karpathy/nanoGPT (sample.py, train.py, model.py, configurator.py). On the CPU, fp32:

1. our runner trains a tiny character model on the packaged tiny-shakespeare (and a tiny learned-BPE one);
2. ``nanogpt-export --format nanogpt``; nanoGPT's ``sample.py --init_from=resume --out_dir=EXPORT`` is run in
   nanoGPT's folder with nothing copied by hand (GPT-2's BPE needs tiktoken's files, so it is left out
   offline);
3. nanoGPT's ``train.py EXPORT/resume_config.py`` continues the character run (its train.bin/val.bin put in
   the export): its first losses against ours at the same steps;
4. nanoGPT's train.py trains from scratch and saves ckpt.pt; ``nanogpt-run resume=ITS_OUT_DIR`` continues it,
   and so does nanoGPT itself from a copy: the two continuations' losses side by side.
Every command is printed before it runs; a failure prints its output and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
TINY = ["model=tiny", "model.n_embd=64", "model.block_size=64", "train.batch_size=8", "train.precision=fp32",
        "train.device=cpu", "train.eval_iters=5", "train.log_interval=1", "optimizer.lr=3e-3",
        "optimizer.warmup_iters=5", "optimizer.min_lr=3e-4", "run.progress=false"]
NANOGPT_CPU = ["--device=cpu", "--compile=False", "--dtype=float32"]
LOSS_LINE = re.compile(r"^iter (\d+): loss ([0-9.]+)", re.M)


def run(command: list[str], cwd: Path) -> str:
    print("$", " ".join(str(c) for c in command), f"  (in {cwd})", flush=True)
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n")
        sys.exit(f"failed with exit code {result.returncode}")
    return result.stdout + result.stderr


def our_run(work: Path, name: str, args: list[str]) -> Path:
    root = work / name
    run([BIN / "nanogpt-run", *TINY, f"run.root={root}", f"data.cache_dir={work / 'cache'}", *args], work)
    (run_dir,) = [p.parent for p in root.rglob("run.json")]
    return run_dir


def our_losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if m.get("kind") == "train"}


def nanogpt_losses(output: str) -> dict[int, float]:
    return {int(step): float(loss) for step, loss in LOSS_LINE.findall(output)}


def data_dir(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "run.json").read_text())["dataset"]["dir"])


def table(title: str, columns: dict[str, dict[int, float]], steps: list[int]) -> None:
    print(f"\n{title}\n  step  " + "  ".join(f"{name:>16}" for name in columns))
    for step in steps:
        cells = [f"{c[step]:16.4f}" if step in c else f"{'-':>16}" for c in columns.values()]
        print(f"  {step:4d}  " + "  ".join(cells))


def checkpoint_at(run_dir: Path, step: int) -> Path:
    (folder,) = [p for p in (run_dir / "checkpoints").glob("step_*") if int(p.name.split("_")[1]) == step]
    return folder


def exports_in_nanogpt(nanogpt: Path, work: Path, steps: int) -> None:
    """Steps 1-3: our runs exported, sampled and continued by nanoGPT."""
    every = [f"train.ckpt_interval={steps}", "train.keep_last=5", f"train.eval_interval={steps // 2}"]
    char = our_run(work, "ours-char", [f"train.max_iters={steps + 10}", f"optimizer.decay_iters={steps + 10}", *every])
    bpe = our_run(work, "ours-bpe", [f"train.max_iters={steps}", "data.tokenizer=bpe", "data.vocab_size=300", *every])
    for name, run_dir in (("char", char), ("bpe", bpe)):
        export = work / f"export-{name}"
        print(run([BIN / "nanogpt-export", checkpoint_at(run_dir, steps), export, "--format", "nanogpt"], work))
        text = run([sys.executable, "sample.py", "--init_from=resume", f"--out_dir={export}", "--num_samples=1",
                    "--max_new_tokens=80", *NANOGPT_CPU], nanogpt)
        print(f"nanoGPT sample.py on the {name} export:\n{text.strip()}\n")

    export = work / "export-char"
    for split in ("train", "val"):
        shutil.copyfile(data_dir(char) / f"{split}.bin", export / f"{split}.bin")
    output = run([sys.executable, "train.py", export / "resume_config.py", f"--max_iters={steps + 9}",
                  f"--lr_decay_iters={steps + 10}", "--log_interval=1", *NANOGPT_CPU], nanogpt)
    ours = our_losses(char)
    table(f"our run, exported at step {steps} and continued by nanoGPT's train.py (train loss; ours did not stop)",
          {"ours": ours, "nanoGPT continued": nanogpt_losses(output)}, list(range(steps - 4, steps + 10)))


def nanogpt_in_ours(nanogpt: Path, work: Path, steps: int) -> None:
    """Step 4: nanoGPT's checkpoint continued by our runner and by nanoGPT."""
    dataset = work / "nanogpt-data"
    dataset.mkdir()
    char_export = work / "export-char"
    for name in ("train.bin", "val.bin", "meta.pkl"):
        shutil.copyfile(char_export / name, dataset / name)
    out = work / "nanogpt-out"
    common = [f"--dataset={dataset}", "--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=64", "--batch_size=8",
              "--gradient_accumulation_steps=1", "--learning_rate=3e-3", "--min_lr=3e-4", "--warmup_iters=5",
              f"--lr_decay_iters={steps + 10}", f"--eval_interval={steps}", "--eval_iters=5", "--log_interval=1",
              "--bias=False", "--dropout=0.0", *NANOGPT_CPU]
    before = nanogpt_losses(run([sys.executable, "train.py", f"--out_dir={out}", f"--max_iters={steps}", *common],
                                nanogpt))
    copy = work / "nanogpt-out-copy"
    shutil.copytree(out, copy)
    theirs = nanogpt_losses(run([sys.executable, "train.py", f"--out_dir={copy}", "--init_from=resume",
                                 f"--max_iters={steps + 9}", *common], nanogpt))
    ours_dir = our_run(work, "ours-from-nanogpt", [f"resume={out}", "data=bin", f"data.path={dataset}",
                                                   f"train.max_iters={steps + 10}", f"train.eval_interval={steps}",
                                                   f"optimizer.decay_iters={steps + 10}"])
    table("nanoGPT's checkpoint continued by nanogpt-run resume= and by nanoGPT's train.py (train loss per step)",
          {"nanoGPT (before)": {s: v for s, v in before.items() if s < steps}, "ours continued": our_losses(ours_dir),
           "nanoGPT continued": {s: v for s, v in theirs.items() if s >= steps}},
          list(range(steps - 4, steps + 10)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--work", type=Path, help="a new folder for the runs (default: a temporary one, kept)")
    parser.add_argument("--steps", type=int, default=40, help="steps each side trains before the other continues")
    args = parser.parse_args()
    nanogpt = args.nanogpt.resolve()
    if not (nanogpt / "sample.py").is_file() or not (nanogpt / "train.py").is_file():
        sys.exit(f"error: {nanogpt} has no sample.py and train.py: pass a checkout of karpathy/nanoGPT")
    work = (args.work or Path(tempfile.mkdtemp(prefix="interop-nanogpt-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}")
    exports_in_nanogpt(nanogpt, work, args.steps)
    nanogpt_in_ours(nanogpt, work, args.steps)


if __name__ == "__main__":
    main()
