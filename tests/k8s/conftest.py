"""Volumes shared by the tests that run jobs through the operator harness."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_pipeline.sample_corpus import prepare_sample_data, sample_data_paths
from tests.conftest import SMALL_VOCAB, SampleData
from tests.k8s.kustomize import build
from tests.k8s.operator_harness import run_batch_job

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240


def batch_job(directory: str) -> dict:
    """The Job of kustomization k8s/DIRECTORY."""
    return next(r for r in build(ROOT / "k8s" / directory) if r["kind"] == "Job")


@pytest.fixture(scope="session")
def data_volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data volume after the k8s/data Job has run, laid out as well as the GPU overlays expect it
    (WordPiece shards, pairs and vocab under /data: see each overlay's header)."""
    data = tmp_path_factory.mktemp("volumes") / "data"
    data.mkdir()
    run_batch_job(batch_job("data"), {"pretrain-data": data}, data.parent, TIMEOUT_S)
    sample = Path("runs/sample/wordpiece-8000")
    (data / "shards").symlink_to(sample)
    (data / "vocab.txt").symlink_to(sample / "vocab.txt")
    (data / "pairs").mkdir()
    for name in ("train", "valid"):
        (data / "pairs" / name).symlink_to(".." / sample / f"paired_{name}")
    return data


@pytest.fixture(scope="session")
def bpe_data_volume(data_volume: Path, small_sample: SampleData) -> Path:
    """A data volume as the GPT-2 overlay expects it: BPE shards, fastBPE vocab and codes (the session's
    small sample, BPE-encoded once for every test that asks for it, copied onto the volume)."""
    built = prepare_sample_data(small_sample.dir, kind="bpe", vocab_size=SMALL_VOCAB)["train"].parent
    data = data_volume.parent / "bpe-data"
    shutil.copytree(built, data / "runs" / "sample" / built.name, symlinks=True)
    paths = sample_data_paths(data / "runs" / "sample", "bpe", SMALL_VOCAB)
    (data / "shards").symlink_to(paths["train"].parent.relative_to(data))
    (data / "bpe.vocab").symlink_to(paths["vocab"].relative_to(data))
    (data / "bpe.codes").symlink_to(paths["codes"].relative_to(data))
    return data
