"""Class 3: checkpoint contents verified. A flipped tensor byte is caught by the digest and the previous
checkpoint used; a directory of unusable checkpoints stops the run; a read error marks nothing corrupt."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import CheckpointError, CheckpointWriter, list_checkpoints, load_checkpoint
from pretrain.config import load_config
from pretrain.distributed import DistEnv
from tests.faults.harness import NO_DAC, python
from tests.pretrain.test_checkpoint import state_for
from tests.pretrain.tiny_training import TinySchema, run

SINGLE = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
SETTINGS = ["train.num_workers=0", "train.tensorboard=false", "train.eval_every=0", "train.log_every=2",
            "train.checkpoint_every=2", "train.keep_checkpoints=5", "optim.warmup_steps=1"]
TINY = ["-m", "tests.pretrain.tiny_training", *SETTINGS]


def train_tiny(run_dir: Path, *overrides: str):
    return run(load_config(TinySchema, [*SETTINGS, f"train.run_dir={run_dir}", *overrides]), SINGLE)


def flip_a_byte_inside(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit in the stored bytes of `tensor` (a record the zip container does not check)."""
    data = bytearray(path.read_bytes())
    where = bytes(data).find(tensor.numpy().tobytes())
    assert where > 0
    data[where + 5] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_byte_inside_a_tensor_falls_back_to_the_previous_checkpoint(tmp_path, caplog):
    train_tiny(tmp_path, "train.max_steps=4")
    newest = tmp_path / "checkpoints" / "ckpt-00000004.pt"
    flip_a_byte_inside(newest, torch.load(newest, weights_only=True)["objective"]["embed.weight"])
    with caplog.at_level(logging.INFO):
        result = train_tiny(tmp_path, "train.max_steps=6")
    assert "ckpt-00000004.pt is corrupt: its content does not match the digest" in caplog.text
    assert "resumed from" in caplog.text and "ckpt-00000002.pt at step 2" in caplog.text
    assert result.step == 6
    assert newest.with_name("ckpt-00000004.pt.corrupt").exists()


@pytest.mark.slow
def test_a_run_dir_whose_checkpoints_are_all_unusable_stops_until_a_fresh_start_is_asked_for(tmp_path):
    train_tiny(tmp_path, "train.max_steps=4")
    for _, path in list_checkpoints(tmp_path / "checkpoints"):
        path.write_bytes(path.read_bytes()[:300])
    args = [*TINY, f"train.run_dir={tmp_path}", "train.max_steps=6"]
    python(args).assert_one_line_error("no checkpoint in", "is usable", "train.resume=none")
    python(args).assert_one_line_error("no checkpoint in", "train.resume=none")  # still, on a plain restart
    fresh = python([*args, "train.resume=none"])
    assert fresh.code == 0, fresh.stderr[-2000:]
    assert [step for step, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 4, 6]


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_read_is_not_marked_corrupt(tmp_path):
    train_tiny(tmp_path, "train.max_steps=4")
    newest = tmp_path / "checkpoints" / "ckpt-00000004.pt"
    os.chmod(newest, 0o000)  # root without CAP_DAC_OVERRIDE cannot read it: EACCES, as from a flaky volume
    outcome = python([*TINY, f"train.run_dir={tmp_path}", "train.max_steps=6"], prefix=NO_DAC)
    outcome.assert_one_line_error("cannot read", str(newest), "Permission denied", "not corruption")
    assert newest.exists() and not newest.with_name(newest.name + ".corrupt").exists()
    os.chmod(newest, 0o644)  # the storage recovers: the run resumes from that very checkpoint
    resumed = python([*TINY, f"train.run_dir={tmp_path}", "train.max_steps=6"])
    assert resumed.code == 0 and "ckpt-00000004.pt at step 4" in resumed.stderr


def test_non_finite_weights_are_never_written(tmp_path):
    writer = CheckpointWriter(tmp_path, keep=3)
    writer.save(3, state_for(3, weight=torch.tensor([[0.0, float("nan"), 1.0], [1.0, 2.0, 3.0]])))
    with pytest.raises(CheckpointError, match="step 3: weight 'weight' is NaN or infinite"):
        writer.wait()
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_torchs_unsafe_advice(tmp_path):
    path = tmp_path / "ckpt-00000001.pt"
    torch.save({**state_for(1), "config": {"train": Path("/tmp")}}, path)  # a PosixPath pickles as an object
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    assert "pickled Python objects" in str(excinfo.value)
    assert "weights_only" not in str(excinfo.value)
