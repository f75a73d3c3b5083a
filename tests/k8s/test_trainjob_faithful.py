"""A TrainJob on our TrainingRuntime, run on this machine as Trainer v2 would run it (trainer_harness:
the torch plugin's PET_* contract, 2 CPU nodes, read-only /data): a node dies mid-run, the job is
submitted again under its name, resumes from its newest checkpoint and exports exactly the model of
an uninterrupted run; a node pod deleted as the kubelet deletes it (a drain) stops every rank at one
checkpoint, and the restarted nodes finish the job."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pretrain.checkpoint import list_checkpoints
from pretrain.k8s.export_job import export_job
from pretrain.k8s.manifest import JobSpec, config_map
from pretrain.k8s.trainjob import train_job, training_runtime
from tests.k8s.conftest import ROOT, TIMEOUT_S
from tests.k8s.operator_harness import run_batch_job
from tests.k8s.trainer_harness import LocalTrainJob

OVERRIDES = ("data.batch_size=8", "train.max_steps=15", "train.checkpoint_every=5", "train.eval_every=0",
             "train.eval_batches=1", "train.log_every=5", "train.tensorboard=false",
             # A node restarted into a dying peer's rendezvous is freed by the collective timeout.
             "train.dist_timeout_s=60")


def _submitted(name: str, claims: dict[str, Path], workdir: Path, num_workers: int = 0) -> LocalTrainJob:
    """What `submit --api trainjob` creates for job `name`, as the controller runs it."""
    spec = JobSpec(name=name, trainer="tlm", gpus=0, overrides=(*OVERRIDES, f"train.num_workers={num_workers}"))
    config = (ROOT / "configs" / "tiny_mlm.yaml").read_text()
    workdir.mkdir()
    return LocalTrainJob([config_map(spec, config), training_runtime(), train_job(spec)], claims, workdir)


def _run_to_completion(job: LocalTrainJob) -> str:
    return job.run_to_completion(TIMEOUT_S)


def _export(run: str, claims: dict[str, Path], workdir: Path) -> dict[str, np.ndarray]:
    run_batch_job(export_job(run), claims, workdir, TIMEOUT_S)   # what `submit export RUN` creates
    with np.load(claims["pretrain-checkpoints"] / run / "export" / "model.npz", allow_pickle=False) as arrays:
        return dict(arrays)


@pytest.mark.slow
def test_trainjob_resubmitted_after_a_node_dies_resumes_and_exports_the_uninterrupted_model(
        data_volume: Path, tmp_path: Path) -> None:
    claims = {"pretrain-data": data_volume, "pretrain-checkpoints": tmp_path / "checkpoints"}
    claims["pretrain-checkpoints"].mkdir()
    logs = _run_to_completion(_submitted("straight", claims, tmp_path / "straight"))
    assert "on 2 process(es)" in logs and "resumed from" not in logs, logs

    first = _submitted("tiny", claims, tmp_path / "first")
    checkpoints = claims["pretrain-checkpoints"] / "tiny" / "checkpoints"
    first.start()
    try:
        first.run_until(lambda _: bool(list_checkpoints(checkpoints)), timeout_s=TIMEOUT_S)
        node = first.pod("tiny-node-0-1")
        assert node.process.poll() is None, "the job finished before a node could be killed"
        node.kill()                      # the node is lost...
    finally:
        first.kill()                     # ...and the job with it (`submit delete`, or backoffLimit spent)
    stopped_at = [step for step, _ in list_checkpoints(checkpoints)][-1]
    assert stopped_at < 15

    logs = _run_to_completion(_submitted("tiny", claims, tmp_path / "second"))
    assert f"ckpt-{stopped_at:08d}.pt at step {stopped_at}" in logs and "on 2 process(es)" in logs, logs
    assert [step for step, _ in list_checkpoints(checkpoints)][-1] == 15

    resumed, straight = _export("tiny", claims, tmp_path), _export("straight", claims, tmp_path)
    assert straight and sorted(resumed) == sorted(straight)
    for name, weights in straight.items():
        np.testing.assert_array_equal(resumed[name], weights, err_msg=name)


@pytest.mark.slow
def test_a_deleted_node_pod_stops_every_rank_at_one_checkpoint_and_the_trainjob_still_completes(
        data_volume: Path, tmp_path: Path) -> None:
    # A drain or `kubectl delete pod`: SIGTERM to the node's torchrun, which forwards it to its ranks
    # (and their DataLoader workers); the Job controller creates the pod again.
    claims = {"pretrain-data": data_volume, "pretrain-checkpoints": tmp_path / "checkpoints"}
    claims["pretrain-checkpoints"].mkdir()
    job = _submitted("tiny", claims, tmp_path / "job", num_workers=1)
    checkpoints = claims["pretrain-checkpoints"] / "tiny" / "checkpoints"
    job.start()
    try:
        job.run_until(lambda _: bool(list_checkpoints(checkpoints)), timeout_s=TIMEOUT_S)
        code = job.delete_pod("tiny-node-0-1")
        stopped_at = [step for step, _ in list_checkpoints(checkpoints)][-1]
        job.run_until(lambda _: False, timeout_s=TIMEOUT_S)
    finally:
        job.kill()
    logs = job.logs()
    assert code != 0 and "DataLoader worker" not in logs, logs
    assert 5 <= stopped_at < 15 and f"ckpt-{stopped_at:08d}.pt at step {stopped_at}" in logs, logs
    assert [step for step, _ in list_checkpoints(checkpoints)][-1] == 15
