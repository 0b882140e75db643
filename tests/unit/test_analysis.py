"""nanogpt_runner.analysis.records: a run's numbers and what they mean, in words a user can act on."""

from __future__ import annotations

import math
import statistics

import pytest

from nanogpt_runner.analysis.comparison import closest_pairs, compare_notes, seed_groups
from nanogpt_runner.analysis.records import RunRecord, differing_keys, diverged_at, load_runs, run_notes, summarize
from nanogpt_runner.runs.rundir import RunWriter
from nanogpt_runner.viewer.synthetic import config, write_run


def record_of(run_dir) -> RunRecord:
    """The run fully read, as nanogpt-report reads it."""
    [record] = [r for r in load_runs(run_dir.parent) if r.path == run_dir]
    return record


def test_a_completed_run_is_summarized_from_the_trainers_own_summary(tmp_path):
    write_run(tmp_path / "a", 100, tok_per_s=12345.0).close()
    summary = summarize(record_of(tmp_path / "a"))
    assert summary["status"] == "completed"
    assert summary["steps"] == 100
    assert summary["tok_per_s"] == 12345.0
    assert summary["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in record_of(tmp_path / "a").metrics.eval))


def test_a_running_run_is_summarized_from_its_metrics(tmp_path):
    writer = write_run(tmp_path / "a", 60, status="running", eval_every=20)
    summary = summarize(record_of(tmp_path / "a"))
    writer.close()
    assert summary["status"] == "running"
    assert summary["steps"] == 60
    assert summary["elapsed_s"] == pytest.approx(0.6)
    assert summary["peak_mem_gb"] == pytest.approx(0.55)
    assert summary["best_val_loss"] is not None and summary["last_train_loss"] is not None


def test_without_loaded_metrics_the_newest_train_line_is_enough_for_the_table(tmp_path):
    record = RunRecord("a", tmp_path, {"name": "a", "status": "running"}, metrics=None,
                       last_train={"kind": "train", "step": 7, "loss": 2.5, "tok_per_s": 100.0})
    summary = summarize(record)
    assert (summary["steps"], summary["last_train_loss"], summary["tok_per_s"]) == (7, 2.5, 100.0)
    assert summary["best_val_loss"] is None


def test_time_to_target_is_the_elapsed_time_of_the_first_eval_at_or_below_it(tmp_path):
    write_run(tmp_path / "a", 100, eval_every=10).close()
    record = record_of(tmp_path / "a")
    evals = record.metrics.eval
    target = evals[4]["val_loss"]  # val loss falls monotonically in the synthetic run
    assert summarize(record, target)["time_to_target_s"] == pytest.approx(evals[4]["elapsed_s"])
    assert summarize(record, 0.01)["time_to_target_s"] is None


def test_a_nan_loss_is_a_divergence_and_is_named_with_its_step(tmp_path):
    write_run(tmp_path / "a", 50, status="failed", diverge_at=30).close()
    record = record_of(tmp_path / "a")
    assert diverged_at(record) == 30
    assert run_notes(record)[0].startswith("diverged: the loss became non-finite (NaN/inf) at step 30")
    assert summarize(record)["diverged_at"] == 30


def test_a_line_without_a_loss_is_not_a_divergence(tmp_path):
    writer = RunWriter(tmp_path / "a", {"name": "a", "status": "running"})
    writer.update()
    for step in range(1, 6):
        writer.log("train", step=step, loss=3.0 - step * 0.1)
    writer.log("train", step=6, note="a line some other tool wrote")
    writer.close()
    assert diverged_at(record_of(tmp_path / "a")) is None


def test_a_falling_loss_is_converging_and_a_flat_one_plateaued(tmp_path):
    write_run(tmp_path / "fast", 60, rate=1.0).close()
    write_run(tmp_path / "flat", 2000, rate=3.0).close()
    assert run_notes(record_of(tmp_path / "fast"))[0].startswith("converging: train loss fell")
    assert run_notes(record_of(tmp_path / "flat"))[0].startswith("plateaued: train loss moved")


def test_val_loss_rising_while_train_falls_is_overfitting_with_the_step_to_keep(tmp_path):
    write_run(tmp_path / "a", 200, overfit=True, eval_every=20).close()
    notes = run_notes(record_of(tmp_path / "a"))
    overfit = [n for n in notes if n.startswith("overfitting")]
    assert overfit and "checkpoint is the one to keep" in overfit[0]


def test_a_healthy_run_generalizes_and_has_stable_throughput(tmp_path):
    write_run(tmp_path / "a", 100).close()
    notes = run_notes(record_of(tmp_path / "a"))
    assert any(n.startswith("generalizing") for n in notes)
    assert any(n.startswith("throughput stable: ") and n.endswith("tokens/s (±1%).") for n in notes)
    assert notes[-1].startswith("cost: took 1.0 s, 20,000 tokens/s, peak memory 0.55 GB")


def test_throughput_that_swings_is_called_unstable(tmp_path):
    writer = RunWriter(tmp_path / "a", {"name": "a", "status": "running"})
    writer.update()
    for step in range(1, 21):
        writer.log("train", step=step, loss=2.0, tok_per_s=1000.0 if step % 2 else 3000.0)
    writer.close()
    assert any(n.startswith("throughput unstable: 1,000–3,000 tokens/s") for n in run_notes(record_of(tmp_path / "a")))


def test_differing_keys_list_levers_first_and_ignore_where_runs_were_stored(tmp_path):
    write_run(tmp_path / "a", 10, cfg=config(**{"run.root": "/x", "optimizer.lr": 1e-3})).close()
    changed = {"run.root": "/y", "optimizer.lr": 3e-4, "train.recompute": True}
    write_run(tmp_path / "b", 10, cfg=config(**changed)).close()
    assert differing_keys(load_runs(tmp_path)) == ["train.recompute", "optimizer.lr"]


def test_the_closest_pair_puts_the_plain_setting_first(tmp_path):
    write_run(tmp_path / "a", 10, cfg=config(**{"train.recompute": True})).close()
    write_run(tmp_path / "b", 10, cfg=config()).close()
    write_run(tmp_path / "c", 10, cfg=config(**{"model.n_layer": 8, "optimizer.lr": 1.0, "train.grad_clip": 0.5,
                                                 "train.batch_size": 2})).close()
    pairs = closest_pairs(seed_groups(load_runs(tmp_path)))
    assert [(base.runs[0].id, run.runs[0].id, keys) for base, run, keys in pairs] == [("b", "a", ["train.recompute"])]


def test_across_runs_names_the_best_the_fastest_and_what_recomputation_cost(tmp_path):
    write_run(tmp_path / "base", 100, cfg=config(), mem_gb=1.0, tok_per_s=20000.0, start_time=1).close()
    write_run(tmp_path / "recompute", 100, cfg=config(**{"train.recompute": True}), mem_gb=0.75,
              tok_per_s=16000.0, start_time=2).close()
    write_run(tmp_path / "slow_lr", 100, cfg=config(**{"optimizer.lr": 1e-4}), rate=0.3, start_time=3).close()
    runs = load_runs(tmp_path)
    notes = compare_notes(runs, target=2.5)
    assert notes[0].startswith("best val loss: base with")
    assert any(n.startswith("fastest to val loss ≤ 2.5: base in") and "(2 of 3 runs got there)" in n for n in notes)
    effect = next(n for n in notes if n.startswith("train.recompute False → True"))
    assert "peak memory 1.10 GB → 0.83 GB (-25%)" in effect
    assert "tokens/s 20,000 → 16,000 (-20%)" in effect


def test_one_run_has_nothing_to_compare(tmp_path):
    write_run(tmp_path / "a", 10).close()
    assert compare_notes(load_runs(tmp_path)) == []


def test_load_runs_skips_folders_whose_run_json_is_unreadable(tmp_path):
    write_run(tmp_path / "good", 10).close()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    assert [r.id for r in load_runs(tmp_path)] == ["good"]
    assert math.isfinite(summarize(load_runs(tmp_path)[0])["best_val_loss"])


def seeds(root, name: str, floors: list[float], steps: int = 100, **changes):
    """One configuration run once per seed; ``floors`` sets where each seed's loss levels off."""
    for seed, floor in enumerate(floors):
        write_run(root / f"{name}{seed}", steps, cfg=config(**changes, **{"train.seed": seed}), loss_floor=floor,
                  start_time=len(list(root.iterdir())) if root.exists() else 0).close()


def test_runs_that_differ_only_by_seed_form_a_group_with_mean_and_spread(tmp_path):
    seeds(tmp_path, "base", [1.50, 1.52, 1.54])
    seeds(tmp_path, "lr", [1.50, 1.52, 1.54], **{"optimizer.lr": 3e-3})
    groups = seed_groups(load_runs(tmp_path))
    assert [sorted(r.id for r in g.runs) for g in groups] == [["base0", "base1", "base2"], ["lr0", "lr1", "lr2"]]
    loss = groups[0].stats(lambda r: summarize(r)["best_val_loss"])
    assert loss.n == 3 and loss.mean == pytest.approx(statistics.mean(loss.values))
    assert loss.std == pytest.approx(statistics.stdev(loss.values)) and loss.std > 0
    assert loss.mean_std(".3f") == f"{loss.mean:.3f} ± {loss.std:.3f}"


def test_a_difference_inside_the_seed_spread_is_not_called_a_win(tmp_path):
    seeds(tmp_path, "base", [1.50, 1.53, 1.56])
    seeds(tmp_path, "lr", [1.49, 1.52, 1.55], **{"optimizer.lr": 3e-3})
    notes = compare_notes(load_runs(tmp_path))
    effect = next(n for n in notes if n.startswith("optimizer.lr"))
    assert "within the seed noise" in effect
    assert any(n.startswith("seed group") and "over 3 seeds" in n for n in notes)


def test_a_difference_far_outside_the_seed_spread_is_real(tmp_path):
    seeds(tmp_path, "base", [1.50, 1.51, 1.52])
    seeds(tmp_path, "lr", [1.80, 1.81, 1.82], **{"optimizer.lr": 3e-3})
    effect = next(n for n in compare_notes(load_runs(tmp_path)) if n.startswith("optimizer.lr"))
    assert "larger than the seed noise" in effect


def test_one_seed_each_cannot_tell(tmp_path):
    seeds(tmp_path, "base", [1.50])
    seeds(tmp_path, "lr", [1.80], **{"optimizer.lr": 3e-3})
    effect = next(n for n in compare_notes(load_runs(tmp_path)) if n.startswith("optimizer.lr"))
    assert "one seed: cannot tell" in effect


def test_runs_are_compared_at_equal_budgets_not_only_at_their_ends(tmp_path):
    """The longer run's end is not a fair win: at the shorter run's tokens and time, both losses are shown."""
    write_run(tmp_path / "short", 100, cfg=config(), start_time=1).close()
    write_run(tmp_path / "long", 400, cfg=config(**{"train.max_iters": 400}), start_time=2).close()
    effect = next(n for n in compare_notes(load_runs(tmp_path)) if n.startswith("train.max_iters"))
    tokens = 100 * 12 * 32  # the shorter run's tokens (batch 12 x block 32 per step)
    assert f"at equal {tokens:,} tokens: val loss" in effect and "at equal 1.0 s: val loss" in effect
    short, long = (float(x) for x in effect.split(f"at equal {tokens:,} tokens: val loss ")[1].split(";")[0]
                   .split(" → "))
    assert short == pytest.approx(long)  # the same curve: equal at equal tokens


def test_runs_sharing_run_group_are_one_group_whatever_else_differs(tmp_path):
    write_run(tmp_path / "a", 20, cfg=config(**{"run.group": "mine", "optimizer.lr": 1e-3}), start_time=1).close()
    write_run(tmp_path / "b", 20, cfg=config(**{"run.group": "mine", "optimizer.lr": 2e-3}), start_time=2).close()
    write_run(tmp_path / "c", 20, cfg=config(**{"optimizer.lr": 2e-3}), start_time=3).close()
    groups = seed_groups(load_runs(tmp_path))
    assert [(g.label, [r.id for r in g.runs]) for g in groups] == [("mine", ["a", "b"]), ("optimizer.lr=0.002", ["c"])]
