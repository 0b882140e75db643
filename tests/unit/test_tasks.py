"""Multiple-choice tasks: the file format and its one-line errors, the offline path of a named task, lm-eval's
context/ending split, the numbers (accuracies, centered, Wilson interval), the config checks, and the scoring's
packing (any batch size or padding gives the same log-likelihoods as one row at a time)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from nanogpt_runner.config.schema import NAMED_TASK_NAMES, EvalConfig
from nanogpt_runner.config.validate import eval_problems
from nanogpt_runner.data.tasks import (
    NAMED_TASKS,
    TaskError,
    encode_pair,
    encode_task,
    item_counts,
    load_task,
    macro_mean,
    task_problems,
    task_result,
    wilson_interval,
)
from nanogpt_runner.data.tokenizers import CharTokenizer, char_vocabulary

TASK = Path(__file__).parents[1] / "tasks" / "tiny_mc.jsonl"


def _write(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _chars() -> CharTokenizer:
    return CharTokenizer(char_vocabulary([TASK.read_text()]))


def test_a_task_file_loads_in_both_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    task = load_task(str(TASK), tmp_path)
    assert task.name == "tiny_mc" and len(task.items) == 12 and task.items[2].label == 1
    rows = [json.loads(line) for line in TASK.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "same.parquet")
    assert load_task(str(tmp_path / "same.parquet"), tmp_path, max_items=5).items == task.items[:5]


@pytest.mark.parametrize("record, says", [
    ({"context": "a", "endings": ["b"], "label": 0}, "item 1: endings must be a list of 2 or more"),
    ({"context": "a", "endings": ["b", "c"], "label": 2}, "item 1: label must be an index into its 2 endings"),
    ({"context": "", "endings": ["b", "c"], "label": 0}, "item 1: context must be non-empty"),
    ({"text": "a"}, "item 1: 'context'"),
    ("{not json", "line 1 is not JSON"),
])
def test_a_bad_item_is_one_line_naming_the_file_and_item(tmp_path, record, says):
    path = _write(tmp_path / "bad.jsonl", [record])
    with pytest.raises(TaskError, match=says) as err:
        load_task(str(path), tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_named_task_offline_names_the_file_to_place(tmp_path, monkeypatch):
    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    place = tmp_path / "tasks" / NAMED_TASKS["hellaswag"].file
    with pytest.raises(TaskError, match=f"cannot download .*; place that file at {place}$"):
        load_task("hellaswag", tmp_path)
    place.parent.mkdir()
    _write(place, [{"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
                    "ctx_b": "he", "endings": ["is using wrap [title] to wrap a pair of skis.", "starts pulling up "
                                               "roofing on a roof."], "label": "1"}])
    [item] = load_task("hellaswag", tmp_path).items  # converted as lm-evaluation-harness prepares HellaSwag
    assert item.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert item.endings == ("is using wrap. to wrap a pair of skis.", "starts pulling up roofing on a roof.")
    assert item.label == 1 and set(NAMED_TASKS) == set(NAMED_TASK_NAMES)


def test_the_ending_is_what_follows_the_contexts_own_tokens():
    tokenizer = _chars()
    context_ids, ending_ids = encode_pair(tokenizer, "HAMLET: To be, ", "or not")  # the space moves over
    assert tokenizer.decode(context_ids) == "HAMLET: To be," and tokenizer.decode(ending_ids) == " or not"
    [item] = encode_task(load_task(str(TASK), Path("."), max_items=1), tokenizer, block_size=16)
    ids, ending = item.rows[0]
    assert len(ids) == 17 and tokenizer.decode(ids[-ending:]) == " breaks?"  # context cut from the left


def test_text_the_tokenizer_cannot_encode_is_a_task_problem(tmp_path):
    path = _write(tmp_path / "odd.jsonl", [{"context": "Zürich", "endings": ["a", "b"], "label": 0}])
    [problem] = task_problems([str(path)], _chars(), 32, tmp_path, None, 1.0)
    assert problem.startswith(f"eval.tasks: task {path}: item 1: characters outside this vocabulary")
    [twice] = task_problems([str(TASK), str(TASK)], _chars(), 32, tmp_path, None, 1.0)
    assert "names tiny_mc twice" in twice


def test_the_numbers_of_a_task():
    [item] = encode_task(load_task(str(TASK), Path("."), max_items=1), _chars(), 64)
    # endings of 7, 8, 9 characters and 8, 9, 10 tokens (the space): summed, ending 0 (the label) wins; per
    # character ending 2 (-0.978 against -1.0); per token ending 0 again (-0.875 against -0.88)
    counts = item_counts(item, [-7.0, -20.0, -8.8])
    assert counts.tolist() == [1, 1, 0, 1, pytest.approx(1 / 3)]
    result = task_result(np.array([10, 5, 6, 7, 10 / 3]))
    assert (result["acc"], result["acc_norm"], result["acc_token"], result["items"]) == (0.5, 0.6, 0.7, 10)
    assert result["centered"] == pytest.approx((0.7 - 1 / 3) / (2 / 3))
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # the textbook value
    both = macro_mean({"a": result, "b": {**result, "acc": 0.7}})
    assert both["acc"] == pytest.approx(0.6) and both["items"] == 20 and both["acc_low"] < 0.6 < both["acc_high"]


def test_config_checks_name_every_problem(tmp_path):
    problems = eval_problems(EvalConfig(tasks=["tasks.csv", str(tmp_path / "absent.jsonl")], task_interval=15,
                                        max_items=0), eval_interval=10)
    assert len(problems) == 4 and "tasks.csv" in problems[0] and "absent.jsonl, which does not exist" in problems[1]
    assert "task_interval=15 must be a positive multiple of train.eval_interval=10" in problems[2]
    assert eval_problems(EvalConfig(task_interval=20), 10) == [
        "eval.task_interval and eval.max_items apply to eval.tasks, which is empty: add eval.tasks=[FILE.jsonl], "
        "or drop them."]
    assert eval_problems(EvalConfig(tasks=["hellaswag", str(TASK)], task_interval=20), 10) == []


def test_packing_does_not_change_a_rows_log_likelihood():
    from nanogpt_runner.config.schema import ModelConfig
    from nanogpt_runner.evals.scoring import item_logliks
    from nanogpt_runner.model.gpt import GPT

    tokenizer = _chars()
    torch.manual_seed(0)
    model = GPT(ModelConfig(name="t", n_layer=1, n_head=2, n_embd=16, block_size=32), tokenizer.vocab_size).eval()
    items = encode_task(load_task(str(TASK), Path("."), max_items=4), tokenizer, 32)
    with torch.no_grad():
        def logits(x):
            return model(x)[0]

        one_by_one = []
        for item in items:
            scores = []
            for ids, ending in item.rows:
                logprobs = torch.log_softmax(logits(torch.as_tensor(ids[None, :-1])).float(), -1)[0]
                targets = torch.as_tensor(ids[1:])
                scores.append(logprobs[-ending:].gather(-1, targets[-ending:, None]).sum().item())
            one_by_one.append(scores)
        for batch_size, length in ((1, None), (3, None), (5, 32)):
            packed = item_logliks(items, logits, batch_size, length, torch.device("cpu"), passes=9)
            assert np.allclose(np.concatenate(packed), np.concatenate(one_by_one), atol=1e-5), (batch_size, length)
