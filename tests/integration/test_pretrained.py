"""GPT-2 weights in and out: model.init_from (Hugging Face folders and cache, nanoGPT ckpt.pt, runs of this
runner) and nanogpt-export (hf, nanogpt), exact to the logit. No network: transformers builds small random
GPT-2 models here, saves them, and the runner must reproduce their logits."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_config, run_cli
from safetensors.torch import load_file

from nanogpt_runner.checkpoint.folder import checkpoint_dir, resolve
from nanogpt_runner.checkpoint.state import TrainState, load_model_state, save_checkpoint
from nanogpt_runner.config.schema import ModelConfig
from nanogpt_runner.data import tokenizers
from nanogpt_runner.launch.app import CONF_DIR, check
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.runs.rundir import read_run
from nanogpt_runner.viewer.dashboard import Dashboard
from nanogpt_runner.viewer.store import RunStore
from nanogpt_runner.weights.export import export
from nanogpt_runner.weights.gpt2_layouts import Architecture, WeightsError, nanogpt_to_hf, ours_to_nanogpt
from nanogpt_runner.weights.init_from import (
    apply_init_from,
    checkpoint_architecture,
    initialize,
    load_state,
    resolve_source,
    vocabulary_problem,
)
from nanogpt_runner.weights.sample import SampleOptions, sample

transformers = pytest.importorskip("transformers")

GPT2_VOCAB = 50257
SMALL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64}


def save_hf_model(folder: Path, vocab_size: int, activation: str = "gelu_new", seed: int = 0):
    """A random GPT2LMHeadModel (every weight and bias drawn, so nothing matches by accident), saved with
    save_pretrained into ``folder``; returned in eval mode."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**SMALL, vocab_size=vocab_size, activation_function=activation,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.05)
    model.save_pretrained(folder)
    return model


def runner_model(source) -> GPT:
    model = GPT(ModelConfig(name="t", **source.arch.model_fields()), source.arch.vocab_size).eval()
    initialize(model, source)
    return model


def hf_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


def ours_logits(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)[0]


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("run.json"))


def metrics(run: Path, kind: str) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["kind"] == kind]


def at_step(run: Path, kind: str, step: int) -> dict:
    return [m for m in metrics(run, kind) if m["step"] == step][-1]


@pytest.fixture(scope="module")
def char_vocab(tmp_path_factory, corpus_path) -> int:
    """The character vocabulary size of the test corpus (the size a 'pretrained' model for it needs)."""
    cache = tmp_path_factory.mktemp("cache")
    _, _, data = check(compose_config(["model=tiny", f"data.path={corpus_path}", f"data.cache_dir={cache}"]), [])
    return data.vocab_size


# ------------------------------------------------------------------------------ Hugging Face in

def test_hf_weights_give_hf_logits_and_export_back_to_the_same_tensors(tmp_path):
    hf = save_hf_model(tmp_path / "hf", GPT2_VOCAB)
    source = resolve_source(str(tmp_path / "hf"))
    assert source.kind == "huggingface" and source.arch.activation == "gelu_tanh" and source.arch.bias
    model = runner_model(source)
    assert model.tok_emb.weight.shape[0] == 50304  # GPT-2's vocabulary padded for speed
    tokens = torch.randint(0, GPT2_VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    ours, theirs = ours_logits(model, tokens), hf_logits(hf, tokens)
    assert ours.shape == theirs.shape == (2, 24, GPT2_VOCAB)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    with torch.no_grad():  # the padding rows are not tokens: the loss is Hugging Face's too
        loss = model(tokens[:, :-1], tokens[:, 1:])[1]
        torch.testing.assert_close(loss, hf(tokens, labels=tokens).loss, atol=1e-5, rtol=0)

    exported = nanogpt_to_hf(ours_to_nanogpt(model.state_dict(), source.arch), source.arch)
    saved = load_file(tmp_path / "hf" / "model.safetensors")
    assert set(exported) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(exported[name], tensor), name


@pytest.mark.parametrize("layout", ["hub safetensors", "pytorch_model.bin", "sharded safetensors"])
def test_the_hubs_own_file_layouts_load(tmp_path, layout):
    """The hub's gpt2 files name GPT2Model's weights (no ``transformer.`` prefix, no lm_head) and older ones
    carry the causal-mask buffers; pytorch_model.bin is read weights-only; big models come in shards."""
    from safetensors.torch import save_file

    hf = save_hf_model(tmp_path / "hf", 65)
    folder = tmp_path / "hf"
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    if layout == "hub safetensors":
        hub = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
        hub["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
        save_file(hub, folder / "model.safetensors", metadata={"format": "pt"})
    elif layout == "pytorch_model.bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        hf.save_pretrained(folder, max_shard_size="20KB")
        assert (folder / "model.safetensors.index.json").is_file()
    tokens = torch.randint(0, 65, (2, 20), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours_logits(runner_model(resolve_source(str(folder))), tokens), hf_logits(hf, tokens),
                               atol=1e-5, rtol=0)


def test_architecture_comes_from_the_weights_and_a_contradicting_override_is_refused(tmp_path, tiny_overrides):
    save_hf_model(tmp_path / "hf", 65)
    init = f"model.init_from={tmp_path / 'hf'}"

    cfg, problems = apply_init_from(compose_config([*tiny_overrides, init]), [init], CONF_DIR)
    assert problems == []
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size, cfg.model.bias, cfg.model.activation) == \
        (2, 32, 64, True, "gelu_tanh")

    overrides = [init, "model.n_layer=4", "model.block_size=128", "model.dropout=0.3"]
    _, problems = apply_init_from(compose_config([*tiny_overrides, *overrides]), overrides, CONF_DIR)
    assert len(problems) == 2  # dropout is free
    assert "model.n_layer=4 conflicts" in problems[0] and "n_layer=2" in problems[0]
    assert "model.block_size=128 is larger than the 64 positions" in problems[1]

    overrides = [init, "model.block_size=16"]  # smaller: the position table is cropped (crop_block_size)
    cfg, problems = apply_init_from(compose_config([*tiny_overrides, *overrides]), overrides, CONF_DIR)
    assert problems == [] and cfg.model.block_size == 16
    assert load_state(resolve_source(str(tmp_path / "hf")), 65, 16)["pos_emb.weight"].shape == (16, 32)


def test_weights_for_another_vocabulary_are_refused_before_a_run_dir_exists(tmp_path, tiny_overrides):
    save_hf_model(tmp_path / "hf", GPT2_VOCAB)
    overrides = [o for o in tiny_overrides if o != "model=tiny"]  # the architecture comes from the weights
    result = run_cli([*overrides, f"model.init_from={tmp_path / 'hf'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "was made for another vocabulary: its vocabulary has 50,257 tokens" in result.stderr
    assert "data.tokenizer=gpt2" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or run_dirs(tmp_path / "outputs") == []


def test_gpt2_shorthand_resolves_through_the_hugging_face_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match=r"gpt2's weights are not in the Hugging Face cache .*`hf download gpt2 "
                                           r"config.json model.safetensors"):
        resolve_source("gpt2")
    repo = tmp_path / "hub" / "models--openai-community--gpt2"
    save_hf_model(repo / "snapshots" / "0123abc", 65)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    source = resolve_source("gpt2")
    assert source.path == repo / "snapshots" / "0123abc" and source.arch.n_layer == 2


def test_the_finetune_preset_is_nanogpts_and_takes_gpt2s_architecture(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    save_hf_model(tmp_path / "hub" / "models--gpt2" / "snapshots" / "0123abc", GPT2_VOCAB)  # a stand-in for gpt2
    overrides = ["+experiment=finetune_shakespeare"]
    cfg, problems = apply_init_from(compose_config(overrides), overrides, CONF_DIR)
    assert problems == []
    assert (cfg.model.init_from, cfg.model.n_layer, cfg.model.activation, cfg.data.tokenizer) == \
        ("gpt2", 2, "gelu_tanh", "gpt2")
    assert cfg.optimizer.lr == cfg.optimizer.min_lr == 3e-5 and cfg.optimizer.warmup_iters == 0  # constant lr
    assert (cfg.train.max_iters, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.eval_interval,
            cfg.train.eval_iters, cfg.train.ckpt_only_on_improvement) == (20, 1, 32, 5, 1, True)


@pytest.mark.parametrize("layout", ["huggingface", "nanogpt"])
def test_a_pickled_program_is_refused_and_never_runs(tmp_path, layout):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    if layout == "huggingface":
        save_hf_model(tmp_path / "w", 65)
        (tmp_path / "w" / "model.safetensors").unlink()
        torch.save({"wte.weight": Payload()}, tmp_path / "w" / "pytorch_model.bin")
        spec = tmp_path / "w"
    else:
        spec = tmp_path / "ckpt.pt"
        torch.save({"model_args": {"n_layer": 1}, "model": Payload()}, spec)
    with pytest.raises(WeightsError, match="holds objects other than tensors and plain data"):
        resolve_source(str(spec))
    assert not marker.exists()


# ----------------------------------------------------------------------------------- nanoGPT in

def nanogpt_checkpoint(hf_model, path: Path, vocab_rows: int | None = None) -> None:
    """What nanoGPT's train.py saves after from_pretrained and torch.compile: its names (Linear layout, so
    the Conv1D weights transposed), the ``_orig_mod.`` prefix, model_args, optimizer, iter_num, config.
    ``vocab_rows``: the vocabulary padded with random rows, as nanoGPT's own GPT-2-vocabulary models are."""
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = {k: (v.t() if k.endswith(conv1d) else v).clone() for k, v in hf_model.state_dict().items()}
    config = hf_model.config
    if vocab_rows is not None:
        padding = torch.randn(vocab_rows - config.vocab_size, config.n_embd)
        state["lm_head.weight"] = state["transformer.wte.weight"] = torch.cat([state["lm_head.weight"], padding])
    state = {f"_orig_mod.{k}": v for k, v in state.items()}
    torch.save({
        "model": state,
        "model_args": {"n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
                       "block_size": config.n_positions, "bias": True, "vocab_size": vocab_rows or config.vocab_size,
                       "dropout": 0.0},
        "optimizer": {"state": {}, "param_groups": []}, "iter_num": 100, "best_val_loss": torch.tensor(2.5),
        "config": {"dataset": "shakespeare_char", "learning_rate": 6e-4},
    }, path)


def test_a_nanogpt_model_with_its_padded_gpt2_vocabulary_loads_for_gpt2_data(tmp_path):
    hf = save_hf_model(tmp_path / "hf", GPT2_VOCAB, activation="gelu")
    nanogpt_checkpoint(hf, tmp_path / "ckpt.pt", vocab_rows=50304)  # nanoGPT's from-scratch GPT-2 vocabulary
    source = resolve_source(str(tmp_path / "ckpt.pt"))
    assert source.arch.vocab_size == 50304
    assert vocabulary_problem(source, SimpleNamespace(vocab_size=GPT2_VOCAB, kind="gpt2")) is None
    model = GPT(ModelConfig(name="t", **source.arch.model_fields()), GPT2_VOCAB).eval()
    initialize(model, source)
    tokens = torch.randint(0, GPT2_VOCAB, (1, 16), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours_logits(model, tokens), hf_logits(hf, tokens), atol=1e-5, rtol=0)


def test_a_nanogpt_checkpoint_loads_with_its_logits(tmp_path):
    # nanoGPT computes exact GELU: the same weights in Hugging Face with activation "gelu" are the reference.
    hf = save_hf_model(tmp_path / "hf", 65, activation="gelu")
    nanogpt_checkpoint(hf, tmp_path / "ckpt.pt")
    for spec in (tmp_path / "ckpt.pt", tmp_path):  # the file, or nanoGPT's out_dir holding it
        source = resolve_source(str(spec))
        assert source.kind == "nanogpt" and source.arch.activation == "gelu"
        tokens = torch.randint(0, 65, (2, 20), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(ours_logits(runner_model(source), tokens), hf_logits(hf, tokens), atol=1e-5,
                                   rtol=0)


# ------------------------------------------------------------------ fine-tune, resume, sample

def test_fine_tune_lowers_the_loss_resumes_exactly_and_never_reads_init_from_again(tmp_path, tiny_overrides,
                                                                                     char_vocab):
    save_hf_model(tmp_path / "hf", char_vocab)
    # Not model=tiny: the architecture comes from the weights (a model group naming another one is refused).
    finetune = [*(o for o in tiny_overrides if o != "model=tiny"), f"model.init_from={tmp_path / 'hf'}",
                "optimizer.lr=1e-2", "optimizer.min_lr=1e-2",
                "optimizer.warmup_iters=0", "train.log_interval=2",
                "train.ckpt_only_on_improvement=true", "train.max_iters=4", "train.eval_interval=2"]
    straight = run_cli([*finetune, "run.root=straight"], cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    (run,) = run_dirs(tmp_path / "straight")
    record = read_run(run)
    assert record["init_from"]["kind"] == "huggingface" and record["config"]["model"]["n_embd"] == 32
    evals = metrics(run, "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.1
    saves = [e for e in metrics(run, "event") if e["event"] == "checkpoint"]
    assert saves and all(e["reason"] == "best" for e in saves)  # train.ckpt_only_on_improvement
    board = Dashboard(RunStore(tmp_path / "straight", min_rescan_s=0.0), min_poll_s=0.0)
    board.refresh()
    table, _ = board.table()
    assert table["model.init_from"].tolist() == [str(tmp_path / "hf")]  # the viewer's runs table says it too
    (text,) = sample(run, SampleOptions(prompt="ROMEO:", max_new_tokens=8, seed=1), announce=lambda message: None)
    assert text.startswith("ROMEO:") and len(text) == 14  # decoded with the run's own (character) tokenizer

    first = run_cli([*finetune, "run.root=resumed", "train.max_iters=2"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (resumed,) = run_dirs(tmp_path / "resumed")
    shutil.move(tmp_path / "hf", tmp_path / "moved")  # a resume continues from its checkpoint alone
    second = run_cli([*finetune, f"resume={resumed}"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout + second.stderr
    for kind, key in (("train", "loss"), ("eval", "val_loss")):
        assert at_step(resumed, kind, 4)[key] == pytest.approx(at_step(run, kind, 4)[key], abs=1e-6)


# -------------------------------------------------------------------------------------- export

@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, corpus_path) -> Path:
    """A tiny model (no biases, exact GELU: what GPT-2's config has no switch for) trained by 2 FSDP ranks,
    so its checkpoints are torch.distributed.checkpoint shards."""
    root = tmp_path_factory.mktemp("sharded")
    result = run_cli(["model=tiny", "parallel=fsdp", "parallel.nproc_per_node=2", "train.max_iters=4",
                      "train.eval_interval=2", "train.eval_iters=1", "train.log_interval=2", "train.batch_size=2",
                      "train.precision=fp32", "optimizer.warmup_iters=1", "run.progress=false",
                      f"data.path={corpus_path}", f"data.cache_dir={root / 'cache'}", f"run.root={root / 'out'}"],
                     cwd=root)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(root / "out")
    return run


def checkpoint_model(run: Path) -> tuple[GPT, dict]:
    path, meta = resolve(run, "best")
    assert meta["layout"] == "sharded"
    model = GPT(ModelConfig(**meta["config"]["model"]), checkpoint_architecture(meta).vocab_size).eval()
    model.load_state_dict(load_model_state(path, meta))
    return model, meta


def test_a_run_of_this_runner_starts_a_new_one(sharded_run, tiny_overrides):
    init = f"model.init_from={sharded_run}"
    overrides = [o for o in tiny_overrides if o != "model=tiny"] + [init]
    cfg, problems = apply_init_from(compose_config(overrides), [init], CONF_DIR)
    assert problems == [] and (cfg.model.n_layer, cfg.model.block_size, cfg.model.bias) == (2, 32, False)
    assert check(cfg, [init])[1] == []  # the same tokenizer: the same corpus, characters
    source = resolve_source(str(sharded_run))
    assert source.kind == "runner" and source.path == resolve(sharded_run, "best")[0]
    other = vocabulary_problem(source, tokenizers.CharTokenizer(list("ab")))
    assert re.search(r"its char tokenizer \(\d+ tokens\) is not the data's char tokenizer \(2\)", other)
    model, _ = checkpoint_model(sharded_run)
    tokens = torch.randint(0, model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(ours_logits(runner_model(source), tokens), ours_logits(model, tokens), atol=0, rtol=0)


def test_export_hf_from_a_sharded_checkpoint_loads_in_transformers_with_the_same_logits(tmp_path, sharded_run):
    export(sharded_run, tmp_path / "hf", "hf", say=lambda message: None)
    model, meta = checkpoint_model(sharded_run)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["activation_function"] == "gelu" and config["vocab_size"] == model.vocab_size
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    tokens = torch.randint(0, model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(hf_logits(hf, tokens), ours_logits(model, tokens), atol=1e-5, rtol=0)
    with pytest.raises(WeightsError, match="already exists and is not empty"):
        export(sharded_run, tmp_path / "hf", "hf", say=lambda message: None)


def test_export_hf_of_a_gpt2_bpe_run_ships_its_own_tokenizer_never_the_init_from_files(tmp_path, monkeypatch):
    from test_prepare import small_gpt2_encoding  # GPT-2's BPE in miniature: no files, no network

    monkeypatch.setattr(tokenizers, "gpt2_encoding", small_gpt2_encoding)
    tokenizer = tokenizers.Gpt2Tokenizer()
    hf = save_hf_model(tmp_path / "hf", tokenizer.vocab_size)
    for name in ("vocab.json", "merges.txt"):  # what save_pretrained of GPT-2's tokenizer writes beside the weights
        (tmp_path / "hf" / name).write_text(f"GPT-2's {name}\n")
    source = resolve_source(str(tmp_path / "hf"))
    assert vocabulary_problem(source, tokenizer) is None
    assert "made for another vocabulary" in vocabulary_problem(source, tokenizers.CharTokenizer(list("ab")))

    model, run = runner_model(source), tmp_path / "run"
    model_config = {"name": "gpt2", **source.arch.model_fields(), "dropout": 0.0, "init_from": str(tmp_path / "hf")}
    config = {"model": model_config, "data": {"name": "shakespeare", "tokenizer": "gpt2"}}
    save_checkpoint(checkpoint_dir(run), TrainState(1, 64, 1.0), model, torch.optim.AdamW(model.parameters()),
                    config=config, vocab=tokenizer.describe(), val_loss=1.0)
    export(run, tmp_path / "out", "hf", say=lambda message: None)
    assert not (tmp_path / "out" / "merges.txt").exists()  # a path a checkpoint names is never copied from
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")  # built from the run's BPE
    assert hf_tokenizer("the theatre")["input_ids"] == tokenizer.encode("the theatre").tolist()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["eos_token_id"] == tokenizer.eot_id
    tokens = torch.randint(0, tokenizer.vocab_size, (1, 16), generator=torch.Generator().manual_seed(4))
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(hf_logits(exported, tokens), hf_logits(hf, tokens), atol=1e-5, rtol=0)


def test_export_nanogpt_has_nanogpts_names_and_loads_back(tmp_path, sharded_run):
    export(sharded_run, tmp_path / "nano", "nanogpt", say=lambda message: None)
    model, meta = checkpoint_model(sharded_run)
    ckpt = torch.load(tmp_path / "nano" / "ckpt.pt", weights_only=True)  # what nanoGPT's sample.py does
    assert ckpt["model_args"] == {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "bias": False,
                                  "vocab_size": checkpoint_architecture(meta).vocab_size, "dropout": 0.0}
    assert ckpt["iter_num"] == meta["step"] and ckpt["config"]["dataset"] == str(tmp_path / "nano")  # meta.pkl's
    per_block = ["ln_1.weight", "attn.c_attn.weight", "attn.c_proj.weight", "ln_2.weight", "mlp.c_fc.weight",
                 "mlp.c_proj.weight"]
    expected = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "lm_head.weight"}
    expected |= {f"transformer.h.{i}.{name}" for i in range(2) for name in per_block}
    assert set(ckpt["model"]) == expected
    assert ckpt["model"]["transformer.h.0.attn.c_attn.weight"].shape == (96, 32)  # q, k, v fused, Linear layout
    assert (tmp_path / "nano" / "meta.pkl").is_file()  # the character vocabulary nanoGPT's sample.py decodes with

    source = resolve_source(str(tmp_path / "nano" / "ckpt.pt"))
    tokens = torch.randint(0, model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours_logits(runner_model(source), tokens), ours_logits(model, tokens), atol=1e-6,
                               rtol=0)


def test_the_export_command_reports_a_problem_in_one_line(tmp_path, sharded_run):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("mine")
    result = subprocess.run([str(Path(sys.executable).parent / "nanogpt-export"), str(sharded_run),
                             str(tmp_path / "taken"), "--format", "hf"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'taken'} already exists and is not empty: "
                                                  f"choose a new OUT_DIR, or pass --force to replace the export's "
                                                  f"files in it (nothing is overwritten otherwise)"]
    assert (tmp_path / "taken" / "file").read_text() == "mine"


def test_untied_weights_export_to_hf_exactly_and_nanogpt_refuses_them(tmp_path):
    vocab = list("\n !,.:;?abcdefghijklmnopqrstuvwxyz")
    fields = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "bias": False, "tie_weights": False,
              "activation": "gelu"}
    torch.manual_seed(0)
    model = GPT(ModelConfig(name="untied", **fields), len(vocab)).eval()
    config = {"model": {"name": "untied", **fields, "dropout": 0.0}, "data": {"name": "text_file"}}
    save_checkpoint(checkpoint_dir(tmp_path / "run"), TrainState(1, 64, 1.0), model,
                    torch.optim.AdamW(model.parameters()), config=config, vocab=vocab, val_loss=1.0)
    export(tmp_path / "run", tmp_path / "hf", "hf", say=lambda message: None)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert not hf.config.tie_word_embeddings
    tokens = torch.randint(0, len(vocab), (2, 16), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(hf_logits(hf, tokens), ours_logits(model, tokens), atol=1e-5, rtol=0)
    with pytest.raises(WeightsError, match="nanoGPT always ties lm_head"):
        export(tmp_path / "run", tmp_path / "nano", "nanogpt", say=lambda message: None)
    assert not (tmp_path / "nano").exists()


def test_architecture_of_gpt2_is_expressible_both_ways():
    arch = Architecture(n_layer=1, n_head=1, n_embd=4, block_size=8, vocab_size=10, bias=False)
    torch.manual_seed(0)
    model = GPT(ModelConfig(name="t", **arch.model_fields()), 10)
    hf_state = nanogpt_to_hf(ours_to_nanogpt(model.state_dict(), arch), arch)
    assert torch.equal(hf_state["transformer.h.0.attn.c_attn.bias"], torch.zeros(12))  # zero biases: same function
    assert hf_state["transformer.h.0.attn.c_attn.weight"].shape == (4, 12)  # Conv1D: (in, out)
    assert "lm_head.weight" not in hf_state  # tied: Hugging Face ties it on load
