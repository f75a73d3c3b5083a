"""Class 1: two runs in one run_dir. The second is refused naming the holder; a dead holder is taken over."""
from __future__ import annotations

import json
import logging
import signal
import socket
import time
from pathlib import Path

import pytest

from pretrain.run_owner import OWNER_FILE, Owner, RunDirInUse, RunOwnership
from pretrain.run_storage import LocalRunStorage
from tests.faults.harness import python
from tests.pretrain.processes import finish, start

TINY = ["-m", "tests.pretrain.tiny_training", "train.num_workers=0", "train.tensorboard=false",
        "train.eval_every=0", "train.log_every=1000", "train.checkpoint_every=0"]


def wait_for(path: Path, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def write_owner(run_dir: Path, host: str, heartbeat_age_s: float, pid: int = 4242) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = Owner(host=host, pid=pid, job="other-job", started="2026-12-01T00:00:00+00:00",
                   heartbeat=time.time() - heartbeat_age_s, token="feedbeef")
    (run_dir / OWNER_FILE).write_bytes(record.encode())


@pytest.mark.slow
def test_a_second_run_on_a_busy_run_dir_is_refused_naming_the_holder(tmp_path):
    first = start([*TINY, f"train.run_dir={tmp_path}", "train.max_steps=1000000"])
    try:
        wait_for(tmp_path / OWNER_FILE, first)
        second = python([*TINY, f"train.run_dir={tmp_path}", "train.max_steps=5"])
        line = second.assert_one_line_error(str(tmp_path), "in use by another run", socket.gethostname(),
                                            f"pid {first.pid}", "started")
        assert "checkpoints" not in line
    finally:
        first.send_signal(signal.SIGTERM)  # stops after a checkpoint, exit 0
        [(code, out)] = finish([first])
    assert code == 0, out
    assert not (tmp_path / OWNER_FILE).exists()  # released at the end of the run


@pytest.mark.slow
def test_the_lock_of_a_sigkilled_run_is_taken_over(tmp_path):
    first = start([*TINY, f"train.run_dir={tmp_path}", "train.max_steps=1000000"])
    wait_for(tmp_path / OWNER_FILE, first)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    again = python([*TINY, f"train.run_dir={tmp_path}", "train.max_steps=3", "train.resume=none"])
    assert again.code == 0, again.stderr[-3000:]
    assert "took over" in again.stderr


def test_a_live_holder_on_another_host_is_refused(tmp_path):
    write_owner(tmp_path, "trainer-master-0.other-node", heartbeat_age_s=5)
    with pytest.raises(RunDirInUse, match="host trainer-master-0.other-node, pid 4242, job other-job"):
        RunOwnership(LocalRunStorage(tmp_path), lease_s=60).acquire()


def test_a_holder_on_another_host_whose_heartbeat_stopped_is_taken_over(tmp_path, caplog):
    write_owner(tmp_path, "trainer-master-0.other-node", heartbeat_age_s=300)
    ownership = RunOwnership(LocalRunStorage(tmp_path), lease_s=60)
    with caplog.at_level(logging.WARNING):
        ownership.acquire()
    assert "took over" in caplog.text
    assert json.loads((tmp_path / OWNER_FILE).read_text())["pid"] == ownership.me.pid
    ownership.release()
    assert not (tmp_path / OWNER_FILE).exists()


def test_the_owner_refreshes_its_heartbeat(tmp_path):
    ownership = RunOwnership(LocalRunStorage(tmp_path), lease_s=0.4)  # beats every 0.1 s
    ownership.acquire()
    try:
        first = json.loads((tmp_path / OWNER_FILE).read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads((tmp_path / OWNER_FILE).read_text())["heartbeat"] > first
    finally:
        ownership.release()
