"""Every parallel layout is real: each trains through the real CLI (torchrun, gloo, 2 or 4 processes) and
matches the single-process run on the same global batch — loss at every step, eval losses, the multiple-choice
task's scores (eval.tasks: each rank scores its share of the items) and final parameters — and its layout.json
shows the sharding (each rank's local parameter shapes), the optimizers and each rank's peak memory. MFU is the
group's: tokens/s x FLOPs per token over world x one rank's peak.

One single-process reference (batch 4 x accumulation 2 = 8 sequences a step) serves every layout: each
layout below also trains on 8 sequences a step (dp x batch_size x grad_accum), split its own way.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import compose_config, run_cli

from nanogpt_runner.checkpoint.folder import resolve
from nanogpt_runner.checkpoint.state import load_model_state
from nanogpt_runner.config.schema import DeviceCaps
from nanogpt_runner.config.validate import layout_problems, layout_warnings, validate
from nanogpt_runner.distributed.parallelize import LAYOUT_FILE
from nanogpt_runner.runs.rundir import find_runs, read_run

STEPS = 12
TASK = Path(__file__).parents[1] / "tasks" / "tiny_mc.jsonl"
SCORES = ("items", "acc", "acc_norm", "acc_token")  # counts of right answers: the same however the items are split


def _base(root: Path, corpus: Path) -> list[str]:
    return [
        "model=tiny", f"train.max_iters={STEPS}", "train.eval_interval=6", "train.eval_iters=2", "train.log_interval=1",
        "train.precision=fp32", "optimizer.warmup_iters=2", "run.progress=false", f"data.path={corpus}",
        f"data.cache_dir={root / 'cache'}", f"run.root={root / 'outputs'}", f"eval.tasks=[{TASK}]",
        f"eval.task_interval={STEPS}",
    ]


def _train(root: Path, corpus: Path, name: str, overrides: list[str]) -> Path:
    result = run_cli(_base(root, corpus) + overrides + [f"run.name={name}"], cwd=root)
    runs = [r for r in find_runs(root / "outputs") if r.name.endswith(f"_{name}")]
    detail = "\n".join((r / "run.json").read_text() for r in runs)
    assert result.returncode == 0, result.stderr[-3000:] + detail[-3000:]
    [run_dir] = runs
    return run_dir


def _curves(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    train, val = {}, {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "train":
            train[record["step"]] = record["loss"]
        elif record["kind"] == "eval":
            val[record["step"]] = record["val_loss"]
    return train, val


def _task_scores(run_dir: Path) -> dict[int, dict]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: {k: e["tasks"]["tiny_mc"][k] for k in SCORES} for e in events if e.get("event") == "tasks"}


def _final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    path, meta = resolve(run_dir, "latest", announce=lambda _m: None)
    return load_model_state(path, meta)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, corpus_path) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("parallel"), corpus_path


@pytest.fixture(scope="module")
def reference(workspace):
    root, corpus = workspace
    run_dir = _train(root, corpus, "single", ["train.batch_size=4", "train.grad_accum=2"])
    return _curves(run_dir), _final_params(run_dir), _task_scores(run_dir)


# name: (overrides, world size, check of rank -> local shapes)
def _full(shapes, rank):
    assert shapes["blocks.0.attn.query.weight"] == [32, 32] and shapes["tok_emb.weight"] == [65, 32]


def _fsdp(shapes, rank):
    assert shapes["blocks.0.attn.query.weight"] == [16, 32] and shapes["blocks.1.mlp.fc.weight"] == [64, 32]
    assert shapes["tok_emb.weight"][0] == (33 if rank == 0 else 32)  # 65 rows, sharded on dim 0


def _tp(shapes, rank):
    assert shapes["blocks.0.attn.query.weight"] == [16, 32]  # column-wise: one of the two heads
    assert shapes["blocks.0.attn.proj.weight"] == [32, 16]  # row-wise
    assert shapes["blocks.1.mlp.fc.weight"] == [64, 32] and shapes["blocks.1.mlp.proj.weight"] == [32, 64]
    # The vocabulary is sharded over tp: the embedding and the head tied to it hold 33 and 32 of the 65 rows each.
    assert shapes["tok_emb.weight"] == [33 if rank == 0 else 32, 32] and "lm_head.weight" not in shapes
    assert shapes["pos_emb.weight"] == [32, 32]  # position embeddings replicated


def _fsdp_tp(shapes, rank):
    assert shapes["blocks.0.attn.query.weight"] == [8, 32]  # tp halves the rows, fsdp halves them again
    assert shapes["blocks.0.attn.proj.weight"] == [16, 16]
    assert shapes["tok_emb.weight"][0] < 33  # the vocabulary's rows split by tp, then by fsdp


def _stages(shapes, stage):
    blocks = {name.split(".")[1] for name in shapes if name.startswith("blocks.")}
    assert blocks == {str(stage)}
    assert ("tok_emb.weight" in shapes) == (stage == 0) and ("lm_head.weight" in shapes) == (stage == 1)


def _pp(shapes, rank):
    _stages(shapes, rank)


def _ddp_pp(shapes, rank):
    _stages(shapes, rank // 2)  # mesh (pp, dp): ranks 0-1 stage 0, ranks 2-3 stage 1


def _fsdp_pp(shapes, rank):
    _stages(shapes, rank // 2)
    tied = shapes["tok_emb.weight"] if rank < 2 else shapes["lm_head.weight"]
    assert tied == [33 if rank % 2 == 0 else 32, 32]  # each stage's copy of the tied weight, sharded over dp


LAYOUTS = {
    "ddp": (["parallel=ddp", "train.batch_size=2", "train.grad_accum=2"], 2, _full),
    "fsdp": (["parallel=fsdp", "train.batch_size=2", "train.grad_accum=2"], 2, _fsdp),
    "tp": (["parallel=tp", "train.batch_size=4", "train.grad_accum=2"], 2, _tp),
    "pp_gpipe": (["parallel=pp", "parallel.pp_schedule=gpipe", "train.batch_size=4", "train.grad_accum=2"], 2, _pp),
    "pp_1f1b": (["parallel=pp", "parallel.pp_schedule=1f1b", "train.batch_size=4", "train.grad_accum=2"], 2, _pp),
    "fsdp_tp": (["parallel=fsdp_tp", "train.batch_size=2", "train.grad_accum=2"], 4, _fsdp_tp),
    "ddp_pp": (["parallel=ddp_pp", "train.batch_size=2", "train.grad_accum=2"], 4, _ddp_pp),
    "fsdp_pp": (["parallel=ddp_pp", "parallel.dp=fsdp", "train.batch_size=2", "train.grad_accum=2"], 4, _fsdp_pp),
}


def _check_mfu_is_the_groups(run_dir: Path, run: dict, cache: Path) -> None:
    """Each train line's MFU = tokens/s x FLOPs per token / (world x the peak of one rank's threads)."""
    threads = re.search(r"\((\d+) threads\)", run["device_name"]).group(1)
    peaks = json.loads((cache / "peak_flops.json").read_text())
    [rank_peak] = [flops for key, flops in peaks.items() if key.startswith("cpu|") and f"|{threads}|fp32|" in key]
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "train":
            expected = run["flops_per_token"] * record["tok_per_s"] / (run["world_size"] * rank_peak)
            assert math.isclose(record["mfu"], expected, rel_tol=1e-6), (record["mfu"], expected)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process_and_shards(name, workspace, reference):
    (ref_train, ref_val), ref_params, ref_scores = reference
    overrides, world, check_shapes = LAYOUTS[name]
    run_dir = _train(*workspace, name, overrides)

    run = read_run(run_dir)
    assert run["status"] == "completed" and run["world_size"] == world
    train, val = _curves(run_dir)
    assert sorted(train) == list(range(1, STEPS + 1)) == sorted(ref_train)
    for step, loss in ref_train.items():
        assert math.isclose(train[step], loss, rel_tol=1e-4), (step, train[step], loss)
    for step, loss in ref_val.items():
        assert math.isclose(val[step], loss, rel_tol=1e-4), (step, val[step], loss)
    assert sorted(ref_scores) == [0, STEPS] and _task_scores(run_dir) == ref_scores

    params = _final_params(run_dir)
    assert set(params) == set(ref_params)
    for key, value in ref_params.items():
        torch.testing.assert_close(params[key], value, rtol=1e-4, atol=1e-5, msg=key)

    layout = json.loads((run_dir / LAYOUT_FILE).read_text())
    assert [r["rank"] for r in layout["ranks"]] == list(range(world))
    for record in layout["ranks"]:
        check_shapes(record["params"], record["rank"])
        # One fused AdamW per device mesh: tp's plain tensors and DTensors (fsdp x tp: 1-D and 2-D) are two.
        assert [(o["optimizer"], o["fused"]) for o in record["optimizers"]] == [("AdamW", True)] * (
            2 if "tp" in name else 1), record["optimizers"]
    # A pipeline runs a step's 2 micro-batches as one schedule step of 2 x 2 pieces (one fill and drain per step).
    assert layout.get("pipeline_pieces_per_step") == (4 if "pp" in name else None)
    assert sorted(p.name for p in run_dir.glob("rank*.log")) == [f"rank{r}.log" for r in range(1, world)]

    rank_peaks = [record["peak_mem_gb"] for record in layout["ranks"]]
    assert all(peak > 0 for peak in rank_peaks)
    assert math.isclose(run["summary"]["peak_mem_gb"], max(rank_peaks))  # the busiest rank's
    _check_mfu_is_the_groups(run_dir, run, workspace[0] / "cache")


DROPOUT = ["model.dropout=0.2", "train.batch_size=2"]


@pytest.fixture(scope="module")
def dropout_single(workspace) -> dict[int, float]:
    return _curves(_train(*workspace, "dropout_single", DROPOUT + ["train.grad_accum=4"]))[0]


@pytest.mark.parametrize("layout", ["ddp", "fsdp"])
def test_dropout_masks_follow_the_micro_batch_so_data_parallel_equals_single(layout, workspace, reference,
                                                                           dropout_single):
    """Each micro-batch of the global batch draws its own masks (not the same masks on every rank), so a
    data-parallel run with dropout equals one process taking the same micro-batches in turn."""
    (ref_train, _), _, _ = reference
    replicas = _curves(_train(*workspace, f"dropout_{layout}", DROPOUT + [f"parallel={layout}", "train.grad_accum=2"]))
    for step, loss in dropout_single.items():
        assert math.isclose(replicas[0][step], loss, rel_tol=1e-4), (step, replicas[0][step], loss)
    assert not math.isclose(dropout_single[1], ref_train[1], rel_tol=1e-4)  # dropout really changed the loss


LAYOUT_CASES = [
    # (overrides, a phrase the refusal must contain; None: the layout is accepted)
    (["parallel=ddp"], None),
    (["parallel=fsdp_tp"], None),
    (["parallel=ddp_pp", "train.batch_size=4"], None),
    (["parallel=ddp_pp", "parallel.dp=fsdp", "train.batch_size=4"], None),
    (["parallel=ddp", "parallel.nproc_per_node=3", "parallel.tp=2"], "not a multiple of tp*pp"),
    (["parallel=tp", "parallel.nproc_per_node=4"], "parallel.dp=none but world size 4"),
    (["parallel=tp", "parallel.tp=3", "parallel.nproc_per_node=3"], "model.n_head=2 is not divisible by parallel.tp=3"),
    (["parallel=fsdp_tp", "parallel.dp=ddp"], "DDP does not compose"),
    (["parallel=pp", "parallel.pp=3", "parallel.nproc_per_node=3"], "n_layer=2 is not divisible by parallel.pp=3"),
    (["parallel=pp", "train.batch_size=3"], "not divisible by parallel.microbatches=2"),
    (["parallel=pp", "parallel.microbatches=1"], "needs parallel.microbatches >= pp"),
    (["parallel=pp", "parallel.tp=2", "parallel.nproc_per_node=4"], "tp>1 together with parallel.pp>1"),
    (["parallel=ddp", "parallel.backend=nccl"], "backend=nccl needs CUDA"),
    (["parallel=ddp", "parallel.nnodes=2"], "needs parallel.rdzv_endpoint"),
    (["parallel=fsdp", "train.precision=fp16", "train.device=cuda"], "fp16 needs loss scaling"),
]


@pytest.mark.parametrize(("overrides", "phrase"), LAYOUT_CASES)
def test_validate_refuses_impossible_layouts_with_the_reason(overrides, phrase, tiny_overrides):
    from nanogpt_runner.config.schema import DeviceCaps

    cfg = compose_config(tiny_overrides + overrides)
    problems = validate(cfg, DeviceCaps(kind="cpu", bf16=True, cuda_available=False))
    layout = layout_problems(cfg)
    if phrase is None:
        assert problems == [] and layout == []
    else:
        assert any(phrase in p for p in problems), problems


GPU = DeviceCaps(kind="cuda", bf16=True, cuda_available=True)
PRE_AMPERE_GPU = DeviceCaps(kind="cuda", bf16=False, cuda_available=True)


@pytest.mark.parametrize("layout", ["fsdp", "tp", "pp"])
def test_gloo_on_gpus_is_refused_where_its_collectives_cannot_run(layout, tiny_overrides):
    cfg = compose_config(tiny_overrides + [f"parallel={layout}", "parallel.backend=gloo"])
    assert any("backend=gloo on CUDA GPUs" in p for p in validate(cfg, GPU))
    assert validate(compose_config(tiny_overrides + [f"parallel={layout}", "parallel.backend=nccl"]), GPU) == []
    assert validate(compose_config(tiny_overrides + ["parallel=ddp", "parallel.backend=gloo"]), GPU) == []


def test_precision_auto_is_checked_as_what_it_resolves_to(tiny_overrides):
    """On a GPU without bf16, auto means fp16, which the sharded layouts cannot scale."""
    cfg = compose_config([o for o in tiny_overrides if "precision" not in o] + ["parallel=pp"])
    assert any("precision=auto picks fp16" in p for p in validate(cfg, PRE_AMPERE_GPU))
    assert validate(cfg, GPU) == []


def test_oversubscribing_the_cores_is_a_warning_not_an_error(tiny_overrides):
    cfg = compose_config(tiny_overrides + ["parallel=fsdp_tp"])
    assert layout_problems(cfg) == []
    assert "4 ranks x 1 threads on 2 CPU cores" in layout_warnings(cfg, cpu_count=2)[0]
    assert layout_warnings(compose_config(tiny_overrides + ["parallel=ddp"]), cpu_count=2) == []


def test_a_bad_layout_from_the_cli_is_one_clear_line_and_no_traceback(tmp_path, tiny_overrides):
    result = run_cli(tiny_overrides + ["parallel=tp", "parallel.tp=3", "parallel.nproc_per_node=3"], cwd=tmp_path)
    assert result.returncode == 2 and "not divisible by parallel.tp=3" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
