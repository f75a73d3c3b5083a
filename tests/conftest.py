"""Fixtures shared across test directories."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from data_pipeline.sample_corpus import prepare_sample_data
from tests.object_store.s3_server import S3Server
from tests.pretrain.sample_data import build_sample_data

SMALL_VOCAB = 2000


@dataclass(frozen=True)
class SampleData:
    dir: Path                # what `data.sample.dir` names; runs given it (and SMALL_VOCAB) find it built
    paths: dict[str, Path]   # as prepare_sample_data returns them


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sample-corpus rules on one stdlib package (LM and paired shards, vocab 1,000; ~2 s), built once
    per session for the tests that train tiny models; read-only to them."""
    return build_sample_data(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> SampleData:
    """The built-in sample data with a 2,000-token WordPiece vocab, built once per session (~10 s): the
    tiny LM tests, the fine-tuning example and the GPU check's CPU run all train on it."""
    directory = tmp_path_factory.mktemp("small_sample")
    return SampleData(directory, prepare_sample_data(directory, vocab_size=SMALL_VOCAB))


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """One S3 server for the whole session (moto keeps its state per process, so a second one could not
    issue its own credentials): the object-store tests and the Kubernetes object-store jobs share it.
    Clients here find it through the standard AWS environment variables, as a user's shell would."""
    server = S3Server()
    saved = {name: os.environ.get(name) for name in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
