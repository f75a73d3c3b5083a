"""`python -m pretrain.submit`: run a training job on Kubernetes as a Kubeflow PyTorchJob.

The job is built by pretrain/k8s/manifest.py (the same job as the kustomize manifests in k8s/), talks
to the cluster through pretrain/k8s/cluster.py and reads its status with pretrain/k8s/status.py.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Sequence

from data_pipeline.errors import UserError, run_cli
from pretrain.config import load_config
from pretrain.k8s import status
from pretrain.k8s.status import batch_job_finished
from export.exporter import FORMATS
from pretrain.k8s.cluster import Cluster, NotFound, Rejected
from pretrain.k8s.export_job import DEFAULT_FORMATS, copy_commands, export_job
from pretrain.k8s.manifest import (
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

_PROG = "python -m pretrain.submit"

_DESCRIPTION = f"""\
Run a pretraining job on Kubernetes as a Kubeflow PyTorchJob (training operator v1 installed).

Each job gets a ConfigMap with its --config file and a PyTorchJob: one Master pod plus --workers
Worker pods (or, with --min-workers, an elastic set of Workers), each running
`torchrun -m pretrain.<trainer> --config /etc/pretrain/config.yaml train.run_dir=... OVERRIDES`.

Inside every pod:
  /etc/pretrain/config.yaml   the --config file
  {DATA_DIR}                       the data PVC, read-only; also the working directory, so relative
                              paths in the config (shards, vocab) are read from the data volume
  {CHECKPOINTS_DIR}/NAME           the run directory on the checkpoints PVC (train.run_dir)

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

  {_PROG} delete bert-1     # the checkpoints stay on the checkpoints PVC"""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description=_DESCRIPTION, epilog=_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    job, cluster = _job_arguments(), _cluster_arguments()

    render = commands.add_parser("render", parents=[job], help="print the ConfigMap and PyTorchJob as YAML",
                                 description="Print the job's ConfigMap and PyTorchJob as YAML, for review "
                                             "or `kubectl apply -f -`. Needs no cluster.")
    render.set_defaults(run=_render)

    submit = commands.add_parser("submit", parents=[job, cluster], help="create the job in the cluster",
                                 description="Create the job. If a finished job of that name exists, it is "
                                             "deleted and re-created, and training resumes from its newest "
                                             "checkpoint; a job still running is left alone.")
    submit.set_defaults(run=_submit)

    show = commands.add_parser("status", parents=[cluster], help="show the job's state, pods and conditions",
                               description="Show the job's state, pods per replica type and conditions. "
                                           "With --watch, follow the conditions until the job finishes and "
                                           "exit 0 if it succeeded, 1 if it failed.")
    show.add_argument("name")
    show.add_argument("--watch", action="store_true", help="follow until the job succeeds or fails")
    show.add_argument("--interval", type=float, default=10.0, metavar="S",
                      help="seconds between polls with --watch (default: 10)")
    show.set_defaults(run=_status)

    logs = commands.add_parser("logs", parents=[cluster], help="print or stream the master's log",
                               description="Print the log of the job's pytorch container: the master's "
                                           "(rank 0), or the first worker's for an elastic job.")
    logs.add_argument("name")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="stream the log, waiting for the pod to start if it has not yet")
    logs.add_argument("--previous", action="store_true",
                      help="the log of the container's previous run (after a restart)")
    logs.add_argument("--replica", choices=("master", "worker"), help="which pods (default: master, "
                      "or worker for an elastic job)")
    logs.add_argument("--index", type=int, default=0, help="which pod of that replica type (default: 0)")
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

    delete = commands.add_parser("delete", parents=[cluster], help="delete the job and its ConfigMap",
                                 description="Delete the job, its pods and its ConfigMap. Its checkpoints "
                                             "stay on the checkpoints PVC: a job submitted later under the "
                                             "same name resumes from them.")
    delete.add_argument("name")
    delete.set_defaults(run=_delete)
    return parser


def _job_arguments() -> argparse.ArgumentParser:
    defaults = JobSpec(name="-", trainer=TRAINERS[0])
    args = argparse.ArgumentParser(add_help=False)
    group = args.add_argument_group("the job")
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
                       help="make the job elastic: no Master, --workers Workers that may shrink to N")
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


def _job_spec(args: argparse.Namespace) -> tuple[JobSpec, str]:
    """The JobSpec from the flags, and the config file's text once the trainer's schema accepts it
    with the overrides: a typo fails here with the local file:line, not later in the pods."""
    try:
        config_text = args.config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read --config {args.config} ({getattr(err, 'strerror', None) or err}); "
                        "pass a training config such as configs/tiny_mlm.yaml") from None
    schema = importlib.import_module(f"pretrain.{args.trainer}").RECIPE.schema
    load_config(schema, ["--config", str(args.config), *args.overrides])
    spec = JobSpec(name=args.name, trainer=args.trainer, image=args.image, workers=args.workers,
                   min_workers=args.min_workers, gpus=args.gpus, nproc_per_node=args.nproc_per_node,
                   cpus=args.cpus, memory=args.memory, shm_size=args.shm_size, data_pvc=args.data_pvc,
                   checkpoints_pvc=args.checkpoints_pvc, overrides=tuple(args.overrides))
    return spec, config_text


def _connect(args: argparse.Namespace) -> Cluster:
    return Cluster.connect(args.kubeconfig, args.context, args.namespace)


def _render(args: argparse.Namespace) -> int:
    spec, config_text = _job_spec(args)
    sys.stdout.write(to_yaml([config_map(spec, config_text), pytorch_job(spec)]))
    return 0


def _submit(args: argparse.Namespace) -> int:
    spec, config_text = _job_spec(args)
    job = pytorch_job(spec)
    cluster = _connect(args)
    previous = cluster.find_job(spec.name)
    if previous is not None:
        if not status.is_finished(previous):
            raise UserError(f"pytorchjob {spec.name} is still {status.state(previous)} in namespace "
                            f"{cluster.namespace}; follow it with `{_PROG} status {spec.name} --watch`, or "
                            f"stop it with `{_PROG} delete {spec.name}` before submitting again")
        print(f"pytorchjob/{spec.name} {status.state(previous).lower()} earlier: re-creating it; training "
              f"resumes from the newest checkpoint in {run_dir(spec.name)}")
        cluster.delete_job(spec.name)
        cluster.wait_job_deleted(spec.name)
    cluster.apply_config_map(config_map(spec, config_text))
    try:
        created = cluster.create_job(job)
    except UserError:
        cluster.delete_config_map(spec.config_map_name)
        raise
    cluster.make_owned_by(spec.config_map_name, created)
    pods = "" if spec.elastic else "1 Master + "
    print(f"created pytorchjob/{spec.name} in namespace {cluster.namespace}: {pods}{spec.workers} Worker "
          f"pods x {spec.procs_per_pod} processes, image {spec.image}")
    print(f"run directory: {run_dir(spec.name)} on PVC {spec.checkpoints_pvc} (submitting {spec.name} again "
          "resumes from its newest checkpoint)")
    print(f"follow it:  {_PROG} status {spec.name} --watch\n"
          f"            {_PROG} logs {spec.name} --follow")
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
            return 0 if status.state(job) == "Succeeded" else 1
        time.sleep(args.interval)
        job = cluster.get_job(args.name)


def _logs(args: argparse.Namespace) -> int:
    cluster = _connect(args)
    job = cluster.get_job(args.name)
    pod = _pod_name(job, args.replica, args.index)
    waiting_for = ""
    while True:
        try:
            for chunk in cluster.stream_log(pod, follow=args.follow, previous=args.previous):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            return 0
        except (NotFound, Rejected) as err:
            if not args.follow:
                raise UserError(f"no log from pod {pod} yet ({err}); use --follow to wait for it") from None
            if str(err) != waiting_for:
                waiting_for = str(err)
                print(f"waiting for pod {pod}: {err}", file=sys.stderr, flush=True)
            time.sleep(2.0)


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
    cluster.get_job(args.name)
    cluster.delete_job(args.name)
    cluster.delete_config_map(config_map_name(args.name))
    print(f"deleted pytorchjob/{args.name}; its checkpoints stay in {run_dir(args.name)} on the checkpoints "
          f"PVC, and a job submitted as {args.name} again resumes from them")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
