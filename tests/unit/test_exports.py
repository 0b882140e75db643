"""nanogpt-export for the clients people hand the files to, without those clients' checkouts: transformers'
pipeline gives nanogpt-sample's greedy text for char, bpe and GPT-2 runs; the nanoGPT export holds what
nanoGPT's sample.py and train.py read (meta.pkl found through config['dataset'], AdamW state in its two
groups and order); and hostile inputs (a checkpoint naming /etc files, a planted symlink) change nothing."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nanogpt_runner.checkpoint.folder import checkpoint_dir
from nanogpt_runner.checkpoint.state import TrainState, save_checkpoint
from nanogpt_runner.config.schema import DataConfig, ModelConfig, OptimizerConfig
from nanogpt_runner.data import tokenizers
from nanogpt_runner.data.prepare import prepare
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.model.optimizers import build_optimizers
from nanogpt_runner.weights import nanogpt_format
from nanogpt_runner.weights.export import export
from nanogpt_runner.weights.gpt2_layouts import WeightsError
from nanogpt_runner.weights.sample import SampleOptions, sample

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20
FIELDS = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "bias": True, "tie_weights": True,
          "activation": "gelu"}
PROMPT = "Speak"


def quiet(message: str) -> None:
    pass


def small_gpt2_encoding():
    """GPT-2's shape in miniature (no files, no network): the 256 bytes, merges (one of them needing an earlier
    one twice), and end-of-text as the last id."""
    import tiktoken

    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    ranks = {bytes([b]): b for b in range(256)}
    for merge in (b"ea", b"ak", b"eak", b"pe", b"Sp", b" s", b" spe", b"er", b"he", b"ea ", b"Speak"):
        ranks[merge] = len(ranks)
    return tiktoken.Encoding("gpt2", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={tokenizers.END_OF_TEXT: len(ranks)})


def tokenizer_for(kind: str, monkeypatch) -> tokenizers.Tokenizer:
    if kind == "char":
        return tokenizers.CharTokenizer(tokenizers.char_vocabulary([TEXT]))
    if kind == "bpe":
        return tokenizers.BpeTokenizer.train(iter([TEXT]), 300)
    monkeypatch.setattr(tokenizers, "gpt2_encoding", small_gpt2_encoding)
    return tokenizers.Gpt2Tokenizer()


def trained_run(root: Path, tokenizer: tokenizers.Tokenizer, steps: int = 3, bias: bool = True) -> Path:
    """A run folder whose checkpoint holds a tiny model after ``steps`` AdamW updates on TEXT."""
    torch.manual_seed(0)
    fields = {**FIELDS, "bias": bias}
    model = GPT(ModelConfig(name="tiny", **fields), tokenizer.vocab_size)
    optimizers = build_optimizers(model, OptimizerConfig(lr=3e-3, warmup_iters=0))
    ids = torch.as_tensor(tokenizer.encode(TEXT)[: 4 * 33], dtype=torch.long).view(4, 33)
    for _ in range(steps):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        optimizers.step()
        optimizers.zero_grad()
    config = {"model": {"name": "tiny", **fields, "dropout": 0.0}, "data": {"name": "text_file"},
              "optimizer": {"name": "adamw", "lr": 3e-3, "warmup_iters": 0},
              "train": {"max_iters": 10, "batch_size": 4}}
    save_checkpoint(checkpoint_dir(root), TrainState(steps, steps * 128, 2.5), model, optimizers, config=config,
                    vocab=tokenizer.describe(), val_loss=2.5)
    return root


def greedy_sample(run: Path, prompt: str, tokens: int) -> str:
    """nanogpt-sample's text with top_k=1: each next token the most likely one."""
    options = SampleOptions(prompt=prompt, max_new_tokens=tokens, top_k=1, device="cpu")
    return sample(run, options, announce=quiet)[0]


# -------------------------------------------------------------------------------------- Hugging Face

@pytest.mark.parametrize("kind", ["char", "bpe", "gpt2"])
def test_transformers_pipeline_gives_nanogpt_samples_greedy_text(tmp_path, monkeypatch, kind):
    transformers = pytest.importorskip("transformers")
    tokenizer = tokenizer_for(kind, monkeypatch)
    run = trained_run(tmp_path / "run", tokenizer)
    export(run, tmp_path / "hf", "hf", say=quiet)
    expected = greedy_sample(run, PROMPT, 24)

    generator = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    out = generator(PROMPT, max_new_tokens=24, do_sample=False)[0]["generated_text"]
    assert out == expected
    config, hf_tokenizer = generator.model.config, generator.tokenizer
    for name in ("bos_token_id", "pad_token_id", "eos_token_id"):
        value = getattr(config, name)
        assert value is None or 0 <= value < tokenizer.vocab_size, (name, value)
    assert config.bos_token_id is not None and config.pad_token_id is not None
    assert hf_tokenizer(TEXT[:80])["input_ids"] == tokenizer.encode(TEXT[:80]).tolist()
    if kind != "char":
        assert config.eos_token_id == tokenizer.eot_id and hf_tokenizer.eos_token == tokenizers.END_OF_TEXT


def test_a_character_export_maps_every_symbol_and_keeps_spaces_and_newlines(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    tokenizer = tokenizer_for("char", monkeypatch)
    export(trained_run(tmp_path / "run", tokenizer), tmp_path / "hf", "hf", say=quiet)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tokenizer.encode("Speak, speak.\n\nAll: hear")
    assert hf("Speak, speak.\n\nAll: hear")["input_ids"] == ids.tolist()
    assert hf.decode(ids.tolist()) == "Speak, speak.\n\nAll: hear"
    assert len(hf) == tokenizer.vocab_size


# ------------------------------------------------------------------------------------------- nanoGPT

@pytest.mark.parametrize("kind", ["char", "bpe", "gpt2"])
def test_nanogpt_export_is_found_by_sample_py_from_any_directory(tmp_path, monkeypatch, kind):
    tokenizer = tokenizer_for(kind, monkeypatch)
    out = tmp_path / "nano"
    export(trained_run(tmp_path / "run", tokenizer), out, "nanogpt", say=quiet)
    ckpt = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)
    # sample.py: meta_path = os.path.join('data', checkpoint['config']['dataset'], 'meta.pkl'), from any cwd
    meta_path = os.path.join("data", ckpt["config"]["dataset"], "meta.pkl")
    if kind == "gpt2":  # no meta.pkl: sample.py falls back to tiktoken's GPT-2 encoding, the run's own
        assert not os.path.exists(meta_path)
        return
    assert Path(meta_path) == out / "meta.pkl"
    with open(meta_path, "rb") as f:
        meta = pickle.load(f)
    assert meta["vocab_size"] == tokenizer.vocab_size
    ids = tokenizer.encode(TEXT[:60]).tolist()
    assert "".join(meta["itos"][i] for i in ids) == TEXT[:60]  # sample.py's decode
    if kind == "char":
        assert [meta["stoi"][c] for c in TEXT[:60]] == ids  # sample.py's encode


def test_nanogpt_checkpoint_has_nanogpts_adamw_groups_in_its_order(tmp_path, monkeypatch):
    tokenizer = tokenizer_for("char", monkeypatch)
    export(trained_run(tmp_path / "run", tokenizer), tmp_path / "nano", "nanogpt", say=quiet)
    ckpt = torch.load(tmp_path / "nano" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["iter_num"] == 3 and ckpt["best_val_loss"] == 2.5
    assert {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"} <= set(ckpt)
    # nanoGPT's GPT.named_parameters(): wte, wpe, each block's ln_1, c_attn, c_proj, ln_2, c_fc, c_proj, then
    # ln_f (a weight, then its bias when bias=True); lm_head is wte and counted once. >= 2-D first.
    block = [f"transformer.h.0.{part}.{kind}" for part in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc",
                                                           "mlp.c_proj") for kind in ("weight", "bias")]
    order = ["transformer.wte.weight", "transformer.wpe.weight", *block, *[b.replace(".h.0.", ".h.1.") for b in block],
             "transformer.ln_f.weight", "transformer.ln_f.bias"]
    decay = [n for n in order if ckpt["model"][n].dim() >= 2]
    vector = [n for n in order if ckpt["model"][n].dim() < 2]
    assert set(order) == set(ckpt["model"]) - {"lm_head.weight"}
    arch = nanogpt_format.Architecture(**FIELDS, vocab_size=tokenizer.vocab_size)
    assert nanogpt_format.parameter_groups(arch) == (decay, vector)
    names = decay + vector
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["params"] for g in groups] == [list(range(len(decay))), list(range(len(decay), len(names)))]
    assert [g["weight_decay"] for g in groups][1] == 0.0
    model = {n: p for n, p in ckpt["model"].items()}
    params = [torch.nn.Parameter(model[n].clone()) for n in decay + vector]
    nano = torch.optim.AdamW([{"params": params[:len(decay)], "weight_decay": 0.1},
                              {"params": params[len(decay):], "weight_decay": 0.0}], lr=1e-3)
    nano.load_state_dict(ckpt["optimizer"])  # what train.py --init_from=resume does
    for index, name in enumerate(decay + vector):
        assert nano.state[params[index]]["exp_avg"].shape == model[name].shape
        assert float(nano.state[params[index]]["step"]) == 3
    assert ckpt["optimizer"]["state"][0]["exp_avg"].abs().sum() > 0  # the moments, not zeros
    text = (tmp_path / "nano" / "resume_config.py").read_text()
    assert "init_from = 'resume'" in text and f"out_dir = {str(tmp_path / 'nano')!r}" in text


def prepared_corpus(tmp_path: Path, text: str = TEXT):
    corpus = tmp_path / f"corpus{len(text)}.txt"
    corpus.write_text(text)
    return prepare(DataConfig(name="text_file", path=str(corpus), cache_dir=str(tmp_path / "cache"), num_proc=1),
                   announce=quiet)


def test_with_data_the_export_holds_the_ids_nanogpts_train_py_reads(tmp_path):
    """--data copies the prepared corpus the run trained on to where train.py looks (data/ joined with
    config['dataset'], the export's absolute path) as the uint16 ids its memmap reads."""
    corpus = prepared_corpus(tmp_path)
    export(trained_run(tmp_path / "run", corpus.tokenizer), tmp_path / "nano", "nanogpt", say=quiet,
           data=corpus.directory)
    ckpt = torch.load(tmp_path / "nano" / "ckpt.pt", map_location="cpu", weights_only=True)
    data_dir = os.path.join("data", ckpt["config"]["dataset"])  # train.py's own line
    for split in ("train", "val"):
        ids = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
        assert len(ids) == corpus.tokens[split] and ids.max() < ckpt["model_args"]["vocab_size"]
        assert ids.tobytes() == corpus.split_path(split).read_bytes()


def test_data_from_another_tokenizer_or_a_planted_symlink_is_refused_in_one_line(tmp_path, outside):
    corpus = prepared_corpus(tmp_path)
    run = trained_run(tmp_path / "run", corpus.tokenizer)
    other = prepared_corpus(tmp_path, TEXT + "Zebra quixotic!\n")  # more characters: another vocabulary
    with pytest.raises(WeightsError, match="tokenized differently from the run"):
        export(run, tmp_path / "a", "nanogpt", say=quiet, data=other.directory)
    (corpus.directory / "val.bin").unlink()
    (corpus.directory / "val.bin").symlink_to(outside)
    with pytest.raises(WeightsError, match="val.bin is not a regular file in that folder"):
        export(run, tmp_path / "b", "nanogpt", say=quiet, data=corpus.directory)
    with pytest.raises(WeightsError, match="--data is for --format nanogpt"):
        export(run, tmp_path / "c", "hf", say=quiet, data=corpus.directory)
    assert not any((tmp_path / name).exists() for name in "abc")  # nothing half-written


def test_optimizer_state_converts_to_nanogpt_and_back_unchanged(tmp_path, monkeypatch):
    from nanogpt_runner.checkpoint.folder import resolve
    from nanogpt_runner.checkpoint.state import load_optimizer_state
    from nanogpt_runner.weights.init_from import checkpoint_architecture

    tokenizer = tokenizer_for("char", monkeypatch)
    for bias in (True, False):
        path, meta = resolve(trained_run(tmp_path / f"run{bias}", tokenizer, bias=bias), "latest", quiet)
        arch = checkpoint_architecture(meta)
        ours = load_optimizer_state(path, meta)
        theirs = nanogpt_format.optimizer_to_nanogpt(ours, arch, {"lr": 1e-3, "betas": [0.9, 0.95],
                                                                  "weight_decay": 0.1})
        back = nanogpt_format.optimizer_from_nanogpt(theirs, arch)
        for name, state in ours.items():
            for field in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(back[name][field], state[field]), (name, field)


# ------------------------------------------------------------------------------------ hostile input

def test_export_never_copies_a_path_the_checkpoint_names(tmp_path, monkeypatch):
    """A checkpoint whose saved config says init_from=/etc (where passwd lives) gets none of it exported."""
    tokenizer = tokenizer_for("gpt2", monkeypatch)
    run = trained_run(tmp_path / "run", tokenizer)
    secret = tmp_path / "secret"
    secret.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "config.json"):
        (secret / name).write_text("SECRET\n")
    meta_file = next(checkpoint_dir(run).glob("step_*")) / "meta.json"
    text = meta_file.read_text().replace('"init_from"', '"x"').replace('"name": "tiny"',
                                                                       f'"name": "tiny", "init_from": "{secret}"')
    os.chmod(meta_file, 0o644)
    meta_file.write_text(text)
    monkeypatch.setattr(tokenizers, "gpt2_encoding", lambda: (_ for _ in ()).throw(
        tokenizers.TokenizerUnavailable("offline")))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    try:
        warnings = export(run, tmp_path / "hf", "hf", say=quiet)
    except Exception as err:  # a meta.json edited by hand may fail its manifest: refused is fine too
        assert "SECRET" not in str(err)
        return
    assert any("--tokenizer-from" in w for w in warnings)
    for file in (tmp_path / "hf").iterdir():
        assert b"SECRET" not in file.read_bytes(), file


def test_tokenizer_from_copies_regular_files_only(tmp_path, monkeypatch):
    tokenizer = tokenizer_for("gpt2", monkeypatch)
    run = trained_run(tmp_path / "run", tokenizer)
    named = tmp_path / "gpt2-files"
    named.mkdir()
    outside = tmp_path / "shadow"
    outside.write_text("root:SECRET\n")
    (named / "tokenizer.json").symlink_to(outside)
    (named / "merges.txt").write_text("#version: 0.2\n")
    (named / "vocab.json").write_text("{}\n")
    export(run, tmp_path / "hf", "hf", say=quiet, tokenizer_from=named)
    assert not (tmp_path / "hf" / "tokenizer.json").exists()
    assert (tmp_path / "hf" / "merges.txt").read_text() == "#version: 0.2\n"
    os.remove(named / "merges.txt")
    os.remove(named / "vocab.json")
    with pytest.raises(WeightsError, match="holds none of"):
        export(run, tmp_path / "hf2", "hf", say=quiet, tokenizer_from=named)


def test_output_never_follows_a_symlink_nor_overwrites_without_force(tmp_path, monkeypatch):
    run = trained_run(tmp_path / "run", tokenizer_for("char", monkeypatch))
    victim = tmp_path / "bashrc"
    victim.write_text("mine\n")
    link_dir = tmp_path / "link"
    link_dir.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(WeightsError, match="is a symlink"):
        export(run, link_dir, "nanogpt", say=quiet)
    assert list((tmp_path / "elsewhere").iterdir()) == []

    out = tmp_path / "out"
    out.mkdir()
    (out / "ckpt.pt").symlink_to(victim)  # planted where the export writes
    (out / "notes.txt").write_text("the user's\n")
    with pytest.raises(WeightsError, match=re.escape("pass --force")):
        export(run, out, "nanogpt", say=quiet)
    export(run, out, "nanogpt", say=quiet, force=True)
    assert victim.read_text() == "mine\n"  # the link was replaced, never written through
    assert not (out / "ckpt.pt").is_symlink() and (out / "notes.txt").read_text() == "the user's\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]
