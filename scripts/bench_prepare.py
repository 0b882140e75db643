"""Corpus preparation: MB/s and peak memory of the streaming preparation against the naive way.

    python scripts/bench_prepare.py [--mb 100] [--tokenizers char,bpe,gpt2] [--num-proc N] [--dir /tmp/bench]

Writes a corpus of ``--mb`` megabytes (this Python's standard library source, repeated), then for each
tokenizer prepares it the naive way and streaming with 1 and ``--num-proc`` processes, each in a fresh
child process so that its peak resident memory is its own:

    streaming   nanogpt_runner.data.prepare.prepare (chunks, N tokenizer processes, ids appended as they come)
    naive       the whole text read into memory, the tokenizer fitted on it and called on it once, the
                ids written with numpy (what a prepare.py script usually does)

Both include fitting the tokenizer (the character set; BPE training) and writing train.bin/val.bin, not
importing modules. Peak RSS does include them: the streaming child has torch imported (nanogpt_runner.data.prepared
needs it, ~200 MB), the naive one only numpy and the tokenizer libraries.
MB/s is corpus megabytes over wall time; "per process" divides by the tokenizer processes used. Peak RSS
is the parent's and, for streaming, the largest worker's (resource.getrusage). gpt2 needs GPT-2's BPE
files in tiktoken's cache and is skipped without them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from nanogpt_runner.data.sources import pystdlib_source
from nanogpt_runner.data.tokenizers import TokenizerUnavailable, gpt2_encoding

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from nanogpt_runner.config.schema import DataConfig
    from nanogpt_runner.data import tokenizers
    way, tokenizer, corpus, cache, num_proc = sys.argv[1:6]
    if way == "streaming":
        from nanogpt_runner.data.prepare import prepare  # imports torch (data.prepared): outside the timing
    start = time.perf_counter()
    if way == "streaming":
        data = prepare(DataConfig(name="text_file", path=corpus, cache_dir=cache, tokenizer=tokenizer,
                                  num_proc=int(num_proc)), announce=lambda message: None)
        tokens = sum(data.tokens.values())
    else:
        text = open(corpus, encoding="utf-8").read()
        if tokenizer == "char":
            tok = tokenizers.CharTokenizer(sorted(set(text)))
        elif tokenizer == "bpe":
            tok = tokenizers.BpeTokenizer.train(iter([text]), 4096)
        else:
            tok = tokenizers.Gpt2Tokenizer()
        ids = tok.encode(text).astype(tok.token_dtype())
        cut = int(len(ids) * 0.9)
        ids[:cut].tofile(cache + "/train.bin")
        ids[cut:].tofile(cache + "/val.bin")
        tokens = len(ids)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "tokens": tokens,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
""")


def write_corpus(path: Path, megabytes: float) -> int:
    text = "".join(piece for piece, _ in pystdlib_source().pieces())
    target = int(megabytes * 1e6)
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < target:
            part = text[: target - written]
            f.write(part)
            written += len(part.encode("utf-8"))
    return path.stat().st_size


def measure(way: str, tokenizer: str, corpus: Path, work: Path, num_proc: int) -> dict:
    cache = work / f"{way}-{tokenizer}"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    out = subprocess.run([sys.executable, "-c", CHILD, way, tokenizer, str(corpus), str(cache), str(num_proc)],
                         capture_output=True, text=True)
    shutil.rmtree(cache, ignore_errors=True)
    if out.returncode != 0:
        raise SystemExit(f"{way} {tokenizer} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=100.0, help="corpus size in megabytes")
    parser.add_argument("--tokenizers", default="char,bpe,gpt2")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="streaming's tokenizer processes")
    parser.add_argument("--dir", type=Path, default=None, help="where the corpus and caches go (default: a temp dir)")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.txt"
    size_mb = write_corpus(corpus, args.mb) / 1e6
    from nanogpt_runner.perf.hardware import cpu_model

    print(f"{cpu_model()}, {os.cpu_count()} cores; corpus {size_mb:.0f} MB (Python stdlib source, repeated)")
    print(f"{'tokenizer':<10}{'way':<11}{'procs':>6}{'tokens':>14}{'s':>8}{'MB/s':>8}{'MB/s/proc':>10}"
          f"{'peak RSS MB':>12}{'worker MB':>10}")
    for tokenizer in args.tokenizers.split(","):
        if tokenizer == "gpt2":
            try:
                gpt2_encoding()
            except TokenizerUnavailable:
                print("gpt2      skipped: GPT-2's BPE files are not in tiktoken's cache on this machine")
                continue
        for way, procs in (("naive", 1), *(("streaming", n) for n in sorted({1, args.num_proc}))):
            r = measure(way, tokenizer, corpus, work, procs)
            rate = size_mb / r["seconds"]
            worker = f"{r['worker_rss_mb']:.0f}" if way == "streaming" and procs > 1 else "-"
            print(f"{tokenizer:<10}{way:<11}{procs:>6}{r['tokens']:>14,}{r['seconds']:>8.1f}{rate:>8.2f}"
                  f"{rate / procs:>10.2f}{r['rss_mb']:>12.0f}{worker:>10}", flush=True)
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
