"""The few Kubernetes API calls the submit tool makes, each failure turned into a one-line UserError.

Jobs (PyTorchJobs: kubeflow.org/v1; TrainJobs and our TrainingRuntime: trainer.kubeflow.org/v1alpha1)
go through CustomObjectsApi, the ConfigMap holding the config and the pods and their logs through
CoreV1Api. The cluster comes from a kubeconfig (--kubeconfig, $KUBECONFIG or ~/.kube/config) or,
inside a pod, from its service account.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import urllib3
import yaml
from kubernetes import client, config

from data_pipeline.errors import UserError



@dataclass(frozen=True)
class JobResource:
    """Where a job API lives on the API server, the label on its pods, and how to install it."""

    kind: str
    group: str
    version: str
    plural: str
    pod_label: str            # carries the job's name on each of its pods
    install: str              # what to install, and the command, when the API server lacks the resource

    @property
    def singular(self) -> str:
        return self.kind.lower()


PYTORCHJOBS = JobResource("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", "training.kubeflow.org/job-name",
                          'the Kubeflow training operator: kubectl apply --server-side -k "github.com/kubeflow/'
                          'training-operator.git/manifests/overlays/standalone?ref=v1.9.3"')
TRAINJOBS = JobResource("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "jobset.sigs.k8s.io/jobset-name",
                        'Kubeflow Trainer v2: kubectl apply --server-side -k "https://github.com/kubeflow/trainer.git/'
                        'manifests/overlays/manager?ref=v2.3.0"')
RUNTIMES_PLURAL = "trainingruntimes"
_TIMEOUT = (10.0, 60.0)   # connect, read (seconds); log streams have no read timeout
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class NotFound(UserError):
    """The named object (or its namespace) does not exist."""


class AlreadyExists(UserError):
    """An object of that name exists already."""


class Rejected(UserError):
    """The API server refused the request as invalid (400, 422)."""


@dataclass
class Cluster:
    """An API client bound to one namespace."""

    api: client.ApiClient
    namespace: str
    jobs: JobResource = PYTORCHJOBS

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None,
                namespace: str | None = None, jobs: JobResource = PYTORCHJOBS) -> Cluster:
        """Kubeconfig if one exists (flag, $KUBECONFIG, ~/.kube/config), else the pod's service account."""
        path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        if any(Path(p).expanduser().is_file() for p in path.split(os.pathsep) if p):
            try:
                api = config.new_client_from_config(config_file=path, context=context, persist_config=False)
                contexts, active = config.list_kube_config_contexts(path)
            except (config.ConfigException, yaml.YAMLError, OSError) as err:
                raise UserError(f"cannot use kubeconfig {path}: {_one_line(str(err))}; check it with "
                                "`kubectl config view`") from None
            except (AttributeError, TypeError):  # YAML of another shape fails inside the client's loader
                raise UserError(f"cannot use kubeconfig {path}: it is not a kubeconfig (a mapping with "
                                "clusters, users and contexts); check it with `kubectl config view`") from None
            if context:
                active = next(c for c in contexts if c["name"] == context)
            default_namespace = active.get("context", {}).get("namespace") or "default"
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException as err:
                raise UserError(f"cannot use this pod's service account: {_one_line(str(err))}") from None
            api = client.ApiClient(configuration)
            default_namespace = _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        else:
            raise UserError(f"no Kubernetes cluster configured: no kubeconfig at {path} and not running in "
                            "a pod; set KUBECONFIG or pass --kubeconfig")
        return cls(api, namespace or default_namespace, jobs)

    @property
    def host(self) -> str:
        return self.api.configuration.host

    # -- jobs (PyTorchJobs or TrainJobs) ---------------------------------------------------------------

    def find_job(self, name: str) -> dict[str, Any] | None:
        """The job, or None if there is no job of that name."""
        jobs = self.jobs
        try:
            return self._call(f"read {jobs.singular} {name}", jobs.plural, client.CustomObjectsApi(self.api)
                              .get_namespaced_custom_object, jobs.group, jobs.version, self.namespace,
                              jobs.plural, name)
        except NotFound:
            return None

    def get_job(self, name: str) -> dict[str, Any]:
        job = self.find_job(name)
        if job is None:
            raise NotFound(f"no {self.jobs.singular} {name!r} in namespace {self.namespace}; list them with "
                           f"`kubectl get {self.jobs.plural} -n {self.namespace}`")
        return job

    def create_job(self, job: dict[str, Any]) -> dict[str, Any]:
        jobs = self.jobs
        return self._call(f"create {jobs.singular} {job['metadata']['name']}", jobs.plural,
                          client.CustomObjectsApi(self.api).create_namespaced_custom_object,
                          jobs.group, jobs.version, self.namespace, jobs.plural, job)

    def delete_job(self, name: str) -> None:
        """Delete the job; Foreground keeps it visible until the controller's pods are gone."""
        jobs = self.jobs
        self._call(f"delete {jobs.singular} {name}", jobs.plural,
                   client.CustomObjectsApi(self.api).delete_namespaced_custom_object, jobs.group, jobs.version,
                   self.namespace, jobs.plural, name, body={"propagationPolicy": "Foreground"})

    def wait_job_deleted(self, name: str, timeout_s: float = 300.0, poll_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.find_job(name) is not None:
            if time.monotonic() > deadline:
                raise UserError(f"{self.jobs.singular} {name} is still being deleted after {timeout_s:.0f}s; "
                                f"check its pods: kubectl get pods -n {self.namespace} -l "
                                f"{self.jobs.pod_label}={name}")
            time.sleep(poll_s)

    # -- TrainingRuntimes -----------------------------------------------------------------------------

    def apply_training_runtime(self, runtime: dict[str, Any]) -> str:
        """Create the runtime, or replace one whose spec differs; says which it did ("created", ...)."""
        name, group, version = runtime["metadata"]["name"], TRAINJOBS.group, TRAINJOBS.version
        custom = client.CustomObjectsApi(self.api)
        try:
            current = self._call(f"read trainingruntime {name}", RUNTIMES_PLURAL, custom.get_namespaced_custom_object,
                                 group, version, self.namespace, RUNTIMES_PLURAL, name)
        except NotFound:
            self._call(f"create trainingruntime {name}", RUNTIMES_PLURAL, custom.create_namespaced_custom_object,
                       group, version, self.namespace, RUNTIMES_PLURAL, runtime)
            return "created"
        if current.get("spec") == runtime["spec"]:
            return "unchanged"
        # Custom resources are only replaced at the version read (no unconditional update).
        replacement = {**runtime, "metadata": {**runtime["metadata"],
                                               "resourceVersion": current["metadata"].get("resourceVersion")}}
        self._call(f"replace trainingruntime {name}", RUNTIMES_PLURAL, custom.replace_namespaced_custom_object,
                   group, version, self.namespace, RUNTIMES_PLURAL, name, replacement)
        return "updated"

    # -- batch Jobs (export) ---------------------------------------------------------------------------

    def find_batch_job(self, name: str) -> dict[str, Any] | None:
        try:
            job = self._call(f"read job {name}", "jobs", client.BatchV1Api(self.api).read_namespaced_job,
                             name, self.namespace, _preload_content=False)
        except NotFound:
            return None
        return json.loads(job.data)

    def create_batch_job(self, job: dict[str, Any]) -> None:
        self._call(f"create job {job['metadata']['name']}", "jobs", client.BatchV1Api(self.api).create_namespaced_job,
                   self.namespace, job, _preload_content=False)

    def delete_batch_job(self, name: str, timeout_s: float = 120.0, poll_s: float = 2.0) -> None:
        """Delete the Job and its pod, and wait until the name is free for a new Job."""
        self._call(f"delete job {name}", "jobs", client.BatchV1Api(self.api).delete_namespaced_job, name,
                   self.namespace, body={"propagationPolicy": "Foreground"}, _preload_content=False)
        deadline = time.monotonic() + timeout_s
        while self.find_batch_job(name) is not None:
            if time.monotonic() > deadline:
                raise UserError(f"job {name} is still being deleted after {timeout_s:.0f}s; check it with "
                                f"`kubectl describe job {name} -n {self.namespace}`")
            time.sleep(poll_s)

    # -- ConfigMaps -----------------------------------------------------------------------------------

    def apply_config_map(self, config_map: dict[str, Any]) -> None:
        """Create the ConfigMap, or replace one left by an earlier job of the same name."""
        name = config_map["metadata"]["name"]
        core = client.CoreV1Api(self.api)
        try:
            self._call(f"create configmap {name}", "configmaps", core.create_namespaced_config_map,
                       self.namespace, config_map)
        except AlreadyExists:
            self._call(f"replace configmap {name}", "configmaps", core.replace_namespaced_config_map,
                       name, self.namespace, config_map)

    def make_owned_by(self, config_map_name: str, job: dict[str, Any]) -> None:
        """Let the job own the ConfigMap, so deleting the job (even with kubectl) deletes it too."""
        owner = {"apiVersion": job["apiVersion"], "kind": job["kind"], "name": job["metadata"]["name"],
                 "uid": job["metadata"]["uid"]}
        self._call(f"update configmap {config_map_name}", "configmaps",
                   client.CoreV1Api(self.api).patch_namespaced_config_map,
                   config_map_name, self.namespace, {"metadata": {"ownerReferences": [owner]}})

    def delete_config_map(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(f"delete configmap {name}", "configmaps",
                       client.CoreV1Api(self.api).delete_namespaced_config_map, name, self.namespace)

    # -- pods and logs --------------------------------------------------------------------------------

    def newest_pod(self, selector: str) -> str | None:
        """The name of the newest pod matching the label selector, or None if there is none."""
        pods = self._call(f"list pods {selector}", "pods", client.CoreV1Api(self.api).list_namespaced_pod,
                          self.namespace, label_selector=selector).items
        newest = max(pods, key=lambda pod: pod.metadata.creation_timestamp, default=None)
        return None if newest is None else newest.metadata.name

    def stream_log(self, pod: str, container: str, follow: bool = False, previous: bool = False) -> Iterator[bytes]:
        """A container's log as it arrives; NotFound/Rejected while the pod is not running yet."""
        response = self._call(f"read the log of pod {pod}", "pods",
                              client.CoreV1Api(self.api).read_namespaced_pod_log, pod, self.namespace,
                              container=container, follow=follow, previous=previous,
                              _preload_content=False, timeout=None)
        try:
            yield from response.stream(64 * 1024)
        except urllib3.exceptions.HTTPError as err:
            raise UserError(f"the log stream of pod {pod} broke off ({_one_line(str(err))}); run the "
                            "command again to re-attach") from None
        finally:
            response.release_conn()

    # -- errors ---------------------------------------------------------------------------------------

    def _call(self, action: str, resource: str, method: Callable[..., Any], *args: Any,
              timeout: tuple[float, float] | None = _TIMEOUT, **kwargs: Any) -> Any:
        if timeout is not None:
            kwargs["_request_timeout"] = timeout
        try:
            return method(*args, **kwargs)
        except client.ApiException as err:
            raise self._api_error(err, action, resource) from None
        except urllib3.exceptions.HTTPError as err:
            reason = getattr(err, "reason", None) or err
            raise UserError(f"cannot reach the Kubernetes API server at {self.host} "
                            f"({_one_line(str(reason)).split(': ', 1)[-1]}); is the cluster up and the "
                            "kubeconfig context right? try `kubectl cluster-info`") from None

    def _api_error(self, err: client.ApiException, action: str, resource: str) -> UserError:
        status = _status(err.body)
        message = _one_line(status.get("message") or err.reason or "")
        where = f"namespace {self.namespace} on {self.host}"
        if err.status == 401:
            return UserError(f"the API server at {self.host} rejected your credentials (401 Unauthorized) "
                             f"trying to {action}; refresh them (e.g. log in again) and retry")
        if err.status == 403:
            return UserError(f"permission denied trying to {action} in {where}: {message}; ask a cluster "
                             f"admin for a Role that allows it (see what you may do: `kubectl auth can-i "
                             f"--list -n {self.namespace}`)")
        if err.status == 404 and status.get("reason") == "NotFound":
            return NotFound(f"cannot {action}: {message}")
        if err.status == 404 and resource in (self.jobs.plural, RUNTIMES_PLURAL):
            jobs = self.jobs
            return UserError(f"the cluster at {self.host} has no {jobs.kind} resource ({jobs.plural}.{jobs.group}/"
                             f"{jobs.version}); install {jobs.install}")
        if err.status == 409:
            return AlreadyExists(f"cannot {action}: {message}")
        if err.status in (400, 422):
            return Rejected(f"the API server refused to {action}: {message}")
        return UserError(f"the API server at {self.host} answered {err.status} {err.reason} trying to "
                         f"{action}: {message}")


def _status(body: Any) -> dict[str, Any]:
    """The metav1.Status the API server sends with an error, or {} for a plain-text body."""
    try:
        status = json.loads(body or "")
    except (TypeError, ValueError):
        return {}
    return status if isinstance(status, dict) and status.get("kind") == "Status" else {}


def _one_line(text: str) -> str:
    return " ".join(text.split())
