"""Shared data fixtures: real text from the stdlib, and tokenizers learned from it, built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_pipeline.errors import UserError
from data_pipeline.sample_corpus import SampleCorpus, build_sample_corpus, stdlib_dir
from data_pipeline.tokenizer import TokenizerSpec
from data_pipeline.vocab_learning import learn_vocab

SMALL_VOCAB = 600


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> SampleCorpus:
    """The sample corpus rules applied to one stdlib package (email): ~0.1 MB of prose in under a second."""
    return build_sample_corpus(tmp_path_factory.mktemp("small_corpus"), stdlib_dir() / "email")


@pytest.fixture(scope="session")
def full_corpus(tmp_path_factory) -> SampleCorpus:
    """The real sample corpus (whole stdlib, ~10 s): only for the tests about its size and end to end."""
    return build_sample_corpus(tmp_path_factory.mktemp("full_corpus"))


@pytest.fixture(scope="session")
def wordpiece_spec(small_corpus, tmp_path_factory) -> TokenizerSpec:
    return learn_vocab("wordpiece", [small_corpus.train], tmp_path_factory.mktemp("wordpiece"), SMALL_VOCAB)


@pytest.fixture(scope="session")
def bpe_spec(small_corpus, tmp_path_factory) -> TokenizerSpec:
    return learn_vocab("bpe", [small_corpus.train], tmp_path_factory.mktemp("bpe"), SMALL_VOCAB)


def write(path: Path, data: str | bytes) -> Path:
    """Write a test file (bytes as given, text as UTF-8) and return its path."""
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def one_line_error(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    """The message of a raised UserError, checked to be the single line the CLI prints."""
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message
