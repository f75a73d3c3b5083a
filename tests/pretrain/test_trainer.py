from __future__ import annotations

import logging
import math
import re
import signal
from pathlib import Path

import pytest
import torch

from data_pipeline.errors import UserError
from pretrain.checkpoint import CheckpointError, list_checkpoints
from pretrain.config import load_config, to_dict
from pretrain.distributed import DistEnv
from pretrain.trainer import train
from tests.pretrain.processes import assert_same_params, finish, one_thread, run_two_pods, start
from tests.pretrain.tiny_training import TinyObjective, TinyReader, TinySchema, run

SINGLE = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
BASE = ["train.num_workers=0", "train.tensorboard=false", "train.log_every=2", "train.eval_every=0",
        "train.eval_batches=2", "train.checkpoint_every=0", "train.max_steps=8", "optim.lr=0.05",
        "optim.warmup_steps=2"]
# The same global batch of 4 as one rank x 4 or two ranks x 2, with accumulation over 2 micro-batches.
DDP = ["train.grad_accum_steps=2", "tiny.dropout=0.0"]


def config(run_dir: Path, *overrides: str) -> TinySchema:
    return load_config(TinySchema, [*BASE, f"train.run_dir={run_dir}", *overrides])


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "final.pt", weights_only=True)


def run_two_ranks(run_dir: Path, *overrides: str) -> list[str]:
    """Train the tiny objective in two processes launched as two PyTorchJob pods; returns their outputs."""
    return run_two_pods(["-m", "tests.pretrain.tiny_training", *BASE, f"train.run_dir={run_dir}", *overrides])


def resumed_step(out: str) -> int:
    return int(re.search(r"resumed from \S+ at step (\d+)", out).group(1))


@pytest.fixture(scope="module")
def one_rank_reference(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("reference")
    with one_thread():
        run(config(run_dir, "tiny.batch_size=4", *DDP), SINGLE)
    return final_state(run_dir)["objective"]


def test_training_lowers_the_loss(tmp_path):
    result = run(config(tmp_path, "train.max_steps=30", "train.log_every=5"), SINGLE)
    assert result.completed and result.step == 30
    assert result.train["loss"] < 0.6 * math.log(16)


def test_validation_reports_loss_perplexity_and_metrics(tmp_path):
    result = run(config(tmp_path, "train.eval_every=4"), SINGLE)
    valid = result.valid
    assert valid.keys() == {"loss", "lm", "lm_ppl", "acc"}
    assert valid["loss"] == valid["lm"]
    assert valid["lm_ppl"] == pytest.approx(math.exp(valid["lm"]))
    assert 0.0 <= valid["acc"] <= 1.0


def test_checkpoints_at_the_interval_and_at_the_end(tmp_path):
    result = run(config(tmp_path, "train.max_steps=7", "train.checkpoint_every=3"), SINGLE)
    assert [step for step, _ in list_checkpoints(tmp_path / "checkpoints")] == [3, 6, 7]
    assert result.checkpoint == tmp_path / "checkpoints" / "ckpt-00000007.pt"
    assert (tmp_path / "config.yaml").exists()


def test_resume_from_a_path_replays_the_same_run(tmp_path):
    dropout = "tiny.dropout=0.3"
    run(config(tmp_path / "a", dropout, "train.checkpoint_every=4"), SINGLE)
    resume = f"train.resume={tmp_path / 'a' / 'checkpoints' / 'ckpt-00000004.pt'}"
    result = run(config(tmp_path / "b", dropout, resume), SINGLE)
    assert result.step == 8
    assert_same_params(final_state(tmp_path / "b")["objective"], final_state(tmp_path / "a")["objective"])


def test_fresh_run_refuses_a_run_dir_that_holds_checkpoints(tmp_path):
    run(config(tmp_path, "train.max_steps=2"), SINGLE)
    with pytest.raises(UserError, match="holds checkpoints past step 0 .*train.resume=auto"):
        run(config(tmp_path, "train.resume=none"), SINGLE)


def test_checkpoint_of_another_model_shape_is_a_clear_error(tmp_path):
    cfg = config(tmp_path, "train.max_steps=2")
    run(cfg, SINGLE)
    reader = TinyReader(4, 9)
    with pytest.raises(CheckpointError, match=r"'embed\.weight' has shape \(16, 8\) but the model's is \(16, 4\)"):
        train(TinyObjective(dim=4), reader, None, cfg.train, cfg.optim, SINGLE, to_dict(cfg))


def test_export_hook_runs_once_on_rank_0_after_completion(tmp_path):
    cfg = config(tmp_path, "train.max_steps=2")
    objective, calls = TinyObjective(), []
    train(objective, TinyReader(4, 9), None, cfg.train, cfg.optim, SINGLE, to_dict(cfg),
          export=lambda module, run_dir: calls.append((module, run_dir)))
    assert calls == [(objective, tmp_path)]


def test_sigterm_finishes_the_step_checkpoints_and_returns(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    # Batch 4 is the second micro-batch of step 3.
    result = run(config(tmp_path, "tiny.sigterm_at_batch=4", "train.grad_accum_steps=2"), SINGLE)
    assert (result.step, result.completed) == (3, False)
    assert [step for step, _ in list_checkpoints(tmp_path / "checkpoints")] == [3]
    assert signal.getsignal(signal.SIGTERM) == previous


@pytest.mark.slow
def test_two_ranks_give_the_parameters_of_one_rank_with_the_same_global_batch(tmp_path, one_rank_reference):
    run_two_ranks(tmp_path, "tiny.batch_size=2", *DDP)
    assert_same_params(final_state(tmp_path)["objective"], one_rank_reference, atol=1e-6)


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_every_rank_and_the_restart_resumes(tmp_path, one_rank_reference, caplog):
    # Rank 1 alone gets SIGTERM while producing batch 5 (step 3); both ranks stop after step 3 and exit 0.
    outputs = run_two_ranks(tmp_path, "tiny.batch_size=2", *DDP, "tiny.sigterm_at_batch=5", "tiny.fault_rank=1")
    assert "SIGTERM received: stopping at step 3" in outputs[1]
    assert [step for step, _ in list_checkpoints(tmp_path / "checkpoints")] == [3]
    # The restart (here on one rank with the same global batch) continues from step 3 to the same result.
    with one_thread(), caplog.at_level(logging.INFO):
        run(config(tmp_path, "tiny.batch_size=4", *DDP), SINGLE)
    assert resumed_step(caplog.text) == 3
    assert_same_params(final_state(tmp_path)["objective"], one_rank_reference, atol=1e-6)


@pytest.mark.slow
def test_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, caplog):
    dropout = ["tiny.dropout=0.3", "train.checkpoint_every=2"]
    args = ["-m", "tests.pretrain.tiny_training", *BASE, f"train.run_dir={tmp_path / 'killed'}", *dropout]
    [(code, out)] = finish([start([*args, "tiny.kill_at_batch=5"])])
    assert code == -signal.SIGKILL, out
    with one_thread(), caplog.at_level(logging.INFO):
        run(config(tmp_path / "killed", *dropout), SINGLE)
        assert resumed_step(caplog.text) in (2, 4)
        run(config(tmp_path / "reference", *dropout), SINGLE)
    assert_same_params(final_state(tmp_path / "killed")["objective"],
                       final_state(tmp_path / "reference")["objective"])
