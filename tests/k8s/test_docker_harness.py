"""What the Docker runner makes of a rendered pod, checked without a daemon: the user, the read-only
root filesystem and /data, the dropped capabilities, the memory limit and the sized /dev/shm."""
from __future__ import annotations

import os
from pathlib import Path

from pretrain.k8s.manifest import JobSpec, config_map, pytorch_job
from tests.k8s.docker_harness import security_options, volume_options
from tests.k8s.operator_harness import pytorch_container


def test_a_rendered_pod_runs_as_the_cluster_would_run_it(tmp_path: Path) -> None:
    job_spec = JobSpec(name="tiny", trainer="tlm", gpus=0, memory="3Gi", shm_size="512Mi")
    job = pytorch_job(job_spec)
    rspec = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    spec, container = rspec["template"]["spec"], pytorch_container(rspec)
    assert security_options(spec, container) == ["--user", "10001:10001", "--group-add", "10001", "--read-only",
                                                 "--security-opt", "no-new-privileges", "--cap-drop=ALL",
                                                 "--memory", "3g"]
    claims = {"pretrain-data": tmp_path / "data", "pretrain-checkpoints": tmp_path / "checkpoints"}
    for directory in claims.values():
        directory.mkdir()
    config = config_map(job_spec, "train: {}\n")
    config_maps = {config["metadata"]["name"]: config}
    options = volume_options("tiny-worker-0", spec, container, claims, config_maps, tmp_path)
    pairs = list(zip(options[::2], options[1::2], strict=True))
    assert ("-v", f"{claims['pretrain-data']}:/data:ro") in pairs
    assert ("-v", f"{claims['pretrain-checkpoints']}:/checkpoints") in pairs
    assert ("--tmpfs", "/dev/shm:rw,mode=1777,size=512m") in pairs
    [config_dir] = [value.split(":")[0] for _, value in pairs if value.endswith(":/etc/pretrain:ro")]
    assert (Path(config_dir) / "config.yaml").stat().st_mode & 0o777 == 0o644   # readable by user 10001
    assert len(pairs) == 5   # and /tmp
    assert claims["pretrain-checkpoints"].stat().st_gid == 10001   # fsGroup, as the kubelet applies it
    assert claims["pretrain-data"].stat().st_gid == os.getgid()   # read-only: untouched
