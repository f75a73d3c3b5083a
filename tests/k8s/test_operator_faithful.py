"""The walk from the README on this machine, each pod a process run the way the cluster would run it
(operator_harness): the k8s/data Job fills the data volume; a PyTorchJob trains, checkpoints, loses a
pod (killed, or deleted gracefully) and resumes; `submit export`'s Job exports its newest checkpoint."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from pretrain.checkpoint import list_checkpoints
from pretrain.k8s.export_job import export_job
from pretrain.k8s.manifest import JobSpec, config_map, pytorch_job
from tests.k8s.conftest import ROOT, TIMEOUT_S
from tests.k8s.operator_harness import LocalJob, run_batch_job

FROZEN_S = 6   # for the restarted worker's torchrun to start and reach the rendezvous


def _tiny_job(claims: dict[str, Path], workdir: Path, nproc: int, *overrides: str) -> LocalJob:
    spec = JobSpec(name="tiny", trainer="tlm", gpus=0, nproc_per_node=nproc, overrides=(
        "data.batch_size=8", "train.max_steps=15", "train.checkpoint_every=5", "train.eval_every=0",
        "train.eval_batches=1", "train.log_every=5", "train.tensorboard=false", *overrides))
    config = (ROOT / "configs" / "tiny_mlm.yaml").read_text()
    return LocalJob([config_map(spec, config), pytorch_job(spec)], claims, workdir)


@pytest.mark.slow
def test_a_worker_pod_deleted_on_the_last_step_ends_the_job_at_once_with_its_checkpoint_and_export(
        data_volume: Path, tmp_path: Path) -> None:
    # `kubectl delete pod` (a drain, a preemption) as the run ends: SIGTERM to the worker pod's torchrun,
    # which forwards it to its ranks while they take the last step (or validate and checkpoint after
    # it). Had the master's ranks exited 0, the master's torchrun would wait in its exit barrier for
    # the worker's, which never comes (5 minutes); they restart with the re-created pod instead.
    # (A pod deleted mid-run: test_readme_walk.py.)
    claims = {"pretrain-data": data_volume, "pretrain-checkpoints": tmp_path / "checkpoints"}
    claims["pretrain-checkpoints"].mkdir()
    job = _tiny_job(claims, tmp_path, 2, "train.num_workers=1", "train.dist_timeout_s=60", "train.log_every=1")
    run_dir = claims["pretrain-checkpoints"] / "tiny"
    master = job.pod("tiny-master-0")
    job.start()
    try:
        job.run_until(lambda _: "step 14/15" in master.log(), timeout_s=TIMEOUT_S, poll_s=0.02)
        code = job.delete_pod("tiny-worker-0")
        job.run_until(lambda _: False, timeout_s=120)   # well inside torchrun's 300 s exit barrier
    finally:
        job.kill()
    assert "DataLoader worker" not in job.logs()
    # torchrun re-raises SIGTERM once its ranks exited 0: status 1 (which OnFailure would restart).
    assert code == 1 and "SignalException" in job.pod("tiny-worker-0").log()
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")][-1] == 15
    assert (run_dir / "export" / "model.npz").is_file() and master.restarts == 0, job.logs()


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [2])   # one process per pod: test_readme_walk.py
def test_job_trains_resumes_after_a_pod_is_killed_and_exports(data_volume: Path, tmp_path: Path,
                                                              nproc: int) -> None:
    claims = {"pretrain-data": data_volume, "pretrain-checkpoints": tmp_path / "checkpoints"}
    claims["pretrain-checkpoints"].mkdir()
    # dist_timeout_s bounds how long a rank may wait for a peer that is gone without closing its sockets.
    job = _tiny_job(claims, tmp_path, nproc, "train.num_workers=0", "train.dist_timeout_s=60")
    run_dir = claims["pretrain-checkpoints"] / "tiny"
    worker = job.pod("tiny-worker-0")
    master = job.pod("tiny-master-0")
    job.start()
    try:
        job.run_until(lambda _: bool(list_checkpoints(run_dir / "checkpoints")), timeout_s=TIMEOUT_S)
        assert worker.process.poll() is None, "the job finished before a pod could be killed"
        # A master too slow to notice (as on a loaded node) while the worker's container restarts at
        # once: the new worker's torchrun meets the master's still from the round the worker left.
        with master.frozen():
            worker.kill()
            job.run_until(lambda _: worker.restarts == 1, timeout_s=TIMEOUT_S, poll_s=0.05)
            time.sleep(FROZEN_S)
        job.run_until(lambda _: False, timeout_s=TIMEOUT_S)
    finally:
        job.kill()
    logs = job.logs()
    assert f"on {2 * nproc} process(es)" in logs
    # One container restart, the killed one's: the master's torchrun restarts its ranks in place.
    assert "resumed from" in logs and (worker.restarts, master.restarts) == (1, 0), logs
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")][-1] == 15

    run_batch_job(export_job("tiny"), claims, tmp_path, TIMEOUT_S)   # what `submit export tiny` creates
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["model.npz", "model.pt", "vocab.txt"]
