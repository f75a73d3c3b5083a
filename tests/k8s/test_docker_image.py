"""The image, built for real with Docker's legacy builder from a base whose Python has no headers, runs
README section 4's walk as containers: the data Job fills /data, the job that `submit render` prints
(with the README's flags, shrunk to a CPU-sized model and two steps) runs as a Master and a Worker
container with the env the operator adds, talking over a network by pod name, /data read-only, as user
10001; then the export Job exports the run. And on a base where apt cannot add the headers, the build
stops at its first step with one line.

Runs where a Docker daemon answers `docker info` (DOCKER_HOST or the default socket) and holds a Debian
bookworm image (PRETRAIN_E2E_DEBIAN_IMAGE, default local/debian:bookworm); skipped otherwise. The test
never installs Docker nor starts a daemon: docs/ARCHITECTURE.md says how to. Images are cached under a
digest of their inputs, so only the first run builds (minutes); later runs take about two minutes
on a busy 2-core machine."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import list_checkpoints
from tests.k8s.conftest import ROOT, TIMEOUT_S, batch_job
from tests.k8s.docker_harness import (DEBIAN_IMAGE, digest_of, cached_build, cpu_base_image, docker,
                                      docker_unavailable, image_exists, image_id, legacy_build, project_image,
                                      run_batch_job, run_pytorchjob)
from tests.k8s.test_readme_walk import readme_submit_commands, submit_cli
from tests.k8s.test_shipped_jobs import SHRINK

NO_DOCKER = docker_unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(NO_DOCKER is not None, reason=f"Docker end-to-end: {NO_DOCKER}")]
HEADER_PROBE = ('import pathlib, sys, sysconfig; '
                'sys.exit(not pathlib.Path(sysconfig.get_paths()["include"], "Python.h").is_file())')
NO_APT_HEADERS = ROOT / "tests" / "k8s" / "docker" / "no-apt-headers-base.Dockerfile"


@pytest.fixture(scope="module")
def base() -> str:
    if not image_exists(DEBIAN_IMAGE):
        pytest.skip(f"no {DEBIAN_IMAGE} image in the Docker daemon: make it with debootstrap, or pull debian:bookworm "
                    "and set PRETRAIN_E2E_DEBIAN_IMAGE (docs/ARCHITECTURE.md)")
    return cpu_base_image()


@pytest.fixture(scope="module")
def image(base: str) -> str:
    return project_image(base)


def test_the_base_python_has_no_headers(base: str) -> None:
    # What makes the build below a test of the Dockerfile's header handling.
    assert docker("run", "--rm", base, "python3", "-c", HEADER_PROBE, check=False).returncode == 1


def test_master_and_worker_containers_train_then_the_export_job_exports(image: str, tmp_path: Path) -> None:
    claims = {"pretrain-data": tmp_path / "data", "pretrain-checkpoints": tmp_path / "checkpoints"}
    for directory in claims.values():
        directory.mkdir()
    code, log = run_batch_job(batch_job("data"), image, claims, tmp_path, TIMEOUT_S)
    assert code == 0, log

    first, _ = readme_submit_commands()
    results = run_pytorchjob(submit_cli("render", *first, *SHRINK), image, claims, tmp_path, TIMEOUT_S)
    assert sorted(results) == ["tiny-mlm-master-0", "tiny-mlm-worker-0"]
    logs = "\n".join(log for _, log in results.values())
    assert [code for code, _ in results.values()] == [0, 0], logs
    assert "on 2 process(es)" in results["tiny-mlm-master-0"][1], logs   # one process group across the containers
    run_dir = claims["pretrain-checkpoints"] / "tiny-mlm"
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")] == [2], logs
    assert {path.stat().st_uid for path in run_dir.rglob("*")} == {10001}   # written by the image's user

    [export] = submit_cli("export", "tiny-mlm", "--render")
    code, log = run_batch_job(export, image, claims, tmp_path, TIMEOUT_S)
    assert code == 0, log
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["model.npz", "model.pt", "vocab.txt"]
    assert torch.load(run_dir / "export" / "model.pt", weights_only=True)


def test_build_stops_at_its_first_step_where_apt_cannot_add_the_headers(base: str) -> None:
    digest = digest_of(image_id(base).encode(), NO_APT_HEADERS.read_bytes())
    no_headers = cached_build("pretrain-e2e-no-apt-headers", digest, NO_APT_HEADERS.parent, NO_APT_HEADERS,
                              {"BASE_IMAGE": base})
    done = legacy_build("pretrain-e2e-must-fail:latest", ROOT, ROOT / "Dockerfile", {"BASE_IMAGE": no_headers})
    assert done.returncode != 0
    output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)   # the legacy builder colours the step's stderr
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "has no Python.h" in errors[0] and "python3-dev" in errors[0], output
    steps = re.findall(r"^Step \d+/\d+ : (.*)$", output, re.MULTILINE)
    assert steps[-1].startswith("RUN probe="), output   # it stopped at its first RUN
    assert "Traceback" not in output, output
