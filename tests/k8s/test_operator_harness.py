"""The local stand-in for the training operator: the pods it would create, their env and commands."""
from __future__ import annotations

from pathlib import Path

from pretrain.k8s.manifest import JobSpec, config_map, pytorch_job
from tests.k8s.operator_harness import LocalJob, operator_env


def test_static_job_env_gives_master_and_workers_their_ranks() -> None:
    job = pytorch_job(JobSpec(name="demo", trainer="tlm", workers=2, gpus=0, nproc_per_node=2))
    master, worker = operator_env(job, "Master", 0), operator_env(job, "Worker", 1)
    assert master == {"PYTHONUNBUFFERED": "1", "MASTER_ADDR": "demo-master-0", "PET_MASTER_ADDR": "demo-master-0",
                      "MASTER_PORT": "23456", "PET_MASTER_PORT": "23456", "WORLD_SIZE": "6", "RANK": "0",
                      "PET_NODE_RANK": "0", "PET_NNODES": "3", "PET_NPROC_PER_NODE": "2"}
    assert (worker["RANK"], worker["PET_NODE_RANK"], worker["WORLD_SIZE"]) == ("2", "2", "6")


def test_elastic_job_env_points_every_worker_at_the_first_workers_rendezvous() -> None:
    job = pytorch_job(JobSpec(name="demo", trainer="tlm", workers=4, min_workers=2, gpus=1))
    assert operator_env(job, "Worker", 3) == {
        "PYTHONUNBUFFERED": "1", "PET_RDZV_ENDPOINT": "demo-worker-0:23456", "PET_RDZV_BACKEND": "c10d",
        "PET_NNODES": "2:4", "PET_MAX_RESTARTS": "3", "PET_NPROC_PER_NODE": "1"}


def test_local_pods_run_the_manifest_command_on_local_volumes(tmp_path: Path) -> None:
    spec = JobSpec(name="demo", trainer="tlm", gpus=0, overrides=("train.max_steps=4",))
    claims = {"pretrain-data": tmp_path / "data", "pretrain-checkpoints": tmp_path / "checkpoints"}
    job = LocalJob([config_map(spec, "train: {}\n"), pytorch_job(spec)], claims, tmp_path)
    master, worker = job.pods
    assert (master.name, worker.name) == ("demo-master-0", "demo-worker-0")
    config_dir = Path(master.command[8]).parent
    assert master.command == ["torchrun", "--rdzv-backend=c10d", f"--rdzv-endpoint=demo-master-0:{master.env['MASTER_PORT']}",
                              "--rdzv-id=demo", "--max-restarts=3", "-m", "pretrain.tlm", "--config", f"{config_dir}/config.yaml",
                              f"train.run_dir={claims['pretrain-checkpoints']}/demo", "train.resume=auto",
                              "train.max_steps=4"]
    assert (config_dir / "config.yaml").read_text() == "train: {}\n"
    assert master.cwd == claims["pretrain-data"]
    assert master.env["MASTER_ADDR"] == worker.env["PET_MASTER_ADDR"] == "demo-master-0"
    assert master.hosts.read_text() == "127.0.0.1 localhost\n127.0.0.2 demo-master-0\n127.0.0.3 demo-worker-0\n"
    assert master.env["MASTER_PORT"] == worker.env["MASTER_PORT"] != "23456"
    assert master.env["JOB_NAME"] == "demo" and Path(master.env["HOME"]).parent == tmp_path
