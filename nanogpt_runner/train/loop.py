"""The training loop: accumulation, evaluation, logging.

``train(cfg, run_dir, data)`` is the whole run for one process: build the model, step the optimizer
``train.max_iters`` times, evaluate every ``eval_interval`` steps (and at 0 and the end), and record
everything through the run directory's writer. Step ``s`` (1-based: the number of optimizer updates
done after it) trains on global batch ``s`` of the sampler, so a run's data depends only on the seed.
"""

from __future__ import annotations

import math
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nanogpt_runner.checkpoint.checkpointer import Checkpointer
from nanogpt_runner.checkpoint.state import TrainState
from nanogpt_runner.config.schema import Config, plain_train
from nanogpt_runner.console import RunConsole
from nanogpt_runner.data.prepared import PreparedData, cache_dir
from nanogpt_runner.distributed import parallelize as parallel
from nanogpt_runner.distributed import process_group
from nanogpt_runner.errors import Interrupted
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.model.optimizers import build_optimizers
from nanogpt_runner.perf import autotune, hardware, memory
from nanogpt_runner.runs.rundir import RunWriter
from nanogpt_runner.runs.trackers import open_trackers
from nanogpt_runner.train.batches import Batches
from nanogpt_runner.train.nonfinite import NonFiniteGuard
from nanogpt_runner.train.signals import StopSignals
from nanogpt_runner.train.stopping import Stopper
from nanogpt_runner.weights.init_from import load_initial_weights


@torch.no_grad()
def evaluate(par: parallel.Parallelized, splits: dict[str, Batches], eval_iters: int, batch_size: int, accum: int,
             autocast, token_bytes: torch.Tensor) -> dict[str, float]:
    """Mean loss over the same ``eval_iters`` global batches of each split every time (less noise between evals),
    and bits per byte: the summed loss of the evaluated targets in bits over their UTF-8 bytes
    (``token_bytes[id]`` each), a number runs with different tokenizers share.

    Every data-parallel rank evaluates its own slice, as in training, and the means are all-reduced: the
    number does not depend on the layout, and no rank idles while another evaluates."""
    par.module.eval()
    results = {}
    for split, batches in splits.items():
        total = torch.zeros((), device=par.layout.device)
        text_bytes = torch.zeros((), device=par.layout.device, dtype=torch.float64)
        for i in range(eval_iters):
            for micro in range(accum):
                start = (par.layout.dp_rank * accum + micro) * batch_size
                x, y = batches.get(step=i, start=start, count=batch_size)
                total += par.eval_loss(x, y, autocast).float()
                if par.layout.last_stage:  # counted where the loss is, like the loss (see mean_over_replicas)
                    text_bytes += token_bytes[y].sum()
        loss = par.mean_over_replicas(total).item() / (eval_iters * accum)
        results[f"{split}_loss"] = loss
        targets = eval_iters * accum * batch_size * batches.block_size  # per replica, as text_bytes
        results[f"{split}_bpb"] = bits_per_byte(loss * targets, par.mean_over_replicas(text_bytes).item())
    par.module.train()
    return results


def bits_per_byte(loss_nats: float, text_bytes: float) -> float:
    """A summed cross-entropy (nats) over the UTF-8 bytes of the text it predicted, in bits per byte."""
    return loss_nats / math.log(2) / text_bytes if text_bytes else math.nan


@dataclass
class Summary:
    status: str
    steps: int
    tokens: int
    best_val_loss: float
    final_train_loss: float
    tok_per_s: float
    mfu: float
    peak_mem_gb: float
    elapsed_s: float
    skipped_steps: int = 0
    stop_reason: str = "max_iters"  # a stopping.STOP_REASONS entry: the limit or early stop that ended the run

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_record(device: torch.device, precision: str, model: GPT, data: PreparedData,
               layout: process_group.Layout | None = None) -> dict:
    """The fields of run.json that describe what this run is (as opposed to how it is going).
    ``model`` is the whole model (before any pipeline split), so the counts are the run's, not a stage's."""
    return {
        "host": socket.gethostname(),
        "device": device.type,
        "device_name": hardware.describe(device),
        "precision": precision,
        **(layout or process_group.Layout()).as_record(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "n_params": model.num_params(),
        "flops_per_token": model.flops_per_token(),
        "dataset": data.as_record(),
    }


def train(cfg: Config, run_dir: Path, data: PreparedData, writer: RunWriter) -> Summary:
    """Join the process group (if any), train, and leave the group however the run ends (a set-up that
    fails after joining included)."""
    completed = False
    try:
        layout = process_group.setup(cfg.parallel, hardware.device_kind(cfg.train.device))
        summary = _train(cfg, run_dir, data, writer, layout)
        completed = True
        return summary
    finally:
        process_group.shutdown(completed)


def _train(cfg: Config, run_dir: Path, data: PreparedData, writer: RunWriter, layout: process_group.Layout) -> Summary:
    t = plain_train(cfg)  # read every step: a DictConfig's reads cost a small GPU model a sixth of its step
    device = layout.device
    caps = hardware.device_caps(t.device, device)  # this rank's GPU, asked after setup selected it
    memory_baseline_gb = hardware.memory_gb(device)[0]  # what the estimate's growth is measured from
    cache = cache_dir(cfg.data)
    # Rank 0 decides (``auto`` times this model in each precision the device runs natively) and tells the rest.
    precision, precision_probe = process_group.broadcast_object(
        layout, autotune.resolve_precision(cfg, data.vocab_size, device, caps, cache) if layout.is_main else None)
    hardware.configure_matmul(device, precision, t.tf32)
    torch.manual_seed(t.seed)
    full_model = GPT(cfg.model, data.vocab_size)  # on the CPU: parallelize places this rank's part on the device
    record = run_record(device, precision, full_model, data, layout)
    if (init_from := load_initial_weights(full_model, cfg)) is not None:  # before the layout splits the model
        record["init_from"] = init_from
    if precision_probe is not None:
        record["precision_probe"] = precision_probe.as_record()
    estimate = memory.estimate(cfg, data.vocab_size, device.type, precision)
    expected_peak_gb = round(memory_baseline_gb + estimate.total / memory.GB, 4)  # beside the measured peak
    record["memory_estimate"] = {**estimate.as_record(), "baseline_gb": round(memory_baseline_gb, 4),
                                 "expected_peak_gb": expected_peak_gb}
    flops_per_token = full_model.flops_per_token()
    par = parallel.parallelize(full_model, layout, cfg, precision)
    hardware.reset_peak_memory(device)  # the peak of training, not of the full model built before sharding
    model = par.module  # this rank's part: a pipeline stage, sharded or wrapped as the layout says
    optimizers = build_optimizers(model, cfg.optimizer)  # one object, however many torch optimizers
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = hardware.autocast(device.type, precision)
    # MFU divides the group's tokens/s by the group's peak: every rank's device (or its share of the cores).
    peak = layout.world * hardware.peak_flops(device, hardware.matmul_precision(device, precision), cache) \
        if layout.is_main else math.inf

    train_batches = Batches(data, "train", cfg.model.block_size, t.seed, device)
    eval_splits = {s: Batches(data, s, cfg.model.block_size, t.seed, device) for s in ("train", "val")}
    token_bytes = torch.as_tensor(data.token_bytes, dtype=torch.float64, device=device)
    # Global batch = dp x batch_size x grad_accum; data-parallel rank r takes micro-batches
    # [r*accum, (r+1)*accum) of it, so the model sees the same data under every layout.
    global_batch = layout.dp * t.batch_size * t.grad_accum
    tokens_per_step = global_batch * cfg.model.block_size
    first_micro = layout.dp_rank * t.grad_accum

    par.write_layout(run_dir)
    if layout.is_main and (trackers := open_trackers(cfg.logger, run_dir, writer.record)) is not None:
        writer.subscribe(trackers)  # TensorBoard, W&B, trackio, MLflow: what the run directory records
    writer.update(status="running", **record)
    start = time.perf_counter()
    best_val, last_loss, train_time, steps_timed = math.inf, math.nan, 0.0, 0
    window_steps, eval_seconds, loss_sum = 0, 0.0, torch.zeros((), device=device)

    # Rank 0 owns the console and train.log; every other rank logs the same lines quietly to rank{N}.log.
    log_path = run_dir / "train.log" if layout.is_main else run_dir / f"rank{layout.rank}.log"
    # Every rank stops at the same step boundary when any rank got the signal (par.any_rank all-reduces,
    # once every log_interval steps: no collective, so no device sync, on the other steps).
    with RunConsole(log_path, t.max_iters, live=cfg.run.progress and layout.is_main) as console, \
            StopSignals(agree=par.any_rank if layout.world > 1 else None, every=t.log_interval) as stop:
        console.console.quiet = not layout.is_main
        console.line(
            f"{cfg.model.name}: {record['n_params'] / 1e6:.2f}M parameters, {precision} on {record['layout']}, "
            f"{hardware.describe(device)}, data {data.name} ({data.origin}, {data.vocab_size} symbols), "
            f"run dir {run_dir}"
        )
        if precision_probe is not None:
            console.line(precision_probe.describe())
        if layout.is_main and (warning := hardware.precision_warning(precision, device, cache)):
            console.line(warning)

        def run_eval(step: int) -> float:
            nonlocal best_val, eval_seconds
            guard.check()  # a non-finite update since the last check stops the run here
            eval_start = time.perf_counter()
            losses = evaluate(par, eval_splits, t.eval_iters, t.batch_size, t.grad_accum, autocast, token_bytes)
            best_val = min(best_val, losses["val_loss"])
            writer.log("eval", step=step, tokens=step * tokens_per_step, **losses,
                       elapsed_s=time.perf_counter() - start)
            console.line(f"eval step {step}: train loss {losses['train_loss']:.4f}, val loss {losses['val_loss']:.4f}, "
                         f"val {losses['val_bpb']:.4f} bits/byte")
            eval_seconds += time.perf_counter() - eval_start
            return losses["val_loss"]

        # nan_policy: a non-finite update is noted on the device and read at the next metrics line, evaluation
        # or checkpoint (stop), or read every step (skip_step, which must decide before the update).
        # (its failure message names the checkpointer's last good state, read when it fails, after ckpt exists)
        guard = NonFiniteGuard(t.nan_policy, writer, scaler.is_enabled(), replicas_mean=par.mean_over_replicas,
                               agree=par.max_over_ranks, precision=precision, last_good=lambda: ckpt.last_good)
        # Resume (train.resume / resume=PATH) restores model, optimizer, scaler, RNG and progress in place.
        ckpt = Checkpointer(run_dir, cfg, data.tokenizer.describe(), model, optimizers, scaler, writer,
                            say=console.line, before_save=guard.check)
        resumed = ckpt.restore()
        guard.skipped = resumed.skipped_steps
        best_val = resumed.best_val_loss

        def progress(s: int) -> TrainState:
            return TrainState(s, resumed.tokens + (s - resumed.step) * tokens_per_step, best_val, guard.skipped)

        # The steps the budgets allow (the lr schedule spans them), the time budget and the early stops.
        stopper = Stopper(t, tokens_per_step, flops_per_token, best_val,
                          agree=lambda value: process_group.broadcast_object(layout, value))
        if resumed.step == 0:
            run_eval(0)
        window_start, eval_seconds, step = time.perf_counter(), 0.0, resumed.step
        for step in range(resumed.step + 1, stopper.steps + 1):
            if stop.requested():  # SIGTERM/SIGINT/SIGHUP/SIGUSR2: save the last completed step, then stop
                saved = ckpt.save(progress(step - 1), "signal")
                raise Interrupted(stop.signum, step - 1, saved, ckpt.last_good, run_dir)
            lr = optimizers.set_lr(stopper.schedule_step(step - 1), stopper.steps)
            step_loss = torch.zeros((), device=device)
            for micro in range(t.grad_accum):
                x, y = train_batches.get(step, start=(first_micro + micro) * t.batch_size, count=t.batch_size)
                process_group.seed_micro_batch(t.seed, step, first_micro + micro, device)  # dropout masks
                # Gradients are synchronised across replicas only on the last micro-step.
                loss = par.forward_backward(x, y, 1 / t.grad_accum, micro == t.grad_accum - 1, autocast, scaler)
                step_loss += loss / t.grad_accum
            par.finish_gradients()
            optimizers.unscale_(scaler)
            grad_norm = par.clip_grad_norm(t.grad_clip)
            if not guard.observe(step, step_loss, grad_norm):  # True only under skip_step, for a non-finite update
                optimizers.step(scaler)
                loss_sum += step_loss
            scaler.update()
            optimizers.zero_grad()
            window_steps += 1

            if step % t.log_interval == 0 or step == stopper.steps:
                guard.check()
                last_loss = guard.window_mean(par.mean_over_replicas(loss_sum).item(), window_steps)
                elapsed = time.perf_counter() - window_start - eval_seconds
                train_time += elapsed
                steps_timed += window_steps
                tok_per_s = window_steps * tokens_per_step / elapsed
                mem, peak_mem = par.max_over_ranks(list(hardware.memory_gb(device)))  # the busiest rank's
                mfu = flops_per_token * tok_per_s / peak
                writer.log("train", step=step, tokens=step * tokens_per_step, loss=last_loss, lr=lr,
                           grad_norm=grad_norm.item(), tok_per_s=tok_per_s, step_ms=1000 * elapsed / window_steps,
                           mfu=mfu, mem_gb=mem, peak_mem_gb=peak_mem, est_peak_mem_gb=expected_peak_gb,
                           elapsed_s=time.perf_counter() - start, skipped_steps=guard.skipped)
                writer.progress(step=step)
                console.progress(step, step, f"loss {last_loss:.4f} | {tok_per_s:,.0f} tok/s | mfu {mfu:.1%}")
                window_start, eval_seconds, window_steps = time.perf_counter(), 0.0, 0
                loss_sum = torch.zeros((), device=device)
                stopper.after_log(time.perf_counter() - start)
            last = step == stopper.steps or stopper.stopping
            val_loss = run_eval(step) if step % t.eval_interval == 0 or last else None
            if val_loss is not None:
                stopper.after_eval(val_loss)
            ckpt.after_step(progress(step), val_loss, final=last or stopper.stopping)
            if stopper.stopping:
                break
        if stopper.stop_reason != "max_iters":  # a budget or an early stop ended the run
            writer.event("early_stop", step=step, stop_reason=stopper.stop_reason)
            console.line(f"stopped at step {step}: {stopper.describe()}")

        tok_per_s = steps_timed * tokens_per_step / train_time if train_time else 0.0
        rank_peak_gb = hardware.memory_gb(device)[1]
        par.write_layout(run_dir, peak_mem_gb=rank_peak_gb)  # each rank's peak; the summary has the maximum
        summary = Summary(
            status="completed", steps=step, tokens=progress(step).tokens, best_val_loss=best_val,
            final_train_loss=last_loss, tok_per_s=tok_per_s, mfu=flops_per_token * tok_per_s / peak,
            peak_mem_gb=par.max_over_ranks([rank_peak_gb])[0], elapsed_s=time.perf_counter() - start,
            skipped_steps=guard.skipped, stop_reason=stopper.stop_reason,
        )
        console.summary(f"{cfg.run.name}: completed", {
            "stopped by": stopper.describe(),
            "best val loss": f"{summary.best_val_loss:.4f}",
            "final train loss": f"{summary.final_train_loss:.4f}",
            "time": f"{summary.elapsed_s:.1f} s",
            "tokens/s": f"{summary.tok_per_s:,.0f}",
            "MFU": f"{summary.mfu:.2%} of {peak / 1e9:,.0f} GFLOP/s ({precision})",
            "peak memory": f"{summary.peak_mem_gb:.2f} GB",
            "run dir": str(run_dir),
        })
    return summary
