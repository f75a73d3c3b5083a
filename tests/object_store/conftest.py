"""One S3 server for the object-store tests, started and stopped by the session; clients find it through
the standard AWS environment variables, as a pod would."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from tests.data_pipeline.conftest import small_corpus, wordpiece_spec  # noqa: F401 - shared fixtures
from tests.object_store.s3_server import S3Server
from tests.pretrain.test_tlm import sample  # noqa: F401 - the built-in sample data, once per session


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
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
