"""The batch Jobs around a training run: exporting its newest checkpoint, and a short-lived pod that
mounts the checkpoints volume so that `kubectl cp` can copy the export out.

k8s/export/export-job.yaml is `export_job("pretrain")` and k8s/copy/pod.yaml is `checkpoints_reader()`
(tests/k8s keeps them equal), so `submit export NAME` and `kubectl apply -k` create the same objects.
"""
from __future__ import annotations

from typing import Any, Sequence

from data_pipeline.errors import UserError
from export.formats import FORMATS
from pretrain.k8s.manifest import (CHECKPOINTS_DIR, DATA_DIR, HOME_ON_TMP, container_security,
                                   pod_security, run_dir)

DEFAULT_FORMATS = ("npz", "torch")
READER_POD = "checkpoints-reader"
READER_LIFETIME_S = 3600


def export_job_name(run: str) -> str:
    return f"export-{run}"


def export_job(run: str, formats: Sequence[str] = DEFAULT_FORMATS, image: str = "pretrain-service:latest",
               data_pvc: str = "pretrain-data", checkpoints_pvc: str = "pretrain-checkpoints") -> dict[str, Any]:
    """A Job running `python -m export` on the newest checkpoint of run `run` into its run_dir/export.

    Its working directory is the data volume (read-only), as the training pods', so the tokenizer paths
    in the checkpoint's config resolve the same way."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"export format {', '.join(unknown) or '(none)'}: use one or more of {', '.join(FORMATS)}")
    script = (f'python -m export --format {" ".join(formats)} --out "{CHECKPOINTS_DIR}/$RUN/export" '
              f'--checkpoint "$(ls {CHECKPOINTS_DIR}/$RUN/checkpoints/ckpt-*.pt | tail -n 1)"')
    container = {
        "name": "export", "image": image, "imagePullPolicy": "IfNotPresent", "workingDir": DATA_DIR,
        "command": ["sh", "-c", script],
        "env": [{"name": "RUN", "value": run}, dict(HOME_ON_TMP)],    # the run directory is /checkpoints/$RUN
        "resources": {"requests": {"cpu": "1", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
        "securityContext": container_security(),
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR, "readOnly": True},
                         {"name": "checkpoints", "mountPath": CHECKPOINTS_DIR},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": data_pvc, "readOnly": True}},
               {"name": "checkpoints", "persistentVolumeClaim": {"claimName": checkpoints_pvc}},
               {"name": "tmp", "emptyDir": {}}]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": export_job_name(run)},
            "spec": {"backoffLimit": 1, "template": {"spec": {
                "restartPolicy": "Never", "securityContext": pod_security(), "containers": [container],
                "volumes": volumes}}}}


def checkpoints_reader(image: str = "pretrain-service:latest",
                       checkpoints_pvc: str = "pretrain-checkpoints") -> dict[str, Any]:
    """A pod that mounts the checkpoints volume read-only and sleeps (at most an hour), for
    `kubectl cp checkpoints-reader:/checkpoints/RUN/export DIR`; delete it when done."""
    container = {
        "name": "reader", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["sleep", str(READER_LIFETIME_S)],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": container_security(),
        "volumeMounts": [{"name": "checkpoints", "mountPath": CHECKPOINTS_DIR, "readOnly": True}],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": READER_POD},
            "spec": {"restartPolicy": "Never", "activeDeadlineSeconds": READER_LIFETIME_S,
                     "securityContext": pod_security(), "containers": [container],
                     "volumes": [{"name": "checkpoints",
                                  "persistentVolumeClaim": {"claimName": checkpoints_pvc, "readOnly": True}}]}}


def copy_commands(run: str) -> list[str]:
    """The kubectl commands that copy run `run`'s export to ./RUN-export through the reader pod."""
    return ["kubectl apply -k k8s/copy",
            f"kubectl wait --for=condition=ready pod/{READER_POD} --timeout=5m",
            f"kubectl cp {READER_POD}:{run_dir(run)}/export ./{run}-export",
            f"kubectl delete pod {READER_POD}"]
