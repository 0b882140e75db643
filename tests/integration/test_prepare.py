"""Real data: the three tokenizers, every source, nanoGPT's prepared folders, preparation that streams and
survives interruption, and bits per byte. Offline: GPT-2's BPE is a small tiktoken encoding built here."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tiktoken
import torch
import torch.nn.functional as F
from conftest import run_cli
from worker_killer import KilledByKILL

from nanogpt_runner.analysis.comparison import comparison_metric
from nanogpt_runner.analysis.records import RunRecord
from nanogpt_runner.config.schema import DataConfig, ModelConfig
from nanogpt_runner.data import prepare as prep
from nanogpt_runner.data import sources as corpus_module
from nanogpt_runner.data import tokenizers
from nanogpt_runner.data.prepare import prepare
from nanogpt_runner.data.prepared import DataError, load_prepared
from nanogpt_runner.distributed.process_group import Layout
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.runs.rundir import RunReader, find_runs
from nanogpt_runner.train.batches import Batches
from nanogpt_runner.train.loop import evaluate
from nanogpt_runner.weights.sample import SampleOptions, sample

CPU = torch.device("cpu")
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def small_gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's shape in miniature: the 256 bytes, a few merges, then end-of-text as the last id."""
    ranks = {bytes([b]): b for b in range(256)}
    for merge in (b"th", b"he", b"the", b" t", b" the", b"in", b"er"):
        ranks[merge] = len(ranks)
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={tokenizers.END_OF_TEXT: len(ranks)})


@pytest.fixture
def gpt2(monkeypatch) -> tokenizers.Gpt2Tokenizer:
    """data.tokenizer=gpt2 without GPT-2's files: the loading code gets the encoding built above."""
    monkeypatch.setattr(tokenizers, "gpt2_encoding", small_gpt2_encoding)
    return tokenizers.Gpt2Tokenizer()


def config(tmp_path, **fields) -> DataConfig:
    return DataConfig(**{"name": "text_file", "cache_dir": str(tmp_path / "cache"), "num_proc": 1, **fields})


def all_tokens(data) -> np.ndarray:
    return np.concatenate([np.fromfile(data.split_path(s), dtype=data.dtype) for s in ("train", "val")])


# ----------------------------------------------------------------------------------------- tokenizers

def test_each_tokenizer_round_trips_text_and_counts_its_bytes(gpt2, corpus_path):
    text = "The theatre, thou art — ünïcödé 漢字!\n"
    bpe = tokenizers.BpeTokenizer.train(iter([corpus_path.read_text()[:200_000], text]), 400)
    for tokenizer in (gpt2, bpe):
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert tokenizer.token_bytes()[ids].sum() == len(text.encode("utf-8"))
        again = tokenizers.from_description(json.loads(json.dumps(tokenizer.describe())))
        assert again.encode(text).tolist() == ids.tolist()
        assert tokenizer.token_bytes()[tokenizer.separator].sum() == 0  # end-of-text is no text
    char = tokenizers.CharTokenizer(sorted(set(text)))
    assert char.decode(char.encode(text)) == text and char.token_bytes()[char.encode("ü")].tolist() == [2]


def test_gpt2_without_its_files_offline_is_one_line_naming_the_cache(tmp_path, monkeypatch, corpus_path):
    import requests

    def offline(name):
        raise requests.ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    with pytest.raises(DataError) as err:
        prepare(config(tmp_path, name="shakespeare", path=str(corpus_path), tokenizer="gpt2"))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "tiktoken") in message and "TIKTOKEN_CACHE_DIR" in message
    assert "tiktoken.get_encoding('gpt2')" in message


def test_shakespeare_with_gpt2_bpe_is_nanogpts_data_shakespeare(tmp_path, gpt2, corpus_path):
    data = prepare(config(tmp_path, name="shakespeare", path=str(corpus_path), tokenizer="gpt2"))
    text = corpus_path.read_text()
    assert data.tokenizer.kind == "gpt2" and data.dtype == np.uint16
    assert data.tokenizer.decode(all_tokens(data)) == text
    assert sum(data.text_bytes.values()) == len(text.encode("utf-8"))
    assert data.as_record()["bytes_per_token"]["train"] > 1.0


def test_bpe_is_trained_on_the_corpus_and_saved_with_it(tmp_path, corpus_path):
    data = prepare(config(tmp_path, name="shakespeare_char", path=str(corpus_path), tokenizer="bpe", vocab_size=512))
    assert data.tokenizer.kind == "bpe" and data.vocab_size == 512
    reloaded = load_prepared(data.directory)  # what training, sampling and a resumed run read
    assert reloaded.tokenizer.describe() == data.tokenizer.describe()
    assert reloaded.tokenizer.decode(all_tokens(reloaded)) == corpus_path.read_text()
    assert data.as_record()["bytes_per_token"]["val"] > 1.5  # 512 ids already merge common words


def test_a_vocabulary_beyond_uint16_is_stored_as_uint32(tmp_path):
    chars = [chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c < 0xE000]
    path = tmp_path / "many.txt"
    path.write_text("".join(chars) * 2, encoding="utf-8")
    data = prepare(config(tmp_path, path=str(path)))
    assert data.vocab_size == len(chars) > 65_536 and data.dtype == np.uint32
    assert data.tokenizer.decode(all_tokens(data)) == "".join(chars) * 2
    x, _ = Batches(data, "val", 13_000, seed=0, device=CPU).get(step=1, start=0, count=2)  # most of val
    assert int(x.max()) >= 65_536  # ids read back at full width: the sequences are the corpus's own
    assert all(data.tokenizer.decode(row.tolist()) in "".join(chars) * 2 for row in x)


# ---------------------------------------------------------------------------------------------- sources

def test_a_folder_of_txt_md_jsonl_and_parquet_is_read_in_path_order(tmp_path, gpt2):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("the first file\n")
    (folder / "b.md").write_text("# the notes\n")
    (folder / "c.jsonl").write_text('{"text": "one record"}\n\n{"text": "two", "id": 2}\n')
    pd.DataFrame({"body": ["parquet row", "another row"]}).to_parquet(folder / "d.parquet")
    (folder / "sub" / "e.txt").write_text("deep inside")
    (folder / "ignored.csv").write_text("not a document")
    documents = ["the first file\n", "# the notes\n", "one record", "two", "parquet row", "another row",
                 "deep inside"]

    with pytest.raises(DataError, match=r"d.parquet has no column 'text'.*data.text_field"):
        prepare(config(tmp_path, path=str(folder)))
    (folder / "c.jsonl").write_text('{"body": "one record"}\n\n{"body": "two", "id": 2}\n')
    char = prepare(config(tmp_path, path=str(folder), text_field="body"))
    assert char.tokenizer.decode(all_tokens(char)) == "\n".join(documents)
    data = prepare(config(tmp_path, path=str(folder), text_field="body", tokenizer="gpt2"))
    ids = all_tokens(data).tolist()
    eot = gpt2.encoding.eot_token
    assert ids.count(eot) == len(documents) - 1  # documents separated by end-of-text
    assert gpt2.decode(ids).split(tokenizers.END_OF_TEXT) == documents


@pytest.mark.parametrize("line, message", [
    ("{torn", r"bad.jsonl:2 is not a JSON object"),
    ('{"title": "no text"}', r"bad.jsonl:2 has no text field 'text': set data.text_field"),
    ('["a list"]', r"bad.jsonl:2 has no text field"),
    ("[" * 100_000 + "]" * 100_000, r"bad.jsonl:2 nests JSON too deeply"),
], ids=["torn", "no_text_field", "not_an_object", "deeply_nested"])
def test_a_bad_jsonl_line_is_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        prepare(config(tmp_path, path=str(path)))
    assert list((tmp_path / "cache").glob("*.partial")) == []  # nothing a rerun could continue


def test_a_cache_folder_that_cannot_be_made_is_one_line_naming_it(tmp_path, corpus_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = config(tmp_path, path=str(corpus_path), cache_dir=str(blocker / "cache"))
    with pytest.raises(DataError, match=r"data.cache_dir=.*a_file/cache must be a folder you can write"):
        prepare(cfg)


@pytest.mark.parametrize(("tokenizer", "text"), [("char", ""), ("char", "ab"), ("bpe", ""), ("gpt2", "")])
def test_too_little_text_is_refused_and_leaves_nothing_behind(tmp_path, gpt2, tokenizer, text):
    path = tmp_path / "small.txt"
    path.write_text(text)
    for _attempt in range(2):  # the second attempt says the same, not "continuing" or "starting over"
        messages = []
        with pytest.raises(DataError, match=r"small.txt holds only \d tokens: give it more text"):
            prepare(config(tmp_path, path=str(path), tokenizer=tokenizer), announce=messages.append)
        assert not any(m.startswith(("continuing", "starting over")) for m in messages), messages
    assert list((tmp_path / "cache").glob("*.partial")) == []


def test_an_endless_jsonl_line_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "MAX_JSONL_LINE_BYTES", 1000)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "' + "x" * 5000 + '"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 is longer than"):
        prepare(config(tmp_path, path=str(path)))


# ------------------------------------------------------------------------------ nanoGPT's prepared folders

def nanogpt_folder(root: Path, ids: np.ndarray, meta: object | None = None) -> Path:
    """What nanoGPT's data/<name>/prepare.py leaves: uint16 train.bin and val.bin, maybe meta.pkl."""
    root.mkdir(parents=True)
    cut = len(ids) * 9 // 10
    ids[:cut].astype(np.uint16).tofile(root / "train.bin")
    ids[cut:].astype(np.uint16).tofile(root / "val.bin")
    if meta is not None:
        (root / "meta.pkl").write_bytes(pickle.dumps(meta))
    return root


def test_a_nanogpt_char_folder_is_used_in_place_with_its_meta_pkl(tmp_path, corpus_path):
    text = corpus_path.read_text()[:50_000]
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    folder = nanogpt_folder(tmp_path / "shakespeare_char", np.array([stoi[c] for c in text]),
                            {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi})
    data = prepare(config(tmp_path, name="bin", path=str(folder), tokenizer="auto"))
    assert data.tokenizer.kind == "char" and data.vocab_size == len(chars)
    assert data.split_path("train") == folder / "train.bin"  # not copied
    assert data.tokens == {"train": 45_000, "val": 5_000} and data.text_bytes["train"] == 45_000
    assert data.tokenizer.decode(np.fromfile(data.split_path("val"), dtype=np.uint16)) == text[45_000:]


def test_a_nanogpt_folder_without_meta_pkl_holds_gpt2_tokens(tmp_path, gpt2):
    text = "the theatre is the thing " * 200
    folder = nanogpt_folder(tmp_path / "openwebtext", gpt2.encode(text))
    data = prepare(config(tmp_path, name="bin", path=str(folder), tokenizer="auto"))
    assert data.tokenizer.kind == "gpt2" and sum(data.text_bytes.values()) == len(text)
    (folder / "val.bin").write_bytes(np.array([gpt2.vocab_size + 5], dtype=np.uint16).tobytes() * 40)
    with pytest.raises(DataError, match=r"val.bin holds id \d+, outside the gpt2 vocabulary"):
        prepare(config(tmp_path, name="bin", path=str(folder), tokenizer="auto"))


class RunsCode:
    """A meta.pkl written by someone hostile: unpickling it would create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_meta_pkl_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    folder = nanogpt_folder(tmp_path / "data", np.arange(100) % 10, {"itos": RunsCode(marker)})
    with pytest.raises(DataError, match=r"meta.pkl was refused: .*os.*system.*delete it if the .bin files hold GPT-2"):
        prepare(config(tmp_path, name="bin", path=str(folder), tokenizer="auto"))
    assert not marker.exists()


# ------------------------------------------------------------------------- streaming, interrupted, resumed

def generated_corpus(path: Path, megabytes: float, seed: int = 0) -> Path:
    """Random lines of a few words: a block of about 100 kB, written again and again up to the size."""
    rng = np.random.default_rng(seed)
    words = "the king and queen of a far land rode to war with all their men thou art".split()
    block = "\n".join(" ".join(rng.choice(words, 8)) for _ in range(2500)) + "\n"
    with open(path, "w") as f:
        for _ in range(max(1, int(megabytes * 1e6 / len(block)))):
            f.write(block)
    return path


def test_an_interrupted_preparation_continues_where_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "PIECE_CHARS", 20_000)
    corpus = generated_corpus(tmp_path / "corpus.txt", 0.5)
    clean = prepare(config(tmp_path / "clean", path=str(corpus)), chunk_bytes=50_000)
    calls, encode_chunk = [], tokenizers.encode_chunk

    def interrupted_after_three(chunk, tokenizer=None):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return encode_chunk(chunk, tokenizer)

    monkeypatch.setattr(tokenizers, "encode_chunk", interrupted_after_three)
    cfg = config(tmp_path, path=str(corpus))
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, chunk_bytes=50_000)
    entries = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and entries[0].endswith(".partial")  # nothing that looks finished
    monkeypatch.setattr(tokenizers, "encode_chunk", encode_chunk)
    messages = []
    data = prepare(cfg, announce=messages.append, chunk_bytes=50_000)
    assert any(m.startswith("continuing the interrupted preparation") and "3 chunks" in m for m in messages)
    assert (data.split_path("train").read_bytes() == clean.split_path("train").read_bytes()
            and data.split_path("val").read_bytes() == clean.split_path("val").read_bytes())


def test_a_killed_worker_leaves_no_finished_cache_and_a_rerun_continues(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "PIECE_CHARS", 20_000)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ab\n" * 40_000 + "KILL\n" + "ba\n" * 40_000)
    monkeypatch.setattr(prep, "_fit_tokenizer", lambda source, cfg, announce: KilledByKILL(list("\nABIKLab")))
    cfg = config(tmp_path, path=str(corpus), num_proc=2)
    with pytest.raises(DataError, match="worker process died.*run again to continue"):
        prepare(cfg, chunk_bytes=20_000)
    assert not any((p / "meta.json").exists() for p in (tmp_path / "cache").iterdir())
    messages = []  # the rerun reads the saved tokenizer.json: a plain character vocabulary
    data = prepare(config(tmp_path, path=str(corpus), num_proc=1), announce=messages.append, chunk_bytes=20_000)
    assert any(m.startswith("continuing the interrupted preparation") for m in messages)
    assert data.tokenizer.decode(all_tokens(data)) == corpus.read_text()


@pytest.mark.parametrize("damaged", ["progress.json", "tokenizer.json"])
def test_a_partial_folder_without_a_usable_record_is_started_over_and_said_so(tmp_path, corpus_path, damaged):
    cfg = config(tmp_path, path=str(corpus_path))
    entry = prepare(cfg).directory
    partial = entry.with_name(entry.name + ".partial")
    entry.rename(partial)
    (partial / "progress.json").write_text(json.dumps({"chunk_bytes": prep.CHUNK_BYTES, "dtype": "<u2"}))
    (partial / damaged).write_text("{torn")
    messages = []
    assert prepare(cfg, announce=messages.append).directory == entry
    assert any(m.startswith("starting over") for m in messages)


def test_memory_stays_flat_on_a_corpus_many_times_a_chunk(tmp_path):
    """Peak resident memory of preparing a 24 MB corpus in 1 MB chunks grows by far less than the corpus
    (a whole-text tokenization would hold the text and 8 bytes per character of ids)."""
    corpus = generated_corpus(tmp_path / "big.txt", 24, seed=1)
    script = textwrap.dedent(f"""
        import resource, sys
        from nanogpt_runner.config.schema import DataConfig
        from nanogpt_runner.data.prepare import prepare
        from nanogpt_runner.data import sources as corpus
        corpus.PIECE_CHARS = 1 << 18
        small = {str(tmp_path / "small.txt")!r}
        open(small, "w").write("warm up the imports " * 1000)
        cfg = dict(name="text_file", cache_dir={str(tmp_path / "cache")!r}, num_proc=1)
        prepare(DataConfig(path=small, **cfg), announce=lambda m: None, chunk_bytes=1 << 20)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        data = prepare(DataConfig(path={str(corpus)!r}, **cfg), announce=lambda m: None, chunk_bytes=1 << 20)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(sum(data.tokens.values()), (after - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    tokens, growth_mb = map(int, out.stdout.split())
    assert tokens == corpus.stat().st_size
    assert growth_mb < 64, f"peak memory grew by {growth_mb} MB preparing a {tokens / 1e6:.0f} MB corpus"


# ------------------------------------------------------------------------------------------ bits per byte

def test_bits_per_byte_is_the_summed_loss_in_bits_over_the_bytes_of_the_targets(tmp_path, corpus_path):
    text = tmp_path / "part.txt"
    text.write_text(corpus_path.read_text()[:100_000])
    data = prepare(config(tmp_path, path=str(text), tokenizer="bpe", vocab_size=300))
    torch.manual_seed(0)
    model = GPT(ModelConfig(name="t", n_layer=1, n_head=2, n_embd=16, block_size=8), data.vocab_size).eval()
    par = SimpleNamespace(module=model, layout=Layout(), mean_over_replicas=lambda value: value,
                          eval_loss=lambda x, y, autocast: model(x, y)[1])
    splits = {s: Batches(data, s, 8, seed=3, device=CPU) for s in ("train", "val")}
    table = torch.as_tensor(data.token_bytes, dtype=torch.float64)
    result = evaluate(par, splits, eval_iters=3, batch_size=4, accum=2, autocast=torch.autocast("cpu", enabled=False),
                      token_bytes=table)
    nats, text_bytes = 0.0, 0
    with torch.no_grad():
        for step in range(3):
            x, y = splits["val"].get(step=step, start=0, count=8)
            logits, _ = model(x)
            nats += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
            text_bytes += sum(len(data.tokenizer.decode(row.tolist()).encode("utf-8")) for row in y)
    assert result["val_bpb"] == pytest.approx(nats / math.log(2) / text_bytes, rel=1e-5)
    assert result["val_bpb"] < result["val_loss"] / math.log(2)  # a BPE token holds more than one byte


# ------------------------------------------------------------------------------------- the whole path

def test_the_bpe_preset_trains_offline_and_samples_with_its_tokenizer(tmp_path, tiny_overrides):
    """+experiment=shakespeare_gpt2_bpe: the tokenizer is trained on the text, every eval records bits per
    byte, run.json the tokenizer and token counts, and nanogpt-sample encodes and decodes with the BPE (so a
    character no training text had is fine in a prompt)."""
    result = run_cli(["+experiment=shakespeare_gpt2_bpe", *tiny_overrides, "data.vocab_size=512"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = find_runs(tmp_path / "outputs")
    reader = RunReader(run_dir)
    reader.refresh()
    dataset = reader.info["dataset"]
    assert dataset["tokenizer"] == "bpe" and dataset["vocab_size"] == 512
    assert dataset["tokens"]["train"] > 8 * dataset["tokens"]["val"] > 0 and dataset["bytes_per_token"]["val"] > 1.5
    assert reader.metrics.eval and all(0 < line["val_bpb"] < line["val_loss"] for line in reader.metrics.eval)
    (text,) = sample(run_dir, SampleOptions(prompt="ROMEO € ", max_new_tokens=20, seed=1))
    assert text.startswith("ROMEO € ") and len(text) > len("ROMEO € ")


def test_runs_with_different_tokenizers_are_compared_by_bits_per_byte():
    def run(tokenizer: str, vocab_size: int) -> RunRecord:
        return RunRecord(tokenizer, Path(tokenizer), {"dataset": {"tokenizer": tokenizer, "vocab_size": vocab_size}})

    assert comparison_metric([run("char", 65), run("char", 65)]) == ("best_val_loss", "val loss")
    assert comparison_metric([run("char", 65), run("bpe", 4096)]) == ("best_val_bpb", "val bits per byte")
    assert comparison_metric([run("bpe", 512), run("bpe", 4096)])[0] == "best_val_bpb"
