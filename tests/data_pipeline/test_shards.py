"""The shard format: round trips, atomic writes, and one DataError per broken shard."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from data_pipeline.errors import DataError
from data_pipeline.shards import LM_STREAMS, PAIRED_STREAMS, Shard, ShardWriter, find_shards, shard_prefix


@dataclass(frozen=True)
class StubTokenizer:
    """The fields ShardWriter reads from a real Tokenizer."""

    kind: str = "wordpiece"
    vocab_size: int = 1000
    fingerprint: str = "0123456789abcdef"
    sep_id: int = 3
    pad_id: int = 0


def write_shard(prefix: Path, docs: Sequence, streams: Sequence[str] = LM_STREAMS,
                tokenizer: StubTokenizer = StubTokenizer()) -> Shard:
    """Write `docs` (a list of token lists, or of tuples for paired streams) and open the result."""
    writer = ShardWriter(prefix, streams, tokenizer)
    for doc in docs:
        writer.add(*(doc if isinstance(doc, tuple) else (doc,)))
    writer.close(stats={"docs_seen": len(docs)})
    return Shard.open(prefix)


def doc(shard: Shard, stream: str, i: int) -> list[int]:
    offsets = shard.offsets(stream)
    return shard.tokens(stream)[offsets[i]:offsets[i + 1]].tolist()


def test_lm_stream_round_trips_with_sep_after_every_doc(tmp_path):
    shard = write_shard(tmp_path / "s", [[5, 6, 7], [8], []])
    assert [doc(shard, "text", i) for i in range(3)] == [[5, 6, 7, 3], [8, 3], [3]]
    assert shard.offsets("text").tolist() == [0, 4, 6, 7]


@pytest.mark.parametrize("streams, docs", [
    (LM_STREAMS, [([5, 6, 7],), ([8],), ([],), ([9, 9],)]),
    (PAIRED_STREAMS, [([1, 2], [9]), ([4], [5, 6, 7]), ([3], [3])]),
])
def test_a_run_of_documents_writes_the_same_bytes_as_one_at_a_time(tmp_path, streams, docs):
    one_by_one = write_shard(tmp_path / "one", [d if len(d) > 1 else d[0] for d in docs], streams)
    writer = ShardWriter(tmp_path / "run", streams, StubTokenizer())
    writer.add_many(*((np.array([t for d in docs for t in d[k]], dtype=np.int64),
                       np.array([len(d[k]) for d in docs])) for k in range(len(streams))))
    writer.close(stats={"docs_seen": len(docs)})
    run = Shard.open(tmp_path / "run")
    for stream in streams:
        assert run.tokens(stream).tolist() == one_by_one.tokens(stream).tolist()
        assert run.offsets(stream).tolist() == one_by_one.offsets(stream).tolist()
    assert run.header.num_docs == one_by_one.header.num_docs == len(docs)


def test_paired_streams_stay_aligned_without_separator(tmp_path):
    shard = write_shard(tmp_path / "s", [([1, 2], [9]), ([4], [5, 6, 7])], PAIRED_STREAMS)
    assert [doc(shard, "left", i) for i in range(2)] == [[1, 2], [4]]
    assert [doc(shard, "right", i) for i in range(2)] == [[9], [5, 6, 7]]


def test_header_records_tokenizer_counts_and_stats(tmp_path):
    header = write_shard(tmp_path / "s", [[5, 6], [7]]).header
    assert (header.tokenizer_kind, header.vocab_fingerprint) == ("wordpiece", "0123456789abcdef")
    assert header.vocab_size == 1000 and header.dtype == "uint16"
    assert (header.num_docs, header.num_tokens, header.stats) == (2, {"text": 5}, {"docs_seen": 2})


def test_small_vocab_uses_uint16_and_large_vocab_uint32(tmp_path):
    small = write_shard(tmp_path / "a", [[1]], tokenizer=StubTokenizer(vocab_size=65535))
    large = write_shard(tmp_path / "b", [[70000]], tokenizer=StubTokenizer(vocab_size=80000))
    assert small.tokens("text").dtype == np.uint16 and large.tokens("text").dtype == np.uint32
    assert large.tokens("text")[0] == 70000


def test_token_id_outside_vocab_is_refused(tmp_path):
    writer = ShardWriter(tmp_path / "s", LM_STREAMS, StubTokenizer(vocab_size=10))
    with pytest.raises(ValueError, match="out of range"):
        writer.add([10])
    writer.abort()


def test_unclosed_shard_is_invisible(tmp_path):
    writer = ShardWriter(shard_prefix(tmp_path, 0), LM_STREAMS, StubTokenizer())
    writer.add([1, 2])
    with pytest.raises(DataError, match="no shards found"):
        find_shards(tmp_path)
    writer.close()
    assert find_shards(tmp_path) == [shard_prefix(tmp_path, 0)]


def test_rewriting_a_shard_hides_the_old_one_until_close(tmp_path):
    write_shard(tmp_path / "s", [[1, 2]])
    writer = ShardWriter(tmp_path / "s", LM_STREAMS, StubTokenizer())
    writer.add([4])
    with pytest.raises(DataError, match="header not found"):
        Shard.open(tmp_path / "s")
    writer.abort()


def test_aborted_shard_leaves_no_files(tmp_path):
    writer = ShardWriter(tmp_path / "s", PAIRED_STREAMS, StubTokenizer())
    writer.add([1], [2])
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_missing_shard_names_the_header_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: shard header not found"):
        Shard.open(tmp_path / "nope")


def test_truncated_token_file_names_the_file(tmp_path):
    write_shard(tmp_path / "s", [[5, 6, 7]])
    path = tmp_path / "s.text.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"s\.text\.bin: 6 bytes, header says 8 bytes"):
        Shard.open(tmp_path / "s")


def test_missing_index_file_names_the_file(tmp_path):
    write_shard(tmp_path / "s", [[5]])
    (tmp_path / "s.text.idx").unlink()
    with pytest.raises(DataError, match=r"s\.text\.idx: missing"):
        Shard.open(tmp_path / "s")


def test_offsets_inconsistent_with_header_are_refused(tmp_path):
    write_shard(tmp_path / "s", [[5], [6]])
    np.array([0, 1, 3], "<i8").tofile(tmp_path / "s.text.idx")
    with pytest.raises(DataError, match=r"s\.text\.idx: offsets run from 0 to 3"):
        Shard.open(tmp_path / "s")


@pytest.mark.parametrize("text", ["{not json", '{"format_version": 1}', '{"format_version": 99}'])
def test_corrupt_header_is_one_data_error(tmp_path, text):
    write_shard(tmp_path / "s", [[5]])
    (tmp_path / "s.json").write_text(text)
    with pytest.raises(DataError, match=r"s\.json: .*re-run preprocess"):
        Shard.open(tmp_path / "s")


def test_find_shards_accepts_directory_glob_and_prefix(tmp_path):
    for i in (1, 0):
        write_shard(shard_prefix(tmp_path, i), [[i + 1]])
    both = [shard_prefix(tmp_path, 0), shard_prefix(tmp_path, 1)]
    assert find_shards(tmp_path) == both
    assert find_shards(f"{tmp_path}/shard-*") == both
    assert find_shards(f"{tmp_path}/shard-00001.json") == both[1:]
    assert find_shards(shard_prefix(tmp_path, 0)) == both[:1]


def test_equal_content_gives_equal_headers_and_different_content_different_fingerprints(tmp_path):
    a, b, c = (write_shard(tmp_path / name, docs) for name, docs in
               (("a", [[1, 2]]), ("b", [[1, 2]]), ("c", [[2, 1]])))
    assert a.header == b.header and a.fingerprint == b.fingerprint != c.fingerprint


def test_pickled_shard_reopens_the_files_instead_of_copying_them(tmp_path):
    shard = write_shard(tmp_path / "s", [list(range(900))] * 20)
    blob = pickle.dumps(shard)
    assert len(blob) < 1000
    assert pickle.loads(blob).tokens("text").tolist() == shard.tokens("text").tolist()


def test_released_pages_read_back_unchanged(tmp_path):
    shard = write_shard(tmp_path / "s", [[7, 8, 9]])
    before = shard.tokens("text").tolist()
    shard.release_pages()
    assert shard.tokens("text").tolist() == before
