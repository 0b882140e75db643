"""Data: corpora prepared once into a cache, the packaged default corpus, and batches that are a pure function
of (seed, step) so that accumulation, data-parallel ranks and resumed runs see the same sequences."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nanogpt_runner.config.schema import DataConfig
from nanogpt_runner.data import sources
from nanogpt_runner.data.prepare import prepare
from nanogpt_runner.data.prepared import DataError, load_prepared
from nanogpt_runner.data.tokenizers import TokenizerError
from nanogpt_runner.train.batches import Batches, sequence_offsets

CPU = torch.device("cpu")
UNREACHABLE = "http://127.0.0.1:9/input.txt"  # the discard port: refused at once, never the network


def test_local_copy_of_tiny_shakespeare_is_prepared_once(tmp_path, corpus_path):
    cfg = DataConfig(path=str(corpus_path), cache_dir=str(tmp_path))
    data = prepare(cfg)
    sizes = data.split_sizes()
    text = corpus_path.read_text()
    assert data.name == "shakespeare_char" and data.tokenizer.describe() == sorted(set(text))
    assert sizes["train"] + sizes["val"] == len(text)
    assert sizes["val"] == pytest.approx(0.1 * len(text), abs=1)
    assert data.tokenizer.decode(np.fromfile(data.directory / "train.bin", dtype=np.uint16)[:50]) == text[:50]
    again = prepare(cfg, announce=pytest.fail)  # prepared once: found again without a word
    assert again.directory == data.directory and again.source == str(corpus_path.resolve())


def test_a_download_is_prepared_once_and_then_needs_no_network(tmp_path, corpus_path):
    copy = tmp_path / "served.txt"
    copy.write_text(corpus_path.read_text()[:20_000])
    data = prepare(DataConfig(url=copy.as_uri(), cache_dir=str(tmp_path)))
    assert data.name == "shakespeare_char" and data.source == copy.as_uri() and data.origin == "download"
    copy.unlink()  # the "server" is gone: the prepared entry for that URL is used
    assert prepare(DataConfig(url=copy.as_uri(), cache_dir=str(tmp_path))).directory == data.directory


def test_two_sources_never_share_a_cache_entry(tmp_path, corpus_path):
    """A download must never overwrite (or stand in for) data prepared from another source."""
    local = prepare(DataConfig(path=str(corpus_path), cache_dir=str(tmp_path)))
    other = tmp_path / "other.txt"
    other.write_text("a different text " * 100)
    downloaded = prepare(DataConfig(url=other.as_uri(), cache_dir=str(tmp_path)))
    assert downloaded.directory != local.directory
    assert prepare(DataConfig(path=str(corpus_path), cache_dir=str(tmp_path))).tokenizer.vocab_size > 26


def test_the_default_is_the_tiny_shakespeare_shipped_in_the_package(tmp_path, monkeypatch):
    """No data.path, no data.url, no network: the packaged copy, recorded as embedded."""
    monkeypatch.setattr(sources, "download", lambda *args: pytest.fail("the default must not download"))
    data = prepare(DataConfig(cache_dir=str(tmp_path)))
    assert (data.name, data.origin, data.vocab_size) == ("shakespeare_char", "embedded", 65)
    assert sum(data.split_sizes().values()) == 1_115_394  # every character of input.txt
    assert data.as_record()["origin"] == "embedded" and "shipped in the package" in data.source
    assert data.tokenizer.decode(data.tokenizer.encode("ROMEO:")) == "ROMEO:"


def test_a_failed_download_is_one_error_naming_the_fix_never_a_substitute(tmp_path):
    with pytest.raises(DataError, match="downloading data.url=.* failed .*leave data.url unset"):
        prepare(DataConfig(url=UNREACHABLE, download_timeout_s=2, cache_dir=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []  # nothing prepared, nothing half-made


def test_the_stdlib_corpus_is_a_named_source_recorded_as_builtin(tmp_path):
    data = prepare(DataConfig(name="pystdlib_char", cache_dir=str(tmp_path)))
    assert data.name == "pystdlib_char" and data.origin == "builtin" and "standard library" in data.source
    assert data.as_record()["name"] == "pystdlib_char"
    assert min(data.split_sizes().values()) > 100_000


def test_text_file_accepts_a_folder_of_txt_files(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("hello world\n" * 50)
    (folder / "b.txt").write_text("goodbye moon\n" * 50)
    (folder / "skip.csv").write_text("ignored: not a text, .jsonl or .parquet file")
    data = prepare(DataConfig(name="text_file", path=str(folder), cache_dir=str(tmp_path / "cache")))
    assert set(data.tokenizer.describe()) == set("hello world goodbye moon\n")
    assert sum(data.split_sizes().values()) == 12 * 50 + 13 * 50 + 1  # the files, joined by a newline


def test_a_changed_text_file_is_prepared_again(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abc" * 100)
    cfg = DataConfig(name="text_file", path=str(path), cache_dir=str(tmp_path / "cache"))
    first = prepare(cfg)
    path.write_text("xyz" * 200)
    second = prepare(cfg)
    assert first.directory != second.directory and set(second.tokenizer.describe()) == set("xyz")


def test_non_utf8_text_gets_a_clear_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1") * 10)
    with pytest.raises(DataError, match="not UTF-8.*convert it"):
        prepare(DataConfig(name="text_file", path=str(path), cache_dir=str(tmp_path / "cache")))


def test_unreadable_prepared_data_names_the_fix(tmp_path, corpus_path):
    data = prepare(DataConfig(path=str(corpus_path), cache_dir=str(tmp_path)))
    (data.directory / "meta.json").write_text("{torn")
    with pytest.raises(DataError, match="delete that folder"):
        prepare(DataConfig(path=str(corpus_path), cache_dir=str(tmp_path)))


def test_unknown_characters_are_named_when_encoding(tmp_path, corpus_path):
    tokenizer = prepare(DataConfig(path=str(corpus_path), cache_dir=str(tmp_path))).tokenizer
    assert tokenizer.decode(tokenizer.encode("ROMEO:")) == "ROMEO:"
    with pytest.raises(TokenizerError, match="'€'"):
        tokenizer.encode("ROMEO€")


@pytest.fixture
def batches(tmp_path, corpus_path):
    data = prepare(DataConfig(path=str(corpus_path), cache_dir=str(tmp_path)))
    return lambda seed=1337, split="train": Batches(data, split, block_size=16, seed=seed, device=CPU)


def test_a_step_batch_is_a_pure_function_of_seed_and_step(batches):
    x1, y1 = batches().get(step=5, start=0, count=8)
    x2, y2 = batches().get(step=5, start=0, count=8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the inputs shifted by one
    assert not torch.equal(x1, batches().get(step=6, start=0, count=8)[0])
    assert not torch.equal(x1, batches(seed=1).get(step=5, start=0, count=8)[0])
    assert not torch.equal(x1, batches(split="val").get(step=5, start=0, count=8)[0])


def test_slices_of_a_step_compose_into_the_whole_batch(batches):
    """Batch 8 = batch 4 x accumulation 2 = 2 ranks x batch 4: the same eight sequences."""
    whole, _ = batches().get(step=3, start=0, count=8)
    halves = [batches().get(step=3, start=start, count=4)[0] for start in (0, 4)]
    assert torch.equal(whole, torch.cat(halves))


def test_offsets_cover_the_split_roughly_uniformly():
    n = 1_000_000
    offsets = np.concatenate([sequence_offsets(1337, "train", s, np.arange(64), n, 16) for s in range(50)])
    assert len(set(offsets.tolist())) > 3150  # 3,200 draws, nearly all distinct
    assert offsets.min() >= 0 and offsets.max() < n - 16
    deciles = np.histogram(offsets, bins=10, range=(0, n))[0]
    assert deciles.min() > 250  # ~320 each when uniform


def test_meta_records_the_source(tmp_path, corpus_path):
    data = prepare(DataConfig(path=str(corpus_path), cache_dir=str(tmp_path)))
    meta = json.loads((data.directory / "meta.json").read_text())
    assert meta["source"] == str(corpus_path.resolve()) and meta["name"] == "shakespeare_char"
    assert meta["origin"] == data.origin == "file"
    del meta["origin"]  # prepared by a version that did not record it: its source tells
    (data.directory / "meta.json").write_text(json.dumps(meta))
    assert load_prepared(data.directory).origin == "file"
