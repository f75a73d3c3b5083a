"""Kueue queueing for either job API: the labels Kueue reads from a job's metadata.

Kueue admits a PyTorchJob or a TrainJob (its integrations for both read the same labels) when its
LocalQueue has quota: `kueue.x-k8s.io/queue-name` names the queue, and `kueue.x-k8s.io/priority-class`
a WorkloadPriorityClass, which orders and preempts workloads without touching the pods' own priority.
Nothing else about the job changes.
"""
from __future__ import annotations

import copy
import re
from typing import Any

from data_pipeline.errors import UserError

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"

# A Kubernetes object name usable as a label value: a DNS-1123 label (queues, priority classes).
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_MAX_LABEL = 63


def queued(job: dict[str, Any], queue: str | None, priority_class: str | None = None) -> dict[str, Any]:
    """`job` with the Kueue labels for `queue` (and `priority_class`); `job` itself when queue is None."""
    if queue is None:
        if priority_class is not None:
            raise UserError("--priority-class needs --queue: Kueue reads the priority only of jobs it queues")
        return job
    labels = {QUEUE_LABEL: _checked("--queue", queue)}
    if priority_class is not None:
        labels[PRIORITY_LABEL] = _checked("--priority-class", priority_class)
    labelled = copy.deepcopy(job)
    labelled["metadata"]["labels"] = {**labelled["metadata"].get("labels", {}), **labels}
    return labelled


def _checked(flag: str, name: str) -> str:
    if not _NAME.fullmatch(name) or len(name) > _MAX_LABEL:
        raise UserError(f"{flag} {name!r} is not a Kubernetes object name: lowercase letters, digits and '-', "
                        f"starting and ending with a letter or digit, at most {_MAX_LABEL} characters")
    return name
