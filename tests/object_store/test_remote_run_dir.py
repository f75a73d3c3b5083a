"""`train.run_dir` in S3: checkpoints published only once whole and checked, keep-k and `resume: auto`
in the bucket, config, TensorBoard events and the export uploaded; a run SIGKILLed mid-way and resumed
from the bucket ends bit-identical to an uninterrupted local run."""
from __future__ import annotations

import io
import signal
import time

import pytest
import torch

from pretrain.object_run_storage import ObjectRunStorage
from tests.pretrain.processes import assert_same_params, final_params, finish, start
from tests.pretrain.test_tlm import tlm_args, tlm_command

pytestmark = pytest.mark.slow
STEPS = 60


def remote_checkpoints(s3, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket="runs", Prefix=f"{prefix}/checkpoints/")
    return sorted(o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".pt"))


def remote_final_params(uri: str) -> dict[str, torch.Tensor]:
    storage = ObjectRunStorage(f"{uri}/checkpoints")
    newest = sorted(name for name in storage.list() if name.endswith(".pt"))[-1]
    return torch.load(io.BytesIO(storage.read_bytes(newest)), weights_only=True)["objective"]


def test_killed_run_resumes_from_s3_to_the_weights_of_an_uninterrupted_local_run(s3, small_sample, tmp_path):
    s3.create_bucket("runs")
    uri = "s3://runs/killed"

    def args(run_dir) -> list[str]:
        return tlm_command(tlm_args("mlm", small_sample.dir, run_dir, f"train.max_steps={STEPS}",
                                    "train.checkpoint_every=5", "model.dropout=0.1", "train.num_workers=1",
                                    "train.keep_checkpoints=2", "train.tensorboard=true"))

    reference = start(args(tmp_path / "reference"))
    killed = start(args(uri))
    deadline = time.monotonic() + 120
    while not remote_checkpoints(s3, "killed") and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    [(code, out)] = finish([killed])
    assert code == -signal.SIGKILL, out
    results = finish([start(args(uri)), reference])
    assert all(code == 0 for code, _ in results), results
    assert f"resumed from {uri}/checkpoints/ckpt-" in results[0][1]
    assert_same_params(remote_final_params(uri), final_params(tmp_path / "reference"))
    assert remote_checkpoints(s3, "killed") == [f"killed/checkpoints/ckpt-{s:08d}.pt" for s in (STEPS - 5, STEPS)]
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket="runs", Prefix="killed/")["Contents"]}
    assert {"killed/config.yaml", "killed/export/model.npz"} <= keys, keys
    assert any(k.startswith("killed/tensorboard/") for k in keys) and not any(k.endswith(".tmp") for k in keys)
