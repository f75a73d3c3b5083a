"""Everything under k8s/: it renders, the cluster would admit it, and it is the job `submit` builds
(for each job API: PyTorchJobs in k8s/base and k8s/overlays, TrainJobs under k8s/trainjob)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pretrain.k8s.export_job import checkpoints_reader, export_job
from pretrain.k8s.manifest import JobSpec, pytorch_job
from pretrain.k8s.trainjob import train_job, training_runtime
from tests.k8s.kustomize import build, config_map_hash
from tests.k8s.validation import resource_errors

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUSTOMIZATIONS = sorted(path.parent.relative_to(K8S).as_posix() for path in K8S.rglob("kustomization.yaml"))

# Each job kustomization, the config its config.yaml copies, and the `submit render` flags (as a
# JobSpec) that build the same job.
_SHARDS = ("data.train=[/data/shards/train]", "data.valid=[/data/shards/valid]")
_WORDPIECE = ("data.tokenizer.vocab=/data/vocab.txt",)
_BPE = ("data.tokenizer.vocab=/data/bpe.vocab", "data.tokenizer.codes=/data/bpe.codes")
_PAIRS = ("data.train=[/data/pairs/train]", "data.valid=[/data/pairs/valid]")
RECIPES: dict[str, tuple[str, JobSpec]] = {
    "base": ("tiny_mlm.yaml", JobSpec(name="pretrain", trainer="tlm")),
    "overlays/mlm": ("bert_base_mlm.yaml", JobSpec(name="mlm-pretrain", trainer="tlm",
                                                   overrides=_SHARDS + _WORDPIECE)),
    "overlays/clm": ("gpt2_small_clm.yaml", JobSpec(name="clm-pretrain", trainer="tlm", overrides=_SHARDS + _BPE)),
    "overlays/dual-encoder": ("dual_encoder_gpu.yaml", JobSpec(name="dual-encoder-pretrain", trainer="paired",
                                                               overrides=_PAIRS + _WORDPIECE)),
    "overlays/electra": ("electra_base_gpu.yaml", JobSpec(name="electra-pretrain", trainer="discrim",
                                                          overrides=_SHARDS + _WORDPIECE)),
    "overlays/elastic": ("bert_base_mlm.yaml", JobSpec(name="elastic-mlm-pretrain", trainer="tlm", workers=4,
                                                       min_workers=2, overrides=_SHARDS + _WORDPIECE)),
    "overlays/object-store": ("bert_base_mlm.yaml", JobSpec(
        name="mlm-s3", trainer="tlm", run_root="s3://my-bucket/runs", object_store_secret="s3-credentials",
        overrides=("data.train=[s3://my-bucket/corpus/train]", "data.valid=[s3://my-bucket/corpus/valid]",
                   "data.tokenizer.vocab=s3://my-bucket/corpus/train/vocab.txt"))),
}

# The same recipes as Trainer v2 TrainJobs (no elastic one: Trainer v2 has no elastic policy).
TRAINJOB_RECIPES: dict[str, tuple[str, JobSpec]] = {
    f"trainjob/{directory}": recipe
    for directory, recipe in RECIPES.items() if not recipe[1].elastic}


def _by_kind(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {resource["kind"]: resource for resource in resources}


def _sorted(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(resources, key=lambda r: (r["kind"], r["metadata"]["name"]))


def test_every_job_kustomization_is_a_recipe() -> None:
    jobs = {d for d in KUSTOMIZATIONS if any(r["kind"] == "PyTorchJob" for r in build(K8S / d))}
    assert jobs == set(RECIPES)
    train_jobs = {d for d in KUSTOMIZATIONS if any(r["kind"] == "TrainJob" for r in build(K8S / d))}
    assert train_jobs == set(TRAINJOB_RECIPES)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_kustomization_renders_resources_the_cluster_admits(directory: str) -> None:
    resources = build(K8S / directory)
    assert resources
    for resource in resources:
        assert resource_errors(resource) == [], f"{directory}: {resource['kind']} {resource['metadata']['name']}"


def _job_and_pods(directory: str, spec: JobSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job `submit render` builds for a recipe directory's API, and the pod specs in it that name
    the ConfigMap."""
    if directory.startswith("trainjob/"):
        job = train_job(spec)
        patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
        return job, [patch["template"]["spec"]["template"]["spec"]]
    job = pytorch_job(spec)
    return job, [rspec["template"]["spec"] for rspec in job["spec"]["pytorchReplicaSpecs"].values()]


@pytest.mark.parametrize("directory", [*RECIPES, *TRAINJOB_RECIPES])
def test_recipe_job_is_what_submit_renders_with_its_flags(directory: str) -> None:
    _, spec = {**RECIPES, **TRAINJOB_RECIPES}[directory]
    rendered = _by_kind(build(K8S / directory))
    config_map = rendered.pop("ConfigMap")
    assert config_map["metadata"]["name"] == f"{spec.config_map_name}-{config_map_hash(config_map)}"
    expected, pods = _job_and_pods(directory, spec)
    for pod in pods:
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        volumes["config"]["configMap"]["name"] = config_map["metadata"]["name"]
    assert list(rendered.values()) == [expected]


def test_shipped_training_runtime_is_what_submit_renders() -> None:
    assert build(K8S / "trainjob" / "runtime") == [training_runtime(), training_runtime(object_store=True)]


@pytest.mark.parametrize("directory", [d for d in {**RECIPES, **TRAINJOB_RECIPES} if (K8S / d / "config.yaml").exists()])
def test_config_copy_is_identical_to_its_source_in_configs(directory: str) -> None:
    source = ROOT / "configs" / {**RECIPES, **TRAINJOB_RECIPES}[directory][0]
    copy = K8S / directory / "config.yaml"
    assert source.is_file(), f"{source} does not exist; point RECIPES at the config {copy} copies"
    assert copy.read_bytes() == source.read_bytes(), \
        f"{copy.relative_to(ROOT)} differs from its source; run: cp {source.relative_to(ROOT)} {copy.relative_to(ROOT)}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_subset_renderer_matches_kubectl_kustomize(directory: str) -> None:
    output = subprocess.run(["kubectl", "kustomize", str(K8S / directory)], capture_output=True, text=True,
                            check=True, timeout=60).stdout
    assert _sorted(build(K8S / directory)) == _sorted([doc for doc in yaml.safe_load_all(output) if doc])


def test_strict_schema_check_rejects_a_misspelled_field() -> None:
    job = _by_kind(build(K8S / "base"))["PyTorchJob"]
    job["spec"]["pytorchReplicaSpecs"]["Master"]["restartpolicy"] = "Never"
    assert resource_errors(job) == [
        "spec.pytorchReplicaSpecs.Master: Additional properties are not allowed ('restartpolicy' was unexpected)"]
    train = _by_kind(build(K8S / "trainjob" / "base"))["TrainJob"]
    train["spec"]["trainer"]["numProcsPerNode"] = 2
    assert resource_errors(train) == [
        "spec.trainer: Additional properties are not allowed ('numProcsPerNode' was unexpected)"]


def test_export_job_and_reader_pod_are_what_export_job_py_builds() -> None:
    assert build(K8S / "export") == [export_job("pretrain")]
    assert build(K8S / "copy") == [checkpoints_reader()]


def test_readme_export_overlay_gives_the_export_job_of_that_run(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    overlay = readme.split("# export-tiny-mlm/kustomization.yaml", 1)[1].split("```", 1)[0].split("\n", 1)[1]
    directory = tmp_path / "export-tiny-mlm"
    directory.mkdir()
    (directory / "kustomization.yaml").write_text(overlay.replace("../pretrain-service/k8s/export",
                                                                  str(K8S / "export")))
    assert build(directory) == [export_job("tiny-mlm")]
