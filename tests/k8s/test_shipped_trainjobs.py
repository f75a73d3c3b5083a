"""Every TrainJob shipped under k8s/trainjob runs to completion on the shipped TrainingRuntime through the
strict Trainer v2 harness (the torch plugin's PET_* contract, read-only /data, nodes as PID namespaces),
as kustomize renders it, shrunk like the PyTorchJobs of the same recipes (test_shipped_jobs.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.checkpoint import list_checkpoints
from tests.k8s.conftest import ROOT, TIMEOUT_S
from tests.k8s.kustomize import build
from tests.k8s.test_shipped_jobs import JOBS
from tests.k8s.trainer_harness import LocalTrainJob

TRAINJOBS = {f"trainjob/{directory}": JOBS[directory] for directory in JOBS}


@pytest.mark.slow
@pytest.mark.parametrize("directory", TRAINJOBS)
def test_shipped_trainjob_trains_and_exports_on_a_read_only_data_volume(directory: str, data_volume: Path,
                                                                        bpe_data_volume: Path, tmp_path: Path) -> None:
    name, overrides = TRAINJOBS[directory]
    data = bpe_data_volume if directory.endswith("/clm") else data_volume
    claims = {"pretrain-data": data, "pretrain-checkpoints": tmp_path / "checkpoints"}
    claims["pretrain-checkpoints"].mkdir()
    resources = build(ROOT / "k8s" / directory) + build(ROOT / "k8s" / "trainjob" / "runtime")
    job = LocalTrainJob(resources, claims, tmp_path, overrides)
    assert job.name == name and len(job.pods) == 2
    job.start()
    try:
        job.run_until(lambda _: False, timeout_s=TIMEOUT_S)
    finally:
        job.kill()
    run_dir = claims["pretrain-checkpoints"] / name
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")] == [2], job.logs()
    assert (run_dir / "export" / "model.pt").is_file(), job.logs()
