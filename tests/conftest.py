"""Fixtures shared across test directories."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from tests.object_store.s3_server import S3Server


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
