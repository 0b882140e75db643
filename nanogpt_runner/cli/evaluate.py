"""``nanogpt-eval RUN_OR_CHECKPOINT --task TASK [--task TASK ...]``: multiple-choice tasks scored on a checkpoint.

    nanogpt-eval outputs/2026-01-01/12-00-00_baby --task my_task.jsonl
    nanogpt-eval outputs/2026-01-01/12-00-00_baby/checkpoints/step_0002000 --task hellaswag --max-items 1000

Any checkpoint of the runner (a run directory's best or latest, or a checkpoint folder; full or sharded),
scored in this process as the training loop scores ``eval.tasks`` (docs/evals.md), printed as a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nanogpt_runner.console import error

EXIT_USAGE = 2


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanogpt-eval", description=__doc__.splitlines()[0].strip("`"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, metavar="RUN_OR_CHECKPOINT")
    parser.add_argument("--task", action="append", required=True,
                        help="a .jsonl/.parquet task file (context, endings, label) or a named task (hellaswag)")
    parser.add_argument("--which", choices=("best", "latest"), default="best",
                        help="a run directory's checkpoint to score (default: best)")
    parser.add_argument("--max-items", type=int, help="score each task's first items only")
    parser.add_argument("--batch-size", type=int, default=16, help="endings per forward pass (default: 16)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--cache-dir", type=Path, help="where named tasks are downloaded (default: the data cache)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    return parser


def table(results: dict[str, dict[str, float]]) -> str:
    """The numbers as a plain table: accuracy with its 95% interval, the normalised accuracies, centered."""
    head = ("task", "items", "acc", "95% interval", "acc_norm", "acc_token", "centered")
    rows = [(name, str(r["items"]), f"{r['acc']:.4f}", f"{r['acc_low']:.3f}-{r['acc_high']:.3f}",
             f"{r['acc_norm']:.4f}", f"{r['acc_token']:.4f}", f"{r['centered']:.4f}") for name, r in results.items()]
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in (head, *rows))


def main(argv: list[str] | None = None) -> int:
    from nanogpt_runner.data.tasks import TaskError
    from nanogpt_runner.data.tokenizers import TokenizerError
    from nanogpt_runner.errors import CheckpointError
    from nanogpt_runner.weights.sample import SampleError

    args = argument_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.max_items is not None and args.max_items < 1 or args.batch_size < 1:
        error("--max-items and --batch-size must be 1 or more")
        return EXIT_USAGE
    from nanogpt_runner.evals.scoring import evaluate_checkpoint

    try:
        results = evaluate_checkpoint(args.target, args.task, args.which, args.max_items, args.batch_size,
                                      args.device, args.cache_dir, announce=lambda m: print(m, file=sys.stderr))
    except (TaskError, TokenizerError, SampleError, CheckpointError) as err:
        error(str(err))
        return EXIT_USAGE
    print(json.dumps(results, indent=1) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
