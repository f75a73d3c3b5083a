"""Class 6: configs that lie. Duplicate keys, explicit values contradicted by derived ones, misplaced keys,
failed starts that leave files behind, and an empty override."""
from __future__ import annotations

import pytest

from pretrain.config import ConfigError, load_config
from pretrain.tlm import TLMConfig
from tests.faults.conftest import tlm_args
from tests.faults.harness import python


def test_a_section_written_twice_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 0.1\ntrain:\n  max_steps: 5\noptim:\n  warmup_steps: 1\n")
    with pytest.raises(ConfigError, match=r"run.yaml:5: .*'optim' is set twice \(first on line 1\)"):
        load_config(TLMConfig, ["--config", str(path)])


def test_a_key_written_twice_in_a_section_is_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 5\n  max_steps: 6\n")
    with pytest.raises(ConfigError, match=r"run.yaml:3: .*'max_steps' is set twice"):
        load_config(TLMConfig, ["--config", str(path)])


def test_a_key_in_the_wrong_section_suggests_the_section_that_has_it():
    with pytest.raises(ConfigError, match=r"unknown key 'train.lr'; did you mean 'optim.lr'\?"):
        load_config(TLMConfig, ["train.lr=0.1"])


def test_an_empty_override_is_an_empty_string():
    assert load_config(TLMConfig, ["data.sample.dir="]).data.sample.dir == ""


def test_an_explicit_vocab_size_the_tokenizer_contradicts_is_an_error(sample_data, tmp_path):
    outcome = python(tlm_args(sample_data, tmp_path / "run", "model.vocab_size=5000"))
    outcome.assert_one_line_error("model.vocab_size=5000", "has 1000 ids")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_start_that_fails_at_the_first_step_leaves_no_files(sample_data, tmp_path):
    outcome = python(tlm_args(sample_data, tmp_path / "run", "data.nctx=64"))  # longer than model.max_len
    assert outcome.code == 2, outcome.stderr[-2000:]
    assert "Traceback" not in outcome.stderr
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == []
