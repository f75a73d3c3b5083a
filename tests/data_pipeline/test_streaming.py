"""TextStreamDataset: the samples preprocess + ShardedDataset(shuffle=False) give, split and resumable."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_pipeline import streaming
from data_pipeline.errors import DataError
from data_pipeline.preprocess import encode_chunk, preprocess
from data_pipeline.readers import ShardedDataset
from data_pipeline.streaming import TextStreamDataset
from data_pipeline.tokenizer import TokenizerSpec, load_tokenizer

WORDS = [f"w{k}" for k in range(100)]


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> TokenizerSpec:
    """A whole-word WordPiece vocab: word wk is token 5 + k, [SEP] is 3."""
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return TokenizerSpec("wordpiece", str(vocab))


@pytest.fixture(scope="module")
def tokenizer(spec):
    return load_tokenizer(spec)


@pytest.fixture
def text(tmp_path) -> Path:
    """40 lines of 1 to 5 words: 160 tokens with separators, 40 blocks of nctx=4."""
    lines = [" ".join(WORDS[(7 * i + j) % 100] for j in range(i % 5 + 1)) for i in range(40)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def stream(inputs, tokenizer, **kwargs) -> TextStreamDataset:
    return TextStreamDataset([inputs], tokenizer, **{"nctx": 4, "batch_size": 3, **kwargs})


def global_ids(inputs, tokenizer, world_size: int, batch_size: int, batches: int, state=None) -> list[tuple]:
    """(epoch, sample id) of `batches` global batches, rank slices concatenated in rank order."""
    ranks = [stream(inputs, tokenizer, rank=r, world_size=world_size, batch_size=batch_size)
             for r in range(world_size)]
    for ds in ranks:
        if state:
            ds.load_state_dict(state)
    per_rank = [list(islice(iter(ds), batches)) for ds in ranks]
    return [pair for step in zip(*per_rank) for b in step
            for pair in zip(b["epoch"].tolist(), b["sample_ids"].tolist())]


def test_lm_samples_are_nctx_blocks_of_the_separated_token_stream(text, tokenizer):
    lines = text.read_text().splitlines()
    expected = np.concatenate([tokenizer.encode(line) + [tokenizer.sep_id] for line in lines]).reshape(-1, 4)
    got = torch.cat([b["tokens"] for b in stream(text, tokenizer, epochs=1)])
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("paired", [False, True], ids=["lm", "paired"])
def test_batches_equal_preprocessed_shards_read_in_order(tmp_path, text, spec, tokenizer, paired):
    if paired:
        text.write_text("".join(f"{line}\t{line} w99 w98\n" for line in text.read_text().splitlines()))
    preprocess([text], tmp_path / "shards", spec, paired=paired, processes=1, progress=False)
    shards = ShardedDataset(tmp_path / "shards", nctx=4, batch_size=3, shuffle=False, epochs=2)
    streamed = stream(text, tokenizer, paired=paired, epochs=2)
    for a, b in zip(shards, streamed, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_each_pass_is_an_epoch_of_every_sample_in_order(text, tokenizer):
    ids = global_ids(text, tokenizer, 1, 10, 8)
    assert ids == [(e, i) for e in (0, 1) for i in range(40)]


@pytest.mark.slow
def test_every_sample_once_over_3_ranks_x_2_workers(text, tokenizer):
    seen = []
    for rank in range(3):
        ds = stream(text, tokenizer, rank=rank, world_size=3, batch_size=2, epochs=1)
        seen += [i for b in DataLoader(ds, batch_size=None, num_workers=2) for i in b["sample_ids"].tolist()]
    assert sorted(seen) == list(range(40))


def test_order_does_not_depend_on_world_size(text, tokenizer):
    assert global_ids(text, tokenizer, 1, 6, 10) == global_ids(text, tokenizer, 3, 2, 10)


def test_resume_continues_the_uninterrupted_stream_with_another_world_size(text, tokenizer):
    before = stream(text, tokenizer, rank=1, world_size=2, batch_size=3)
    cursor = list(islice(iter(before), 9))[-1]["cursor"]  # 54: past the first epoch
    state = before.state_dict(cursor)
    assert global_ids(text, tokenizer, 3, 2, 6, state=state) == global_ids(text, tokenizer, 1, 6, 15)[54:90]


def test_resume_in_a_later_epoch_reads_at_most_two_passes(text, tokenizer, monkeypatch):
    uninterrupted = [b["tokens"] for b in islice(iter(stream(text, tokenizer)), 70)][-3:]
    chunks = []
    def counting(tok, chunk):
        chunks.append(chunk)
        return encode_chunk(tok, chunk)
    monkeypatch.setattr(streaming, "encode_chunk", counting)
    resumed = stream(text, tokenizer)
    resumed.load_state_dict(resumed.state_dict(67 * 3))  # epoch 5
    assert torch.equal(torch.cat([b["tokens"] for b in islice(iter(resumed), 3)]), torch.cat(uninterrupted))
    assert len(chunks) == 2  # the corpus is one chunk: one pass to count, one for the cursor's epoch


def test_paired_batches_are_aligned_truncated_and_padded(tmp_path, tokenizer):
    path = tmp_path / "pairs.tsv"
    path.write_text("w1 w2\tw3\nw4\tw5 w6 w7 w8 w9 w10\nbad line without tab\n")
    batch = next(iter(stream(path, tokenizer, paired=True, batch_size=2)))
    assert batch["left"].tolist() == [[6, 7], [9, 0]]
    assert batch["right"].tolist() == [[8, 0, 0, 0], [10, 11, 12, 13]]


def test_finite_stream_ends_with_a_short_batch_at_the_end_cursor(text, tokenizer):
    batches = list(stream(text, tokenizer, batch_size=16, epochs=1))
    assert [len(b["sample_ids"]) for b in batches] == [16, 16, 8] and batches[-1]["cursor"] == 40


def test_state_for_other_text_is_refused(tmp_path, text, tokenizer):
    other = tmp_path / "other.txt"
    other.write_text("w1 w2 w3 w4 w5\n")
    with pytest.raises(DataError, match="saved with inputs="):
        stream(text, tokenizer).load_state_dict(stream(other, tokenizer).state_dict(3))


def test_state_for_another_nctx_is_refused(text, tokenizer):
    with pytest.raises(DataError, match="saved with nctx=8"):
        stream(text, tokenizer).load_state_dict(stream(text, tokenizer, nctx=8).state_dict(3))


def test_text_shorter_than_nctx_is_a_data_error(tmp_path, tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("w1\n")
    with pytest.raises(DataError, match="no samples"):
        next(iter(stream(path, tokenizer, nctx=8)))


def test_missing_input_fails_at_construction(tmp_path, tokenizer):
    with pytest.raises(DataError, match="no such file"):
        stream(tmp_path / "missing.txt", tokenizer)
