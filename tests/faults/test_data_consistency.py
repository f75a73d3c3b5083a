"""Class 5: data that disagrees with itself. Token ids past the vocab are found as they are read and by
`inspect`; an index whose offsets decrease is refused on open; `inspect --verify` checks every byte."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.errors import DataError
from data_pipeline.preprocess import preprocess
from data_pipeline.readers import ShardedDataset
from data_pipeline.shards import Shard
from data_pipeline.text_files import expand_inputs
from data_pipeline.tokenizer import TokenizerSpec, load_tokenizer
from data_pipeline.vocab_learning import learn_vocab
from tests.data_pipeline.conftest import small_corpus  # noqa: F401 (a session fixture)
from export import export_model, load_pretrained
from tests.export.helpers import random_model, write_vocab
from tests.faults.harness import NO_DAC, python

LINES = "".join(f"tok{i % 50} tok{(i * 7) % 50} tok{(i * 3) % 50} tok{i % 11}\n" for i in range(200))
PAIRS = "".join(f"tok{i % 50} tok{i % 7}\ttok{(i * 3) % 50} tok{i % 5} tok1\n" for i in range(200))


def shards(tmp_path: Path, text: str, paired: bool) -> Path:
    vocab = write_vocab(tmp_path / "tokenizer")
    corpus = tmp_path / ("pairs.tsv" if paired else "lines.txt")
    corpus.write_text(text)
    return preprocess([corpus], tmp_path / "shards", vocab, paired=paired, processes=1, progress=False).out_dir


def poke(path: Path, dtype: str, index: int, value: int) -> None:
    """Overwrite item `index` of a raw little-endian array file in place (as a bad copy or a bit rot would)."""
    data = np.fromfile(path, dtype=dtype)
    data[index] = value
    data.tofile(path)


@pytest.fixture
def out_of_vocab_shards(tmp_path) -> Path:
    directory = shards(tmp_path, LINES, paired=False)
    poke(directory / "shard-00000.text.bin", "<u2", 17, 60000)  # vocab_size is 100
    return directory


def test_a_token_id_past_the_vocab_is_a_data_error_as_it_is_read(out_of_vocab_shards):
    reader = ShardedDataset(out_of_vocab_shards, nctx=16, batch_size=4, epochs=1, shuffle=False)
    with pytest.raises(DataError, match=r"shard-00000.text.bin: token id 60000 at position 17 is >= vocab_size"):
        list(reader)


def test_inspect_reports_a_token_id_past_the_vocab(out_of_vocab_shards):
    python(["-m", "data_pipeline", "inspect", str(out_of_vocab_shards)]).assert_one_line_error(
        "token id 60000 is >= vocab_size", "--verify")


def test_inspect_verify_finds_a_changed_byte_the_cheap_checks_miss(tmp_path):
    directory = shards(tmp_path, LINES, paired=False)
    poke(directory / "shard-00000.text.bin", "<u2", 3, 7)  # still a valid id
    assert python(["-m", "data_pipeline", "inspect", str(directory)]).code == 0
    python(["-m", "data_pipeline", "inspect", str(directory), "--verify"]).assert_one_line_error(
        "shard-00000.json", "do not match the digest")


def test_inspect_verify_passes_intact_shards(tmp_path):
    directory = shards(tmp_path, PAIRS, paired=True)
    outcome = python(["-m", "data_pipeline", "inspect", str(directory), "--verify"])
    assert outcome.code == 0 and "verified 1 shard(s)" in outcome.stdout


def test_an_index_with_decreasing_offsets_is_refused_on_open(tmp_path):
    directory = shards(tmp_path, PAIRS, paired=True)
    idx = directory / "shard-00000.left.idx"
    offsets = np.fromfile(idx, dtype="<i8")
    poke(idx, "<i8", 5, int(offsets[3]))  # doc 4 would end before it starts: overlapping documents
    with pytest.raises(DataError, match=r"shard-00000.left.idx: offsets decrease at document 4"):
        Shard.open(directory / "shard-00000")


def test_an_unreadable_subdirectory_of_an_input_directory_is_an_error_not_a_silent_skip(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "locked").mkdir(parents=True)
    (corpus / "a.txt").write_text("tok1 tok2\n")
    (corpus / "locked" / "b.txt").write_text("tok3 tok4\n")
    (corpus / "locked").chmod(0o000)  # root without CAP_DAC_* cannot list it
    vocab = write_vocab(tmp_path / "tokenizer")
    outcome = python(["-m", "data_pipeline", "preprocess", str(corpus), "--out", str(tmp_path / "shards"),
                      "--tokenizer", "wordpiece", "--vocab", vocab.vocab, "--processes", "1"], prefix=NO_DAC)
    outcome.assert_one_line_error(str(corpus / "locked"), "cannot list this input directory", "Permission denied")
    assert not (tmp_path / "shards").exists()


def test_hidden_entries_of_an_input_directory_are_counted(tmp_path, caplog):
    corpus = tmp_path / "corpus"
    (corpus / ".git").mkdir(parents=True)
    (corpus / ".git" / "HEAD").write_text("ref\n")
    (corpus / ".notes.txt").write_text("x\n")
    (corpus / "a.txt").write_text("tok1\n")
    with caplog.at_level(logging.WARNING):
        assert expand_inputs([corpus]) == [corpus / "a.txt"]
    assert "skipped 2 hidden or non-regular entries" in caplog.text


def test_bpe_codes_from_another_model_are_refused(small_corpus, tmp_path):
    ours = learn_vocab("bpe", [small_corpus.train], tmp_path / "ours", 400)
    other_text = tmp_path / "other.txt"
    other_text.write_text("".join(f"zyx{i % 9} qwv{i % 7} plonk{i % 5}\n" for i in range(400)))
    theirs = learn_vocab("bpe", [other_text], tmp_path / "theirs", 400)
    mixed = TokenizerSpec("bpe", ours.vocab, codes=theirs.codes)
    with pytest.raises(DataError, match=r"theirs/codes does not belong to .*ours/vocab: \d+ of \d+ vocab tokens"):
        load_tokenizer(mixed)
    load_tokenizer(ours)  # a matching pair loads


def test_the_fingerprint_covers_lowercasing_and_a_cased_export_still_finds_its_tokenizer(tmp_path):
    uncased = write_vocab(tmp_path / "tokenizer")
    cased = TokenizerSpec("wordpiece", uncased.vocab, lowercase=False)
    assert load_tokenizer(cased).fingerprint != load_tokenizer(uncased).fingerprint
    directory = shards(tmp_path, LINES, paired=False)  # made uncased
    with pytest.raises(DataError, match="settings, e.g. lowercase"):
        ShardedDataset(directory, nctx=16, batch_size=4, expected_fingerprint=load_tokenizer(cased).fingerprint)
    export_model(random_model(), cased, tmp_path / "export", ["npz"])
    _, spec = load_pretrained(tmp_path / "export")
    assert (spec.lowercase, load_tokenizer(spec).fingerprint) == (False, load_tokenizer(cased).fingerprint)
