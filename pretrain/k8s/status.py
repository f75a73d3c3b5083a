"""How a PyTorchJob's (and an export Job's) status reads: its state, whether it has finished, and lines for a terminal."""
from __future__ import annotations

from typing import Any

FINISHED = ("Succeeded", "Failed")


def conditions(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The operator's conditions (Created, Running, Restarting, Suspended, Succeeded, Failed), oldest first."""
    return list(job.get("status", {}).get("conditions") or [])


def state(job: dict[str, Any]) -> str:
    """The newest condition that holds, as `kubectl get pytorchjobs` shows it; Pending before any."""
    holding = [c["type"] for c in conditions(job) if c.get("status") == "True"]
    return holding[-1] if holding else "Pending"


def is_finished(job: dict[str, Any]) -> bool:
    return any(c["type"] in FINISHED and c.get("status") == "True" for c in conditions(job))


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
    """A job's name and state, pods per replica type, then its conditions."""
    name = job["metadata"]["name"]
    replica_specs = job.get("spec", {}).get("pytorchReplicaSpecs", {})
    shape = ", ".join(f"{spec.get('replicas', 1)} {rtype}" for rtype, spec in replica_specs.items())
    lines = [f"pytorchjob/{name}: {state(job)} ({shape} x {job['spec'].get('nprocPerNode')} processes)"]
    for rtype, counts in (job.get("status", {}).get("replicaStatuses") or {}).items():
        shown = ", ".join(f"{key} {value}" for key, value in counts.items()
                          if key in ("active", "succeeded", "failed") and value)
        lines.append(f"  {rtype}: {shown or 'no pods yet'}")
    lines.extend(f"  {condition_line(c)}" for c in conditions(job))
    return lines
