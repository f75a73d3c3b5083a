"""A stand-in Kubernetes API server (http.server in a thread) for the calls `pretrain.submit` makes.

It keeps ConfigMaps, PyTorchJobs, TrainJobs, TrainingRuntimes and pods in memory per namespace, lists
pods by label selector, serves pod logs from scripted responses, records every request, and answers
errors like the real server: a JSON metav1.Status, except a plain-text `404 page not found` under an
API group that is not installed (no PyTorchJob CRD, no Trainer v2). Custom resources are replaced
only at the resourceVersion they were read at, as the real server demands of them.
"""
from __future__ import annotations

import json
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_ROUTE = re.compile(r"^/(?P<group>api/v1|apis/kubeflow\.org/v1|apis/batch/v1|apis/trainer\.kubeflow\.org/v1alpha1)/namespaces/"
                    r"(?P<namespace>[^/]+)/(?P<resource>[a-z]+)(?:/(?P<name>[^/]+))?(?P<log>/log)?$")
_RESOURCES = {"api/v1": ("configmaps", "pods"), "apis/kubeflow.org/v1": ("pytorchjobs",), "apis/batch/v1": ("jobs",),
              "apis/trainer.kubeflow.org/v1alpha1": ("trainjobs", "trainingruntimes")}
_CUSTOM = ("pytorchjobs", "trainjobs", "trainingruntimes")
_PLURALS = {"PyTorchJob": "pytorchjobs", "TrainJob": "trainjobs"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


class FakeApiServer:
    """Start with `with FakeApiServer() as server:`; point a kubeconfig at it with `server.kubeconfig()`."""

    def __init__(self, crd_installed: bool = True, trainer_installed: bool = True) -> None:
        self.crd_installed, self.trainer_installed = crd_installed, trainer_installed
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}   # (resource, namespace, name)
        self.requests: list[Request] = []
        self._failures: list[tuple[str, re.Pattern[str], int, str]] = []
        self._job_statuses: dict[str, deque[dict[str, Any]]] = {}
        self._pod_logs: dict[str, deque[bytes | tuple[int, str]]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))

    def __enter__(self) -> FakeApiServer:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(self, directory: Path, namespace: str = "team-a") -> Path:
        """A kubeconfig whose current context is this server, with `namespace` as its namespace."""
        path = directory / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "me", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": namespace}}],
        }))
        return path

    # -- scripting --------------------------------------------------------------------------------------

    def fail(self, method: str, path_pattern: str, code: int, message: str) -> None:
        """Answer requests matching `method` and the regex `path_pattern` with a Status error."""
        self._failures.append((method, re.compile(path_pattern), code, message))

    def add_job(self, namespace: str, job: dict[str, Any], *statuses: dict[str, Any]) -> None:
        """Store a job as if created earlier; each GET returns the next status (the last one repeats)."""
        self.objects[(_PLURALS[job["kind"]], namespace, job["metadata"]["name"])] = _stored(job)
        self.script_job_statuses(job["metadata"]["name"], *statuses)

    def add_pod(self, namespace: str, name: str, labels: dict[str, str], created: str) -> None:
        """A pod, as a controller would have created it at `created` (RFC 3339)."""
        self.objects[("pods", namespace, name)] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "creationTimestamp": created}}

    def script_job_statuses(self, name: str, *statuses: dict[str, Any]) -> None:
        self._job_statuses[name] = deque(statuses)

    def script_pod_log(self, pod: str, *responses: bytes | tuple[int, str]) -> None:
        """Successive answers to a pod's log request: log bytes, or (HTTP code, message) errors."""
        self._pod_logs[pod] = deque(responses)

    def calls(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    # -- serving ----------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        self.requests.append(Request(method, path, query, body))
        for fail_method, pattern, code, message in self._failures:
            if fail_method == method and pattern.search(path):
                return code, _status(code, message)
        if path.startswith("/apis/kubeflow.org/") and not self.crd_installed:
            return 404, b"404 page not found\n"
        if path.startswith("/apis/trainer.kubeflow.org/") and not self.trainer_installed:
            return 404, b"404 page not found\n"
        route = _ROUTE.match(path)
        if route is None or route["resource"] not in _RESOURCES[route["group"]]:
            return 404, b"404 page not found\n"
        resource, namespace, name = route["resource"], route["namespace"], route["name"]
        if route["log"]:
            return self._log(name)
        if method == "GET" and resource == "pods" and name is None:
            return 200, self._pod_list(namespace, query.get("labelSelector", [""])[0])
        key = (resource, namespace, name or (body or {}).get("metadata", {}).get("name"))
        if method == "POST":
            if key in self.objects:
                return 409, _status(409, f'{resource} "{key[2]}" already exists', "AlreadyExists")
            self.objects[key] = _stored(body)
            return 201, self.objects[key]
        if key not in self.objects:
            return 404, _status(404, f'{resource} "{name}" not found', "NotFound", name=name, kind=resource)
        if method == "GET":
            return 200, self._with_status(self.objects[key])
        if method == "PUT":
            stored = self.objects[key]["metadata"]
            if resource in _CUSTOM and body["metadata"].get("resourceVersion") != stored.get("resourceVersion"):
                if not body["metadata"].get("resourceVersion"):
                    return 422, _status(422, f'{resource} "{name}" is invalid: metadata.resourceVersion: Invalid '
                                             'value: 0x0: must be specified for an update', "Invalid")
                return 409, _status(409, f'Operation cannot be fulfilled on {resource} "{name}": the object has '
                                         'been modified; please apply your changes to the latest version and try '
                                         'again', "Conflict")
            self.objects[key] = {**body, "metadata": {**body["metadata"], "uid": stored["uid"],
                                                      "resourceVersion": str(int(stored.get("resourceVersion", 1)) + 1)}}
            return 200, self.objects[key]
        if method == "PATCH":
            self.objects[key]["metadata"].update(body.get("metadata", {}))
            return 200, self.objects[key]
        if method == "DELETE":
            del self.objects[key]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        return 405, _status(405, f"method {method} not allowed")

    def _pod_list(self, namespace: str, selector: str) -> dict[str, Any]:
        """Pods whose labels hold every key=value of an equality-based selector."""
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
        items = [pod for (resource, ns, _), pod in self.objects.items() if resource == "pods" and ns == namespace
                 and wanted.items() <= pod["metadata"]["labels"].items()]
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}

    def _with_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        statuses = self._job_statuses.get(obj["metadata"]["name"])
        if obj.get("kind") not in _PLURALS or not statuses:
            return obj
        status = statuses.popleft() if len(statuses) > 1 else statuses[0]
        return {**obj, "status": status}

    def _log(self, pod: str) -> tuple[int, Any]:
        responses = self._pod_logs.get(pod)
        if not responses:
            return 404, _status(404, f'pods "{pod}" not found', "NotFound", name=pod, kind="pods")
        response = responses.popleft() if len(responses) > 1 else responses[0]
        if isinstance(response, tuple):
            return response[0], _status(*response)
        return 200, response


def _stored(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = {"creationTimestamp": "2026-11-21T10:00:00Z", **obj["metadata"], "uid": str(uuid.uuid4()),
                "resourceVersion": "1"}
    return {**obj, "metadata": metadata}


def _status(code: int, message: str, reason: str | None = None, **details: str | None) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason or HTTPStatus(code).phrase.replace(" ", ""), "code": code,
            **({"details": details} if details else {})}


def _handler(server: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            code, payload = server.handle(self.command, url.path, parse_qs(url.query), body)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if isinstance(payload, bytes) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:  # keep the test output clean
            pass

    return Handler
