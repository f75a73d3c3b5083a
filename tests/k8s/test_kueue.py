"""`--queue` / `--priority-class`: both job APIs carry Kueue's labels, and nothing else changes."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data_pipeline.errors import run_cli
from pretrain.k8s.kueue import PRIORITY_LABEL, QUEUE_LABEL
from pretrain.submit import main
from tests.k8s.validation import resource_errors


def _render(capsys, config: Path, api: str, *flags: str) -> list[dict]:
    assert run_cli(lambda: main(["render", "--api", api, "--trainer", "tlm", "--config", str(config),
                                 "--name", "demo", "--gpus", "0", *flags, "train.max_steps=5"])) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("train:\n  max_steps: 10\n")
    return path


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
def test_queue_and_priority_class_are_the_only_change(capsys, config: Path, api: str) -> None:
    plain = _render(capsys, config, api)
    queued = _render(capsys, config, api, "--queue", "team-a", "--priority-class", "high")
    assert [resource_errors(r) for r in queued] == [[]] * len(queued)
    labels = queued[-1]["metadata"].pop("labels")
    assert labels == {QUEUE_LABEL: "team-a", PRIORITY_LABEL: "high"}
    assert queued == plain


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
def test_queue_alone_sets_only_the_queue_label(capsys, config: Path, api: str) -> None:
    job = _render(capsys, config, api, "--queue", "team-a")[-1]
    assert job["metadata"]["labels"] == {QUEUE_LABEL: "team-a"}


@pytest.mark.parametrize("flags, message", [
    (("--priority-class", "high"), "--priority-class needs --queue"),
    (("--queue", "Team_A"), "--queue 'Team_A' is not a Kubernetes object name"),
    (("--queue", "q", "--priority-class", "x" * 64), "--priority-class 'xxx"),
])
def test_bad_kueue_flags_are_one_line_errors_with_no_output(capsys, config: Path, flags, message) -> None:
    assert run_cli(lambda: main(["render", "--trainer", "tlm", "--config", str(config), "--name", "demo",
                                 *flags])) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and captured.err.count("\n") == 1
