"""The walk from the README on this machine, each pod a process run the way the cluster would run it
(operator_harness): the k8s/data Job fills the data volume; a PyTorchJob trains, checkpoints, loses a
pod (killed, or deleted gracefully) and resumes; `submit export`'s Job exports its newest checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.checkpoint import list_checkpoints
from pretrain.k8s.export_job import export_job
from pretrain.k8s.manifest import JobSpec, config_map, pytorch_job
from tests.k8s.conftest import ROOT, TIMEOUT_S
from tests.k8s.operator_harness import LocalJob, run_batch_job


def _tiny_job(claims: dict[str, Path], workdir: Path, nproc: int, *overrides: str) -> LocalJob:
    spec = JobSpec(name="tiny", trainer="tlm", gpus=0, nproc_per_node=nproc, overrides=(
        "data.batch_size=8", "train.max_steps=15", "train.checkpoint_every=5", "train.eval_every=0",
        "train.eval_batches=1", "train.log_every=5", "train.tensorboard=false", *overrides))
    config = (ROOT / "configs" / "tiny_mlm.yaml").read_text()
    return LocalJob([config_map(spec, config), pytorch_job(spec)], claims, workdir)


@pytest.mark.slow
def test_a_deleted_worker_pod_stops_every_rank_at_one_checkpoint_and_the_job_still_finishes(
        data_volume: Path, tmp_path: Path) -> None:
    # `kubectl delete pod` (or a drain, a preemption): SIGTERM to the worker pod's torchrun, which forwards
    # it to its ranks; every rank of the job stops after the same step. The master's ranks were not
    # signalled: were they to exit 0, the Master would succeed and with it the job, short of max_steps.
    claims = {"pretrain-data": data_volume, "pretrain-checkpoints": tmp_path / "checkpoints"}
    claims["pretrain-checkpoints"].mkdir()
    job = _tiny_job(claims, tmp_path, 2, "train.num_workers=1", "train.dist_timeout_s=60")
    run_dir = claims["pretrain-checkpoints"] / "tiny"
    job.start()
    try:
        job.run_until(lambda _: bool(list_checkpoints(run_dir / "checkpoints")), timeout_s=TIMEOUT_S)
        code = job.delete_pod("tiny-worker-0")
        stopped_at = [step for step, _ in list_checkpoints(run_dir / "checkpoints")][-1]
        job.run_until(lambda _: False, timeout_s=TIMEOUT_S)
    finally:
        job.kill()
    worker_log = job.pod("tiny-worker-0").log()
    assert worker_log.count("SIGTERM received: stopping at step") == 2, worker_log
    assert "DataLoader worker" not in job.logs()
    # torchrun re-raises SIGTERM once its ranks exited 0: status 1 (which OnFailure would restart).
    assert code == 1 and "SignalException" in worker_log, worker_log
    assert 5 <= stopped_at < 15 and "resumed from" in job.logs()
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")][-1] == 15


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [2])   # one process per pod: test_readme_walk.py
def test_job_trains_resumes_after_a_pod_is_killed_and_exports(data_volume: Path, tmp_path: Path,
                                                              nproc: int) -> None:
    claims = {"pretrain-data": data_volume, "pretrain-checkpoints": tmp_path / "checkpoints"}
    claims["pretrain-checkpoints"].mkdir()
    # A pod restarted while its peer is still failing can rendezvous with the dying peer's agent and
    # then wait in init_process_group: the collective timeout is what frees it, as on a real cluster.
    job = _tiny_job(claims, tmp_path, nproc, "train.num_workers=0", "train.dist_timeout_s=60")
    run_dir = claims["pretrain-checkpoints"] / "tiny"
    worker = job.pod("tiny-worker-0")
    job.start()
    try:
        job.run_until(lambda _: bool(list_checkpoints(run_dir / "checkpoints")), timeout_s=TIMEOUT_S)
        assert worker.process.poll() is None, "the job finished before a pod could be killed"
        worker.kill()
        job.run_until(lambda _: False, timeout_s=TIMEOUT_S)
    finally:
        job.kill()
    logs = job.logs()
    assert f"on {2 * nproc} process(es)" in logs
    assert "resumed from" in logs and worker.restarts == 1, logs
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")][-1] == 15

    run_batch_job(export_job("tiny"), claims, tmp_path, TIMEOUT_S)   # what `submit export tiny` creates
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["model.npz", "model.pt", "vocab.txt"]
