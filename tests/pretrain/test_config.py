from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pretrain.config import ConfigError, OptimConfig, TrainConfig, load_config, to_dict


@dataclass(frozen=True)
class DataSection:
    train: str                          # required: no default
    paths: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    max_len: int | None = None


@dataclass(frozen=True)
class Schema:
    data: DataSection
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_values_then_overrides_in_order(tmp_path):
    path = write(tmp_path, "data:\n  train: a/\ntrain:\n  max_steps: 50\n  seed: 3\noptim:\n  lr: 0.001\n")
    cfg = load_config(Schema, ["--config", str(path), "train.max_steps=200", "optim.betas=[0.9, 0.95]",
                               "train.max_steps=300"])
    assert cfg.train.max_steps == 300
    assert cfg.train.seed == 3
    assert cfg.optim.lr == 0.001
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.train.log_every == TrainConfig().log_every


def test_float_written_without_a_dot_is_accepted(tmp_path):
    # YAML 1.1 reads 1e-4 as a string.
    cfg = load_config(Schema, ["data.train=x", "optim.lr=1e-4"])
    assert cfg.optim.lr == pytest.approx(1e-4)


def test_a_single_value_for_a_list_key_is_a_one_element_list():
    cfg = load_config(Schema, ["data.train=x", "data.paths=/corpus/shards"])
    assert cfg.data.paths == ["/corpus/shards"]


def test_unknown_yaml_key_names_file_line_and_nearest_key(tmp_path):
    path = write(tmp_path, "data:\n  train: a/\ntrain:\n  seed: 1\n  max_step: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(Schema, ["--config", str(path)])
    assert str(err.value) == f"{path}:5: unknown key 'train.max_step'; did you mean 'train.max_steps'?"


def test_unknown_override_key_suggests_the_nearest_key():
    with pytest.raises(ConfigError, match=r"unknown key 'trian\.max_steps'; did you mean 'train\.max_steps'\?"):
        load_config(Schema, ["data.train=x", "trian.max_steps=3"])


def test_overriding_a_whole_section_is_an_error():
    with pytest.raises(ConfigError, match="'train' is a section"):
        load_config(Schema, ["data.train=x", "train=3"])


@pytest.mark.parametrize("override, expected", [
    ("train.max_steps=abc", "train.max_steps must be an integer, got 'abc'"),
    ("train.max_steps=2.5", "train.max_steps must be an integer, got 2.5"),
    ("train.compile=maybe", "train.compile must be true or false, got 'maybe'"),
    ("optim.schedule=step", "optim.schedule must be one of 'linear', 'cosine', 'constant', got 'step'"),
    ("optim.betas=[0.9]", "optim.betas must be a list of 2 values (a number, a number), got [0.9]"),
    ("data.max_len=none", "data.max_len must be an integer or null, got 'none'"),
])
def test_type_mismatch_is_one_line_naming_key_and_source(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(Schema, ["data.train=x", override])
    assert str(err.value) == f"override {override!r}: {expected}"


def test_type_mismatch_in_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "data:\n  train: a/\n  weights: {a: high}\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: data\.weights must be a dict\[str, float\], got"):
        load_config(Schema, ["--config", str(path)])


def test_out_of_range_value_names_the_dotted_key():
    with pytest.raises(ConfigError, match=r"^train\.grad_accum_steps must be >= 1, got 0$"):
        load_config(Schema, ["data.train=x", "train.grad_accum_steps=0"])


def test_missing_required_key_says_how_to_set_it():
    with pytest.raises(ConfigError, match=r"missing required key 'data\.train'.*data\.train=VALUE"):
        load_config(Schema, [])


def test_invalid_yaml_reports_the_line(tmp_path):
    path = write(tmp_path, "data:\n  train: [a\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: invalid YAML"):
        load_config(Schema, ["--config", str(path)])


def test_yaml_tags_that_build_objects_are_rejected(tmp_path):
    path = write(tmp_path, "data:\n  train: !!python/object/apply:os.system [echo hi]\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Schema, ["--config", str(path)])


def test_stray_argument_is_an_error():
    with pytest.raises(ConfigError, match="unexpected argument '--max-steps'"):
        load_config(Schema, ["data.train=x", "--max-steps", "3"])


def test_to_dict_round_trips_through_yaml(tmp_path):
    cfg = load_config(Schema, ["data.train=x", "data.paths=[a, b]", "data.weights={a: 0.5}", "optim.fused=true",
                               "train.resume=none"])
    path = write(tmp_path, yaml.safe_dump(to_dict(cfg)))
    assert load_config(Schema, ["--config", str(path)]) == cfg


def test_help_lists_every_key_with_type_and_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_config(Schema, ["--help"], prog="tlm", description="Train a language model.")
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert out.startswith("usage: tlm [--config FILE.yaml] [section.key=value ...]\n\nTrain a language model.\n")
    assert "  data.train: a string = (required)" in out
    assert "  optim.schedule: one of 'linear', 'cosine', 'constant' = 'cosine'" in out
