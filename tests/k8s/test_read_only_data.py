"""Training pods mount /data read-only: a trainer that finds the sample data ready only reads it, and
one that finds it missing says which Job prepares it (one line, exit 2)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from data_pipeline.preprocess import preprocess
from data_pipeline.sample_corpus import build_sample_corpus, sample_data_paths, stdlib_dir
from data_pipeline.vocab_learning import learn_vocab
from tests.k8s.operator_harness import container_env, in_container
from tests.pretrain.processes import REPO, TIMEOUT_S

VOCAB_SIZE = 1000


def run_read_only(volume: Path, *args: str) -> subprocess.CompletedProcess:
    """`python ARGS` in `volume`, mounted read-only, as a training pod runs in /data."""
    return subprocess.run(in_container([sys.executable, *args], volume, [volume]), env=container_env({}),
                          cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_ready_sample_data_is_read_without_writing(tmp_path: Path) -> None:
    # What the data Job leaves, at the paths prepare_sample_data uses (from one stdlib package: fast).
    paths = sample_data_paths(tmp_path / "runs" / "sample", "wordpiece", VOCAB_SIZE)
    corpus = build_sample_corpus(paths["corpus"], stdlib_dir() / "email")
    spec = learn_vocab("wordpiece", [corpus.train], paths["vocab"].parent, VOCAB_SIZE)
    for name, paired in (("train", False), ("valid", False), ("paired_train", True), ("paired_valid", True)):
        preprocess([paths[f"{name}_text"]], paths[name], spec, paired=paired, processes=1, progress=False)
    before = sorted(tmp_path.rglob("*"))
    probe = ("import json; from pretrain.data import SampleDataConfig, sample_data; "
             f"print(json.dumps({{k: str(v) for k, v in sample_data(SampleDataConfig('runs/sample', {VOCAB_SIZE}), "
             "'wordpiece').items()}))")
    done = run_read_only(tmp_path, "-c", probe)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {key: str(path.relative_to(tmp_path)) for key, path in paths.items()}
    assert sorted(tmp_path.rglob("*")) == before


def test_missing_sample_data_on_a_read_only_volume_names_the_data_job(tmp_path: Path) -> None:
    done = run_read_only(tmp_path, "-m", "pretrain.tlm", "--config", str(REPO / "configs" / "tiny_mlm.yaml"))
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: data.sample.dir runs/sample: ") and "kubectl apply -k k8s/data" in line, line
    assert list(tmp_path.iterdir()) == []
