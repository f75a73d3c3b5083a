"""SIGTERM sent the way launchers send it, to a run whose DataLoader has worker processes.

Kubernetes signals the container's first process: torchrun, which forwards SIGTERM to each rank's whole
process group (the rank and its DataLoader workers). systemd and Slurm signal every process of a job
(`kill -TERM -- -PGID`). Either way the workers must not die of it: the ranks finish the step, write one
checkpoint and exit 0, and a resumed run ends with the weights of a run that was never stopped.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.pretrain.processes import assert_same_params, finish, start, torchrun_args
from pretrain.checkpoint import list_checkpoints

MAX_STEPS = 30
ARGS = ["train.num_workers=1", "train.tensorboard=false", "train.log_every=5", "train.eval_every=0",
        "train.checkpoint_every=0", f"train.max_steps={MAX_STEPS}", "optim.lr=0.05", "optim.warmup_steps=2",
        "tiny.dropout=0.3", "train.grad_accum_steps=2"]
SLOW_BATCHES = "tiny.batch_delay_s=0.03"   # slow enough that the signal lands mid-run


def tiny_args(run_dir: Path, *overrides: str) -> list[str]:
    return ["-m", "tests.pretrain.tiny_training", *ARGS, f"train.run_dir={run_dir}", *overrides]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final.pt", weights_only=True)["objective"]


def signal_mid_run(proc: subprocess.Popen, run_dir: Path, send) -> tuple[int, str, float]:
    """Wait until the loop has started (run_dir/config.yaml), then `send(proc)` after a random delay;
    returns (exit code, output, delay)."""
    deadline = time.monotonic() + 120
    while not (run_dir / "config.yaml").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    delay = random.uniform(0.0, 0.8)
    time.sleep(delay)
    send(proc)
    [(code, out)] = finish([proc])
    return code, out, delay


def stop_steps(out: str) -> list[int]:
    return [int(step) for step in re.findall(r"SIGTERM received: stopping at step (\d+)", out)]


def exit_statuses(out: str) -> list[int]:
    return [int(code) for code in re.findall(r"exit status (-?\d+)", out)]


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_both_ranks_and_the_resumed_run_is_exact(tmp_path: Path) -> None:
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    [(code, out)] = finish([start(torchrun_args(2, tiny_args(reference)))])
    assert code == 0 and exit_statuses(out) == [0, 0], out

    proc = start(torchrun_args(2, tiny_args(stopped, SLOW_BATCHES)))
    code, out, delay = signal_mid_run(proc, stopped, lambda p: p.send_signal(signal.SIGTERM))
    steps = stop_steps(out)
    assert len(steps) == 2 and steps[0] == steps[1] < MAX_STEPS, f"SIGTERM after {delay:.2f}s:\n{out}"
    assert exit_statuses(out) == [0, 0], out
    assert [step for step, _ in list_checkpoints(stopped / "checkpoints")] == [steps[0]]
    assert "DataLoader worker" not in out
    # torchrun itself re-raises the signal as SignalException after its workers exit: status 1. Under
    # restartPolicy OnFailure that is right: a 0 would count the pod as Succeeded, and a Master that
    # succeeded marks the whole PyTorchJob Succeeded at a step short of max_steps.
    assert code == 1 and "SignalException" in out, out

    [(code, out)] = finish([start(torchrun_args(2, tiny_args(stopped)))])
    assert code == 0 and f"at step {steps[0]}" in out, out
    assert_same_params(final_weights(stopped), final_weights(reference))


@pytest.mark.slow
def test_sigterm_to_a_process_group_checkpoints_and_the_resumed_run_is_exact(tmp_path: Path) -> None:
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    [(code, out)] = finish([start(tiny_args(reference))])
    assert code == 0, out

    proc = start(tiny_args(stopped, SLOW_BATCHES), new_session=True)
    code, out, delay = signal_mid_run(proc, stopped, lambda p: os.killpg(p.pid, signal.SIGTERM))
    [step] = stop_steps(out)
    assert code == 0 and step < MAX_STEPS, f"SIGTERM to the group after {delay:.2f}s:\n{out}"
    assert [step for step, _ in list_checkpoints(stopped / "checkpoints")] == [step]

    [(code, out)] = finish([start(tiny_args(stopped))])
    assert code == 0 and f"at step {step}" in out, out
    assert_same_params(final_weights(stopped), final_weights(reference))
