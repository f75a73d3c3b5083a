"""Fixtures of the export tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_pipeline.tokenizer import TokenizerSpec
from tests.export.helpers import write_vocab


@pytest.fixture
def vocab_spec(tmp_path: Path) -> TokenizerSpec:
    return write_vocab(tmp_path / "tokenizer")
