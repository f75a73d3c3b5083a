"""`python -m pretrain.submit` against a stand-in API server: requests, resume, status, logs, errors."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from data_pipeline.errors import run_cli
from pretrain.k8s.export_job import export_job
from pretrain.k8s.manifest import JobSpec, pytorch_job
from pretrain.submit import main
from tests.k8s.fake_apiserver import FakeApiServer
from tests.k8s.validation import resource_errors
from tests.pretrain.processes import REPO, process_env

CONFIG_TEXT = "train:\n  max_steps: 10\n"
JOBS = "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs"
CONFIGMAPS = "/api/v1/namespaces/team-a/configmaps"


def _condition(kind: str, minute: int, reason: str, message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": f"2026-11-21T10:{minute:02d}:00Z"}


# The conditions the operator reports as a job goes Created -> Running -> Succeeded or Failed.
_CREATED = _condition("Created", 0, "PyTorchJobCreated")
_RUNNING = _condition("Running", 1, "PyTorchJobRunning")
_STOPPED = {**_RUNNING, "status": "False"}
CREATED = {"conditions": [_CREATED]}
RUNNING = {"conditions": [_CREATED, _RUNNING]}
FAILED = {"conditions": [_CREATED, _STOPPED, _condition("Failed", 9, "PyTorchJobFailed", "demo-master-0 exited 1")]}
SUCCEEDED = {"conditions": [_CREATED, _STOPPED, _condition("Succeeded", 9, "PyTorchJobSucceeded")]}


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as fake:
        yield fake


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG_TEXT)
    return path


def _run(*argv: str) -> int:
    return run_cli(lambda: main(list(argv)))


def _submit(server: FakeApiServer, tmp_path: Path, config: Path, *extra: str) -> int:
    return _run("submit", "--kubeconfig", str(server.kubeconfig(tmp_path)), "--trainer", "tlm",
                "--config", str(config), "--name", "demo", "--gpus", "0", *extra)


def test_render_prints_a_config_map_and_an_admissible_job(config_file: Path, capsys) -> None:
    assert _run("render", "--trainer", "discrim", "--config", str(config_file), "--name", "demo",
                "--workers", "2", "--gpus", "4", "train.max_steps=5") == 0
    config_map, job = yaml.safe_load_all(capsys.readouterr().out)
    assert config_map["data"]["config.yaml"] == CONFIG_TEXT
    assert resource_errors(config_map) == [] and resource_errors(job) == []
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2 and job["spec"]["nprocPerNode"] == "4"


def test_submit_creates_the_config_map_then_the_job_that_owns_it(server, tmp_path, config_file, capsys) -> None:
    assert _submit(server, tmp_path, config_file, "train.max_steps=3") == 0
    assert server.calls() == [f"GET {JOBS}/demo", f"POST {CONFIGMAPS}", f"POST {JOBS}",
                              f"PATCH {CONFIGMAPS}/demo-config"]
    job_body = server.requests[2].body
    assert resource_errors(job_body) == []
    assert job_body == pytorch_job(JobSpec(name="demo", trainer="tlm", gpus=0, overrides=("train.max_steps=3",)))
    assert server.requests[1].body["data"] == {"config.yaml": CONFIG_TEXT}
    job = server.objects[("pytorchjobs", "team-a", "demo")]
    owner = server.objects[("configmaps", "team-a", "demo-config")]["metadata"]["ownerReferences"]
    assert owner == [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "demo",
                      "uid": job["metadata"]["uid"]}]
    assert "created pytorchjob/demo in namespace team-a" in capsys.readouterr().out


def test_submitting_a_failed_jobs_name_recreates_it_to_resume(server, tmp_path, config_file, capsys) -> None:
    old = pytorch_job(JobSpec(name="demo", trainer="tlm", gpus=0))
    server.add_job("team-a", old, FAILED)
    server.objects[("configmaps", "team-a", "demo-config")] = {"metadata": {"name": "demo-config", "uid": "u"}}
    assert _submit(server, tmp_path, config_file) == 0
    assert server.calls() == [f"GET {JOBS}/demo", f"DELETE {JOBS}/demo", f"GET {JOBS}/demo",
                              f"POST {CONFIGMAPS}", f"PUT {CONFIGMAPS}/demo-config", f"POST {JOBS}",
                              f"PATCH {CONFIGMAPS}/demo-config"]
    assert server.requests[1].body == {"propagationPolicy": "Foreground"}
    assert "resumes from the newest checkpoint in /checkpoints/demo" in capsys.readouterr().out


def test_submitting_a_running_jobs_name_is_refused(server, tmp_path, config_file, capsys) -> None:
    server.add_job("team-a", pytorch_job(JobSpec(name="demo", trainer="tlm")), RUNNING)
    assert _submit(server, tmp_path, config_file) == 2
    assert server.calls() == [f"GET {JOBS}/demo"]
    assert "pytorchjob demo is still Running in namespace team-a" in capsys.readouterr().err


def test_forbidden_is_a_one_line_permission_error_and_leaves_no_config_map(server, tmp_path, config_file,
                                                                            capsys) -> None:
    server.fail("POST", "/pytorchjobs$", 403, 'pytorchjobs.kubeflow.org is forbidden: User "alice" cannot '
                'create resource "pytorchjobs" in API group "kubeflow.org" in the namespace "team-a"')
    assert _submit(server, tmp_path, config_file) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: permission denied trying to create pytorchjob demo in namespace team-a")
    assert 'User "alice" cannot create resource "pytorchjobs"' in err and err.count("\n") == 1
    assert ("configmaps", "team-a", "demo-config") not in server.objects


def test_missing_pytorchjob_crd_says_to_install_the_operator(tmp_path, config_file, capsys) -> None:
    with FakeApiServer(crd_installed=False) as server:
        assert _submit(server, tmp_path, config_file) == 2
        assert server.calls() == [f"GET {JOBS}/demo"]
    err = capsys.readouterr().err
    assert "has no PyTorchJob resource (pytorchjobs.kubeflow.org/v1)" in err
    assert "install the Kubeflow training operator: kubectl apply --server-side -k" in err and err.count("\n") == 1


def test_unreachable_api_server_is_a_one_line_error(tmp_path, config_file, capsys) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "me", "user": {}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "me"}}]}))
    assert _run("status", "demo", "--kubeconfig", str(kubeconfig)) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}" in err
    assert "Connection refused" in err and err.count("\n") == 1


def test_no_kubeconfig_outside_a_pod_is_a_one_line_error(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert _run("status", "demo") == 2
    assert capsys.readouterr().err == (f"error: no Kubernetes cluster configured: no kubeconfig at "
                                       f"{tmp_path / 'missing'} and not running in a pod; set KUBECONFIG or "
                                       "pass --kubeconfig\n")


def test_namespace_comes_from_the_flag_over_the_context(server, tmp_path, capsys) -> None:
    assert _run("status", "demo", "--kubeconfig", str(server.kubeconfig(tmp_path)), "-n", "team-b") == 2
    assert server.calls() == ["GET /apis/kubeflow.org/v1/namespaces/team-b/pytorchjobs/demo"]
    assert "no pytorchjob 'demo' in namespace team-b" in capsys.readouterr().err


def test_status_shows_state_pods_and_conditions(server, tmp_path, capsys) -> None:
    server.add_job("team-a", pytorch_job(JobSpec(name="demo", trainer="tlm", workers=2, gpus=4)),
                   {**RUNNING, "replicaStatuses": {"Master": {"active": 1}, "Worker": {"active": 2}}})
    assert _run("status", "demo", "--kubeconfig", str(server.kubeconfig(tmp_path))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "pytorchjob/demo: Running (1 Master, 2 Worker x 4 processes)"
    assert lines[1:3] == ["  Master: active 1", "  Worker: active 2"]
    assert "Running    PyTorchJobRunning" in lines[-1]


@pytest.mark.parametrize("final, code", [(SUCCEEDED, 0), (FAILED, 1)])
def test_status_watch_follows_conditions_until_the_job_finishes(server, tmp_path, capsys, final, code) -> None:
    server.add_job("team-a", pytorch_job(JobSpec(name="demo", trainer="tlm")), CREATED, RUNNING, final)
    assert _run("status", "demo", "--watch", "--interval", "0",
                "--kubeconfig", str(server.kubeconfig(tmp_path))) == code
    conditions = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[1] for line in conditions] == ["Created", "Running", final["conditions"][-1]["type"]]
    assert len(server.requests) == 3


def test_logs_prints_the_masters_pytorch_container_log(server, tmp_path, capsys) -> None:
    server.add_job("team-a", pytorch_job(JobSpec(name="demo", trainer="tlm")), RUNNING)
    server.script_pod_log("demo-master-0", b"step 10 loss 7.1\nstep 20 loss 6.5\n")
    assert _run("logs", "demo", "--kubeconfig", str(server.kubeconfig(tmp_path))) == 0
    assert capsys.readouterr().out == "step 10 loss 7.1\nstep 20 loss 6.5\n"
    # Client releases spell booleans "false" or "False"; the API server's Go ParseBool takes either.
    query = {key: [value.lower() for value in values] for key, values in server.requests[-1].query.items()}
    assert query == {"container": ["pytorch"], "follow": ["false"], "previous": ["false"]}


def test_logs_of_an_elastic_job_come_from_the_first_worker(server, tmp_path, capsys) -> None:
    server.add_job("team-a", pytorch_job(JobSpec(name="demo", trainer="tlm", workers=2, min_workers=1)), RUNNING)
    server.script_pod_log("demo-worker-0", b"rank 0\n")
    assert _run("logs", "demo", "--kubeconfig", str(server.kubeconfig(tmp_path))) == 0
    assert capsys.readouterr().out == "rank 0\n"


def test_logs_follow_waits_for_the_container_to_start(server, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("pretrain.submit.time.sleep", lambda seconds: None)
    server.add_job("team-a", pytorch_job(JobSpec(name="demo", trainer="tlm")), CREATED)
    waiting = 'container "pytorch" in pod "demo-master-0" is waiting to start: ContainerCreating'
    server.script_pod_log("demo-master-0", (400, waiting), (400, waiting), b"started\n")
    assert _run("logs", "demo", "-f", "--kubeconfig", str(server.kubeconfig(tmp_path))) == 0
    captured = capsys.readouterr()
    assert captured.out == "started\n"
    assert captured.err.count("waiting for pod demo-master-0") == 1 and "ContainerCreating" in captured.err


def test_logs_without_follow_of_a_pod_not_started_is_a_user_error(server, tmp_path, capsys) -> None:
    server.add_job("team-a", pytorch_job(JobSpec(name="demo", trainer="tlm")), CREATED)
    assert _run("logs", "demo", "--kubeconfig", str(server.kubeconfig(tmp_path))) == 2
    assert "no log from pod demo-master-0 yet" in capsys.readouterr().err


def test_logs_of_a_pod_index_the_job_does_not_have_is_a_user_error(server, tmp_path, capsys) -> None:
    server.add_job("team-a", pytorch_job(JobSpec(name="demo", trainer="tlm", workers=2)), RUNNING)
    assert _run("logs", "demo", "--replica", "worker", "--index", "2",
                "--kubeconfig", str(server.kubeconfig(tmp_path))) == 2
    assert "has no worker pod 2; it has master 0..0, worker 0..1" in capsys.readouterr().err


def test_delete_removes_the_job_and_its_config_map_and_keeps_checkpoints(server, tmp_path, capsys) -> None:
    server.add_job("team-a", pytorch_job(JobSpec(name="demo", trainer="tlm")), SUCCEEDED)
    server.objects[("configmaps", "team-a", "demo-config")] = {"metadata": {"name": "demo-config", "uid": "u"}}
    assert _run("delete", "demo", "--kubeconfig", str(server.kubeconfig(tmp_path))) == 0
    assert server.calls() == [f"GET {JOBS}/demo", f"DELETE {JOBS}/demo", f"DELETE {CONFIGMAPS}/demo-config"]
    assert server.objects == {}
    assert "checkpoints stay in /checkpoints/demo" in capsys.readouterr().out


OBJECT_STORE = ("--run-root", "s3://bucket/runs", "--object-store-secret", "s3", "--cache-size", "10Gi",
                "data.train=[s3://bucket/c/train]", "data.tokenizer.vocab=s3://bucket/c/train/vocab.txt")


def test_object_store_job_mounts_no_pvc_and_takes_its_credentials_from_the_secret(config_file, capsys) -> None:
    assert _run("render", "--trainer", "tlm", "--config", str(config_file), "--name", "demo", "--gpus", "2",
                *OBJECT_STORE) == 0
    _, job = yaml.safe_load_all(capsys.readouterr().out)
    assert resource_errors(job) == []
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    [container] = pod["containers"]
    assert [v["name"] for v in pod["volumes"]] == ["config", "shard-cache", "dshm", "tmp"]
    assert pod["volumes"][1]["emptyDir"] == {"sizeLimit": "10Gi"} and container["workingDir"] == "/tmp"
    assert container["command"][9:13] == ["train.run_dir=s3://bucket/runs/$(JOB_NAME)", "train.resume=auto",
                                         "data.cache_dir=/cache", f"data.cache_limit={int(10 * 2**30 * 0.9) // 2}"]
    secret_refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"] if "secretKeyRef" in v.get("valueFrom", {})}
    assert secret_refs == {"AWS_ACCESS_KEY_ID": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"},
                           "AWS_SECRET_ACCESS_KEY": {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"},
                           "AWS_ENDPOINT_URL": {"name": "s3", "key": "AWS_ENDPOINT_URL", "optional": True},
                           "AWS_DEFAULT_REGION": {"name": "s3", "key": "AWS_DEFAULT_REGION", "optional": True}}


def test_delete_of_an_object_store_job_names_its_run_in_the_bucket(server, tmp_path, capsys) -> None:
    server.add_job("team-a", pytorch_job(JobSpec(name="demo", trainer="tlm", run_root="s3://bucket/runs")), SUCCEEDED)
    assert _run("delete", "demo", "--kubeconfig", str(server.kubeconfig(tmp_path))) == 0
    assert "checkpoints stay in s3://bucket/runs/demo, and a job" in capsys.readouterr().out


def test_unreadable_config_file_is_a_user_error(tmp_path, capsys) -> None:
    assert _run("render", "--trainer", "tlm", "--config", str(tmp_path / "nope.yaml"), "--name", "demo") == 2
    assert "cannot read --config" in capsys.readouterr().err


def test_config_that_is_not_yaml_is_a_user_error_with_its_line(tmp_path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  max_steps: [1\n")
    assert _run("render", "--trainer", "tlm", "--config", str(config), "--name", "demo") == 2
    assert f"{config}:3: invalid YAML" in capsys.readouterr().err


def test_config_key_the_trainer_does_not_know_fails_before_any_request(server, tmp_path, capsys) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("train:\n  max_stepz: 10\n")
    assert _submit(server, tmp_path, config) == 2
    assert server.requests == []
    assert f"{config}:2: unknown key 'train.max_stepz'; did you mean 'train.max_steps'?" in capsys.readouterr().err


def test_override_of_the_wrong_type_is_a_user_error(config_file, capsys) -> None:
    assert _run("render", "--trainer", "tlm", "--config", str(config_file), "--name", "demo",
                "train.max_steps=many") == 2
    assert "train.max_steps must be an integer, got 'many'" in capsys.readouterr().err


def test_render_trainjob_prints_a_config_map_our_runtime_and_an_admissible_trainjob(config_file: Path, capsys) -> None:
    assert _run("render", "--api", "trainjob", "--trainer", "tlm", "--config", str(config_file), "--name", "demo",
                "--workers", "1", "--gpus", "0", "train.max_steps=5") == 0
    config_map, runtime, job = yaml.safe_load_all(capsys.readouterr().out)
    assert (config_map["kind"], runtime["kind"], job["kind"]) == ("ConfigMap", "TrainingRuntime", "TrainJob")
    assert [resource_errors(r) for r in (config_map, runtime, job)] == [[], [], []]
    assert job["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]
    assert job["spec"]["trainer"]["command"][-1] == "train.max_steps=5"


@pytest.mark.parametrize("text", ["apiVersion: v1\nclusters: [\n  - bad: {\n", "just a string\n",
                                  "clusters: 3\ncontexts: 4\n"], ids=["not-yaml", "scalar", "wrong-shape"])
def test_malformed_kubeconfig_is_one_line_and_exit_2(tmp_path: Path, text: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(text)
    done = subprocess.run([sys.executable, "-m", "pretrain.submit", "status", "demo", "--kubeconfig",
                           str(kubeconfig)], capture_output=True, text=True, env=process_env(), cwd=REPO)
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: cannot use kubeconfig {kubeconfig}: ") and "kubectl config view" in line


@pytest.mark.parametrize("flags, message", [
    (("train.run_dir=/etc",), "override 'train.run_dir=/etc': the job sets train.run_dir=/checkpoints/<job name>"),
    (("train.resume=none",), "override 'train.resume=none': the job sets train.resume=auto"),
    (("--gpus", "8", "--nproc-per-node", "4"), "--nproc-per-node 4 with --gpus 8: each process drives one GPU"),
    (("--run-root", "runs"), "--run-root 'runs' is not an object-store URI"),
    (("--run-root", "s3://b/runs", "data.train=[s3://b/train]", "data.tokenizer.vocab=/data/vocab.txt"),
     "CONFIG: data.tokenizer.vocab is the local path /data/vocab.txt, but a job with --run-root mounts no data volume"),
    (("--run-root", "s3://b/runs", "data.cache_limit=5"), "override 'data.cache_limit=5': an object-store job sets"),
    (("--run-root", "s3://b/runs", "--cache-size", "1.5Gi"), "cache_size '1.5Gi' is not a whole number of bytes"),
])
def test_render_refuses_flags_that_break_the_job_in_one_line(config_file: Path, flags, message, capsys) -> None:
    assert _run("render", "--trainer", "tlm", "--config", str(config_file), "--name", "demo", *flags) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {message.replace('CONFIG', str(config_file))}")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("gpus, cpus, memory, shm", [(0, "8", "32Gi", "8Gi"), (1, "8", "32Gi", "8Gi"),
                                                     (8, "64", "256Gi", "64Gi")])
def test_pod_resources_default_per_gpu(gpus: int, cpus: str, memory: str, shm: str) -> None:
    spec = JobSpec(name="j", trainer="tlm", gpus=gpus)
    assert (spec.cpus, spec.memory, spec.shm_size) == (cpus, memory, shm)
    assert JobSpec(name="j", trainer="tlm", gpus=8, cpus="10", memory="40Gi").cpus == "10"


BATCH_JOBS = "/apis/batch/v1/namespaces/team-a/jobs"


def test_export_creates_the_export_job_of_a_run_and_says_how_to_copy_it_out(server, tmp_path, capsys) -> None:
    assert _run("export", "tiny-mlm", "--format", "npz", "hf", "--kubeconfig",
                str(server.kubeconfig(tmp_path))) == 0
    assert server.calls() == [f"GET {BATCH_JOBS}/export-tiny-mlm", f"POST {BATCH_JOBS}"]
    job = server.requests[1].body
    assert job == export_job("tiny-mlm", ["npz", "hf"]) and resource_errors(job) == []
    out = capsys.readouterr().out
    assert "kubectl cp checkpoints-reader:/checkpoints/tiny-mlm/export ./tiny-mlm-export" in out


def test_export_replaces_a_finished_export_job_and_refuses_a_running_one(server, tmp_path, capsys) -> None:
    kubeconfig = str(server.kubeconfig(tmp_path))
    finished = {**export_job("demo"), "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    server.objects[("jobs", "team-a", "export-demo")] = finished
    assert _run("export", "demo", "--kubeconfig", kubeconfig) == 0
    assert server.calls() == [f"GET {BATCH_JOBS}/export-demo", f"DELETE {BATCH_JOBS}/export-demo",
                              f"GET {BATCH_JOBS}/export-demo", f"POST {BATCH_JOBS}"]
    assert _run("export", "demo", "--kubeconfig", kubeconfig) == 2
    assert "job export-demo is still running in namespace team-a" in capsys.readouterr().err


def test_export_render_prints_the_job_without_a_cluster(capsys) -> None:
    assert _run("export", "demo", "--render") == 0
    assert yaml.safe_load(capsys.readouterr().out) == export_job("demo")
