from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist

from data_pipeline.errors import UserError
from pretrain.distributed import init_distributed, launch_ranks, select_device
from tests.pretrain.processes import finish, free_port, pod_env, start


def test_single_process_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PET_NPROC_PER_NODE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    env = init_distributed("cpu")
    assert (env.rank, env.world_size, env.local_rank, env.device, env.is_main) == (0, 1, 0, torch.device("cpu"), True)
    assert not dist.is_initialized()


def test_torchrun_worker_variables_are_used():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "m", "MASTER_PORT": "1",
           "TORCHELASTIC_RUN_ID": "job", "PET_NPROC_PER_NODE": "2"}
    assert launch_ranks(env) == (3, 4, 1)


def test_plain_pod_launch_uses_the_operator_rank_and_world_size():
    env = {"RANK": "2", "WORLD_SIZE": "3", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456",
           "PET_NPROC_PER_NODE": "auto", "PET_NODE_RANK": "2", "PET_NNODES": "3"}
    assert launch_ranks(env) == (2, 3, 0)


def test_plain_launch_with_several_processes_per_pod_asks_for_torchrun():
    env = {"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "m", "MASTER_PORT": "1", "PET_NPROC_PER_NODE": "2"}
    with pytest.raises(UserError, match="PET_NPROC_PER_NODE=2 .* start it with `torchrun"):
        launch_ranks(env)


def test_elastic_job_without_torchrun_is_an_error():
    env = {"PET_RDZV_BACKEND": "c10d", "PET_RDZV_ENDPOINT": "job-master-0:23456", "PET_NNODES": "1:3"}
    with pytest.raises(UserError, match="elastic PyTorchJob.*torchrun"):
        launch_ranks(env)


@pytest.mark.parametrize("env, message", [
    ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "m", "MASTER_PORT": "1"},
     r"RANK=2 must lie in \[0, WORLD_SIZE=2\)"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR and MASTER_PORT not set"),
    ({"RANK": "0"}, "WORLD_SIZE is not set but RANK is"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
])
def test_inconsistent_launch_variables_are_one_line_errors(env, message):
    with pytest.raises(UserError, match=message):
        launch_ranks(env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_a_gpu_is_an_error():
    with pytest.raises(UserError, match="no CUDA device is visible"):
        select_device("cuda", 0)


def reports(out_dir):
    return sorted((json.loads(p.read_text()) for p in out_dir.glob("rank*.json")), key=lambda r: r["rank"])


@pytest.mark.slow
def test_pytorchjob_plain_launch_of_two_pods_joins_one_group(tmp_path):
    port = free_port()
    procs = [start(["-m", "tests.pretrain.dist_probe", str(tmp_path)], pod_env(pod, 2, port, 1)) for pod in (0, 1)]
    for code, out in finish(procs):
        assert code == 0, out
    assert [(r["rank"], r["world_size"], r["local_rank"], r["all_reduce_sum"]) for r in reports(tmp_path)] == [
        (0, 2, 0, 2.0), (1, 2, 0, 2.0)]


@pytest.mark.slow
def test_pytorchjob_torchrun_reads_pet_variables_for_two_pods_of_two(tmp_path):
    # torchrun started with no flags, as in a pod: it takes nnodes, node rank, nproc per node and the
    # master address from PET_*, and gives its workers RANK = node_rank * nproc + local_rank.
    port = free_port()
    torchrun = ["-m", "torch.distributed.run", "-m", "tests.pretrain.dist_probe", str(tmp_path)]
    procs = [start(torchrun, pod_env(pod, 2, port, 2)) for pod in (0, 1)]
    for code, out in finish(procs):
        assert code == 0, out
    got = reports(tmp_path)
    assert [(r["rank"], r["world_size"], r["local_rank"], r["all_reduce_sum"]) for r in got] == [
        (0, 4, 0, 4.0), (1, 4, 1, 4.0), (2, 4, 0, 4.0), (3, 4, 1, 4.0)]
    assert got[0]["pod_of_rank"] == ["0", "0", "1", "1"]
