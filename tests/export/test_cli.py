"""`python -m export`: from a training checkpoint, between formats, and its one-line errors."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from data_pipeline.errors import UserError
from export import export_model, load_pretrained
from export.__main__ import main
from pretrain.checkpoint import FORMAT_VERSION
from pretrain.objectives.language_modeling import CausalLM
from tests.export.helpers import random_model, token_batch


def write_training_checkpoint(path, objective: nn.Module, model_cfg, tokenizer_vocab: str) -> None:
    """A checkpoint as pretrain/trainer.py writes it, with the model's vocab_size left for the tokenizer."""
    config = {"model": dict(dataclasses.asdict(model_cfg), vocab_size=0),
              "data": {"tokenizer": {"kind": "wordpiece", "vocab": tokenizer_vocab, "codes": "", "lowercase": True}}}
    torch.save({"format": FORMAT_VERSION, "step": 10, "objective": objective.state_dict(), "optimizer": {},
                "scheduler": {}, "data": {}, "rng": [], "config": config}, path)


def hidden(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(token_batch())


def test_exports_the_model_of_a_training_checkpoint_in_every_format(vocab_spec, tmp_path, capsys):
    model = random_model(head_transform=True)
    write_training_checkpoint(tmp_path / "ckpt-00000010.pt", CausalLM(model, pad_id=0), model.cfg, vocab_spec.vocab)
    main(["--checkpoint", str(tmp_path / "ckpt-00000010.pt"), "--format", "npz", "torch", "hf",
          "--out", str(tmp_path / "export")])
    assert capsys.readouterr().out.split() == ["npz:", str(tmp_path / "export/model.npz"),
                                               "torch:", str(tmp_path / "export/model.pt"),
                                               "hf:", str(tmp_path / "export/hf")]
    for name in ("model.npz", "model.pt"):
        loaded, _ = load_pretrained(tmp_path / "export" / name)
        assert torch.equal(hidden(loaded), hidden(model))
    assert (tmp_path / "export/hf/model.safetensors").is_file()


def test_converts_an_export_to_another_format(vocab_spec, tmp_path):
    model = random_model()
    export_model(model, vocab_spec, tmp_path / "first", ["torch"])
    main(["--checkpoint", str(tmp_path / "first/model.pt"), "--format", "npz", "--out", str(tmp_path / "second")])
    loaded, _ = load_pretrained(tmp_path / "second/model.npz")
    assert torch.equal(hidden(loaded), hidden(model))


def test_a_checkpoint_with_two_candidate_models_asks_for_a_prefix(vocab_spec, tmp_path):
    model = random_model()
    pair = nn.ModuleDict({"generator": model, "discriminator": random_model(seed=1)})
    write_training_checkpoint(tmp_path / "ckpt.pt", pair, model.cfg, vocab_spec.vocab)
    args = ["--checkpoint", str(tmp_path / "ckpt.pt"), "--format", "torch", "--out", str(tmp_path / "out")]
    with pytest.raises(UserError, match="2 models of the config's shape.*pass --model-prefix"):
        main(args)
    main(args + ["--model-prefix", "discriminator."])
    loaded, _ = load_pretrained(tmp_path / "out")
    assert torch.equal(hidden(loaded), hidden(pair["discriminator"]))


def test_a_missing_checkpoint_is_a_one_line_error_with_exit_code_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "export", "--checkpoint", str(tmp_path / "nope.pt"),
                             "--format", "npz", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_the_cli_in_its_own_process_writes_an_export_transformers_loads(vocab_spec, tmp_path):
    # As a user runs it (`python -m export` starts with the package's lazy imports), then read by HF itself.
    model = random_model(head_transform=True)
    write_training_checkpoint(tmp_path / "ckpt-00000010.pt", CausalLM(model, pad_id=0), model.cfg, vocab_spec.vocab)
    done = subprocess.run([sys.executable, "-m", "export", "--checkpoint", str(tmp_path / "ckpt-00000010.pt"),
                           "--format", "npz", "hf", "--out", str(tmp_path / "export")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded, _ = load_pretrained(tmp_path / "export" / "model.npz")
    assert torch.equal(hidden(loaded), hidden(model))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "hf").eval()
    with torch.no_grad():
        assert hf(token_batch()).logits.shape[-1] == model.cfg.vocab_size
