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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanogpt_runner.checkpoint.checkpointer import Checkpointer
from nanogpt_runner.checkpoint.state import TrainState
from nanogpt_runner.config.schema import Config, to_config, with_changes
from nanogpt_runner.console import RunConsole
from nanogpt_runner.data.prepared import PreparedData, cache_dir
from nanogpt_runner.data.tasks import macro_mean
from nanogpt_runner.distributed import parallelize as parallel
from nanogpt_runner.distributed import process_group
from nanogpt_runner.errors import Interrupted
from nanogpt_runner.evals.scoring import TaskEvaluator
from nanogpt_runner.fsutil import open_nofollow
from nanogpt_runner.model.gpt import GPT
from nanogpt_runner.model.optimizers import build_optimizers
from nanogpt_runner.perf import autotune, compile_decision, hardware, memory
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
    tasks: dict = field(default_factory=dict)  # eval.tasks: the last scoring's numbers, interval and seconds

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
    fails after joining included). ``cfg`` may be a DictConfig: the loop reads the dataclass it converts to."""
    cfg, completed = to_config(cfg), False
    try:
        layout = process_group.setup(cfg.parallel, hardware.device_kind(cfg.train.device))
        summary = Trainer(cfg, run_dir, data, writer, layout).run()
        completed = True
        return summary
    finally:
        process_group.shutdown(completed)


class Trainer:
    """One process's part of a run, in the order it happens: ``__init__`` sets up (precision, model, layout,
    optimizers, batches), ``run`` steps until a limit or a stop, ``step`` is one optimizer update, ``log_window``
    one metrics line, ``evaluate`` one evaluation, ``summarize`` the end.

    Step ``s`` trains on global batch ``s``: data-parallel rank r takes micro-batches [r*accum, (r+1)*accum) of
    dp x batch_size x grad_accum sequences, so the model sees the same data under every layout."""

    def __init__(self, cfg: Config, run_dir: Path, data: PreparedData, writer: RunWriter,
                 layout: process_group.Layout):
        self.cfg, self.run_dir, self.data, self.writer, self.layout = cfg, run_dir, data, writer, layout
        self.t = t = cfg.train
        self.device = device = layout.device
        caps = hardware.device_caps(t.device, device)  # this rank's GPU, asked after setup selected it
        memory_baseline_gb = hardware.memory_gb(device)[0]  # what the estimate's growth is measured from
        self.cache = cache_dir(cfg.data)
        # Rank 0 decides (``auto`` times this model in each precision the device runs natively) and tells the rest.
        self.precision, self.precision_probe = process_group.broadcast_object(
            layout, autotune.resolve_precision(cfg, data.vocab_size, device, caps, self.cache) if layout.is_main
            else None)
        precision = self.precision
        hardware.configure_matmul(device, precision, t.tf32)
        torch.manual_seed(t.seed)
        full_model = GPT(cfg.model, data.vocab_size)  # on the CPU: parallelize places this rank's part on the device
        self.record = run_record(device, precision, full_model, data, layout)
        if (init_from := load_initial_weights(full_model, cfg)) is not None:  # before the layout splits the model
            self.record["init_from"] = init_from
        if self.precision_probe is not None:
            self.record["precision_probe"] = self.precision_probe.as_record()
        self.flops_per_token = full_model.flops_per_token()
        self.tokens_per_step = layout.dp * t.batch_size * t.grad_accum * cfg.model.block_size
        # MFU divides the group's tokens/s by the group's peak: every rank's device (or its share of the cores).
        self.peak = layout.world * hardware.peak_flops(device, hardware.matmul_precision(device, precision),
                                                       self.cache) if layout.is_main else math.inf
        self.compile_decision = self.decide_compile() if t.compile is None else None
        if self.compile_decision is not None:  # the model and the tasks are built as decided (checkpoints keep null)
            cfg = with_changes(cfg, train={"compile": self.compile_decision.compile})
            t = cfg.train
            self.record["compile_decision"] = self.compile_decision.as_record()
        self.compile_clock = compile_decision.CompileClock() if t.compile and layout.is_main else None
        estimate = memory.estimate(cfg, data.vocab_size, device.type, precision)
        self.expected_peak_gb = round(memory_baseline_gb + estimate.total / memory.GB, 4)  # beside the measured peak
        self.record["memory_estimate"] = {**estimate.as_record(), "baseline_gb": round(memory_baseline_gb, 4),
                                          "expected_peak_gb": self.expected_peak_gb}
        self.par = parallel.parallelize(full_model, layout, cfg, precision)
        hardware.reset_peak_memory(device)  # the peak of training, not of the full model built before sharding
        self.model = self.par.module  # this rank's part: a pipeline stage, sharded or wrapped as the layout says
        self.optimizers = build_optimizers(self.model, cfg.optimizer)  # one object, however many torch optimizers
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.autocast = hardware.autocast(device.type, precision)
        self.train_batches = Batches(data, "train", cfg.model.block_size, t.seed, device)
        self.eval_splits = {s: Batches(data, s, cfg.model.block_size, t.seed, device) for s in ("train", "val")}
        self.token_bytes = torch.as_tensor(data.token_bytes, dtype=torch.float64, device=device)
        self.first_micro = layout.dp_rank * t.grad_accum
        self.best_val, self.last_loss, self.train_time, self.steps_timed = math.inf, math.nan, 0.0, 0
        self.window_steps, self.eval_seconds, self.loss_sum = 0, 0.0, torch.zeros((), device=device)
        # eval.tasks (evals/): multiple-choice tasks scored at evaluation steps, their time counted as eval time
        self.tasks = TaskEvaluator(cfg, data.tokenizer, self.par, self.autocast, self.cache) if cfg.eval.tasks \
            else None
        self.task_results: dict[str, dict] = {}

    def decide_compile(self) -> compile_decision.CompileDecision:
        """``train.compile`` null: rank 0 decides from the expected compile time and savings (``perf/
        compile_decision.py``; never on a CPU) and tells the rest, so every rank builds the same model."""
        layout = self.layout
        probe = self.precision_probe.step_ms if self.precision_probe is not None else None
        return process_group.broadcast_object(layout, compile_decision.decide_for_run(
            self.cfg, self.data.vocab_size, self.device, self.precision, self.cache, probe, self.flops_per_token,
            self.tokens_per_step, self.peak) if layout.is_main else None)

    def remember_compile(self, step: int, seconds: float) -> None:
        """A compiled run's own compile time, cached for the next run's decision and kept as an event."""
        compile_decision.remember_compile_seconds(self.cfg, self.data.vocab_size, self.device, self.precision,
                                                  self.cache, seconds)
        self.writer.event("compile_measured", step=step, seconds=round(seconds, 2))
        self.console.line(f"compile took about {seconds:.1f} s (the first metrics window less its steady steps); "
                          f"remembered for the next run's compile decision")

    def run(self) -> Summary:
        """Record what the run is, then train with the console open and the stop signals caught: every rank
        stops at the same step boundary when any rank got a signal (``any_rank`` all-reduces once every
        ``log_interval`` steps, so the other steps have no collective and no device sync)."""
        t, layout = self.t, self.layout
        self.write_layout()
        trackers = open_trackers(self.cfg.logger, self.run_dir, self.writer.record) if layout.is_main else None
        if trackers is not None:
            self.writer.subscribe(trackers)  # TensorBoard, W&B, trackio, MLflow: what the run directory records
        self.writer.update(status="running", **self.record)
        self.start = time.perf_counter()
        # Rank 0 owns the console and train.log; every other rank logs the same lines quietly to rank{N}.log.
        log_path = self.run_dir / ("train.log" if layout.is_main else f"rank{layout.rank}.log")
        log = open_nofollow(log_path, "a")  # a train.log planted as a symlink is refused, never appended through
        with RunConsole(log, t.max_iters, live=self.cfg.run.progress and layout.is_main) as console, \
                StopSignals(agree=self.par.any_rank if layout.world > 1 else None, every=t.log_interval) as stop:
            self.console = console
            console.console.quiet = not layout.is_main
            self.announce()
            return self.train_until_done(stop)

    def announce(self) -> None:
        record, data = self.record, self.data
        self.console.line(
            f"{self.cfg.model.name}: {record['n_params'] / 1e6:.2f}M parameters, {self.precision} on "
            f"{record['layout']}, {hardware.describe(self.device)}, data {data.name} ({data.origin}, "
            f"{data.vocab_size} symbols), run dir {self.run_dir}")
        if self.precision_probe is not None:
            self.console.line(self.precision_probe.describe())
        if self.compile_decision is not None and self.compile_decision.saves_s is not None:  # a GPU's estimate
            self.console.line(self.compile_decision.describe())
        if self.layout.is_main and (warning := hardware.precision_warning(self.precision, self.device, self.cache)):
            self.console.line(warning)

    def train_until_done(self, stop: StopSignals) -> Summary:
        t, par = self.t, self.par
        # nan_policy: a non-finite update is noted on the device and read at the next metrics line, evaluation
        # or checkpoint (stop), or read every step (skip_step, which must decide before the update).
        # (its failure message names the checkpointer's last good state, read when it fails, after ckpt exists)
        self.guard = NonFiniteGuard(t.nan_policy, self.writer, self.scaler.is_enabled(),
                                    replicas_mean=par.mean_over_replicas, agree=par.max_over_ranks,
                                    precision=self.precision, last_good=lambda: ckpt.last_good)
        # Resume (train.resume / resume=PATH) restores model, optimizer, scaler, RNG and progress in place.
        ckpt = Checkpointer(self.run_dir, self.cfg, self.data.tokenizer.describe(), self.model, self.optimizers,
                            self.scaler, self.writer, say=self.console.line, before_save=self.guard.check)
        self.resumed = resumed = ckpt.restore()
        self.guard.skipped = resumed.skipped_steps
        self.best_val = resumed.best_val_loss
        # The steps the budgets allow (the lr schedule spans them), the time budget and the early stops.
        stopper = Stopper(t, self.tokens_per_step, self.flops_per_token, self.best_val,
                          agree=lambda value: process_group.broadcast_object(self.layout, value))
        if resumed.step == 0:
            self.evaluate(0)
        self.window_start, self.eval_seconds, step = time.perf_counter(), 0.0, resumed.step
        for step in range(resumed.step + 1, stopper.steps + 1):
            if stop.requested():  # SIGTERM/SIGINT/SIGHUP/SIGUSR2: save the last completed step, then stop
                saved = ckpt.save(self.progress(step - 1), "signal") or ckpt.wait()  # or the step's background save
                raise Interrupted(stop.signum, step - 1, saved, ckpt.last_good, self.run_dir)
            lr = self.optimizers.set_lr(stopper.schedule_step(step - 1), stopper.steps)
            grad_norm = self.step(step)
            if step % t.log_interval == 0 or step == stopper.steps:
                self.log_window(step, lr, grad_norm)
                stopper.after_log(time.perf_counter() - self.start)
            last = step == stopper.steps or stopper.stopping
            val_loss = self.evaluate(step, final=last) if step % t.eval_interval == 0 or last else None
            if val_loss is not None:
                stopper.after_eval(val_loss)
            ckpt.after_step(self.progress(step), val_loss, final=last or stopper.stopping)
            if stopper.stopping:
                break
        ckpt.wait()  # train.async_checkpoint: the last background save is published before the run ends
        if stopper.stop_reason != "max_iters":  # a budget or an early stop ended the run
            self.writer.event("early_stop", step=step, stop_reason=stopper.stop_reason)
            self.console.line(f"stopped at step {step}: {stopper.describe()}")
        return self.summarize(step, stopper)

    def progress(self, step: int) -> TrainState:
        resumed = self.resumed
        return TrainState(step, resumed.tokens + (step - resumed.step) * self.tokens_per_step, self.best_val,
                          self.guard.skipped)

    def step(self, step: int) -> torch.Tensor:
        """One optimizer update over this rank's micro-batches of global batch ``step``; the gradient norm."""
        t, par = self.t, self.par
        step_loss = self.pipeline_forward_backward(step) if par.schedule is not None else \
            self.forward_backward(step)
        par.finish_gradients()
        self.optimizers.unscale_(self.scaler)
        grad_norm = par.clip_grad_norm(t.grad_clip)
        if not self.guard.observe(step, step_loss, grad_norm):  # True only under skip_step, for a non-finite update
            self.optimizers.step(self.scaler)
            self.loss_sum += step_loss
        self.scaler.update()
        self.optimizers.zero_grad()
        self.window_steps += 1
        return grad_norm

    def forward_backward(self, step: int) -> torch.Tensor:
        """This rank's ``grad_accum`` micro-steps of global batch ``step``; the step's mean loss."""
        t = self.t
        step_loss = torch.zeros((), device=self.device)
        for micro in range(t.grad_accum):
            index = self.first_micro + micro
            x, y = self.train_batches.get(step, start=index * t.batch_size, count=t.batch_size)
            process_group.seed_micro_batch(t.seed, step, index, self.device)  # dropout masks
            # Gradients are synchronised across replicas only on the last micro-step.
            loss = self.par.forward_backward(x, y, 1 / t.grad_accum, micro == t.grad_accum - 1, self.autocast,
                                             self.scaler)
            step_loss += loss / t.grad_accum
        return step_loss

    def pipeline_forward_backward(self, step: int) -> torch.Tensor:
        """A pipeline takes this rank's ``grad_accum`` micro-batches of global batch ``step`` (contiguous sequences)
        in one schedule step; dropout draws from one seed per step (the pieces of a stage share its generator)."""
        t = self.t
        x, y = self.train_batches.get(step, start=self.first_micro * t.batch_size, count=t.grad_accum * t.batch_size)
        process_group.seed_micro_batch(t.seed, step, self.first_micro, self.device)
        return self.par.pipeline_forward_backward(x, y, self.autocast)

    def log_window(self, step: int, lr: float, grad_norm: torch.Tensor) -> None:
        """The metrics line of the steps since the last one: the only place the loop waits for the device."""
        self.guard.check()
        self.last_loss = self.guard.window_mean(self.par.mean_over_replicas(self.loss_sum).item(), self.window_steps)
        elapsed = time.perf_counter() - self.window_start - self.eval_seconds
        self.train_time += elapsed
        self.steps_timed += self.window_steps
        tok_per_s = self.window_steps * self.tokens_per_step / elapsed
        if self.compile_clock is not None and (
                compiled_s := self.compile_clock.window(elapsed, self.window_steps)) is not None:
            self.remember_compile(step, compiled_s)
        mem, peak_mem = self.par.max_over_ranks(list(hardware.memory_gb(self.device)))  # the busiest rank's
        mfu = self.flops_per_token * tok_per_s / self.peak
        self.writer.log("train", step=step, tokens=step * self.tokens_per_step, loss=self.last_loss, lr=lr,
                        grad_norm=grad_norm.item(), tok_per_s=tok_per_s, step_ms=1000 * elapsed / self.window_steps,
                        mfu=mfu, mem_gb=mem, peak_mem_gb=peak_mem, est_peak_mem_gb=self.expected_peak_gb,
                        elapsed_s=time.perf_counter() - self.start, skipped_steps=self.guard.skipped)
        self.writer.progress(step=step)
        self.console.progress(step, step, f"loss {self.last_loss:.4f} | {tok_per_s:,.0f} tok/s | mfu {mfu:.1%}")
        self.window_start, self.eval_seconds, self.window_steps = time.perf_counter(), 0.0, 0
        self.loss_sum = torch.zeros((), device=self.device)

    def evaluate(self, step: int, final: bool = False) -> float:
        """Both splits' loss and bits per byte (and the tasks when due), logged; its time is kept out of the
        training throughput."""
        self.guard.check()  # a non-finite update since the last check stops the run here
        eval_start = time.perf_counter()
        t = self.t
        losses = evaluate(self.par, self.eval_splits, t.eval_iters, t.batch_size, t.grad_accum, self.autocast,
                          self.token_bytes)
        self.best_val = min(self.best_val, losses["val_loss"])
        tasks = self.score_tasks(step, final)
        self.writer.log("eval", step=step, tokens=step * self.tokens_per_step, **losses, **tasks,
                        elapsed_s=time.perf_counter() - self.start)
        self.console.line(f"eval step {step}: train loss {losses['train_loss']:.4f}, val loss "
                          f"{losses['val_loss']:.4f}, val {losses['val_bpb']:.4f} bits/byte")
        self.eval_seconds += time.perf_counter() - eval_start
        return losses["val_loss"]

    def score_tasks(self, step: int, final: bool) -> dict[str, float]:
        """eval.tasks where due: each task's numbers in a "tasks" event and on the console, their mean as the eval
        line's task_* fields (none when not due)."""
        if self.tasks is None or not self.tasks.due(step, final):
            return {}
        start = time.perf_counter()
        self.task_results = results = self.tasks.run()
        self.writer.event("tasks", step=step, tasks=results)
        for name, r in results.items():
            self.console.line(f"task {name} step {step}: acc {r['acc']:.4f} (95% {r['acc_low']:.3f}-"
                              f"{r['acc_high']:.3f}), acc_norm {r['acc_norm']:.4f}, centered {r['centered']:.4f}, "
                              f"{r['items']} items")
        mean = {f"task_{key}": value for key, value in macro_mean(results).items()}
        return {**mean, "task_seconds": time.perf_counter() - start}

    def write_layout(self, **per_rank) -> None:
        """layout.json: how the model and the optimizer state are split over the ranks (collective)."""
        self.par.write_layout(self.run_dir, optimizers=self.optimizers.describe(), **per_rank)

    def summarize(self, step: int, stopper: Stopper) -> Summary:
        tok_per_s = self.steps_timed * self.tokens_per_step / self.train_time if self.train_time else 0.0
        if self.flops_per_token * tok_per_s > self.peak and self.device.type == "cpu":  # a peak read on a busy machine
            self.peak = self.layout.world * hardware.remeasured_peak(
                self.device, hardware.matmul_precision(self.device, self.precision), self.cache)
        rank_peak_gb = hardware.memory_gb(self.device)[1]
        self.write_layout(peak_mem_gb=rank_peak_gb)  # each rank's peak; the summary has the max
        summary = Summary(
            status="completed", steps=step, tokens=self.progress(step).tokens, best_val_loss=self.best_val,
            final_train_loss=self.last_loss, tok_per_s=tok_per_s, mfu=self.flops_per_token * tok_per_s / self.peak,
            peak_mem_gb=self.par.max_over_ranks([rank_peak_gb])[0], elapsed_s=time.perf_counter() - self.start,
            skipped_steps=self.guard.skipped, stop_reason=stopper.stop_reason,
            tasks=self.task_results and {"results": self.task_results, "interval": self.tasks.interval,
                                         "seconds": round(self.tasks.seconds, 3)},
        )
        self.console.summary(f"{self.cfg.run.name}: completed", {
            "stopped by": stopper.describe(),
            "best val loss": f"{summary.best_val_loss:.4f}",
            "final train loss": f"{summary.final_train_loss:.4f}",
            "time": f"{summary.elapsed_s:.1f} s",
            "tokens/s": f"{summary.tok_per_s:,.0f}",
            "MFU": f"{summary.mfu:.2%} of {self.peak / 1e9:,.0f} GFLOP/s ({self.precision})",
            "peak memory": f"{summary.peak_mem_gb:.2f} GB",
            **{f"task {name}": f"acc {r['acc']:.4f}, acc_norm {r['acc_norm']:.4f}, centered {r['centered']:.4f} "
                               f"({r['items']} items)" for name, r in self.task_results.items()},
            "run dir": str(self.run_dir),
        })
        return summary
