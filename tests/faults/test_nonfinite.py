"""Class 2: non-finite training. Diverging steps are skipped up to a limit, then the run stops naming the
step and the last good checkpoint; NaN weights are never checkpointed, exported or used to initialise."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from data_pipeline.errors import UserError
from export import export_model
from export.loading import init_from
from pretrain.checkpoint import list_checkpoints, load_checkpoint
from pretrain.finite import first_non_finite
from pretrain.model import TransformerLM
from pretrain.objectives.language_modeling import CausalLM
from tests.export.helpers import random_model, write_vocab
from tests.export.test_cli import write_training_checkpoint
from tests.faults.harness import python

TINY = ["-m", "tests.pretrain.tiny_training", "train.num_workers=0", "train.tensorboard=false",
        "train.eval_every=0", "train.log_every=1", "train.checkpoint_every=2", "optim.warmup_steps=0"]


def nan_model() -> TransformerLM:
    model = random_model()
    with torch.no_grad():
        model.encoder.embeddings.word.weight[3, 1] = float("nan")
    return model


@pytest.mark.slow
def test_a_diverging_run_skips_then_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    # lr 1e30: the first step is finite, every later loss is not.
    outcome = python([*TINY, f"train.run_dir={tmp_path}", "train.max_steps=20", "optim.lr=1e30",
                      "train.nonfinite_skips=2"])
    outcome.assert_one_line_error("step 4: loss or gradients NaN/inf for 3 steps in a row",
                                  f"last good checkpoint: {tmp_path / 'checkpoints' / 'ckpt-00000002.pt'}")
    assert outcome.stderr.count("step skipped") == 2
    for _, path in list_checkpoints(tmp_path / "checkpoints"):
        assert first_non_finite(load_checkpoint(path)["objective"]) is None


def test_python_m_export_refuses_a_checkpoint_with_nan_weights(tmp_path):
    vocab = write_vocab(tmp_path / "tokenizer")
    model = nan_model()
    checkpoint = tmp_path / "ckpt-00000010.pt"
    write_training_checkpoint(checkpoint, CausalLM(model, pad_id=0), model.cfg, vocab.vocab)
    outcome = python(["-m", "export", "--checkpoint", str(checkpoint), "--format", "npz", "--out", str(tmp_path / "export")])
    outcome.assert_one_line_error("'encoder.embeddings.word.weight' holds NaN")
    assert not (tmp_path / "export").exists()


def test_an_export_with_nan_weights_is_refused_as_init_from(tmp_path):
    vocab = write_vocab(tmp_path / "tokenizer")
    export_model(random_model(), vocab, tmp_path / "export", ["torch"])
    path = tmp_path / "export" / "model.pt"
    saved = torch.load(path, weights_only=True)
    saved["state_dict"]["encoder.embeddings.word.weight"][0, 0] = float("inf")
    torch.save(saved, path)
    with pytest.raises(UserError, match="init_from .*'encoder.embeddings.word.weight' holds NaN or infinite"):
        init_from(TransformerLM(dataclasses.replace(random_model().cfg)), path)
