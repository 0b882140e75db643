"""Studies (nanogpt_runner.analysis.study, conf/study/, conf/technique/): the arms a technique study composes, the
card's numbers from the runs' own records, and the scaling fit, all on synthetic runs with known numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from nanogpt_runner.analysis.comparison import compare_notes
from nanogpt_runner.analysis.records import load_runs
from nanogpt_runner.analysis.study import (
    UNSUPPORTED,
    global_batch,
    scaling_card,
    study_kind,
    technique_card,
)
from nanogpt_runner.config.schema import CONF_DIR, DeviceCaps, flatten
from nanogpt_runner.launch import study as launch_study
from nanogpt_runner.runs.rundir import RunWriter
from nanogpt_runner.viewer.synthetic import config, synthetic_loss, write_run

ARMS = sorted(path.stem for path in (CONF_DIR / "technique").glob("*.yaml"))
# What each arm may change against the baseline: its technique, and the micro-batch that keeps the global batch.
CHANGES = {"accum2": {"train.grad_accum", "train.batch_size"}, "accum4": {"train.grad_accum", "train.batch_size"},
           "recompute": {"train.recompute"}, "bf16": {"train.precision"}, "fp16": {"train.precision"},
           "compile": {"train.compile"}, "math_attention": {"model.attention"}}


def composed(arm: str) -> dict:
    cfg = compose_config(["+study=techniques", f"technique={arm}"])
    return flatten(OmegaConf.to_container(cfg, resolve=True))


def test_every_arm_changes_one_thing_at_the_same_global_batch_tokens_and_seed():
    base = composed("baseline")
    assert {"baseline", "accum2", "accum4", "recompute", "bf16", "fp16", "compile", "math_attention", "ddp", "fsdp",
            "tp", "pp", "fsdp_tp", "ddp_pp"} <= set(ARMS)
    for arm in ARMS:
        arm_cfg = composed(arm)
        changed = {k for k in base.keys() | arm_cfg.keys() if not k.startswith(("study.", "run."))
                   and base.get(k) != arm_cfg.get(k)}
        assert arm_cfg["study.arm"] == arm
        assert global_batch(arm_cfg) == global_batch(base) == base["study.global_batch"], arm
        assert (arm_cfg["train.max_iters"], arm_cfg["train.seed"]) == (base["train.max_iters"], base["train.seed"])
        if arm == "baseline":
            assert not changed
        elif arm in CHANGES:
            assert changed and changed <= CHANGES[arm], (arm, changed)
        else:  # a layout: the parallel group, and the micro-batch its replicas split the global batch into
            assert "parallel.name" in changed and all(k.startswith("parallel.") or k == "train.batch_size"
                                                      for k in changed), (arm, changed)


def test_the_study_sweeps_seeds_in_rounds_of_every_arm():
    cfg = compose_config(["+study=techniques"])
    params = dict(OmegaConf.to_container(sweeper_params("techniques")))
    assert list(params) == ["train.seed", "technique"]  # the first varies slowest: a round of every arm per seed
    assert params["technique"] == "glob(*)" and params["train.seed"] == "0,1"
    assert cfg.study.kind == "techniques"


def sweeper_params(study: str):
    """The sweep a study preset asks Hydra's sweeper for (hydra.sweeper.params), in its order."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[f"+study={study}"], return_hydra_config=True
                       ).hydra.sweeper.params


def test_an_arm_the_machine_cannot_run_is_named_with_its_reason(monkeypatch):
    monkeypatch.setattr("nanogpt_runner.perf.hardware.device_caps",
                        lambda requested="auto": DeviceCaps(kind="cpu", bf16=True, cuda_available=False))
    monkeypatch.setattr(launch_study, "available_cores", lambda: 2)
    monkeypatch.setattr("nanogpt_runner.perf.hardware.cpu_reports_native_bf16", lambda: False)
    reason = {arm: launch_study.unsupported_reason(compose_config(["+study=techniques", f"technique={arm}"]))
              for arm in ("baseline", "ddp", "fp16", "fsdp_tp", "bf16")}
    assert reason["baseline"] is None and reason["ddp"] is None
    assert reason["bf16"].startswith("train.precision=bf16 on a CPU without native bf16")
    assert reason["fp16"].startswith("train.precision=fp16 on the CPU")
    assert reason["fsdp_tp"] == ("parallel=fsdp_tp needs 4 processes, and this machine has 2 CPU cores: run the "
                                 "study where there are 4")
    assert launch_study.unsupported_reason(compose_config([])) is None  # not a study: nothing to refuse here


def study_config(arm: str, seed: int, **changes) -> dict:
    return config(**{"study.kind": "techniques", "study.arm": arm, "train.seed": seed, **changes})


def write_study(root, arms: dict[str, dict], seeds=(0, 1)) -> None:
    """Each arm over ``seeds``: ``arms[name]`` holds write_run's numbers and config changes of that arm."""
    for seed in seeds:
        for name, numbers in arms.items():
            numbers = dict(numbers)
            changes = numbers.pop("changes", {})
            floor = numbers.pop("loss_floor", 1.5) + 0.02 * seed  # the seed moves every arm's loss alike
            write_run(root / f"{name}_{seed}", 100, cfg=study_config(name, seed, **changes), loss_floor=floor,
                      **numbers).close()


def test_the_card_numbers_come_from_the_runs_own_records(tmp_path):
    write_study(tmp_path, {
        "baseline": {"tok_per_s": 20000.0, "mem_gb": 1.0},
        "recompute": {"tok_per_s": 15000.0, "mem_gb": 0.6, "changes": {"train.recompute": True}},
        "bf16": {"tok_per_s": 30000.0, "mem_gb": 0.8, "loss_floor": 1.8, "changes": {"train.precision": "bf16"}},
    })
    runs = load_runs(tmp_path)
    assert study_kind(runs) == "techniques"
    card = technique_card(runs)
    arms = {arm.arm: arm for arm in card.arms}
    recompute, bf16 = arms["recompute"], arms["bf16"]
    assert card.baseline_seeds == [0, 1] and card.tokens == 100 * 12 * 32
    assert recompute.change == "train.recompute False → True" and recompute.seeds == [0, 1]
    assert recompute.speed.mean == pytest.approx(0.75) and recompute.speed.half_width == pytest.approx(0.0)
    assert recompute.memory.mean == pytest.approx(0.6) and recompute.memory_estimate == pytest.approx(0.6)
    assert recompute.step_time.mean == pytest.approx(20000 / 15000, rel=0.02)
    assert recompute.loss_delta.mean == pytest.approx(0.0) and recompute.loss_verdict == "unchanged"
    # The seed noise: 2 x the standard error of a difference of two 2-seed means of the baseline's losses.
    base_losses = [synthetic_loss(100, 1.5 + 0.02 * s, 1.0) + 0.05 for s in (0, 1)]
    assert recompute.loss_noise == pytest.approx(2 * np.std(base_losses, ddof=1) * math.sqrt(2 / 2))
    assert card.target_loss == pytest.approx(max(base_losses))
    assert recompute.time_to_target.mean == pytest.approx(1.0) and recompute.reached_target == "2 of 2 seeds"
    assert recompute.sentence() == "recompute: 0.60x memory, 0.75x speed, loss unchanged (Δ +0.000 ± 0.000)"
    delta = synthetic_loss(100, 1.8, 1.0) - synthetic_loss(100, 1.5, 1.0)
    assert bf16.loss_delta.mean == pytest.approx(delta) and bf16.loss_verdict == "worse"
    assert bf16.sentence() == f"bf16: 0.80x memory, 1.50x speed, loss worse (Δ +{delta:.3f} ± 0.000)"
    assert bf16.reached_target == "0 of 2 seeds" and bf16.time_to_target is None
    rows = {row["arm"]: row for row in card.rows()}
    assert rows["recompute"]["tok_per_s_ratio"] == pytest.approx(0.75) and rows["bf16"]["loss"] == "worse"
    assert "| recompute | train.recompute False → True | 0.75x ± 0.00 slower |" in card.markdown()


def test_a_speed_inside_the_runs_own_noise_is_within_noise_and_one_seed_cannot_tell(tmp_path):
    write_study(tmp_path, {
        "baseline": {"tok_per_s": 20000.0, "speed_wobble": 0.5},
        "compile": {"tok_per_s": 24000.0, "speed_wobble": 0.5, "changes": {"train.compile": True}},
    }, seeds=(0,))
    card = technique_card(load_runs(tmp_path))
    [arm] = card.arms
    assert arm.speed_verdict == "within noise" and arm.loss_verdict == "one seed: cannot tell"
    assert arm.sentence().startswith("compile: 1.00x memory, speed within noise (1.20x, noise ±")
    assert any(note.startswith("one baseline seed") for note in card.notes)
    assert any(note.startswith("the runs' tokens/s windows scatter by ±") for note in card.notes)


def test_an_unsupported_or_unfair_arm_is_listed_not_dropped(tmp_path):
    write_study(tmp_path, {"baseline": {}, "accum2": {"changes": {"train.grad_accum": 2}}}, seeds=(0,))
    writer = RunWriter(tmp_path / "fp16_0", {"config": study_config("fp16", 0, **{"train.precision": "fp16"})})
    writer.update(status=UNSUPPORTED, error="train.precision=fp16 on the CPU: CPUs have no fast fp16 matmul")
    writer.close()
    card = technique_card(load_runs(tmp_path))
    arms = {arm.arm: arm for arm in card.arms}
    assert (arms["fp16"].status, arms["fp16"].reason) == (UNSUPPORTED, "train.precision=fp16 on the CPU: CPUs have "
                                                                       "no fast fp16 matmul")
    assert arms["fp16"].sentence().startswith("fp16: not measured (unsupported: train.precision=fp16 on the CPU")
    assert [arm.arm for arm in card.arms] == ["accum2", "fp16"]  # the measured first
    assert any(note.startswith("accum2 trains a global batch of 24 sequences, the baseline 12") for note in card.notes)


def test_a_throughput_difference_within_the_noise_is_not_reported_as_one(tmp_path):
    """Two learning rates cannot differ in speed: a machine whose load changed is noise, not +237%."""
    write_run(tmp_path / "lr1e-3", 100, cfg=config(**{"optimizer.lr": 1e-3}), tok_per_s=12000.0,
              speed_wobble=0.9, start_time=1).close()
    write_run(tmp_path / "lr3e-3", 100, cfg=config(**{"optimizer.lr": 3e-3}), tok_per_s=40500.0,
              speed_wobble=0.9, start_time=2).close()
    [effect] = [n for n in compare_notes(load_runs(tmp_path)) if n.startswith("optimizer.lr")]
    assert "tokens/s 12,000 → 40,500 (within noise: ±" in effect and "+237%" not in effect
    steady = tmp_path / "steady"
    write_run(steady / "a", 100, cfg=config(), tok_per_s=12000.0, start_time=1).close()
    write_run(steady / "b", 100, cfg=config(**{"train.recompute": True}), tok_per_s=9000.0, start_time=2).close()
    [effect] = [n for n in compare_notes(load_runs(steady)) if n.startswith("train.recompute")]
    assert "tokens/s 12,000 → 9,000 (-25%)" in effect


# Chinchilla's fitted loss (Hoffmann et al. 2022): L = E + A / N^alpha + B / D^beta; the compute-optimal
# N grows as C^(beta / (alpha + beta)) and D as C^(alpha / (alpha + beta)).
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28


def chinchilla(params: float, tokens: float) -> float:
    return E + A / params**ALPHA + B / tokens**BETA


def write_scaling_run(run_dir, budget: float, params: float, steps: int = 10, block: int = 32) -> None:
    """A completed run of ``params`` parameters that spent ``budget`` FLOPs (6 per parameter and token), its
    final val loss Chinchilla's (write_run's curve settles on loss_floor + 0.05 + a fixed wiggle)."""
    batch = max(round(budget / (6 * params) / (steps * block)), 1)
    tokens = batch * steps * block
    wiggle = synthetic_loss(steps, 0.0, 600.0) + 0.05
    cfg = config(**{"study.kind": "scaling", "train.max_flops": budget, "train.batch_size": batch})
    write_run(run_dir, steps, cfg=cfg, rate=600.0, eval_every=steps, loss_floor=chinchilla(params, tokens) - wiggle,
              record={"n_params": params, "flops_per_token": 6 * params}).close()


def optimal_params(budget: float) -> float:
    scale = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    return scale * (budget / 6) ** (BETA / (ALPHA + BETA))


def test_the_scaling_fit_recovers_chinchillas_exponents(tmp_path):
    for budget in (1e17, 1e18, 1e19, 1e20):
        for i, params in enumerate(optimal_params(budget) * np.logspace(-0.6, 0.6, 7)):
            write_scaling_run(tmp_path / f"{budget:.0e}_{i}", budget, float(params))
    card = scaling_card(load_runs(tmp_path))
    assert len(card.curves) == 4 and all(not curve.trust for curve in card.curves)
    assert card.params_law.exponent == pytest.approx(BETA / (ALPHA + BETA), abs=0.02)
    assert card.tokens_law.exponent == pytest.approx(ALPHA / (ALPHA + BETA), abs=0.02)
    assert card.loss_law.exponent < 0 and not card.params_law.trust
    for curve in card.curves:
        assert curve.params_opt == pytest.approx(optimal_params(curve.budget), rel=0.15)
    assert any("Chinchilla ~20" in s for s in card.sentences())


def test_an_untrustworthy_scaling_fit_says_why(tmp_path):
    for i, params in enumerate(optimal_params(1e18) * np.logspace(-2.0, -1.0, 4)):  # all far too small
        write_scaling_run(tmp_path / f"edge_{i}", 1e18, float(params))
    for i, params in enumerate((1e6, 1e7)):
        write_scaling_run(tmp_path / f"few_{i}", 1e19, params)
    card = scaling_card(load_runs(tmp_path))
    edge, few = card.curves
    assert edge.trust == "minimum at an edge of the sizes tried: add a larger model"
    assert few.trust == "too few sizes (2; a minimum needs 3)" and few.params_opt is None
    assert card.params_law.exponent is None
    assert card.params_law.text() == ("compute-optimal params: not fitted (0 budgets with a trusted minimum; a line "
                                      "needs 2)")
    assert "not trustworthy: minimum at an edge" in "\n".join(card.sentences())


def test_the_scaling_studys_depth_dial_sets_the_model_and_sweeps_budgets():
    for depth, (embd, heads) in {1: (32, 2), 3: (96, 6)}.items():
        cfg = OmegaConf.to_container(compose_config(["+study=scaling", f"study.depth={depth}"]), resolve=True)
        assert (cfg["model"]["n_layer"], cfg["model"]["n_embd"], cfg["model"]["n_head"]) == (depth, embd, heads)
        assert cfg["model"]["name"] == f"d{depth}" and cfg["study"]["kind"] == "scaling"
    assert list(sweeper_params("scaling")) == ["train.max_flops", "study.depth"]
