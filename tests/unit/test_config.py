"""The config: presets compose as documented, Hydra's schema refuses unknown keys and wrong types, and
``validate`` reports every meaning problem at once, each naming the field and a fix."""

from __future__ import annotations

import json

import pytest
from conftest import compose_config
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from nanogpt_runner.config.schema import CONF_DIR, Config, DeviceCaps
from nanogpt_runner.config.validate import data_problems, validate

CPU = DeviceCaps(kind="cpu", bf16=True, cuda_available=False)
OLD_GPU = DeviceCaps(kind="cuda", bf16=False, cuda_available=True)


def problems_for(*overrides: str, device: DeviceCaps = CPU) -> list[str]:
    return validate(compose_config(list(overrides)), device)


def test_default_config_is_valid_and_trains_the_baby_model():
    cfg = compose_config([])
    assert validate(cfg, CPU) == []
    assert (cfg.model.name, cfg.model.n_layer, cfg.model.n_embd, cfg.data.name) == ("baby", 4, 128, "shakespeare_char")
    assert cfg.optimizer.decay_iters is None  # decays over train.max_iters


@pytest.mark.parametrize("preset, expected", [
    ("tiny", (2, 2, 32, 32)), ("baby", (4, 4, 128, 64)),
    ("shakespeare", (6, 6, 384, 256)), ("gpt2", (12, 12, 768, 1024)),
])
def test_model_presets(preset, expected):
    m = compose_config([f"model={preset}"]).model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size) == expected


def test_baby_cpu_experiment_is_nanogpts_documented_cpu_run():
    cfg = compose_config(["+experiment=baby_cpu"])
    m, o, t = cfg.model, cfg.optimizer, cfg.train
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (4, 4, 128, 64, 0.0)
    assert (t.batch_size, t.max_iters, t.eval_iters) == (12, 2000, 20)
    assert (o.lr, o.min_lr, list(o.betas), o.warmup_iters) == (1e-3, 1e-4, [0.9, 0.99], 100)


def test_shakespeare_char_experiment():
    cfg = compose_config(["+experiment=shakespeare_char"])
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size, cfg.model.dropout) == (6, 384, 256, 0.2)
    assert (cfg.train.batch_size, cfg.train.max_iters) == (64, 5000)


def test_any_field_can_be_overridden():
    cfg = compose_config(["model=shakespeare", "optimizer.lr=6e-4", "train.grad_accum=4", "train.recompute=true",
                          "train.precision=bf16"])
    assert (cfg.optimizer.lr, cfg.train.grad_accum, cfg.train.recompute, cfg.train.precision) == (6e-4, 4, True, "bf16")


@pytest.mark.parametrize("override", ["model.n_layers=3", "train.batchsize=2", "extra=1"])
def test_unknown_keys_are_refused_by_the_schema(override):
    with pytest.raises(ConfigCompositionException):
        compose_config([override])


@pytest.mark.parametrize("override", ["model.n_layer=four", "optimizer.lr=fast", "train.compile=maybe"])
def test_wrong_types_are_refused_by_the_schema(override):
    with pytest.raises(ConfigCompositionException):
        compose_config([override])


@pytest.mark.parametrize("override", ["train.precision=fp8", "train.device=tpu", "train.nan_policy=ignore",
                                      "parallel.dp=zero", "parallel.pp_schedule=2f2b", "model.attention=flash",
                                      "data.name=wikipedia", "sweep.objective=speed"])
def test_choice_fields_outside_their_enum_are_refused_by_the_schema(override):
    with pytest.raises(ConfigCompositionException) as refused:
        compose_config([override])
    assert "expected one of" in str(refused.value.__cause__)


def test_choices_read_as_plain_strings():
    cfg = compose_config(["train.precision=fp32", "parallel.pp_schedule=gpipe"])
    assert cfg.train.precision == "fp32" and f"{cfg.train.precision}" == "fp32"
    assert str(cfg.parallel.pp_schedule) == "gpipe"
    assert {"fp32": 1}[cfg.train.precision] == 1
    assert json.dumps(OmegaConf.to_container(cfg.train))  # run.json and checkpoint metadata are JSON


def test_the_yaml_states_only_what_differs_from_the_schema_defaults():
    """Each default is written once, as a dataclass default: a group file (conf/model/tiny.yaml) names
    only what makes its preset, an experiment only what differs from the config its groups give."""
    schema = OmegaConf.structured(Config)
    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        group, tree = path.parent.name, OmegaConf.to_container(OmegaConf.load(path))
        if group == "experiment":
            choices = [f"{k.removeprefix('override /')}={v}" for entry in tree.get("defaults", [])
                       if isinstance(entry, dict) for k, v in entry.items() if k.startswith("override /")]
            base, body = compose_config(choices), {k: v for k, v in tree.items() if k in schema}
        elif group in schema:
            base, body = schema, {group: tree}
        else:
            continue  # hydra/, hparams_search/: not schema fields
        repeated = [f"{section}.{key}" for section, node in body.items() if isinstance(node, dict)
                    for key, value in node.items()
                    if key != "name" and OmegaConf.select(base, f"{section}.{key}", default="???") == value]
        assert not repeated, f"{path.relative_to(CONF_DIR)} repeats what it would get anyway: {repeated}"


@pytest.mark.parametrize("overrides, field", [
    (["model.n_embd=100", "model.n_head=3"], "model.n_embd=100"),
    (["optimizer.lr=0"], "optimizer.lr=0"),
    (["optimizer.lr=-1e-3"], "optimizer.lr=-0.001"),
    (["train.max_iters=0"], "train.max_iters=0"),
    (["train.batch_size=0"], "train.batch_size=0"),
    (["train.grad_accum=-2"], "train.grad_accum=-2"),
    (["optimizer.min_lr=1e-2"], "optimizer.min_lr=0.01"),
    (["model.dropout=1.0"], "model.dropout=1.0"),
    (["model.dropout=-0.1"], "model.dropout=-0.1"),
    (["train.precision=fp16"], "train.precision=fp16 on the CPU"),
    (["data.path=/no/such/file.txt"], "data.path=/no/such/file.txt"),
    (["data=text_file"], "data=text_file needs data.path"),
    (["train.seed=-1"], "train.seed=-1 must be a whole number from 0"),
])
def test_each_problem_is_named_with_its_value(overrides, field):
    problems = problems_for(*overrides)
    assert len(problems) == 1, problems
    assert field in problems[0]


def test_bf16_is_refused_on_a_gpu_without_it():
    [problem] = problems_for("train.precision=bf16", device=OLD_GPU)
    assert "no bf16 support" in problem


def test_every_problem_is_reported_at_once():
    problems = problems_for("model.n_embd=100", "model.n_head=3", "optimizer.lr=0", "model.dropout=2",
                            "train.precision=fp16")
    assert len(problems) == 4


def test_a_block_longer_than_a_split_is_refused_once_the_data_is_known():
    cfg = compose_config(["model.block_size=512"])
    [problem] = data_problems(cfg, {"train": 10_000, "val": 300})
    assert "model.block_size=512" in problem and "val split has 300" in problem
