"""How a job's status reads (a PyTorchJob's, a TrainJob's, an export Job's): its state, whether it has
finished, and lines for a terminal."""
from __future__ import annotations

from typing import Any

SUCCEEDED = ("Succeeded", "Complete")     # PyTorchJob, TrainJob
FINISHED = (*SUCCEEDED, "Failed")


def conditions(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The controller's conditions, oldest first: a PyTorchJob's Created, Running, Restarting, Suspended,
    Succeeded, Failed; a TrainJob's Suspended, Complete, Failed."""
    return list(job.get("status", {}).get("conditions") or [])


def state(job: dict[str, Any]) -> str:
    """The newest condition that holds, as `kubectl get` shows it. Before any: a TrainJob with active
    pods (it has no Running condition) is Running, anything else Pending."""
    holding = [c["type"] for c in conditions(job) if c.get("status") == "True"]
    if holding:
        return holding[-1]
    active = any(jobs.get("active") for jobs in job.get("status", {}).get("jobsStatus") or [])
    return "Running" if active else "Pending"


def is_finished(job: dict[str, Any]) -> bool:
    return any(c["type"] in FINISHED and c.get("status") == "True" for c in conditions(job))


def succeeded(job: dict[str, Any]) -> bool:
    return state(job) in SUCCEEDED


def batch_job_finished(job: dict[str, Any]) -> bool:
    """A batch/v1 Job (export) has finished once its Complete or Failed condition holds."""
    return any(c["type"] in ("Complete", "Failed") and c.get("status") == "True" for c in conditions(job))


def condition_line(condition: dict[str, Any]) -> str:
    when = condition.get("lastTransitionTime") or condition.get("lastUpdateTime") or "-"
    holds = "" if condition.get("status") == "True" else " (over)"
    line = f"{when}  {condition['type'] + holds:<10}"
    if condition.get("reason"):
        line += f" {condition['reason']}"
    if condition.get("message"):
        line += f": {condition['message']}"
    return line


def summary(job: dict[str, Any]) -> list[str]:
    """A job's name and state, its pods (per replica type, or per replicated Job), then its conditions."""
    name, spec = job["metadata"]["name"], job.get("spec", {})
    if job.get("kind") == "TrainJob":
        trainer = spec.get("trainer") or {}
        lines = [f"trainjob/{name}: {state(job)} ({trainer.get('numNodes', 1)} nodes x "
                 f"{trainer.get('numProcPerNode', 'auto')} processes)"]
        counts_by_group = {jobs.get("name", "?"): jobs for jobs in job.get("status", {}).get("jobsStatus") or []}
    else:
        replica_specs = spec.get("pytorchReplicaSpecs", {})
        shape = ", ".join(f"{rspec.get('replicas', 1)} {rtype}" for rtype, rspec in replica_specs.items())
        lines = [f"pytorchjob/{name}: {state(job)} ({shape} x {spec.get('nprocPerNode')} processes)"]
        counts_by_group = job.get("status", {}).get("replicaStatuses") or {}
    for group, counts in counts_by_group.items():
        shown = ", ".join(f"{key} {value}" for key, value in counts.items()
                          if key in ("active", "succeeded", "failed") and value)
        lines.append(f"  {group}: {shown or 'no pods yet'}")
    lines.extend(f"  {condition_line(c)}" for c in conditions(job))
    return lines
