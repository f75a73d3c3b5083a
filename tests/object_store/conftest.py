"""The object-store tests use the session's S3 server (tests/conftest.py: `s3`), started and stopped by the
session; clients find it through the standard AWS environment variables, as a pod would."""
from __future__ import annotations

from tests.data_pipeline.conftest import small_corpus, wordpiece_spec  # noqa: F401 - shared fixtures
