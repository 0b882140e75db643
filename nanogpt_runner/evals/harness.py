"""The same task scored by lm-evaluation-harness, the field's standard tool: a task YAML pointing at the local
task file, run on a model exported with ``nanogpt-export RUN OUT --format hf``.

The YAML asks for what ``data/tasks.py`` does: the context as the prompt, the endings as the choices, " " as the
delimiter, zero shots, acc and acc_norm. lm-eval is the ``lm-eval`` extra (``pip install -e '.[lm-eval]'``),
imported only here, inside ``run_lm_eval``; tests/integration/test_evals.py and scripts/lm_eval_match.py use it.
"""

from __future__ import annotations

import json
from pathlib import Path

from nanogpt_runner.data.tasks import DELIMITER, task_name

LM_EVAL_MISSING = "lm-evaluation-harness is not installed: pip install -e '.[lm-eval]' (or pip install lm-eval)"


def task_yaml(task_file: Path, name: str) -> str:
    """An lm-eval task definition named ``name`` reading ``task_file`` (.jsonl or .parquet) as its test split.
    JSON strings are YAML strings, so every value is written as JSON."""
    task_file = Path(task_file).absolute()
    builder = "parquet" if task_file.suffix == ".parquet" else "json"
    lines = {
        "task": name, "dataset_path": builder, "dataset_kwargs": {"data_files": {"test": str(task_file)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "context",
        "doc_to_choice": "endings", "doc_to_target": "label", "target_delimiter": DELIMITER,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    }
    return "\n".join(f"{key}: {json.dumps(value)}" for key, value in lines.items()) + "\n"


def run_lm_eval(hf_dir: Path, task_file: Path, work_dir: Path, limit: int | None = None, device: str = "cpu",
                batch_size: int = 16) -> dict[str, float]:
    """lm-eval's acc and acc_norm, its item count and each item's endings' log-likelihoods (``logliks``) for the
    exported model ``hf_dir`` on ``task_file``, the first ``limit`` items when given. The task YAML is written to
    ``work_dir``."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise RuntimeError(LM_EVAL_MISSING) from None
    name = f"nanogpt_{task_name(str(task_file))}"
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / f"{name}.yaml").write_text(task_yaml(task_file, name))
    # lm-eval decodes a prefix token (for empty contexts, which tasks here never have) even when the tokenizer
    # names none, as a character vocabulary's does not: the export's bos id serves.
    bos = json.loads((Path(hf_dir) / "config.json").read_text()).get("bos_token_id")
    prefix = f",prefix_token_id={bos}" if isinstance(bos, int) else ""
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={Path(hf_dir).absolute()},dtype=float32{prefix}", tasks=[name],
        task_manager=TaskManager(include_path=str(work_dir)), num_fewshot=0, limit=limit, device=device,
        batch_size=batch_size, log_samples=True)
    metrics = out["results"][name]
    samples = sorted(out["samples"][name], key=lambda sample: sample["doc_id"])
    return {"acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"],
            "items": out["n-samples"][name]["effective"],
            "logliks": [[float(resp[0][0]) for resp in sample["resps"]] for sample in samples]}
