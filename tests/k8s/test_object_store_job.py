"""Training from object storage on Kubernetes, through the strict harnesses: the shipped object-store
overlays run with no volume but their ConfigMap and emptyDirs (the harness has no PVC to give them) and
with credentials only from a Secret made as `kubectl create secret generic` makes it (the harness keeps
this machine's AWS_* variables out of the pods). The corpus is preprocessed into the bucket first by the
CLI, as the README says; the PyTorchJob checkpoints into the bucket, and the TrainJob of the same name
resumes from there; a checkpoint downloaded from the bucket exports locally."""
from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.k8s.conftest import ROOT, TIMEOUT_S
from tests.k8s.kustomize import build
from tests.k8s.operator_harness import CreateContainerConfigError, LocalJob
from tests.k8s.test_readme_walk import readme_submit_commands, submit_cli
from tests.k8s.test_shipped_jobs import SHORT, SHRINK
from tests.k8s.trainer_harness import LocalTrainJob
from tests.k8s.validation import resource_errors
from tests.pretrain.processes import finish, start

BUCKET = "my-bucket"            # the overlays' placeholder
RUN = "runs/mlm-s3"             # the job's run directory in it: --run-root s3://my-bucket/runs, job mlm-s3
SECRET = "s3-credentials"
LINES = 400                     # of the sample corpus: about 700 blocks of 32 tokens in 4 shards
PYTORCHJOB, TRAINJOB = ROOT / "k8s" / "overlays" / "object-store", ROOT / "k8s" / "trainjob" / "overlays" / "object-store"


def secret(name: str, **literals: str) -> dict:
    """The Secret `kubectl create secret generic NAME --from-literal=KEY=VALUE ...` creates."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in literals.items()}}


@pytest.fixture(scope="module")
def corpus(s3, data_volume: Path, tmp_path_factory: pytest.TempPathFactory):
    """A slice of the sample corpus preprocessed by the CLI into s3://my-bucket/corpus/{train,valid}, with the
    vocab uploaded beside the shards; returns the server."""
    sample = data_volume / "runs" / "sample"
    bucket = s3.create_bucket(BUCKET)
    directory = tmp_path_factory.mktemp("object_store_corpus")
    for name, lines in (("train", LINES), ("valid", LINES // 4)):
        text = directory / f"{name}.txt"
        text.write_text("".join((sample / "corpus" / f"{name}.txt").read_text(encoding="utf-8")
                                .splitlines(True)[:lines]), encoding="utf-8")
        [(code, out)] = finish([start(["-m", "data_pipeline", "preprocess", str(text), "--out", f"{bucket}/corpus/{name}",
                                       "--tokenizer", "wordpiece", "--vocab", str(sample / "wordpiece-8000" / "vocab.txt"),
                                       "--shard-tokens", "2000", "--processes", "1"])])
        assert code == 0, out
    return s3


def stored(s3, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(entry["Key"][len(prefix):] for entry in listing.get("Contents", []))


@pytest.mark.slow
def test_object_store_job_trains_from_the_bucket_with_no_volume_and_its_trainjob_resumes(corpus, tmp_path):
    credentials = secret(SECRET, **{key: corpus.env[key] for key in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")})
    assert resource_errors(credentials) == []
    runtimes = build(ROOT / "k8s" / "trainjob" / "runtime")
    for resource in [*build(PYTORCHJOB), *build(TRAINJOB), *runtimes]:
        pods = resource["spec"].get("pytorchReplicaSpecs", {}).values() if resource["kind"] == "PyTorchJob" else []
        for pod in [rspec["template"]["spec"] for rspec in pods]:
            assert all(set(volume) & {"configMap", "emptyDir"} for volume in pod["volumes"]), pod["volumes"]

    # Two pods, 2 steps: the checkpoint and the export land in the bucket. No claims: a PVC would fail here.
    for api in ("pytorchjob", "trainjob"):
        (tmp_path / api).mkdir()
    first = LocalJob([*build(PYTORCHJOB), credentials], {}, tmp_path / "pytorchjob", SHRINK + SHORT) \
        .run_to_completion(TIMEOUT_S)
    assert stored(corpus, f"{RUN}/checkpoints/") == ["ckpt-00000002.pt"], first
    assert "export/model.pt" in stored(corpus, f"{RUN}/"), first
    assert "on 2 process(es)" in first

    # The same job as a TrainJob resumes from the bucket's newest checkpoint.
    second = LocalTrainJob([*build(TRAINJOB), *runtimes, credentials], {}, tmp_path / "trainjob",
                           SHRINK + SHORT + ("train.max_steps=4",)).run_to_completion(TIMEOUT_S)
    assert f"resumed from s3://{BUCKET}/{RUN}/checkpoints/ckpt-00000002.pt at step 2" in second, second
    assert stored(corpus, f"{RUN}/checkpoints/") == ["ckpt-00000002.pt", "ckpt-00000004.pt"], second

    # An earlier checkpoint, downloaded, exports where the credentials are: its vocab is fetched by URI.
    checkpoint = tmp_path / "ckpt-00000002.pt"
    corpus.client().download_file(BUCKET, f"{RUN}/checkpoints/ckpt-00000002.pt", str(checkpoint))
    [(code, out)] = finish([start(["-m", "export", "--checkpoint", str(checkpoint), "--format", "npz",
                                   "--out", str(tmp_path / "export")])])
    assert code == 0 and (tmp_path / "export" / "vocab.txt").is_file(), out


@pytest.mark.parametrize("literals,missing", [
    (None, f'secret "{SECRET}" not found'),
    ({"AWS_ACCESS_KEY_ID": "id"}, f"couldn't find key AWS_SECRET_ACCESS_KEY in Secret {SECRET}"),
])
def test_a_missing_secret_or_key_keeps_the_pods_from_starting(literals, missing, tmp_path):
    resources = build(PYTORCHJOB) + ([secret(SECRET, **literals)] if literals is not None else [])
    with pytest.raises(CreateContainerConfigError, match=missing):
        LocalJob(resources, {}, tmp_path)


def test_the_optional_endpoint_and_region_may_be_absent_from_the_secret(tmp_path):
    job = LocalJob([*build(PYTORCHJOB), secret(SECRET, AWS_ACCESS_KEY_ID="id", AWS_SECRET_ACCESS_KEY="key")], {},
                   tmp_path)
    env = job.pods[0].env
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("id", "key")
    assert "AWS_ENDPOINT_URL" not in env and "AWS_DEFAULT_REGION" not in env


def test_the_readmes_object_store_command_renders_the_overlays_pod_shape() -> None:
    [command] = readme_submit_commands("### Training from object storage on Kubernetes")
    _, job = submit_cli("render", *command)
    assert resource_errors(job) == []
    overlay = next(r for r in build(PYTORCHJOB) if r["kind"] == "PyTorchJob")
    for rendered in (job, overlay):
        pod = rendered["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
        assert [volume["name"] for volume in pod["volumes"]] == ["config", "shard-cache", "dshm", "tmp"]
        assert [v["valueFrom"]["secretKeyRef"]["name"] for v in pod["containers"][0]["env"][-4:]] == [SECRET] * 4
