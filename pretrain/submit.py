"""`python -m pretrain.submit`: run a training job on Kubernetes as a Kubeflow PyTorchJob or TrainJob.

The pod is built by pretrain/k8s/manifest.py, which wraps it in a PyTorchJob; pretrain/k8s/trainjob.py
wraps the same pod in a Trainer v2 TrainJob and our TrainingRuntime (the same jobs as the kustomize
manifests in k8s/); pretrain/k8s/kueue.py adds the Kueue labels. The tool talks to the cluster through
pretrain/k8s/cluster.py and reads a job's status with pretrain/k8s/status.py.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from data_pipeline.errors import UserError, run_cli
from data_pipeline.object_store import is_uri
from pretrain.config import load_config
from pretrain.k8s import status
from export.formats import FORMATS
from pretrain.k8s.cluster import PYTORCHJOBS, TRAINJOBS, Cluster, JobResource, NotFound, Rejected
from pretrain.k8s.export_job import DEFAULT_FORMATS, copy_commands, export_job
from pretrain.k8s.kueue import queued
from pretrain.k8s.status import batch_job_finished
from pretrain.k8s.manifest import (
    CACHE_DIR,
    CHECKPOINTS_DIR,
    CPUS_PER_GPU,
    DATA_DIR,
    TRAINERS,
    MEMORY_GIB_PER_GPU,
    SHM_GIB_PER_GPU,
    JobSpec,
    config_map,
    config_map_name,
    pytorch_job,
    run_dir,
    to_yaml,
)
from pretrain.k8s.trainjob import NODE, training_runtime, train_job

_PROG = "python -m pretrain.submit"
_APIS: dict[str, JobResource] = {"pytorchjob": PYTORCHJOBS, "trainjob": TRAINJOBS}

_DESCRIPTION = f"""\
Run a pretraining job on Kubernetes as a Kubeflow PyTorchJob (--api pytorchjob, the default: training
operator v1) or TrainJob (--api trainjob: Trainer v2). `kubectl api-resources | grep -E
'pytorchjobs|trainjobs'` shows which of the two a cluster has.

Each job gets a ConfigMap with its --config file and the job: a PyTorchJob has one Master pod plus
--workers Worker pods (or, with --min-workers, an elastic set of Workers); a TrainJob has 1 + --workers
node pods and uses the TrainingRuntime pretrain-service, which submit creates or updates. Each pod runs
`torchrun -m pretrain.<trainer> --config /etc/pretrain/config.yaml train.run_dir=... OVERRIDES`.
With --queue, Kueue admits the job when the queue has quota.

Inside every pod:
  /etc/pretrain/config.yaml   the --config file
  {DATA_DIR}                       the data PVC, read-only; also the working directory, so relative
                              paths in the config (shards, vocab) are read from the data volume
  {CHECKPOINTS_DIR}/NAME           the run directory on the checkpoints PVC (train.run_dir)

Object storage: with --run-root s3://BUCKET/runs the job mounts no PVC at all: the run directory is
s3://BUCKET/runs/NAME, every path the config reads (data.train, data.valid, data.tokenizer.vocab) must
be a URI too, shards are cached on an emptyDir at {CACHE_DIR} (--cache-size), and
--object-store-secret NAME gives the pods AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and, if the Secret
has them, AWS_ENDPOINT_URL (MinIO, Ceph) and AWS_DEFAULT_REGION from that Secret's keys.

Resuming: the run directory depends only on the job's name and the job runs with train.resume=auto,
so a crashed pod restarts from the newest checkpoint, and submitting a finished (failed or
succeeded) job's name again re-creates it and resumes. Use a new name to start from scratch."""

_EXAMPLES = f"""\
examples:
  # two pods x 8 GPUs, BERT-base MLM
  {_PROG} submit --trainer tlm --config configs/bert_base_mlm.yaml --name bert-1 \\
      --workers 1 --gpus 8 --image registry.example.com/pretrain-service:0.1.0
  {_PROG} status bert-1 --watch
  {_PROG} logs bert-1 --follow

  # it failed, or should train longer: the same name resumes from its newest checkpoint
  {_PROG} submit --trainer tlm --config configs/bert_base_mlm.yaml --name bert-1 \\
      --workers 1 --gpus 8 --image registry.example.com/pretrain-service:0.1.0 train.max_steps=200000

  # review the manifests, or apply them yourself
  {_PROG} render --trainer tlm --config configs/tiny_mlm.yaml --name tiny --gpus 0 | kubectl apply -f -

  {_PROG} delete bert-1     # the checkpoints stay on the checkpoints PVC

  # shards, vocab and checkpoints in S3 (or MinIO), credentials from the Secret s3-credentials
  {_PROG} submit --trainer tlm --config configs/bert_base_mlm.yaml --name bert-s3 --gpus 8 \
      --run-root s3://my-bucket/runs --object-store-secret s3-credentials \
      data.train=[s3://my-bucket/corpus/train] data.valid=[s3://my-bucket/corpus/valid] \
      data.tokenizer.vocab=s3://my-bucket/corpus/train/vocab.txt

  # a cluster with Trainer v2 and Kueue: a TrainJob queued in the LocalQueue team-a
  {_PROG} submit --api trainjob --queue team-a --trainer tlm --config configs/bert_base_mlm.yaml \\
      --name bert-2 --workers 1 --gpus 8 --image registry.example.com/pretrain-service:0.1.0
  {_PROG} status bert-2 --api trainjob --watch"""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description=_DESCRIPTION, epilog=_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    job, cluster, named = _job_arguments(), _cluster_arguments(), _cluster_command_arguments()

    render = commands.add_parser("render", parents=[job], help="print the ConfigMap and job as YAML",
                                 description="Print the job's ConfigMap and PyTorchJob (or TrainingRuntime "
                                             "and TrainJob) as YAML, for review or `kubectl apply -f -`. "
                                             "Needs no cluster.")
    render.set_defaults(run=_render)

    submit = commands.add_parser("submit", parents=[job, cluster], help="create the job in the cluster",
                                 description="Create the job. If a finished job of that name exists, it is "
                                             "deleted and re-created, and training resumes from its newest "
                                             "checkpoint; a job still running is left alone.")
    submit.set_defaults(run=_submit)

    show = commands.add_parser("status", parents=[named], help="show the job's state, pods and conditions",
                               description="Show the job's state, pods per replica type and conditions. "
                                           "With --watch, follow the conditions until the job finishes and "
                                           "exit 0 if it succeeded, 1 if it failed.")
    show.add_argument("name")
    show.add_argument("--watch", action="store_true", help="follow until the job succeeds or fails")
    show.add_argument("--interval", type=float, default=10.0, metavar="S",
                      help="seconds between polls with --watch (default: 10)")
    show.set_defaults(run=_status)

    logs = commands.add_parser("logs", parents=[named], help="print or stream the master's log",
                               description="Print the log of the job's trainer container: the master's "
                                           "(rank 0), the first worker's for an elastic job, node 0's for a "
                                           "TrainJob.")
    logs.add_argument("name")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="stream the log, waiting for the pod to start if it has not yet")
    logs.add_argument("--previous", action="store_true",
                      help="the log of the container's previous run (after a restart)")
    logs.add_argument("--replica", choices=("master", "worker"), help="a PyTorchJob's pods to read (default: "
                      "master, or worker for an elastic job)")
    logs.add_argument("--index", type=int, default=0, help="which pod of that replica type, or which node of "
                      "a TrainJob (default: 0)")
    logs.set_defaults(run=_logs)

    export = commands.add_parser("export", parents=[cluster], help="export a run's newest checkpoint (a Job)",
                                 description="Create the Job export-NAME, which exports the newest checkpoint "
                                             f"of run NAME into {CHECKPOINTS_DIR}/NAME/export, replacing a "
                                             "finished one of that name. With --render, print it instead.")
    export.add_argument("name", help="the training job's name (its run directory)")
    export.add_argument("--format", nargs="+", default=list(DEFAULT_FORMATS), choices=FORMATS, dest="formats",
                        help=f"export formats (default: {' '.join(DEFAULT_FORMATS)}; hf for BERT/GPT-2 shapes)")
    export.add_argument("--image", default=JobSpec.image, help=f"container image (default: {JobSpec.image})")
    export.add_argument("--data-pvc", default=JobSpec.data_pvc, help=f"(default: {JobSpec.data_pvc})")
    export.add_argument("--checkpoints-pvc", default=JobSpec.checkpoints_pvc,
                        help=f"(default: {JobSpec.checkpoints_pvc})")
    export.add_argument("--render", action="store_true", help="print the Job as YAML; touch no cluster")
    export.set_defaults(run=_export)

    delete = commands.add_parser("delete", parents=[named], help="delete the job and its ConfigMap",
                                 description="Delete the job, its pods and its ConfigMap. Its checkpoints "
                                             "stay on the checkpoints PVC: a job submitted later under the "
                                             "same name resumes from them.")
    delete.add_argument("name")
    delete.set_defaults(run=_delete)
    return parser


def _api_argument(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--api", choices=tuple(_APIS), default="pytorchjob",
                       help="pytorchjob: Kubeflow training operator v1 (default); trainjob: Kubeflow Trainer v2")


def _job_arguments() -> argparse.ArgumentParser:
    defaults = JobSpec(name="-", trainer=TRAINERS[0])
    args = argparse.ArgumentParser(add_help=False)
    group = args.add_argument_group("the job")
    _api_argument(group)
    group.add_argument("--trainer", required=True, choices=TRAINERS,
                       help="tlm: MLM/CLM (BERT, RoBERTa, GPT); paired: dual encoder; discrim: ELECTRA")
    group.add_argument("--config", required=True, type=Path, metavar="FILE",
                       help="training config (e.g. configs/tiny_mlm.yaml), checked against the trainer's "
                            "schema with the overrides, then shipped in a ConfigMap")
    group.add_argument("--name", required=True,
                       help="job name (DNS-1035: a-z, 0-9, '-'); names the run directory, so reuse it "
                            "to resume")
    group.add_argument("--image", default=defaults.image, help=f"container image (default: {defaults.image})")
    group.add_argument("--workers", type=int, default=defaults.workers,
                       help=f"Worker pods besides the Master (default: {defaults.workers})")
    group.add_argument("--min-workers", type=int, metavar="N",
                       help="make the job elastic (PyTorchJob only): no Master, --workers Workers that may "
                            "shrink to N")
    group.add_argument("--gpus", type=int, default=defaults.gpus,
                       help=f"GPUs per pod; 0 runs on CPU (default: {defaults.gpus})")
    group.add_argument("--nproc-per-node", type=int, metavar="N",
                       help="processes per pod (default: one per GPU, 1 on CPU)")
    group.add_argument("--cpus", help=f"CPU request per pod (default: {CPUS_PER_GPU} per GPU, {CPUS_PER_GPU} on CPU)")
    group.add_argument("--memory", help=f"memory per pod, request and limit, /dev/shm included (default: "
                                        f"{MEMORY_GIB_PER_GPU}Gi per GPU, {MEMORY_GIB_PER_GPU}Gi on CPU)")
    group.add_argument("--shm-size", help=f"/dev/shm for DataLoader workers (default: {SHM_GIB_PER_GPU}Gi per "
                                          f"GPU, {SHM_GIB_PER_GPU}Gi on CPU)")
    group.add_argument("--data-pvc", default=defaults.data_pvc,
                       help=f"PVC with the data, mounted read-only at {DATA_DIR} (default: {defaults.data_pvc})")
    group.add_argument("--checkpoints-pvc", default=defaults.checkpoints_pvc,
                       help=f"shared writable PVC mounted at {CHECKPOINTS_DIR} (default: {defaults.checkpoints_pvc})")
    group.add_argument("--run-root", metavar="URI", help="object-store prefix for run directories (e.g. "
                       "s3://bucket/runs): the run lives in URI/NAME and the job mounts no PVC; the config must "
                       "read its data and vocab by URI too")
    group.add_argument("--object-store-secret", metavar="SECRET", help="Secret whose keys AWS_ACCESS_KEY_ID, "
                       "AWS_SECRET_ACCESS_KEY (and optional AWS_ENDPOINT_URL, AWS_DEFAULT_REGION) become the "
                       "pods' env (default: none; the pod's service account or node role must then grant access)")
    group.add_argument("--cache-size", default=defaults.cache_size, help=f"with --run-root: the emptyDir at "
                       f"{CACHE_DIR} caching whole shards, shared by a pod's processes (default: "
                       f"{defaults.cache_size})")
    group.add_argument("--queue", metavar="NAME", help="Kueue LocalQueue to submit to (label "
                       "kueue.x-k8s.io/queue-name); the job waits there until Kueue admits it")
    group.add_argument("--priority-class", metavar="NAME", help="with --queue: Kueue WorkloadPriorityClass "
                       "(label kueue.x-k8s.io/priority-class)")
    group.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="config overrides passed to the trainer, e.g. train.max_steps=1000")
    return args


def _cluster_arguments() -> argparse.ArgumentParser:
    args = argparse.ArgumentParser(add_help=False)
    group = args.add_argument_group("the cluster")
    group.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, "
                                            "then the pod's service account)")
    group.add_argument("--context", help="kubeconfig context (default: the current one)")
    group.add_argument("--namespace", "-n", help="namespace (default: the context's, else default)")
    return args


def _cluster_command_arguments() -> argparse.ArgumentParser:
    """The cluster flags plus --api, for the commands that name an existing job."""
    args = argparse.ArgumentParser(add_help=False, parents=[_cluster_arguments()])
    _api_argument(args.add_argument_group("the job API"))
    return args


def _job_spec(args: argparse.Namespace) -> tuple[JobSpec, str]:
    """The JobSpec from the flags, and the config file's text once the trainer's schema accepts it
    with the overrides: a typo fails here with the local file:line, not later in the pods."""
    try:
        config_text = args.config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read --config {args.config} ({getattr(err, 'strerror', None) or err}); "
                        "pass a training config such as configs/tiny_mlm.yaml") from None
    schema = importlib.import_module(f"pretrain.{args.trainer}").RECIPE.schema
    cfg = load_config(schema, ["--config", str(args.config), *args.overrides])
    spec = JobSpec(name=args.name, trainer=args.trainer, image=args.image, workers=args.workers,
                   min_workers=args.min_workers, gpus=args.gpus, nproc_per_node=args.nproc_per_node,
                   cpus=args.cpus, memory=args.memory, shm_size=args.shm_size, data_pvc=args.data_pvc,
                   checkpoints_pvc=args.checkpoints_pvc, run_root=args.run_root,
                   object_store_secret=args.object_store_secret, cache_size=args.cache_size,
                   overrides=tuple(args.overrides))
    if spec.object_store:
        _check_no_local_paths(cfg, args.config)
    return spec, config_text


def _check_no_local_paths(cfg, config: Path) -> None:
    """An object-store job mounts no data volume: a local path in its config could only fail in the pods."""
    data = cfg.data
    for key, values in (("data.train", data.train), ("data.valid", data.valid),
                        ("data.tokenizer.vocab", (data.tokenizer.vocab,)),
                        ("data.tokenizer.codes", (data.tokenizer.codes,)),
                        ("data.sample.dir", (data.sample.dir,)), ("train.init_from", (cfg.train.init_from,))):
        local = [value for value in values if value and not is_uri(value)]
        if local:
            raise UserError(f"{config}: {key} is the local path {local[0]}, but a job with --run-root mounts no data "
                            f"volume: give an object-store URI (preprocess --out s3://... uploads the shards and the "
                            f"vocab beside them){', or set data.sample.dir=' if key == 'data.sample.dir' else ''}")


def _connect(args: argparse.Namespace) -> Cluster:
    # `export` has no --api: it works on a run directory, whichever API trained it.
    return Cluster.connect(args.kubeconfig, args.context, args.namespace, _APIS[getattr(args, "api", "pytorchjob")])


def _job(spec: JobSpec, args: argparse.Namespace) -> dict:
    """The job of the chosen API, with the Kueue labels when --queue is given."""
    job = train_job(spec) if args.api == "trainjob" else pytorch_job(spec)
    return queued(job, args.queue, args.priority_class)


def _render(args: argparse.Namespace) -> int:
    spec, config_text = _job_spec(args)
    job = _job(spec, args)
    runtime = [training_runtime(spec.object_store)] if args.api == "trainjob" else []
    sys.stdout.write(to_yaml([config_map(spec, config_text), *runtime, job]))
    return 0


def _submit(args: argparse.Namespace) -> int:
    spec, config_text = _job_spec(args)
    job = _job(spec, args)
    cluster = _connect(args)
    kind = cluster.jobs.singular
    previous = cluster.find_job(spec.name)
    if previous is not None:
        if not status.is_finished(previous):
            raise UserError(f"{kind} {spec.name} is still {status.state(previous)} in namespace "
                            f"{cluster.namespace}; follow it with `{_PROG} status {spec.name} --api {args.api} "
                            f"--watch`, or stop it with `{_PROG} delete {spec.name} --api {args.api}` before "
                            "submitting again")
        print(f"{kind}/{spec.name} {status.state(previous).lower()} earlier: re-creating it; training "
              f"resumes from the newest checkpoint in {spec.run_dir}")
        cluster.delete_job(spec.name)
        cluster.wait_job_deleted(spec.name)
    if args.api == "trainjob":
        runtime = training_runtime(spec.object_store)
        print(f"trainingruntime/{runtime['metadata']['name']} {cluster.apply_training_runtime(runtime)}")
    cluster.apply_config_map(config_map(spec, config_text))
    try:
        created = cluster.create_job(job)
    except UserError:
        cluster.delete_config_map(spec.config_map_name)
        raise
    cluster.make_owned_by(spec.config_map_name, created)
    if args.api == "trainjob":
        pods = f"{spec.workers + 1} node"
    else:
        pods = f"{'' if spec.elastic else '1 Master + '}{spec.workers} Worker"
    queue = f", queued in {args.queue}" if args.queue else ""
    print(f"created {kind}/{spec.name} in namespace {cluster.namespace}: {pods} pods x {spec.procs_per_pod} "
          f"processes, image {spec.image}{queue}")
    where = "" if spec.object_store else f" on PVC {spec.checkpoints_pvc}"
    print(f"run directory: {spec.run_dir}{where} (submitting {spec.name} again resumes from its newest checkpoint)")
    print(f"follow it:  {_PROG} status {spec.name} --api {args.api} --watch\n"
          f"            {_PROG} logs {spec.name} --api {args.api} --follow")
    return 0


def _status(args: argparse.Namespace) -> int:
    cluster = _connect(args)
    job = cluster.get_job(args.name)
    lines = status.summary(job)
    if not args.watch:
        print("\n".join(lines))
        return 0
    print(lines[0], flush=True)
    seen: set[tuple[str, str, str]] = set()
    while True:
        for condition in status.conditions(job):
            key = (condition["type"], condition.get("status", ""), condition.get("lastTransitionTime", ""))
            if condition.get("status") == "True" and key not in seen:
                seen.add(key)
                print(f"  {status.condition_line(condition)}", flush=True)
        if status.is_finished(job):
            return 0 if status.succeeded(job) else 1
        time.sleep(args.interval)
        job = cluster.get_job(args.name)


def _logs(args: argparse.Namespace) -> int:
    cluster = _connect(args)
    job = cluster.get_job(args.name)
    if args.api == "trainjob":
        container, what, find_pod = NODE, f"node {args.index} of trainjob {args.name}", _node_pod(cluster, job, args)
    else:
        pod = _pod_name(job, args.replica, args.index)
        container, what, find_pod = "pytorch", f"pod {pod}", lambda: pod
    waiting_for = ""
    while True:
        try:
            for chunk in cluster.stream_log(find_pod(), container, follow=args.follow, previous=args.previous):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            return 0
        except (NotFound, Rejected) as err:
            if not args.follow:
                raise UserError(f"no log from {what} yet ({err}); use --follow to wait for it") from None
            if str(err) != waiting_for:
                waiting_for = str(err)
                print(f"waiting for {what}: {err}", file=sys.stderr, flush=True)
            time.sleep(2.0)


def _node_pod(cluster: Cluster, job: dict, args: argparse.Namespace) -> Callable[[], str]:
    """A TrainJob's node pods are its JobSet's Indexed Job pods, named <job>-node-0-<index>-<random>:
    node `index` is the newest pod with its labels (a restarted node's pod is a new one)."""
    name, nodes = job["metadata"]["name"], (job["spec"].get("trainer") or {}).get("numNodes", 1)
    if args.replica is not None:
        raise UserError(f"--replica is for PyTorchJobs; a TrainJob's pods are nodes: pass --index 0..{nodes - 1}")
    if not 0 <= args.index < nodes:
        raise UserError(f"trainjob {name} has no node {args.index}; it has nodes 0..{nodes - 1}")
    selector = (f"{TRAINJOBS.pod_label}={name},jobset.sigs.k8s.io/replicatedjob-name={NODE},"
                f"batch.kubernetes.io/job-completion-index={args.index}")

    def find() -> str:
        pod = cluster.newest_pod(selector)
        if pod is None:
            raise NotFound(f"no pod with labels {selector}")
        return pod
    return find


def _pod_name(job: dict, replica: str | None, index: int) -> str:
    """The operator names pods <job>-<replica type, lower case>-<index>."""
    replica_specs = job["spec"]["pytorchReplicaSpecs"]
    replica = replica or ("master" if "Master" in replica_specs else "worker")
    rspec = replica_specs.get(replica.capitalize())
    if rspec is None or not 0 <= index < rspec.get("replicas", 1):
        present = ", ".join(f"{r.lower()} 0..{s.get('replicas', 1) - 1}" for r, s in replica_specs.items())
        raise UserError(f"job {job['metadata']['name']} has no {replica} pod {index}; it has {present}")
    return f"{job['metadata']['name']}-{replica}-{index}"


def _export(args: argparse.Namespace) -> int:
    job = export_job(args.name, args.formats, args.image, args.data_pvc, args.checkpoints_pvc)
    if args.render:
        sys.stdout.write(to_yaml([job]))
        return 0
    cluster = _connect(args)
    name = job["metadata"]["name"]
    previous = cluster.find_batch_job(name)
    if previous is not None:
        if not batch_job_finished(previous):
            raise UserError(f"job {name} is still running in namespace {cluster.namespace}; wait for it with "
                            f"`kubectl wait --for=condition=complete job/{name}`, or delete it first")
        cluster.delete_batch_job(name)
    cluster.create_batch_job(job)
    print(f"created job/{name} in namespace {cluster.namespace}: exports the newest checkpoint of "
          f"{run_dir(args.name)} to {run_dir(args.name)}/export ({' '.join(args.formats)})")
    print(f"wait for it:  kubectl wait --for=condition=complete job/{name} --timeout=15m -n {cluster.namespace}")
    print("copy it out:  " + "\n              ".join(copy_commands(args.name)))
    return 0


def _delete(args: argparse.Namespace) -> int:
    cluster = _connect(args)
    job = cluster.get_job(args.name)
    cluster.delete_job(args.name)
    cluster.delete_config_map(config_map_name(args.name))
    print(f"deleted {cluster.jobs.singular}/{args.name}; its checkpoints stay in {_job_run_dir(job)}, and a job "
          f"submitted as {args.name} again resumes from them")
    return 0


def _job_run_dir(job: dict) -> str:
    """The run directory a job's command names (on the checkpoints PVC, or in an object store)."""
    spec, name = job["spec"], job["metadata"]["name"]
    if "trainer" in spec:
        command = spec["trainer"].get("command", [])
    else:
        rspec = next(iter(spec["pytorchReplicaSpecs"].values()))
        command = rspec["template"]["spec"]["containers"][0].get("command", [])
    named = [arg.split("=", 1)[1] for arg in command if arg.startswith("train.run_dir=")]
    return named[-1].replace("$(JOB_NAME)", name) if named else run_dir(name)


if __name__ == "__main__":
    sys.exit(run_cli(main))
