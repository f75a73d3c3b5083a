"""examples/finetune_classify.py on a model pretrained here: the project's own MLM trainer on the sample
corpus, a checkpoint exported with `python -m export`, then fine-tuning with few labels.

The pretraining text is the whole sample corpus, so it contains the classification texts, without
their labels (domain-adaptive pretraining); what pretraining must beat is the same network fine-tuned
from a random initialisation with the same head, data, seed and schedule.
"""
from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

from export.__main__ import main as export_main
from pretrain.run import run_recipe
from pretrain.tlm import RECIPE
from tests.conftest import SMALL_VOCAB, SampleData

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetune_classify.py"
PRETRAIN_STEPS = 800
FEW_LABELS = dict(train_per_class=20, epochs=10, lr=1e-3, log=False)
SEEDS = (0, 1, 2)  # one fine-tuning seed's gain varies by ~0.02 (bench/RESULTS.md): compare means


def load_example() -> ModuleType:
    """The example is a script, not a package module: import it from its path."""
    spec = importlib.util.spec_from_file_location("finetune_classify", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def export_dir(small_sample: SampleData, tmp_path_factory) -> Path:
    """A tiny post-LN MLM (d_model 64, 2 layers) pretrained for a few hundred steps, exported as npz and torch."""
    root = tmp_path_factory.mktemp("pretrained")
    run_recipe(RECIPE, [
        f"data.sample.dir={small_sample.dir}", f"data.sample.vocab_size={SMALL_VOCAB}", "data.nctx=64",
        "data.batch_size=32", "model.d_model=64", "model.num_heads=2", "model.layers=2", "model.d_ff=128",
        "model.max_len=64", "optim.lr=2e-3", "optim.warmup_steps=30", "optim.schedule=linear",
        "optim.min_lr_ratio=0.0", f"train.max_steps={PRETRAIN_STEPS}", "train.device=cpu", "train.num_workers=0",
        f"train.run_dir={root / 'run'}", "train.checkpoint_every=0", "train.eval_every=0", "train.tensorboard=false",
        f"train.log_every={PRETRAIN_STEPS}"])
    checkpoint = root / "run" / "checkpoints" / f"ckpt-{PRETRAIN_STEPS:08d}.pt"
    export_main(["--checkpoint", str(checkpoint), "--format", "npz", "torch", "--out", str(root / "export")])
    return root / "export"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example()


@pytest.fixture(scope="module")
def pretrained_accuracy(example, export_dir) -> float:
    return example.finetune(export_dir / "model.pt", **FEW_LABELS)


@pytest.mark.slow
def test_fine_tuning_the_pretrained_export_beats_a_random_initialisation(example, export_dir, pretrained_accuracy):
    pretrained = [pretrained_accuracy] + [example.finetune(export_dir / "model.pt", seed=seed, **FEW_LABELS)
                                          for seed in SEEDS[1:]]
    scratch = [example.finetune(export_dir / "model.pt", random_init=True, seed=seed, **FEW_LABELS)
               for seed in SEEDS]
    assert statistics.fmean(pretrained) > statistics.fmean(scratch) + 0.02, (pretrained, scratch)


@pytest.mark.slow
def test_fine_tuning_from_the_npz_export_is_identical_to_the_torch_one(example, export_dir, pretrained_accuracy):
    assert example.finetune(export_dir / "model.npz", **FEW_LABELS) == pretrained_accuracy
