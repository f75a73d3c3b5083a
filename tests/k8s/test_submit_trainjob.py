"""`python -m pretrain.submit ... --api trainjob` against the stand-in API server, through the real
`kubernetes` client: Trainer v2 TrainJobs (trainer.kubeflow.org/v1alpha1, trainjobs), our runtime,
status, node logs, delete, and the same one-line errors as for PyTorchJobs."""
from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.k8s.manifest import JobSpec
from pretrain.k8s.trainjob import train_job, training_runtime
from tests.k8s.fake_apiserver import FakeApiServer
from tests.k8s.test_submit_cli import _condition, _run, config_file, server  # noqa: F401  (shared fixtures)
from tests.k8s.validation import resource_errors

TRAINER = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a"
JOBS, RUNTIMES = f"{TRAINER}/trainjobs", f"{TRAINER}/trainingruntimes"
CONFIGMAPS = "/api/v1/namespaces/team-a/configmaps"
PODS = "/api/v1/namespaces/team-a/pods"


# A TrainJob has no Created or Running condition: it runs while its JobSet's Jobs have active pods.
RUNNING = {"jobsStatus": [{"name": "node", "active": 2, "ready": 2, "succeeded": 0, "failed": 0}]}
COMPLETE = {"conditions": [_condition("Complete", 9, "JobSetCompleted", "jobset completed")]}
FAILED = {"conditions": [_condition("Failed", 9, "JobSetFailed", "jobset failed: node-0 backoff limit")]}


def _cluster(server: FakeApiServer, tmp_path: Path) -> tuple[str, ...]:
    return ("--api", "trainjob", "--kubeconfig", str(server.kubeconfig(tmp_path)))


def _submit(server: FakeApiServer, tmp_path: Path, config: Path, *extra: str) -> int:
    return _run("submit", *_cluster(server, tmp_path), "--trainer", "tlm", "--config", str(config),
                "--name", "demo", "--gpus", "0", *extra)


def _job(**kwargs) -> dict:
    return train_job(JobSpec(**{"name": "demo", "trainer": "tlm", "gpus": 0, **kwargs}))


def test_submit_creates_our_runtime_the_config_map_and_the_trainjob(server, tmp_path, config_file, capsys) -> None:
    assert _submit(server, tmp_path, config_file, "--queue", "team-a", "train.max_steps=3") == 0
    assert server.calls() == [f"GET {JOBS}/demo", f"GET {RUNTIMES}/pretrain-service", f"POST {RUNTIMES}",
                              f"POST {CONFIGMAPS}", f"POST {JOBS}", f"PATCH {CONFIGMAPS}/demo-config"]
    assert server.requests[2].body == training_runtime()
    job_body = server.requests[4].body
    assert resource_errors(job_body) == []
    expected = _job(overrides=("train.max_steps=3",))
    expected["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    assert job_body == expected
    job = server.objects[("trainjobs", "team-a", "demo")]
    owner = server.objects[("configmaps", "team-a", "demo-config")]["metadata"]["ownerReferences"]
    assert owner == [{"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "name": "demo",
                      "uid": job["metadata"]["uid"]}]
    out = capsys.readouterr().out
    assert "trainingruntime/pretrain-service created" in out
    assert "created trainjob/demo in namespace team-a: 2 node pods x 1 processes" in out and "queued in team-a" in out


def test_an_object_store_job_runs_on_the_runtime_without_pvcs_with_the_secret_in_its_env(server, tmp_path, config_file,
                                                                                       capsys) -> None:
    flags = ("--run-root", "s3://bucket/runs", "--object-store-secret", "s3", "data.train=[s3://bucket/c/train]")
    assert _submit(server, tmp_path, config_file, *flags) == 0
    assert server.calls()[1:3] == [f"GET {RUNTIMES}/pretrain-service-object-store", f"POST {RUNTIMES}"]
    runtime, job = server.requests[2].body, server.requests[4].body
    assert runtime == training_runtime(object_store=True) and resource_errors(runtime) == []
    assert job == _job(run_root="s3://bucket/runs", object_store_secret="s3", overrides=flags[4:])
    assert resource_errors(job) == [] and job["spec"]["runtimeRef"]["name"] == "pretrain-service-object-store"
    assert [v["name"] for v in job["spec"]["trainer"]["env"]] == [
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"]
    assert "run directory: s3://bucket/runs/demo (submitting" in capsys.readouterr().out


def test_an_outdated_runtime_is_replaced_at_the_version_read_and_a_current_one_left(server, tmp_path,
                                                                                   config_file, capsys) -> None:
    outdated = training_runtime()
    outdated["spec"]["mlPolicy"]["numNodes"] = 4
    server.objects[("trainingruntimes", "team-a", "pretrain-service")] = {
        **outdated, "metadata": {**outdated["metadata"], "uid": "u", "resourceVersion": "7"}}
    assert _submit(server, tmp_path, config_file) == 0
    assert f"PUT {RUNTIMES}/pretrain-service" in server.calls()
    stored = server.objects[("trainingruntimes", "team-a", "pretrain-service")]
    assert stored["spec"] == training_runtime()["spec"] and stored["metadata"]["resourceVersion"] == "8"
    assert "trainingruntime/pretrain-service updated" in capsys.readouterr().out
    del server.objects[("trainjobs", "team-a", "demo")]
    server.requests.clear()
    assert _submit(server, tmp_path, config_file) == 0
    assert not any(call.startswith((f"PUT {RUNTIMES}", f"POST {RUNTIMES}")) for call in server.calls())


def test_submitting_a_failed_trainjobs_name_recreates_it_to_resume(server, tmp_path, config_file, capsys) -> None:
    server.add_job("team-a", _job(), FAILED)
    assert _submit(server, tmp_path, config_file) == 0
    assert server.calls()[:3] == [f"GET {JOBS}/demo", f"DELETE {JOBS}/demo", f"GET {JOBS}/demo"]
    assert server.requests[1].body == {"propagationPolicy": "Foreground"}
    assert "trainjob/demo failed earlier: re-creating it; training resumes from the newest checkpoint in " \
           "/checkpoints/demo" in capsys.readouterr().out


def test_submitting_a_running_trainjobs_name_is_refused(server, tmp_path, config_file, capsys) -> None:
    server.add_job("team-a", _job(), RUNNING)
    assert _submit(server, tmp_path, config_file) == 2
    assert server.calls() == [f"GET {JOBS}/demo"]
    err = capsys.readouterr().err
    assert "trainjob demo is still Running in namespace team-a" in err and "--api trainjob" in err


def test_a_cluster_without_trainer_v2_says_what_to_install(tmp_path, config_file, capsys) -> None:
    with FakeApiServer(trainer_installed=False) as server:
        assert _submit(server, tmp_path, config_file) == 2
        assert server.calls() == [f"GET {JOBS}/demo"]
    err = capsys.readouterr().err
    assert "has no TrainJob resource (trainjobs.trainer.kubeflow.org/v1alpha1); install Kubeflow Trainer v2: " \
           "kubectl apply --server-side -k" in err and err.count("\n") == 1


def test_forbidden_is_a_one_line_permission_error_and_leaves_no_config_map(server, tmp_path, config_file,
                                                                            capsys) -> None:
    server.fail("POST", "/trainjobs$", 403, 'trainjobs.trainer.kubeflow.org is forbidden: User "alice" cannot '
                'create resource "trainjobs" in API group "trainer.kubeflow.org" in the namespace "team-a"')
    assert _submit(server, tmp_path, config_file) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: permission denied trying to create trainjob demo in namespace team-a")
    assert err.count("\n") == 1 and ("configmaps", "team-a", "demo-config") not in server.objects


def test_elastic_flags_are_refused_for_a_trainjob_before_any_request(server, tmp_path, config_file, capsys) -> None:
    assert _submit(server, tmp_path, config_file, "--workers", "4", "--min-workers", "2") == 2
    assert server.requests == []
    assert "Trainer v2 has no elastic policy" in capsys.readouterr().err


def test_status_shows_nodes_and_running_pods(server, tmp_path, capsys) -> None:
    server.add_job("team-a", _job(workers=1, nproc_per_node=2), RUNNING)
    assert _run("status", "demo", *_cluster(server, tmp_path)) == 0
    assert capsys.readouterr().out.splitlines() == ["trainjob/demo: Running (2 nodes x 2 processes)",
                                                    "  node: active 2"]


@pytest.mark.parametrize("final, code", [(COMPLETE, 0), (FAILED, 1)])
def test_status_watch_follows_until_the_trainjob_completes_or_fails(server, tmp_path, capsys, final, code) -> None:
    server.add_job("team-a", _job(), {}, RUNNING, final)
    assert _run("status", "demo", "--watch", "--interval", "0", *_cluster(server, tmp_path)) == code
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "trainjob/demo: Pending (2 nodes x 1 processes)"
    assert lines[1].split()[1] == final["conditions"][0]["type"] and len(server.requests) == 3


def _node_pod(server: FakeApiServer, index: int, suffix: str, minute: int) -> str:
    name = f"demo-node-0-{index}-{suffix}"
    server.add_pod("team-a", name, {"jobset.sigs.k8s.io/jobset-name": "demo",
                                    "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                    "batch.kubernetes.io/job-completion-index": str(index)},
                   f"2026-11-21T10:{minute:02d}:00Z")
    return name


def test_logs_read_the_newest_pod_of_node_0s_node_container(server, tmp_path, capsys) -> None:
    server.add_job("team-a", _job(), RUNNING)
    _node_pod(server, 0, "abcde", 1)
    newest = _node_pod(server, 0, "fghij", 5)       # node 0 restarted: a new pod of the Indexed Job
    _node_pod(server, 1, "klmno", 6)
    server.script_pod_log(newest, b"step 10 loss 7.1\n")
    assert _run("logs", "demo", *_cluster(server, tmp_path)) == 0
    assert capsys.readouterr().out == "step 10 loss 7.1\n"
    listing, log = server.requests[-2:]
    assert listing.query["labelSelector"] == ["jobset.sigs.k8s.io/jobset-name=demo,jobset.sigs.k8s.io/"
                                              "replicatedjob-name=node,batch.kubernetes.io/job-completion-index=0"]
    assert log.path == f"{PODS}/{newest}/log" and log.query["container"] == ["node"]


def test_logs_follow_waits_for_a_nodes_pod_to_appear(server, tmp_path, capsys, monkeypatch) -> None:
    server.add_job("team-a", _job(), {})

    def pod_appears(seconds: float) -> None:
        server.script_pod_log(_node_pod(server, 1, "abcde", 1), b"started\n")
    monkeypatch.setattr("pretrain.submit.time.sleep", pod_appears)
    assert _run("logs", "demo", "-f", "--index", "1", *_cluster(server, tmp_path)) == 0
    captured = capsys.readouterr()
    assert captured.out == "started\n" and captured.err.count("waiting for node 1 of trainjob demo") == 1


@pytest.mark.parametrize("flags, message", [
    ((), "no log from node 0 of trainjob demo yet"),
    (("--index", "2"), "trainjob demo has no node 2; it has nodes 0..1"),
    (("--replica", "worker"), "--replica is for PyTorchJobs; a TrainJob's pods are nodes: pass --index 0..1"),
])
def test_logs_errors_are_one_line(server, tmp_path, capsys, flags, message) -> None:
    server.add_job("team-a", _job(), {})
    assert _run("logs", "demo", *flags, *_cluster(server, tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_delete_removes_the_trainjob_and_its_config_map_and_keeps_checkpoints(server, tmp_path, capsys) -> None:
    server.add_job("team-a", _job(), COMPLETE)
    server.objects[("configmaps", "team-a", "demo-config")] = {"metadata": {"name": "demo-config", "uid": "u"}}
    assert _run("delete", "demo", *_cluster(server, tmp_path)) == 0
    assert server.calls() == [f"GET {JOBS}/demo", f"DELETE {JOBS}/demo", f"DELETE {CONFIGMAPS}/demo-config"]
    assert "deleted trainjob/demo; its checkpoints stay in /checkpoints/demo" in capsys.readouterr().out


def test_a_missing_trainjob_names_the_kubectl_command_to_list_them(server, tmp_path, capsys) -> None:
    assert _run("status", "demo", *_cluster(server, tmp_path)) == 2
    assert "no trainjob 'demo' in namespace team-a; list them with `kubectl get trainjobs -n team-a`" in \
        capsys.readouterr().err
