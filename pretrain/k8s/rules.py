"""What the Kubeflow training operator (v1, release 1.9) demands of a PyTorchJob beyond its schema.

The first group mirrors the operator's admission webhook, which rejects the job at `kubectl apply`;
the second group is what the operator needs later, when it builds the pods, and this project's own
policy. Each error names the field and says what it must be.
"""
from __future__ import annotations

import re
from typing import Any

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_MAX_LABEL = 63
_REPLICA_TYPES = ("Master", "Worker")


def pytorch_job_errors(job: dict[str, Any]) -> list[str]:
    """Every rule `job` breaks, as one message each; empty when the operator will accept and run it."""
    name = job.get("metadata", {}).get("name", "")
    spec = job.get("spec", {})
    replica_specs = spec.get("pytorchReplicaSpecs") or {}
    errors = _webhook_errors(name, spec, replica_specs)
    if "nprocPerNode" not in spec:
        errors.append('spec.nprocPerNode must be set (the default "auto" starts one process per CPU)')
    if "elasticPolicy" in spec and "Master" in replica_specs:
        errors.append("an elastic job (spec.elasticPolicy) must not have a Master: every pod is a Worker")
    for rtype, rspec in replica_specs.items():
        pytorch = [c for c in _containers(rspec) if c.get("name") == "pytorch"]
        if pytorch and not any(p.get("name") == "pytorchjob-port" for p in pytorch[0].get("ports", [])):
            errors.append(f"spec.pytorchReplicaSpecs.{rtype}: the pytorch container needs a port named "
                          "pytorchjob-port (the operator reads the rendezvous port from it)")
    # Every pod gets a Service named <job>-<type>-<index>, itself a DNS-1035 label.
    longest = max((f"{name}-{rtype.lower()}-{(rspec.get('replicas') or 1) - 1}"
                   for rtype, rspec in replica_specs.items()), key=len, default=name)
    if _DNS1035.fullmatch(name) and len(longest) > _MAX_LABEL:
        errors.append(f"metadata.name {name!r} is too long: pod service {longest!r} exceeds {_MAX_LABEL} "
                      "characters")
    return errors


def _webhook_errors(name: str, spec: dict[str, Any], replica_specs: dict[str, Any]) -> list[str]:
    errors = []
    if not _DNS1035.fullmatch(name) or len(name) > _MAX_LABEL:
        errors.append(f"metadata.name {name!r} must be a DNS-1035 label: lowercase letters, digits and "
                      f"'-', starting with a letter, ending with a letter or digit, at most {_MAX_LABEL} "
                      "characters")
    if not replica_specs:
        errors.append("spec.pytorchReplicaSpecs is required")
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        if "Worker" not in replica_specs:
            errors.append("spec.pytorchReplicaSpecs.Worker must be configured if elastic policy is used")
        if "nProcPerNode" in elastic and "nprocPerNode" in spec:
            errors.append("spec.elasticPolicy.nProcPerNode must not be used with spec.nprocPerNode")
    for rtype, rspec in replica_specs.items():
        path = f"spec.pytorchReplicaSpecs.{rtype}"
        if rtype not in _REPLICA_TYPES:
            errors.append(f"{path}: unsupported replica type; use {' or '.join(_REPLICA_TYPES)}")
        containers = _containers(rspec)
        if not containers:
            errors.append(f"{path}.template.spec.containers must be specified")
        for index, container in enumerate(containers):
            if not container.get("image"):
                errors.append(f"{path}.template.spec.containers[{index}].image is required")
        if containers and not any(c.get("name") == "pytorch" for c in containers):
            errors.append(f"{path}.template.spec.containers must have a container named pytorch")
        replicas = rspec.get("replicas")
        if rtype == "Master" and replicas != 1:
            errors.append(f"{path}.replicas must be 1, got {replicas}")
        elif replicas is not None and replicas < 1:
            errors.append(f"{path}.replicas must be at least 1, got {replicas}")
    return errors


def _containers(rspec: dict[str, Any]) -> list[dict[str, Any]]:
    return (rspec or {}).get("template", {}).get("spec", {}).get("containers") or []
