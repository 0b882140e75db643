"""Our task scores against lm-evaluation-harness's on the same items, for any run (bigger models included).

    python scripts/lm_eval_match.py RUN_OR_CHECKPOINT --task TASK.jsonl [--limit 1000] [--device cuda]

The task's first ``--limit`` items are written as a jsonl file in our schema (a named task such as hellaswag
converted from its file in the data cache), the checkpoint is exported with ``nanogpt-export --format hf``
(into a temporary folder, or ``--work DIR``), lm-eval scores the export on a task YAML pointing at that file
(nanogpt_runner/evals/harness.py) and ``nanogpt-eval``'s scoring scores the checkpoint itself; both rows are
printed. Exits 1 when the items, acc or acc_norm differ. Needs the lm-eval extra: ``pip install -e '.[lm-eval]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, metavar="RUN_OR_CHECKPOINT")
    parser.add_argument("--task", required=True, help="a .jsonl/.parquet task file, or hellaswag")
    parser.add_argument("--limit", type=int, help="the first items only (both tools take the same ones)")
    parser.add_argument("--which", choices=("best", "latest"), default="best")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", type=Path, help="where the export and the task YAML go (default: a temporary)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    from nanogpt_runner.console import error
    from nanogpt_runner.data.tasks import TaskError
    from nanogpt_runner.errors import CheckpointError
    from nanogpt_runner.weights.gpt2_layouts import WeightsError

    try:
        return compare(args)
    except (TaskError, CheckpointError, WeightsError, RuntimeError) as err:  # RuntimeError: lm-eval missing
        error(str(err))
        return 2


def compare(args: argparse.Namespace) -> int:
    from nanogpt_runner.data.prepared import default_cache_dir
    from nanogpt_runner.data.tasks import load_task
    from nanogpt_runner.evals.harness import run_lm_eval
    from nanogpt_runner.evals.scoring import evaluate_checkpoint
    from nanogpt_runner.weights.export import export

    work = args.work or Path(tempfile.mkdtemp(prefix="lm_eval_match_"))
    work.mkdir(parents=True, exist_ok=True)
    task = load_task(args.task, default_cache_dir(), args.limit)  # a named task's items in our schema, for both
    task_file = work / f"{task.name}.jsonl"
    task_file.write_text("".join(json.dumps({"context": item.context, "endings": list(item.endings),
                                             "label": item.label}) + "\n" for item in task.items))
    export(args.target, work / "hf", "hf", which=args.which, force=True)
    theirs = run_lm_eval(work / "hf", task_file, work / "lm_eval", None, args.device, args.batch_size)
    [ours] = evaluate_checkpoint(args.target, [str(task_file)], args.which, None, args.batch_size,
                                 args.device).values()
    print(f"{'':16}{'items':>8}{'acc':>10}{'acc_norm':>10}")
    for name, result in (("nanogpt-eval", ours), ("lm-eval", theirs)):
        print(f"{name:16}{result['items']:>8}{result['acc']:>10.4f}{result['acc_norm']:>10.4f}")
    same = (ours["items"], ours["acc"], ours["acc_norm"]) == (theirs["items"], theirs["acc"], theirs["acc_norm"])
    print("the same numbers" if same else "DIFFERENT numbers")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
