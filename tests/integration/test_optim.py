"""The optimizers: the lr schedule, AdamW's decay groups, optimizer=muon (Muon for the blocks' matrices,
AdamW for the rest), resumable bit for bit and checked like every other field."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_config, run_cli

from nanogpt_runner.checkpoint import state as ck
from nanogpt_runner.checkpoint.resume_plan import config_changes
from nanogpt_runner.config.schema import DeviceCaps, OptimizerConfig, OptimizerName, choices
from nanogpt_runner.config.validate import config_warnings, validate
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.model.optimizers import OPTIMIZERS, build_optimizers, is_hidden_matrix, lr_at
from nanogpt_runner.runs.rundir import find_runs

CPU = DeviceCaps(kind="cpu", bf16=True, cuda_available=False)
VOCAB = 65


def tiny(seed: int = 0, bias: bool = False, tie_weights: bool = True) -> GPT:
    torch.manual_seed(seed)
    cfg = compose_config(["model=tiny", "model.dropout=0.1", f"model.bias={bias}", f"model.tie_weights={tie_weights}"])
    return GPT(cfg.model, VOCAB)


def train_steps(model: GPT, optimizers, steps: int) -> list[float]:
    losses = []
    for step in range(steps):
        x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(step))
        _, loss = model(x, x)
        loss.backward()
        optimizers.step()
        optimizers.zero_grad()
        losses.append(loss.item())
    return losses


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    lrs = [lr_at(step, 1e-3, 1e-4, warmup_iters=10, decay_iters=100) for step in range(120)]
    assert lrs[0] == pytest.approx(1e-3 / 11) and lrs[9] == pytest.approx(1e-3 * 10 / 11)
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx(1e-4 + 0.5 * 0.9e-3)  # halfway through the decay
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    assert lrs[100:] == [1e-4] * 20


def test_decay_iters_ends_the_decay_early():
    optimizers = build_optimizers(tiny(), OptimizerConfig(lr=1e-3, min_lr=1e-4, warmup_iters=0, decay_iters=50))
    assert optimizers.set_lr(50, total_steps=100) == 1e-4 and optimizers.set_lr(25, total_steps=100) > 1e-4


def test_a_warmup_longer_than_the_run_is_a_warning_and_the_schedule_only_warms_up():
    cfg = compose_config(["model=tiny", "train.max_iters=50", "optimizer.warmup_iters=100"])
    assert validate(cfg, CPU) == []
    [warning] = [w for w in config_warnings(cfg) if "warmup_iters" in w]
    assert "optimizer.warmup_iters=100 is more than train.max_iters=50" in warning and "50%" in warning
    optimizers = build_optimizers(tiny(), cfg.optimizer)
    lrs = [optimizers.set_lr(step, total_steps=50) for step in range(50)]
    assert all(0 < a < b < cfg.optimizer.lr for a, b in zip(lrs, lrs[1:], strict=False))


def test_adamw_decays_matrices_and_not_biases_and_norms():
    model = tiny(bias=True)
    optimizers = build_optimizers(model, OptimizerConfig(weight_decay=0.1))
    [adamw] = optimizers.optimizers
    decayed, plain = adamw.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert sum(p.numel() for p in decayed["params"] + plain["params"]) == model.num_params(False)


@pytest.mark.parametrize("tie_weights", [True, False])
def test_muon_takes_the_blocks_matrices_and_adamw_everything_else(tie_weights):
    model = tiny(bias=True, tie_weights=tie_weights)
    opt = compose_config(["optimizer=muon", "optimizer.muon_lr=0.05"]).optimizer
    optimizers = build_optimizers(model, opt)
    adamw, muon = optimizers.optimizers
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    adamw_names = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert muon_names == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert {"tok_emb.weight", "pos_emb.weight", "ln_f.weight", "blocks.0.attn.query.bias"} <= adamw_names
    assert ("lm_head.weight" in adamw_names) == (not tie_weights)  # a separate head stays with AdamW
    assert not muon_names & adamw_names and len(muon_names | adamw_names) == len(set(names.values()))
    assert all(is_hidden_matrix(n, p) == (n in muon_names) for n, p in model.named_parameters())
    # One schedule shape: Muon's group peaks at muon_lr, its floor keeps the ratio min_lr / lr.
    optimizers.set_lr(opt.warmup_iters, total_steps=1000)
    assert [g["lr"] for g in optimizers.param_groups] == [opt.lr, opt.lr, 0.05]
    optimizers.set_lr(1000, total_steps=1000)
    assert optimizers.param_groups[-1]["lr"] == pytest.approx(0.05 * opt.min_lr / opt.lr)


def test_every_optimizer_name_has_a_registry_entry():
    assert set(OPTIMIZERS) == set(choices(OptimizerName))


@pytest.mark.parametrize("sharded", [False, True], ids=["full", "sharded-dcp"])
def test_muon_checkpoint_round_trip_continues_training_bitwise(tmp_path, sharded):
    """Both optimizers' states go into one checkpoint (keyed by parameter name) and come back: a fresh
    model and fresh optimizers loaded from it train the same losses to bitwise the same parameters."""
    opt = compose_config(["optimizer=muon"]).optimizer
    model = tiny()
    optimizers = build_optimizers(model, opt)
    optimizers.set_lr(5, total_steps=20)
    train_steps(model, optimizers, 3)
    path = ck.save_checkpoint(tmp_path, ck.TrainState(step=3), model, optimizers, config={}, vocab=(),
                              sharded=sharded)
    expected = train_steps(model, optimizers, 3)

    restored = tiny(seed=7)
    restored_optimizers = build_optimizers(restored, opt)
    ck.load_checkpoint(path, restored, restored_optimizers)
    restored_optimizers.set_lr(5, total_steps=20)
    assert train_steps(restored, restored_optimizers, 3) == expected
    for a, b in zip(model.state_dict().values(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    momentum = [s["momentum_buffer"] for s in restored_optimizers.optimizers[1].state.values()]
    assert momentum and all(torch.equal(a, b["momentum_buffer"])
                            for a, b in zip(momentum, optimizers.optimizers[1].state.values(), strict=True))


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.muon_lr=0.05"], "optimizer.muon_lr=0.05 only applies to optimizer=muon"),
    (["optimizer=muon", "optimizer.muon_lr=0"], "optimizer.muon_lr=0.0 must be positive"),
    (["optimizer=muon", "optimizer.muon_momentum=1.0"], "optimizer.muon_momentum=1.0 must be in [0, 1)"),
    (["optimizer=muon", "optimizer.muon_weight_decay=-1"], "optimizer.muon_weight_decay=-1.0 must be zero or"),
])
def test_muon_fields_are_checked(overrides, message):
    [problem] = validate(compose_config(["model=tiny", *overrides]), CPU)
    assert message in problem


def test_a_resume_cannot_switch_the_optimizer():
    saved = {"optimizer": {"name": "adamw"}, "train": {}}
    _, [problem] = config_changes(saved, {"optimizer": {"name": "muon"}, "train": {}})
    assert "optimizer.name=muon conflicts with the checkpoint's optimizer.name=adamw" in problem


def test_muon_trains_under_fsdp_like_one_process(tmp_path, corpus_path):
    """Muon orthogonalises each whole matrix; under FSDP the matrices are DTensor shards and the
    Newton-Schulz matmuls gather what they need: the run matches one process (Muon's bf16 iteration
    leaves differences of about 1e-5)."""
    common = ["model=tiny", "optimizer=muon", "train.max_iters=4", "train.eval_interval=4", "train.eval_iters=1",
              "train.log_interval=1", "train.precision=fp32", "optimizer.warmup_iters=1", "run.progress=false",
              f"data.path={corpus_path}", f"data.cache_dir={tmp_path / 'cache'}", f"run.root={tmp_path / 'out'}"]
    losses = {}
    for name, layout in (("single", ["train.batch_size=4"]), ("fsdp", ["parallel=fsdp", "train.batch_size=2"])):
        result = run_cli([*common, *layout, f"run.name={name}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        [run_dir] = [r for r in find_runs(tmp_path / "out") if r.name.endswith(f"_{name}")]
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [line["loss"] for line in lines if line["kind"] == "train"]
    assert len(losses["single"]) == 4
    assert losses["fsdp"] == pytest.approx(losses["single"], rel=1e-4)
