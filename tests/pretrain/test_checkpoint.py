from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pretrain import checkpoint
from pretrain.checkpoint import (FORMAT_VERSION, CheckpointError, CheckpointWriter, capture_rng_state, find_latest,
                                 list_checkpoints, load_checkpoint, load_module_state, restore_rng_state)

REPO = Path(__file__).resolve().parents[2]


def state_for(step: int, weight: torch.Tensor | None = None) -> dict:
    """A complete checkpoint state in the trainer's layout."""
    model = nn.Linear(3, 2)
    if weight is not None:
        model.weight.data = weight
    return {"format": FORMAT_VERSION, "step": step, "objective": model.state_dict(), "optimizer": {},
            "scheduler": {"last_epoch": step}, "data": {"cursor": 8 * step}, "rng": [capture_rng_state()],
            "config": {"train": {"max_steps": 10, "betas": [0.9, 0.98]}}}


def save(directory: Path, step: int, keep: int = 3, **kwargs) -> Path:
    writer = CheckpointWriter(directory, keep)
    path = writer.save(step, state_for(step, **kwargs))
    writer.wait()
    return path


def test_checkpoint_loads_with_weights_only(tmp_path):
    path = save(tmp_path, 7)
    state = torch.load(path, weights_only=True)
    assert state["step"] == 7
    assert state["data"] == {"cursor": 56}
    assert state["config"]["train"]["betas"] == [0.9, 0.98]


def test_rng_state_round_trip_replays_every_generator(tmp_path):
    random.seed(1)
    np.random.seed(1)
    np.random.normal()  # leaves a cached second gaussian, which is part of numpy's state
    torch.manual_seed(1)
    path = save(tmp_path, 1)
    expected = (random.random(), np.random.normal(), torch.rand(3))
    restore_rng_state(load_checkpoint(path)["rng"][0])
    replayed = (random.random(), np.random.normal(), torch.rand(3))
    assert replayed[:2] == expected[:2]
    assert torch.equal(replayed[2], expected[2])


def test_save_snapshots_the_state_before_returning(tmp_path):
    weight = torch.zeros(2, 3)
    writer = CheckpointWriter(tmp_path, keep=1)
    state = state_for(1, weight)
    path = writer.save(1, state)
    weight.fill_(5.0)  # training goes on while the file is written
    writer.wait()
    assert torch.equal(load_checkpoint(path)["objective"]["weight"], torch.zeros(2, 3))


def test_only_the_last_k_checkpoints_are_kept(tmp_path):
    writer = CheckpointWriter(tmp_path, keep=2)
    for step in (10, 20, 30, 40):
        writer.save(step, state_for(step))
    writer.wait()
    assert [step for step, _ in list_checkpoints(tmp_path)] == [30, 40]


def test_latest_skips_a_corrupt_newest_checkpoint_with_a_warning(tmp_path, caplog):
    save(tmp_path, 10)
    newest = save(tmp_path, 20)
    newest.write_bytes(newest.read_bytes()[:500])
    with caplog.at_level(logging.WARNING):
        path, state = find_latest(tmp_path)
    assert (path.name, state["step"]) == ("ckpt-00000010.pt", 10)
    assert "ckpt-00000020.pt is unreadable" in caplog.text
    # Kept for inspection but never a candidate again.
    assert newest.with_name("ckpt-00000020.pt.corrupt").exists()
    assert [step for step, _ in list_checkpoints(tmp_path)] == [10]


def test_latest_is_none_without_checkpoints(tmp_path):
    assert find_latest(tmp_path) is None
    assert find_latest(tmp_path / "missing") is None


def test_a_failed_write_is_raised_by_wait_and_leaves_no_partial_file(tmp_path, monkeypatch):
    save(tmp_path, 1)

    def failing_save(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    writer = CheckpointWriter(tmp_path, keep=3)
    writer.save(2, state_for(2))
    with pytest.raises(CheckpointError, match="No space left on device"):
        writer.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001.pt"]


@pytest.mark.slow
def test_kill_during_a_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    # The child writes checkpoint 1, then starts checkpoint 2 on a "disk" whose fsync never returns,
    # i.e. the file is written but not yet renamed into place, and is SIGKILLed there.
    child = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from tests.pretrain.test_checkpoint import state_for
        from pretrain.checkpoint import CheckpointWriter
        writer = CheckpointWriter(Path({str(tmp_path)!r}), keep=3)
        writer.save(1, state_for(1))
        writer.wait()
        def stalled_fsync(fd):
            print("writing", flush=True)
            time.sleep(600)
        os.fsync = stalled_fsync
        writer.save(2, state_for(2))
        writer.wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert (tmp_path / "ckpt-00000002.pt.tmp").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    path, state = find_latest(tmp_path)
    assert (path.name, state["step"]) == ("ckpt-00000001.pt", 1)
    CheckpointWriter(tmp_path, keep=3)  # the next writer clears the dead write's temp file
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000001.pt"]


def test_shape_mismatch_is_one_error_naming_the_key(tmp_path):
    state = load_checkpoint(save(tmp_path, 1))["objective"]
    with pytest.raises(CheckpointError, match=r"'weight' has shape \(2, 3\) but the model's is \(4, 3\)"):
        load_module_state(nn.Linear(3, 4), state, tmp_path / "ckpt")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = load_checkpoint(save(tmp_path, 1))["objective"]
    with pytest.raises(CheckpointError, match="no entry for 'bias'"):
        load_module_state(nn.Linear(3, 2), {"weight": state["weight"]}, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="entry 'extra' does not exist in the model"):
        load_module_state(nn.Linear(3, 2), {**state, "extra": torch.zeros(1)}, tmp_path / "ckpt")


def test_loading_a_file_that_is_not_a_checkpoint_is_a_user_error(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not a training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
