"""Checkpoint files: what is saved comes back exactly, writes are atomic under a crash, damage is detected
and the previous good checkpoint used, nothing in a checkpoint can run code, retention keeps the newest
and the best, and the two early stops (signals, non-finite loss) behave as documented."""

from __future__ import annotations

import errno
import json
import math
import os
import random
import signal

import numpy as np
import pytest
import torch

from nanogpt_runner.checkpoint import checkpointer as resume
from nanogpt_runner.checkpoint import folder as folders
from nanogpt_runner.checkpoint import resume_plan
from nanogpt_runner.checkpoint import state as ck
from nanogpt_runner.config.schema import ModelConfig, OptimizerConfig
from nanogpt_runner.errors import CheckpointError, NonFiniteLoss
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.model.optimizers import Optimizers, build_optimizers
from nanogpt_runner.runs.rundir import RunWriter
from nanogpt_runner.train import nonfinite, signals

VOCAB = tuple(chr(c) for c in range(32, 97))


def tiny_model(seed: int = 0) -> tuple[GPT, Optimizers]:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(name="tiny", n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.1), len(VOCAB))
    return model, build_optimizers(model, OptimizerConfig())


def train_steps(model: GPT, optimizer: Optimizers, steps: int) -> list[float]:
    """A few real updates (dropout on, so they draw from the torch RNG); returns the losses."""
    losses = []
    for step in range(steps):
        x = torch.randint(0, len(VOCAB), (2, 16), generator=torch.Generator().manual_seed(step))
        _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def save(ckpt_dir, model, optimizer, step: int, val_loss: float | None = None, **kwargs):
    state = ck.TrainState(step=step, tokens=step * 32, best_val_loss=val_loss or math.inf)
    return ck.save_checkpoint(ckpt_dir, state, model, optimizer, config={"model": {"n_embd": 32}}, vocab=VOCAB,
                              val_loss=val_loss, **kwargs)


@pytest.mark.parametrize("sharded", [False, True], ids=["full", "sharded-dcp"])
def test_round_trip_continues_training_exactly(tmp_path, sharded):
    """Save after 3 steps, keep training; a fresh model loaded from the checkpoint trains the same
    losses and ends with bitwise the same parameters (model, optimizer and RNG all restored)."""
    model, optimizer = tiny_model()
    train_steps(model, optimizer, 3)
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    path = save(tmp_path, model, optimizer, 3, scaler=scaler, sharded=sharded)
    random.random(), np.random.rand()  # draws after the save must be undone by the load
    expected_python, expected_numpy = random.random(), np.random.rand()
    expected = train_steps(model, optimizer, 3)

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restored, restored_optimizer = tiny_model(seed=5)
    restored_scaler = torch.amp.GradScaler("cpu", enabled=True)
    state = ck.load_checkpoint(path, restored, restored_optimizer, restored_scaler)
    assert (state.step, state.tokens) == (3, 96)
    assert restored_scaler.get_scale() == 1024.0
    random.random(), np.random.rand()
    assert (random.random(), np.random.rand()) == (expected_python, expected_numpy)
    assert train_steps(restored, restored_optimizer, 3) == expected
    for a, b in zip(model.state_dict().values(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    saved_weights = ck.load_model_state(path, folders.read_meta(path))  # what nanogpt-sample reads, either layout
    restored_for_sampling, _ = tiny_model(seed=6)
    restored_for_sampling.load_state_dict(saved_weights)
    assert torch.equal(saved_weights["tok_emb.weight"], path_weights(path, sharded))


def path_weights(path, sharded: bool) -> torch.Tensor:
    """The token embedding as stored, read without the checkpoint module (a plain file, or DCP's reader)."""
    if not sharded:
        return torch.load(path / folders.MODEL_FILE, weights_only=True)["tok_emb.weight"]
    import torch.distributed.checkpoint as dcp

    target = {"model": {"tok_emb.weight": torch.empty(len(VOCAB), 32)}}
    with ck._dcp_quietly():
        dcp.load(target, checkpoint_id=path)
    return target["model"]["tok_emb.weight"]


def split_model(seed: int = 0) -> tuple[GPT, Optimizers]:
    """A model whose first block sits on another device mesh, as tensor parallelism puts the sharded weights
    (a ``device_mesh`` attribute stands in for the DTensor's): AdamW becomes one fused optimizer per mesh."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(name="tiny", n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.1), len(VOCAB))
    for name, param in model.named_parameters():
        if name.startswith("blocks.0."):
            param.device_mesh = "another mesh"
    return model, build_optimizers(model, OptimizerConfig())


@pytest.mark.parametrize("sharded", [False, True], ids=["full", "sharded-dcp"])
@pytest.mark.parametrize(("saving", "loading"), [(split_model, tiny_model), (tiny_model, split_model)],
                         ids=["split-to-one", "one-to-split"])
def test_a_checkpoint_holds_one_group_per_kind_whatever_the_optimizer_split(tmp_path, sharded, saving, loading):
    """A layout with one AdamW per mesh (tp, fsdp x tp) saves the decayed and the undecayed groups as a one-mesh
    layout does, so each resumes the other's checkpoint and trains on to bitwise the same parameters."""
    model, optimizers = saving()
    assert [o["fused"] for o in optimizers.describe()] == [True] * len(optimizers.optimizers)
    train_steps(model, optimizers, 3)
    path = save(tmp_path, model, optimizers, 3, sharded=sharded)
    expected = train_steps(model, optimizers, 3)
    if not sharded:
        groups = torch.load(path / folders.OPTIMIZER_FILE, weights_only=True)["param_groups"]
        assert [g["weight_decay"] for g in groups] == [0.1, 0.0]

    restored, restored_optimizers = loading(seed=5)
    assert {len(optimizers.optimizers), len(restored_optimizers.optimizers)} == {1, 2}
    ck.load_checkpoint(path, restored, restored_optimizers)
    assert train_steps(restored, restored_optimizers, 3) == expected
    for a, b in zip(model.state_dict().values(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_keys_are_clean_for_a_compiled_model(tmp_path):
    model, optimizer = tiny_model()
    train_steps(model, optimizer, 1)
    compiled = torch.compile(model)  # never called, so nothing compiles; its state_dict keys have _orig_mod.
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    path = save(tmp_path, compiled, optimizer, 1)
    model_keys = torch.load(path / folders.MODEL_FILE, weights_only=True).keys()
    optim_keys = torch.load(path / folders.OPTIMIZER_FILE, weights_only=True)["state"].keys()
    assert set(model_keys) == set(model.state_dict())
    assert "tok_emb.weight" in optim_keys and not any("_orig_mod" in k for k in optim_keys)
    meta = json.loads((path / folders.META_FILE).read_text())
    assert (meta["format"], meta["version"], meta["layout"]) == (folders.FORMAT, folders.VERSION, "full")


def test_crash_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model, optimizer = tiny_model()
    train_steps(model, optimizer, 1)
    first = save(tmp_path, model, optimizer, 1)
    train_steps(model, optimizer, 1)

    real_save = ck._save_tensors

    def crash_on_optimizer(obj, path):
        if path.name == folders.OPTIMIZER_FILE:
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a file")
            raise OSError("simulated crash while writing")
        real_save(obj, path)

    monkeypatch.setattr(ck, "_save_tensors", crash_on_optimizer)
    with pytest.raises(OSError, match="simulated crash"):
        save(tmp_path, model, optimizer, 2)
    assert (tmp_path / folders.LATEST).read_text().strip() == first.name
    assert folders.list_checkpoints(tmp_path) == [first]  # the half-written folder never got a checkpoint's name
    found, meta = folders.find_latest(tmp_path, announce=pytest.fail)
    assert (found, meta["step"]) == (first, 1)

    assert not list(tmp_path.glob(f"{folders.TMP_PREFIX}*"))  # the failed save removed its partial folder

    monkeypatch.setattr(ck, "_save_tensors", real_save)
    second = save(tmp_path, model, optimizer, 2)
    assert folders.find_latest(tmp_path, announce=pytest.fail)[0] == second
    assert not list(tmp_path.glob(f"{folders.TMP_PREFIX}*"))


DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("sharded", [False, True], ids=["full", "sharded-dcp"])
@pytest.mark.parametrize("where", ["tensors", "meta fsync", "state dict"])
@pytest.mark.parametrize("error", [DISK_FULL, RuntimeError("injected failure")], ids=["ENOSPC", "RuntimeError"])
def test_any_failed_save_leaves_no_temporary_and_run_json_whole(tmp_path, monkeypatch, sharded, where, error):
    """A full disk or any other exception, wherever the save fails: no checkpoints/.tmp-step_* is left to hold
    the space, the previous checkpoint stays the latest, and run.json, updated through the failure, is whole."""
    model, optimizer = tiny_model()
    train_steps(model, optimizer, 1)
    writer = RunWriter(tmp_path)
    writer.update(status="running", step=1)
    ckpt_dir = folders.checkpoint_dir(tmp_path)
    first = save(ckpt_dir, model, optimizer, 1, sharded=sharded)

    def fail(*_args, **_kwargs):
        raise error

    def disk_fills_after_the_tensors(folder, *args):
        files = real_manifest(folder, *args)
        monkeypatch.setattr(os, "fsync", fail)  # meta.json's fsync, and every later one
        return files

    real_fsync, real_manifest = os.fsync, ck.manifest
    if where == "tensors":
        monkeypatch.setattr(ck, "_save_tensors", fail)
        monkeypatch.setattr("torch.distributed.checkpoint.save", fail)
    elif where == "meta fsync":
        monkeypatch.setattr(ck, "manifest", disk_fills_after_the_tensors)
    else:
        monkeypatch.setattr("torch.distributed.checkpoint.state_dict.get_model_state_dict", fail)
    with pytest.raises(type(error)):
        save(ckpt_dir, model, optimizer, 2, sharded=sharded)
    monkeypatch.setattr(os, "fsync", fail)  # the same failure when the run then records it
    with pytest.raises(type(error)):
        writer.update(status="failed", error="x" * 10_000)
    monkeypatch.setattr(os, "fsync", real_fsync)

    assert not [p.name for p in ckpt_dir.iterdir() if p.name.startswith(folders.TMP_PREFIX)]
    assert not list(tmp_path.glob(f"{folders.TMP_PREFIX}*"))
    assert folders.list_checkpoints(ckpt_dir) == [first]
    assert (ckpt_dir / folders.LATEST).read_text().strip() == first.name
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
    writer.close()


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta", "missing"])
def test_damaged_latest_falls_back_to_the_previous_one(tmp_path, damage):
    model, optimizer = tiny_model()
    train_steps(model, optimizer, 1)
    good = save(tmp_path, model, optimizer, 1)
    bad = save(tmp_path, model, optimizer, 2)
    target = bad / folders.MODEL_FILE
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "meta":
        (bad / folders.META_FILE).write_text('{"format": "nanogpt-runner-checkp')
    else:
        target.unlink()
    messages = []
    found, meta = folders.find_latest(tmp_path, announce=messages.append)
    assert (found, meta["step"]) == (good, 1)
    assert len(messages) == 1 and bad.name in messages[0] and f"falling back to {good.name}" in messages[0]
    restored, _ = tiny_model(seed=3)
    ck.load_checkpoint(found, restored)
    assert torch.equal(restored.tok_emb.weight, model.tok_emb.weight)


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path):
    model, optimizer = tiny_model()
    path = save(tmp_path, model, optimizer, 1)
    (path / folders.MODEL_FILE).write_bytes(b"")
    with pytest.raises(CheckpointError, match="checkpoints are all damaged"):
        folders.resolve(tmp_path, announce=lambda _: None)
    with pytest.raises(CheckpointError, match="has no checkpoint yet"):
        folders.resolve(tmp_path / "..", announce=lambda _: None)


@pytest.mark.parametrize("is_file", [True, False])
def test_a_resume_target_that_is_no_folder_is_named_as_such(tmp_path, is_file):
    target = tmp_path / "target"
    if is_file:
        target.write_text("x")
    what = "is a file" if is_file else "does not exist"
    with pytest.raises(CheckpointError, match=f"target {what}: pass a run directory or a checkpoint"):
        folders.resolve(target, announce=lambda _: None)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    model, optimizer = tiny_model()
    path = save(tmp_path, model, optimizer, 1)
    import pickle

    (path / folders.MODEL_FILE).write_bytes(pickle.dumps({"tok_emb.weight": Exploit()}))
    meta = json.loads((path / folders.META_FILE).read_text())
    meta["files"] = folders.manifest(path)  # a forged manifest: the hash check passes, the loader must still refuse
    (path / folders.META_FILE).write_text(json.dumps(meta))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        ck.load_checkpoint(path, tiny_model()[0])
    assert not (tmp_path / "pwned").exists()


def test_retention_keeps_the_newest_and_the_best(tmp_path):
    model, optimizer = tiny_model()
    for step, val in [(1, 3.0), (2, 1.5), (3, None), (4, 2.0), (5, None)]:
        save(tmp_path, model, optimizer, step, val_loss=val)
    removed = folders.prune(tmp_path, keep_last=2)
    assert sorted(removed) == ["step_0000001", "step_0000003"]
    assert [p.name for p in folders.list_checkpoints(tmp_path)] == ["step_0000002", "step_0000004", "step_0000005"]
    assert (tmp_path / folders.BEST).read_text().strip() == "step_0000002"
    assert folders.find_best(tmp_path)[0].name == "step_0000002"
    assert folders.resolve(tmp_path, "latest")[0].name == "step_0000005"


def test_checkpointer_saves_on_interval_best_and_end(tmp_path):
    cfg = ck_config(ckpt_interval=3, keep_last=1)
    model, optimizer = tiny_model()
    writer = RunWriter(tmp_path)
    saver = resume.Checkpointer(tmp_path, cfg, VOCAB, model, optimizer, None, writer, say=lambda _: None)
    saved = {step: saver.after_step(ck.TrainState(step, step * 32), val, final=step == 7)
             for step, val in [(1, None), (2, 2.0), (3, None), (4, 2.5), (5, 1.0), (6, None), (7, 1.2)]}
    assert [s for s, p in saved.items() if p] == [2, 3, 5, 6, 7]
    kept = folders.list_checkpoints(folders.checkpoint_dir(tmp_path))
    assert [p.name for p in kept] == ["step_0000005", "step_0000007"]
    writer.close()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in events] == ["best", "interval", "best", "interval", "end"]


def ck_config(**train):
    from omegaconf import OmegaConf

    from nanogpt_runner.config.schema import Config

    cfg = OmegaConf.structured(Config)
    cfg.model.name = "tiny"
    for key, value in train.items():
        cfg.train[key] = value
    return cfg


def test_stop_signals_turn_sigterm_into_a_request(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    with signals.StopSignals() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous
    with signals.StopSignals() as stop:  # a closed terminal or SSH session: a stop like any other
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.requested() and stop.signum == signal.SIGHUP
    # The group's decision, e.g. another rank was signalled.
    with signals.StopSignals(agree=lambda flag: True) as stop:
        assert stop.requested()
    # A group is asked every `every` polls only (a collective each time), at the same polls on every rank.
    asked = []
    with signals.StopSignals(agree=lambda flag: asked.append(flag) or True, every=3) as stop:
        assert [stop.requested() for _ in range(7)] == [True, False, False, True, False, False, True]
    assert len(asked) == 3


def test_after_the_loop_a_late_stop_signal_is_ignored_until_the_end_is_recorded():
    previous = {sig: signal.getsignal(sig) for sig in signals.StopSignals.SIGNALS}
    with signals.until_the_end_is_recorded():
        with signals.StopSignals() as stop:  # the loop, which saw no stop signal
            assert not stop.requested()
        assert [signal.getsignal(sig) for sig in signals.LATE_SIGNALS] == [signal.SIG_IGN] * len(signals.LATE_SIGNALS)
        assert signal.getsignal(signal.SIGINT) is previous[signal.SIGINT]  # a Ctrl+C still interrupts
    assert {sig: signal.getsignal(sig) for sig in previous} == previous  # nothing outlives the run


def test_nan_guard_stops_at_the_next_check_or_skips_at_once(tmp_path):
    writer = RunWriter(tmp_path)
    finite, nan, inf = torch.tensor(2.0), torch.tensor(math.nan), torch.tensor(math.inf)
    stop = nonfinite.NonFiniteGuard("stop", writer)
    assert not stop.observe(1, finite, finite)
    stop.check()  # all finite so far
    for step, loss in ((7, nan), (8, finite), (9, nan)):  # noted on the device, nothing read yet
        assert not stop.observe(step, loss, finite)
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 7"):
        stop.check()  # the first bad step is named
    skip = nonfinite.NonFiniteGuard("skip_step", writer)
    assert skip.observe(8, finite, inf) and skip.skipped == 1
    assert skip.window_mean(6.0, 4) == 2.0  # three applied updates in a window of four
    fp16_guard = nonfinite.NonFiniteGuard("stop", writer, scaler_enabled=True)
    fp16_guard.observe(9, finite, inf)
    fp16_guard.check()  # fp16 overflow: the scaler skips it
    writer.close()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"], e["loss"], e["grad_norm"], e["action"]) for e in events] == [
        ("nan", 7, "nan", 2.0, "stopped"), ("nan", 8, 2.0, "inf", "skipped")]


def test_config_changes_allow_schedule_and_refuse_architecture():
    saved = {"model": {"n_embd": 32, "dropout": 0.0}, "train": {"max_iters": 10, "seed": 1}, "resume": None}
    changes, problems = resume_plan.config_changes(saved, {"model": {"n_embd": 32, "dropout": 0.0},
                                                  "train": {"max_iters": 20, "seed": 1}, "resume": "/x"})
    assert changes == {"train.max_iters": [10, 20]} and problems == []
    _, problems = resume_plan.config_changes(saved, {"model": {"n_embd": 64, "dropout": 0.0}, "train": {"max_iters": 10,
                                                                                               "seed": 2}})
    assert len(problems) == 2 and "model.n_embd=64 conflicts with the checkpoint's model.n_embd=32" in problems[0]
