"""Preprocessing: text -> shards, byte-identical for any process count, nothing dropped uncounted."""
from __future__ import annotations

import logging

import pytest

from data_pipeline.errors import DataError, UserError
from data_pipeline.preprocess import preprocess
from data_pipeline.shards import Shard, find_shards
from data_pipeline.tokenizer import load_tokenizer
from tests.data_pipeline.conftest import one_line_error, write


def shards(path) -> list[Shard]:
    return [Shard.open(prefix) for prefix in find_shards(path)]


def docs(shard: Shard, stream: str) -> list[list[int]]:
    offsets, tokens = shard.offsets(stream), shard.tokens(stream)
    return [tokens[offsets[i]:offsets[i + 1]].tolist() for i in range(shard.header.num_docs)]


def all_bytes(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.slow
@pytest.mark.parametrize("spec_name", ["wordpiece_spec", "bpe_spec"])
def test_three_processes_write_the_same_bytes_as_one(spec_name, request, small_corpus, tmp_path):
    spec = request.getfixturevalue(spec_name)
    for processes in (1, 3):
        preprocess([small_corpus.train], tmp_path / str(processes), spec, processes=processes,
                   max_shard_tokens=5000, chunk_chars=2000)
    assert len(find_shards(tmp_path / "1")) > 3
    assert all_bytes(tmp_path / "1") == all_bytes(tmp_path / "3")


def test_lm_shards_hold_each_line_encoded_with_sep_appended(bpe_spec, small_corpus, tmp_path):
    tok = load_tokenizer(bpe_spec)
    lines = small_corpus.train.read_text().splitlines()
    result = preprocess([small_corpus.train], tmp_path / "out", bpe_spec, processes=1)
    written = [doc for shard in shards(result.out_dir) for doc in docs(shard, "text")]
    assert written == [ids + [tok.sep_id] for ids in tok.encode_batch(lines)]
    assert result.totals["docs"] == len(lines)


def test_shard_cap_starts_new_shards_but_never_splits_a_document(wordpiece_spec, small_corpus, tmp_path):
    tok = load_tokenizer(wordpiece_spec)
    longest = max(len(ids) + 1 for ids in tok.encode_batch(small_corpus.train.read_text().splitlines()))
    written = shards(preprocess([small_corpus.train], tmp_path / "out", wordpiece_spec, processes=1,
                                max_shard_tokens=longest).out_dir)
    assert len(written) > 10
    assert all(s.header.num_tokens["text"] <= longest for s in written)
    assert sum(s.header.num_docs for s in written) == len(small_corpus.train.read_text().splitlines())


def test_paired_lines_become_aligned_left_and_right_streams(wordpiece_spec, small_corpus, tmp_path):
    tok = load_tokenizer(wordpiece_spec)
    pairs = [line.split("\t") for line in small_corpus.paired_train.read_text().splitlines()]
    (shard,) = shards(preprocess([small_corpus.paired_train], tmp_path / "out", wordpiece_spec, paired=True,
                                 processes=1).out_dir)
    assert shard.header.streams == ("left", "right")
    assert docs(shard, "left") == tok.encode_batch([left for left, _ in pairs])
    assert docs(shard, "right") == tok.encode_batch([right for _, right in pairs])


def test_bad_paired_lines_are_skipped_counted_and_reported(wordpiece_spec, tmp_path, caplog):
    text = write(tmp_path / "pairs.tsv", "a message\ta reply\nno tab here\none\ttwo\tthree\n \tempty left\n"
                                         "\n\x00fine\tline\n")
    with caplog.at_level(logging.WARNING):
        result = preprocess([text], tmp_path / "out", wordpiece_spec, paired=True, processes=1)
    (shard,) = shards(result.out_dir)
    assert shard.header.num_docs == 2
    assert {k: v for k, v in shard.header.stats.items() if v} == {
        "files": 1, "lines_read": 6, "blank_lines_skipped": 1, "nul_lines_stripped": 1,
        "paired_not_one_tab_lines": 2, "paired_empty_side_lines": 1}
    assert f"{text}:2: skipped, paired not one tab lines" in caplog.text
    assert f"{text}:4: skipped, paired empty side lines" in caplog.text


def test_counts_in_shard_headers_add_up_to_the_run_totals(bpe_spec, tmp_path):
    text = write(tmp_path / "a.txt", "".join(f"line number {i}\n\n" for i in range(300)))
    result = preprocess([text, write(tmp_path / "empty.txt", "")], tmp_path / "out", bpe_spec, processes=1,
                        max_shard_tokens=100)
    written = shards(result.out_dir)
    assert len(written) > 1
    assert all(s.header.stats.keys() == written[0].header.stats.keys() for s in written)
    for key in ("lines_read", "blank_lines_skipped", "empty_files", "files"):
        assert sum(s.header.stats[key] for s in written) == result.totals[key]
    assert (result.totals["lines_read"], result.totals["blank_lines_skipped"], result.totals["empty_files"]) == \
        (600, 300, 1)


def test_line_without_tokens_is_skipped_and_counted(wordpiece_spec, tmp_path):
    text = write(tmp_path / "a.txt", "words here\n\u200b\u200b\n")  # zero-width spaces: normalised away
    result = preprocess([text], tmp_path / "out", wordpiece_spec, processes=1)
    assert (result.totals["docs"], result.totals["empty_after_tokenization"]) == (1, 1)


def test_existing_non_empty_output_is_refused(wordpiece_spec, small_corpus, tmp_path):
    write(tmp_path / "keep.txt", "precious")
    with pytest.raises(UserError) as excinfo:
        preprocess([small_corpus.valid], tmp_path, wordpiece_spec, processes=1)
    assert "already exists and is not empty" in one_line_error(excinfo)


def test_failed_run_leaves_neither_output_nor_staging(wordpiece_spec, tmp_path):
    text = write(tmp_path / "a.txt", b"good line\n" * 100 + b"bad \xff\n")
    with pytest.raises(DataError, match=":101: invalid UTF-8"):
        preprocess([text], tmp_path / "out", wordpiece_spec, processes=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_all_lines_skipped_is_a_user_error(wordpiece_spec, tmp_path):
    text = write(tmp_path / "a.tsv", "no tab\nstill none\n")
    with pytest.raises(UserError, match="no documents to write"):
        preprocess([text], tmp_path / "out", wordpiece_spec, paired=True, processes=1)
