"""pretrain.discrim end to end: ELECTRA learning on sample-corpus text, 2-rank DDP equal to one rank, and a
killed run resuming to exactly the uninterrupted result (masks and generator samples included)."""
from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest

from pretrain.discrim import RECIPE
from pretrain.run import run_recipe
from tests.pretrain.processes import (
    REPO,
    assert_same_params,
    final_params,
    kill_after_first_checkpoint,
    one_thread,
    run_two_pods,
)


def tiny_args(data: dict[str, Path], run_dir: Path, *overrides: str) -> list[str]:
    """A 2-layer, 64-wide discriminator (16-wide generator) on blocks of 32: well under a second a step."""
    return ["--config", str(REPO / "configs/tiny_electra.yaml"), "data.sample.dir=''",
            f"data.train=[{data['train']}]", f"data.valid=[{data['valid']}]",
            f"data.tokenizer.vocab={data['vocab']}",
            "data.nctx=32", "data.batch_size=8", "model.d_model=64", "model.num_heads=4", "model.layers=2",
            "model.d_ff=128", "model.max_len=32", "train.num_workers=0", "train.tensorboard=false",
            "train.log_every=5", "train.eval_every=0", "train.eval_batches=2", "train.checkpoint_every=0",
            "optim.warmup_steps=3", "optim.lr=3e-3", f"train.run_dir={run_dir}", *overrides]


def test_electra_losses_fall_on_sample_text(sample_data, tmp_path):
    result = run_recipe(RECIPE, tiny_args(sample_data, tmp_path, "train.max_steps=40"))
    assert result.completed
    # Untrained: the generator is uniform over 1000 ids; the discriminator starts at the replaced-token base
    # rate (~15% of the tokens: BCE ~0.42, against log 2 for 50:50). A run this short gets the generator to
    # unigram-like guesses; telling replacements apart from context takes longer.
    assert result.train["generator"] < 0.9 * math.log(1000)
    assert result.train["discriminator"] < 0.75 * math.log(2)
    valid = result.valid
    assert valid["generator_ppl"] == pytest.approx(math.exp(valid["generator"]))
    assert 0.0 <= valid["discriminator_accuracy"] <= 1.0 and 0.0 <= valid["replaced_recall"] <= 1.0
    assert 0.0 < valid["replaced_auc"] < 1.0 and 0.5 < valid["original_rate"] < 1.0
    assert not any(math.isnan(value) for value in {**result.train, **valid}.values())
    # Reported only once the discriminator flags something (no "nan" while its precision is undefined).
    assert 0.0 <= valid.get("replaced_precision", 0.0) <= 1.0


DETERMINISTIC = ["model.dropout=0.0", "train.max_steps=6", "train.checkpoint_every=2", "train.grad_accum_steps=2",
                 "optim.eps=1e-4"]  # see test_paired.DETERMINISTIC for eps


@pytest.fixture(scope="module")
def one_rank_reference(sample_data, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("reference")
    with one_thread():
        run_recipe(RECIPE, tiny_args(sample_data, run_dir, *DETERMINISTIC))
    return final_params(run_dir)


@pytest.mark.slow
def test_two_ranks_equal_one_rank_with_the_global_batch(sample_data, tmp_path, one_rank_reference):
    run_two_pods(["-m", "pretrain.discrim", *tiny_args(sample_data, tmp_path, *DETERMINISTIC, "data.batch_size=4")])
    assert_same_params(final_params(tmp_path), one_rank_reference, atol=1e-5)


@pytest.mark.slow
def test_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(sample_data, tmp_path,
                                                                           one_rank_reference):
    args = tiny_args(sample_data, tmp_path, *DETERMINISTIC)
    code, out = kill_after_first_checkpoint(["-m", "pretrain.discrim", *args], tmp_path)
    assert code == -signal.SIGKILL, out
    with one_thread():
        assert run_recipe(RECIPE, args).completed
    assert_same_params(final_params(tmp_path), one_rank_reference)
