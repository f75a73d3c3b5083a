"""README section 4 replayed step by step through the strict operator harness: the data Job fills the
data volume (fixture), `submit` (rendered with the README's own flags) trains, a pod is deleted and comes
back, the job is submitted again to train longer and resumes, and `submit export` exports the run.

Only the size changes: overrides appended to the README's commands make the run a few steps long."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pretrain.checkpoint import list_checkpoints
from tests.k8s.conftest import ROOT, TIMEOUT_S
from tests.k8s.operator_harness import LocalJob, run_batch_job
from tests.pretrain.processes import process_env

SHORT = ("data.batch_size=8", "train.checkpoint_every=4", "train.eval_every=0", "train.log_every=4",
         "train.num_workers=1", "train.tensorboard=false")
# Steps of the first run: a tiny step takes ~0.1 s, so with 8 the pod's SIGTERM could land on the last
# step, where the run ends anyway (a different case from the one this walk replays).
FIRST_STEPS = 40


def readme_submit_commands(heading: str = "## 4. Kubernetes") -> list[list[str]]:
    """The `python -m pretrain.submit submit ...` commands under the README's `heading`, up to the next
    subsection (by default section 4's walk: the TrainJob variant comes later), as argument lists."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split(heading, 1)[1].split("\n### ", 1)[0]
    commands = re.findall(r"^python -m pretrain\.submit submit (.*?(?:\\\n.*?)*)$", section, re.MULTILINE)
    return [shlex.split(command.replace("\\\n", " ")) for command in commands]


def submit_cli(*args: str) -> list[dict]:
    """The resources `python -m pretrain.submit ARGS` prints (render, export --render)."""
    done = subprocess.run([sys.executable, "-m", "pretrain.submit", *args], capture_output=True, text=True,
                          cwd=ROOT, env=process_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


def run_job(resources: list[dict], claims: dict[str, Path], workdir: Path, delete_pod: str = "") -> LocalJob:
    workdir.mkdir()
    job = LocalJob(resources, claims, workdir)
    checkpoints = claims["pretrain-checkpoints"] / job.name / "checkpoints"
    before = len(list_checkpoints(checkpoints))
    job.start()
    try:
        if delete_pod:
            job.run_until(lambda _: len(list_checkpoints(checkpoints)) > before, timeout_s=TIMEOUT_S)
            job.delete_pod(delete_pod)
        job.run_until(lambda _: False, timeout_s=TIMEOUT_S)
    finally:
        job.kill()
    return job


@pytest.mark.slow
def test_readme_walk_from_data_job_to_export(data_volume: Path, tmp_path: Path) -> None:
    first, again = readme_submit_commands()
    assert again[:len(first)] == first and again[len(first):] == ["train.max_steps=1200"]
    claims = {"pretrain-data": data_volume, "pretrain-checkpoints": tmp_path / "checkpoints"}
    claims["pretrain-checkpoints"].mkdir()
    run_dir = claims["pretrain-checkpoints"] / "tiny-mlm"

    # 3. Train, and lose a pod on the way (`kubectl delete pod`): it comes back and the job finishes.
    # The pod goes after the first checkpoint (step 4), well before the last step (see FIRST_STEPS).
    job = run_job(submit_cli("render", *first, *SHORT, f"train.max_steps={FIRST_STEPS}"), claims,
                  tmp_path / "first", "tiny-mlm-worker-0")
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")][-1] == FIRST_STEPS, job.logs()
    # Every rank stopped after one step at a checkpoint; the master's restarted in place and resumed there.
    assert "SIGTERM received: stopping at step" in job.pod("tiny-mlm-worker-0").log(), job.logs()
    assert "resumed from" in job.logs() and job.pod("tiny-mlm-master-0").restarts == 0, job.logs()

    # 4. Train longer: the same name again resumes from the newest checkpoint.
    job = run_job(submit_cli("render", *again, *SHORT, f"train.max_steps={FIRST_STEPS + 4}"), claims,
                  tmp_path / "again")
    assert "resumed from" in job.logs() and f"at step {FIRST_STEPS}" in job.logs()
    assert [step for step, _ in list_checkpoints(run_dir / "checkpoints")][-1] == FIRST_STEPS + 4

    # 5. Export.
    [export] = submit_cli("export", "tiny-mlm", "--render")
    run_batch_job(export, claims, tmp_path, TIMEOUT_S)
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["model.npz", "model.pt", "vocab.txt"]
