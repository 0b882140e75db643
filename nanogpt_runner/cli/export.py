"""``nanogpt-export``'s command line (what it writes: nanogpt_runner.weights.export)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanogpt_runner.console import error
from nanogpt_runner.errors import CheckpointError
from nanogpt_runner.weights.export import EXIT_USAGE, FORMATS, export
from nanogpt_runner.weights.gpt2_layouts import WeightsError


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanogpt-export", description="Write a run's checkpoint for Hugging Face "
                                     "transformers (GPT2LMHeadModel and its tokenizer) or for nanoGPT's sample.py "
                                     "and train.py.")
    parser.add_argument("target", metavar="RUN_OR_CHECKPOINT", help="a run directory or one of its checkpoints")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="a new (or empty) folder to write")
    parser.add_argument("--format", choices=FORMATS, required=True, help="hf: transformers GPT2LMHeadModel; "
                        "nanogpt: nanoGPT's ckpt.pt")
    parser.add_argument("--which", choices=("best", "latest"), default="best",
                        help="for a run directory: its best-by-val checkpoint (default) or the newest")
    parser.add_argument("--force", action="store_true",
                        help="write into an existing non-empty OUT_DIR, replacing the export's file names there")
    parser.add_argument("--tokenizer-from", metavar="DIR", type=Path,
                        help="hf, GPT-2 BPE runs: copy GPT-2's tokenizer files from this folder (default: built "
                        "from tiktoken's files, else the Hugging Face cache)")
    parser.add_argument("--data", metavar="PREPARED_DIR", type=Path,
                        help="nanogpt: copy train.bin and val.bin of this prepared corpus (the one the run trained "
                        "on: run.json's dataset.dir) into OUT_DIR, so nanoGPT's train.py continues the run as it is")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = argument_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        warnings = export(Path(args.target), Path(args.out_dir), args.format, args.which, force=args.force,
                          tokenizer_from=args.tokenizer_from, data=args.data)
    except (WeightsError, CheckpointError) as err:
        error(str(err))
        sys.exit(EXIT_USAGE)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


if __name__ == "__main__":
    main()
