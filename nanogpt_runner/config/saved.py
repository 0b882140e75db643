"""Configs read back from disk (a checkpoint's meta.json, a run's config.yaml and run.json): data, never instructions.

A run folder may come from someone else, so what it saved is trusted for nothing but the training it
describes:

- it is never interpolated: ``${oc.env:SECRET}`` in a saved value would put a secret into run.json,
  config.yaml and the trackers, so a saved value holding ``${`` is refused (``interpolation_problem``);
- a resume takes from it only RESUMED (``resumed_part``): what defines the training it continues (model
  shape, optimizer and schedule, data identity, seed, layout facts). Every destination, process count and
  side channel (``logger.*``, ``run.root``, ``data.cache_dir``, ``data.num_proc``, the device, notes)
  comes from the command line or the defaults.

This module imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from nanogpt_runner.fsutil import open_regular

MAX_CONFIG_BYTES = 1024 * 1024  # a real config.yaml is a few KB

# What a resume keeps from the checkpoint's config, section by section (None: the whole section).
RESUMED: dict[str, tuple[str, ...] | None] = {
    # The architecture must match the saved tensors; init_from records where the first weights came from.
    "model": ("name", "n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "tie_weights", "attention",
              "activation", "init_from"),
    "optimizer": None,  # the optimizer state in the checkpoint is this optimizer's, on this schedule
    # Which tokens the run trains on (not where they are cached, nor how many processes prepare them).
    "data": ("name", "path", "url", "val_fraction", "tokenizer", "vocab_size", "text_field"),
    # The layout the checkpoint was saved with (the global batch depends on it); the rendezvous, the threads,
    # the restarts and the timeouts are this machine's.
    "parallel": ("name", "nproc_per_node", "dp", "tp", "pp", "pp_schedule", "microbatches"),
    # The schedule, batch, seed and stopping rules; not the device, the speed plan or the resume mode.
    "train": ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval", "grad_clip",
              "precision", "compile", "recompute", "seed", "ckpt_interval", "keep_last", "ckpt_only_on_improvement",
              "nan_policy", "tf32", "target_loss", "early_stop_patience", "divergence_factor", "max_time_s",
              "max_tokens", "max_flops"),
    # Who the run is (its note is the viewer's annotations.json, or this command line's run.notes).
    "run": ("name", "group", "tags"),
}


def interpolation_problem(data, source: str) -> str | None:
    """One line naming the first value of ``data`` (nested dicts and lists) that holds ``${``, or None.

    Such a value would be resolved by OmegaConf (``${oc.env:SECRET}`` reads the environment); nanogpt-run
    saves configs resolved, so a saved one never holds it."""
    pending = [("", data)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, dict):
            pending += [(f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
            pending += [(f"{where} (a key)", k) for k in value if isinstance(k, str)]
        elif isinstance(value, list):
            pending += [(f"{where}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, str) and "${" in value:
            return (f"{source} holds an interpolation in {where or 'its value'} ({value[:60]!r}), and a saved config "
                    f"is never interpolated: a run folder is data, not instructions; remove the ${{...}} there, or "
                    f"start a new run")
    return None


def resumed_part(saved: dict) -> dict:
    """The RESUMED fields of a saved config, nested as saved; sections and fields not listed are left out."""
    part = {}
    for section, keys in RESUMED.items():
        values = saved.get(section)
        if not isinstance(values, dict):
            continue
        part[section] = dict(values) if keys is None else {k: values[k] for k in keys if k in values}
    return part


def load_saved_yaml(path: Path) -> dict:
    """A saved config.yaml as a plain dict, unresolved: a regular file (no symlink), at most MAX_CONFIG_BYTES,
    a mapping with no interpolation. Raises ValueError with one line saying what is wrong."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    f = open_regular(path)
    if f is None:
        raise ValueError(f"{path} is missing or not a regular file (a symlink is never followed)")
    with f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes: not a config nanogpt-run saved")
    try:
        data = OmegaConf.to_container(OmegaConf.create(raw.decode("utf-8")), resolve=False)
    except (UnicodeDecodeError, OmegaConfBaseException, ValueError) as err:
        raise ValueError(f"{path} is not a readable YAML config ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    if problem := interpolation_problem(data, str(path)):
        raise ValueError(problem)
    return data
