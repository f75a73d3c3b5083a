"""Checks a rendered resource the way a cluster with the training operator would admit it.

- PyTorchJob: the operator's CRD schema (tests/k8s/fixtures, copied from the release-1.9 CRD), made
  strict like `kubectl apply`'s default field validation (unknown fields are errors), then the
  operator's admission rules (pretrain/k8s/rules.py), then each pod template as a Pod;
- TrainJob and TrainingRuntime: the Trainer v2 CRD schemas (tests/k8s/fixtures, release 2.3), strict
  the same way; a TrainJob then the webhook's rules (pretrain/k8s/trainjob.py), a TrainingRuntime's
  pod templates as Pods;
- everything else, and the pod templates: the Kubernetes API schemas of kubernetes-validate (offline),
  strict as well.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from pretrain.k8s.rules import pytorch_job_errors
from pretrain.k8s.trainjob import train_job_errors

FIXTURES = Path(__file__).parent / "fixtures"
CRDS = {"PyTorchJob": FIXTURES / "kubeflow.org_pytorchjobs.yaml",
        "TrainJob": FIXTURES / "trainer.kubeflow.org_trainjobs.yaml",
        "TrainingRuntime": FIXTURES / "trainer.kubeflow.org_trainingruntimes.yaml"}
KUBERNETES_VERSION = "1.29"    # the oldest release the training operator 1.9 supports


def resource_errors(resource: dict[str, Any]) -> list[str]:
    """Every reason the API server (with the operator's webhook) would refuse `resource`."""
    kind = resource.get("kind", "")
    if kind not in CRDS:
        return _kubernetes_errors(resource)
    errors = [f"{_path(e)}: {e.message}" for e in _crd_schema(kind).iter_errors(resource)]
    if kind == "TrainJob":
        return errors + train_job_errors(resource)
    if kind == "TrainingRuntime":
        for rjob in resource.get("spec", {}).get("template", {}).get("spec", {}).get("replicatedJobs", []):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"runtime-{rjob.get('name')}-0-0"},
                   "spec": rjob.get("template", {}).get("spec", {}).get("template", {}).get("spec", {})}
            errors += [f"{rjob.get('name')} pod template: {e}" for e in _kubernetes_errors(pod)]
        return errors
    errors += pytorch_job_errors(resource)
    name = resource.get("metadata", {}).get("name", "job")
    for rtype, rspec in resource.get("spec", {}).get("pytorchReplicaSpecs", {}).items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-{rtype.lower()}-0"},
               "spec": rspec.get("template", {}).get("spec", {})}
        errors += [f"{rtype} pod template: {e}" for e in _kubernetes_errors(pod)]
    return errors


def _kubernetes_errors(resource: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{resource['kind']} {_path(err)}: {err.message}"]
    return []


@functools.cache
def _crd_schema(kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(CRDS[kind].read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(_strict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields forbidden wherever it lists an object's fields."""
    strict = dict(schema)
    if "properties" in schema:
        strict["properties"] = {name: _strict(field) for name, field in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            strict["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            strict[key] = _strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            strict[key] = [_strict(option) for option in schema[key]]
    return strict


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(root)"
