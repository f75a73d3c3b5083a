"""Every PyTorchJob shipped under k8s/ runs to completion through the strict operator harness (read-only
/data, pods as PID namespaces), as kustomize renders it, shrunk by config overrides to a CPU-sized model
and two steps: the GPU recipes find their data where their headers say and export at the end. The TrainJob
base runs the same way on the shipped TrainingRuntime, through the Trainer v2 harness; each TrainJob recipe
overlay is the same job as its PyTorchJob twin (same config, same command: checked here), so the runs of
the twin and of the TrainJob base together cover it."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from pretrain.checkpoint import list_checkpoints
from tests.k8s.conftest import ROOT, TIMEOUT_S
from tests.k8s.kustomize import build
from tests.k8s.operator_harness import LocalJob, pytorch_container
from tests.k8s.trainer_harness import LocalTrainJob

SHRINK = ("model.d_model=48", "model.num_heads=3", "model.layers=1", "model.d_ff=96", "data.batch_size=4",
          "train.max_steps=2", "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=1",
          "train.num_workers=1", "train.compile=false", "train.tensorboard=false", "optim.warmup_steps=1")
SHORT = ("data.nctx=32", "model.max_len=32")
JOBS = {   # kustomization -> (job name, overrides)
    "base": ("pretrain", SHRINK),
    "overlays/mlm": ("mlm-pretrain", SHRINK + SHORT),
    "overlays/clm": ("clm-pretrain", SHRINK + SHORT + ("train.grad_accum_steps=1",)),
    "overlays/dual-encoder": ("dual-encoder-pretrain", SHRINK + ("data.nctx=16", "model.max_len=16",
                                                         "objective.dual_encoder.recall_candidates=4")),
    "overlays/electra": ("electra-pretrain", SHRINK + SHORT),
    "overlays/elastic": ("elastic-mlm-pretrain", SHRINK + SHORT),
}


TRAINJOBS = {"trainjob/base": JOBS["base"]}
TWINS = [directory for directory in JOBS if directory.startswith("overlays/") and directory != "overlays/elastic"]


@pytest.mark.slow
@pytest.mark.parametrize("directory", [*JOBS, *TRAINJOBS])
def test_shipped_job_trains_and_exports_on_a_read_only_data_volume(directory: str, data_volume: Path,
                                                                   bpe_data_volume: Path, tmp_path: Path) -> None:
    name, overrides = {**JOBS, **TRAINJOBS}[directory]
    data = bpe_data_volume if directory.endswith("overlays/clm") else data_volume
    claims = {"pretrain-data": data, "pretrain-checkpoints": tmp_path / "checkpoints"}
    claims["pretrain-checkpoints"].mkdir()
    if directory in TRAINJOBS:
        runtime = build(ROOT / "k8s" / "trainjob" / "runtime")
        job = LocalTrainJob(build(ROOT / "k8s" / directory) + runtime, claims, tmp_path, overrides)
    else:
        job = LocalJob(build(ROOT / "k8s" / directory), claims, tmp_path, overrides)
    assert job.name == name
    job.start()
    try:
        job.run_until(lambda _: False, timeout_s=TIMEOUT_S)
    finally:
        job.kill()
    run_dir = claims["pretrain-checkpoints"] / name
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")] == [2], job.logs()
    assert (run_dir / "export" / "model.pt").is_file(), job.logs()


@pytest.mark.parametrize("directory", TWINS)
def test_each_trainjob_overlay_runs_the_config_and_command_of_its_pytorchjob_twin(directory: str) -> None:
    pytorch_job, train_job = build(ROOT / "k8s" / directory), build(ROOT / "k8s" / "trainjob" / directory)
    config = [r["data"] for r in pytorch_job if r["kind"] == "ConfigMap"]
    assert [r["data"] for r in train_job if r["kind"] == "ConfigMap"] == config
    [job] = [r for r in pytorch_job if r["kind"] == "PyTorchJob"]
    commands = {tuple(pytorch_container(rspec)["command"]) for rspec in job["spec"]["pytorchReplicaSpecs"].values()}
    [trainer] = [r["spec"]["trainer"] for r in train_job if r["kind"] == "TrainJob"]
    assert commands == {tuple(trainer["command"])}
    # Everything else is the TrainJob base's, which runs above: the overlay is that run with the twin's job.
    assert _without_command_and_config(train_job) == _without_command_and_config(build(ROOT / "k8s" / "trainjob/base"))


def _without_command_and_config(resources: list[dict]) -> dict:
    """The TrainJob's spec with its trainer command and its ConfigMap's (generated) name left out."""
    [config_map] = [r["metadata"]["name"] for r in resources if r["kind"] == "ConfigMap"]
    [spec] = [copy.deepcopy(r["spec"]) for r in resources if r["kind"] == "TrainJob"]
    del spec["trainer"]["command"]
    return json.loads(json.dumps(spec).replace(json.dumps(config_map), '"CONFIG"'))
