"""ShardedDataset: global order, rank x worker split, packing, mixing, resume, memory."""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_pipeline.errors import DataError, UserError
from data_pipeline.readers import ShardedDataset
from data_pipeline.shards import PAIRED_STREAMS, ShardWriter, shard_prefix
from tests.data_pipeline.test_shards import StubTokenizer, write_shard

WIDE = StubTokenizer(vocab_size=1 << 20)  # uint32 tokens, so every token can be a distinct value


def write_blocks(directory: Path, docs_per_shard: list[int], first: int = 0) -> None:
    """An LM corpus where doc k is [100 + 3k, 101 + 3k, 102 + 3k]: with the separator, block k of
    nctx=4 is exactly doc k, so a block's first token says which sample it is."""
    k = first
    for index, count in enumerate(docs_per_shard):
        docs = [[100 + 3 * (k + i) + j for j in range(3)] for i in range(count)]
        write_shard(shard_prefix(directory, index), docs, tokenizer=WIDE)
        k += count


def block_ids(batch: dict) -> list[int]:
    return ((batch["tokens"][:, 0] - 100) // 3).tolist()


@pytest.fixture
def corpus(tmp_path) -> Path:
    """30 blocks of nctx=4 over three uneven shards."""
    write_blocks(tmp_path / "lm", [10, 7, 13])
    return tmp_path / "lm"


def dataset(path, **kwargs) -> ShardedDataset:
    kwargs = {"nctx": 4, "batch_size": 4, **kwargs}
    return ShardedDataset(path, **kwargs)


def global_stream(path, world_size: int, batch_size: int, batches: int, state=None, **kwargs) -> list[int]:
    """Sample ids of `batches` global batches, rank slices concatenated in rank order."""
    ranks = [dataset(path, rank=r, world_size=world_size, batch_size=batch_size, **kwargs)
             for r in range(world_size)]
    for ds in ranks:
        if state:
            ds.load_state_dict(state)
    per_rank = [list(islice(iter(ds), batches)) for ds in ranks]
    return [i for step in zip(*per_rank) for b in step for i in b["sample_ids"].tolist()]


def test_batch_has_the_contracted_fields(corpus):
    batch = next(iter(dataset(corpus, rank=1, world_size=2)))
    assert batch["tokens"].dtype == torch.long and batch["tokens"].shape == (4, 4)
    assert batch["sample_ids"].shape == batch["epoch"].shape == (4,)
    assert batch["cursor"] == 8


def test_sample_ids_name_the_block_they_hold(corpus):
    batch = next(iter(dataset(corpus, batch_size=30)))
    assert block_ids(batch) == batch["sample_ids"].tolist()


def test_blocks_are_the_concatenated_token_stream_across_shards(tmp_path):
    docs = [[[7] * 5, [8] * 2], [[9] * 6], [[11] * 3, [12]]]
    for index, shard_docs in enumerate(docs):
        write_shard(shard_prefix(tmp_path, index), shard_docs)
    stream = np.concatenate([d + [3] for shard_docs in docs for d in shard_docs])
    batch = next(iter(dataset(tmp_path, nctx=5, batch_size=4, shuffle=False)))
    assert batch["tokens"].tolist() == stream[:20].reshape(4, 5).tolist()


def test_tail_shorter_than_nctx_is_dropped(tmp_path):
    write_shard(tmp_path / "s", [[5] * 10])  # 11 tokens with the separator
    ds = dataset(tmp_path / "s", nctx=4, shuffle=False, epochs=1)
    assert ds.samples_per_epoch == 2 and sum(len(b["sample_ids"]) for b in ds) == 2


def test_same_seed_gives_the_same_order(corpus):
    assert global_stream(corpus, 1, 10, 3, seed=5) == global_stream(corpus, 1, 10, 3, seed=5)


def test_each_epoch_is_a_new_permutation_of_all_samples(corpus):
    stream = global_stream(corpus, 1, 10, 6, seed=5)
    epochs = [stream[i:i + 30] for i in (0, 30)]
    assert all(sorted(e) == list(range(30)) for e in epochs) and epochs[0] != epochs[1]


def test_different_seed_gives_a_different_order(corpus):
    assert global_stream(corpus, 1, 10, 3, seed=1) != global_stream(corpus, 1, 10, 3, seed=2)


def test_global_order_does_not_depend_on_world_size(corpus):
    assert global_stream(corpus, 1, 12, 4) == global_stream(corpus, 3, 4, 4)


@pytest.mark.slow
def test_every_sample_once_per_epoch_over_3_ranks_x_2_workers(corpus):
    seen = []
    for rank in range(3):
        ds = dataset(corpus, rank=rank, world_size=3, batch_size=2, epochs=1)
        for batch in DataLoader(ds, batch_size=None, num_workers=2):
            assert block_ids(batch) == batch["sample_ids"].tolist()
            seen += batch["sample_ids"].tolist()
    assert sorted(seen) == list(range(30))


@contextmanager
def as_worker(worker: int, num_workers: int) -> Iterator[None]:
    """Make the dataset see itself as DataLoader worker `worker`, without starting processes."""
    info = collections.namedtuple("WorkerInfo", "id num_workers")(worker, num_workers)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("data_pipeline.readers.get_worker_info", lambda: info)
        yield


def test_workers_take_every_num_workers_th_batch(corpus):
    ds = dataset(corpus, batch_size=2)
    single = [b["sample_ids"].tolist() for b in islice(iter(ds), 6)]
    with as_worker(1, 3):
        assert [b["sample_ids"].tolist() for b in islice(iter(ds), 2)] == [single[1], single[4]]


def test_more_workers_than_batches_still_reads_everything_once(corpus):
    ds = dataset(corpus, batch_size=16, epochs=1)
    seen = []
    for worker in range(5):
        with as_worker(worker, 5):
            seen += [i for b in ds for i in b["sample_ids"].tolist()]
    assert sorted(seen) == list(range(30))


@pytest.mark.slow
def test_resume_mid_epoch_continues_the_uninterrupted_stream(corpus):
    def loader(ds):
        return DataLoader(ds, batch_size=None, num_workers=2)
    uninterrupted = [b["tokens"] for b in islice(loader(dataset(corpus, seed=3)), 12)]
    first = dataset(corpus, seed=3)
    consumed = list(islice(loader(first), 5))
    resumed = dataset(corpus, seed=3)
    resumed.load_state_dict(first.state_dict(consumed[-1]["cursor"]))
    continued = [b["tokens"] for b in islice(loader(resumed), 7)]
    assert torch.equal(torch.cat(uninterrupted), torch.cat([b["tokens"] for b in consumed] + continued))


def test_resume_with_another_world_size_at_the_same_global_batch(corpus):
    before = dataset(corpus, rank=0, world_size=2, batch_size=6)
    cursor = list(islice(iter(before), 3))[-1]["cursor"]
    state = before.state_dict(cursor)
    assert global_stream(corpus, 3, 4, 7, state=state) == global_stream(corpus, 1, 12, 10)[36:]


def test_state_from_other_shards_is_refused(corpus, tmp_path):
    write_blocks(tmp_path / "other", [10, 7, 13], first=1)
    state = dataset(tmp_path / "other").state_dict(8)
    with pytest.raises(DataError, match="saved with sources="):
        dataset(corpus).load_state_dict(state)


def test_state_for_another_nctx_is_refused(corpus):
    with pytest.raises(DataError, match="saved with nctx=8"):
        dataset(corpus).load_state_dict(dataset(corpus, nctx=8).state_dict(0))


def test_single_ordered_pass_splits_ranks_disjointly_and_ends(corpus):
    per_rank = [[i for b in dataset(corpus, rank=r, world_size=3, shuffle=False, epochs=1)
                 for i in b["sample_ids"].tolist()] for r in range(3)]
    assert sorted(sum(per_rank, [])) == list(range(30))
    assert per_rank[0][:4] == [0, 1, 2, 3] and per_rank[1][:4] == [4, 5, 6, 7]


def test_last_cursor_of_a_finite_pass_is_its_end(corpus):
    cursors = [b["cursor"] for b in dataset(corpus, batch_size=8, epochs=2)]
    assert cursors == [8, 16, 24, 32, 40, 48, 56, 60]


def test_weights_set_how_often_each_source_is_read(tmp_path):
    write_blocks(tmp_path / "a", [10])
    write_blocks(tmp_path / "b", [20], first=10)
    ds = dataset([tmp_path / "a", tmp_path / "b"], weights=[2.0, 0.5], batch_size=10)
    assert ds.samples_per_epoch == 30
    two_epochs = [i for b in islice(iter(ds), 6) for i in block_ids(b)]
    counts = collections.Counter(two_epochs)
    assert all(counts[i] == 4 for i in range(10)) and all(counts[i] == 1 for i in range(10, 30))
    first_epoch_b = {i for i in two_epochs[:30] if i >= 10}
    assert len(first_epoch_b) == 10


def test_paired_batches_are_aligned_truncated_and_padded(tmp_path):
    pairs = [([i + 1] * (i + 1), [i + 50] * (6 - i)) for i in range(6)]
    writer = ShardWriter(tmp_path / "p", PAIRED_STREAMS, StubTokenizer())
    for left, right in pairs:
        writer.add(left, right)
    writer.close()
    batch = next(iter(dataset(tmp_path / "p", nctx=4, batch_size=3, pad_id=0)))
    for row, i in enumerate(batch["sample_ids"].tolist()):
        left, right = pairs[i][0][:4], pairs[i][1][:4]
        assert batch["left"][row].tolist() == left + [0] * (batch["left"].shape[1] - len(left))
        assert batch["right"][row].tolist() == right + [0] * (batch["right"].shape[1] - len(right))
    assert batch["left"].shape[1] == max(min(len(pairs[i][0]), 4) for i in batch["sample_ids"].tolist())


def test_shards_from_another_tokenizer_are_refused(corpus):
    with pytest.raises(DataError, match="re-run preprocess with the trainer's tokenizer"):
        dataset(corpus, expected_fingerprint="ffffffffffffffff")


def test_sources_from_different_tokenizers_cannot_be_mixed(corpus, tmp_path):
    write_shard(tmp_path / "x", [[1] * 9], tokenizer=StubTokenizer(vocab_size=1 << 20, fingerprint="other"))
    with pytest.raises(DataError, match="differ in tokenizer"):
        dataset([corpus, tmp_path / "x"])


def test_corpus_shorter_than_nctx_is_a_data_error(tmp_path):
    write_shard(tmp_path / "s", [[5, 6]])
    with pytest.raises(DataError, match="no samples"):
        dataset(tmp_path / "s", nctx=8)


def test_missing_directory_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no shards found"):
        dataset(tmp_path / "nothing")


def test_negative_weight_is_a_user_error(corpus):
    with pytest.raises(UserError, match="weights must be finite"):
        dataset(corpus, weights=[-1.0])


def _tag_with_pid(batch: dict) -> dict:
    return {**batch, "pid": os.getpid()}


@pytest.mark.slow
def test_transform_runs_inside_the_worker(corpus):
    batch = next(iter(DataLoader(dataset(corpus, transform=_tag_with_pid), batch_size=None, num_workers=1)))
    assert batch["pid"] != os.getpid() and "tokens" in batch


RSS_PROBE = textwrap.dedent("""
    import resource, sys
    from itertools import islice
    from data_pipeline.readers import ShardedDataset
    ds = ShardedDataset(sys.argv[1], nctx=512, batch_size=32)
    for _ in islice(iter(ds), 400):
        pass
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def _peak_rss_kib(path: Path) -> int:
    result = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path)], capture_output=True, text=True,
                            check=True)
    return int(result.stdout.split()[-1])


@pytest.mark.slow
def test_reading_a_20x_larger_corpus_takes_no_more_memory(tmp_path):
    for name, docs in (("small", 5), ("large", 100)):
        writer = ShardWriter(tmp_path / name / "shard-00000", ("text",), StubTokenizer(vocab_size=30000))
        for k in range(docs):  # 1M-token docs: 10 MB and 200 MB of uint16
            writer.add(np.arange(k, k + 1_000_000) % 30000)
        writer.close()
    assert _peak_rss_kib(tmp_path / "large") - _peak_rss_kib(tmp_path / "small") < 16 * 1024
