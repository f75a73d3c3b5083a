"""The streaming order: exactly once per epoch, deterministic, local to each rank, resumable across the
world sizes its canonical partition count allows."""
from __future__ import annotations

import itertools
from itertools import islice

import numpy as np
import pytest
from torch.utils.data import DataLoader

from data_pipeline.errors import UserError
from data_pipeline.stream_order import StreamOrder
from tests.data_pipeline.conftest import one_line_error
from tests.data_pipeline.test_readers import block_ids, dataset, global_stream, write_blocks

STREAM = {"order": "stream", "window_shards": 2}


@pytest.fixture
def corpus(tmp_path):
    """240 blocks of nctx=4 over 24 shards of 10."""
    write_blocks(tmp_path / "lm", [10] * 24)
    return tmp_path / "lm"


BLOCKS = {"one": [1], "uneven": [3, 0, 4], "even": [10] * 9 + [7], "many": [7, 0, 13, 1] * 30}


@pytest.mark.parametrize("blocks,window,partitions,chunk",
                         list(itertools.product(sorted(BLOCKS), [3, 40], [1, 4], [1, 3, 8])))
def test_every_epoch_is_a_permutation(blocks, window, partitions, chunk):
    order = StreamOrder(BLOCKS[blocks], window=window, partitions=partitions, chunk=chunk, seed=3)
    n = sum(BLOCKS[blocks])
    epochs = [order(e, np.arange(n)).tolist() for e in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert n < 20 or epochs[0] != epochs[1]


def test_the_order_is_a_pure_function_of_seed_and_epoch():
    def make(seed):
        return StreamOrder([10] * 50, window=30, partitions=4, chunk=2, seed=seed)
    assert make(1)(2, np.arange(500)).tolist() == make(1)(2, np.arange(500)).tolist()
    assert make(1)(2, np.arange(500)).tolist() != make(2)(2, np.arange(500)).tolist()
    assert make(1)(2, np.arange(100, 110)).tolist() == make(1)(2, np.arange(500))[100:110].tolist()


def test_every_sample_once_per_epoch_over_2_ranks_x_2_workers(corpus):
    seen = []
    for rank in range(2):
        ds = dataset(corpus, rank=rank, world_size=2, batch_size=4, epochs=1, **STREAM)
        for batch in DataLoader(ds, batch_size=None, num_workers=2):
            assert block_ids(batch) == batch["sample_ids"].tolist()
            seen += batch["sample_ids"].tolist()
    assert sorted(seen) == list(range(240))


def test_each_rank_reads_mostly_its_own_shards(corpus):
    """Over several epochs a rank reads a few shards at a time and most of a shard's samples by itself."""
    world = 4
    readers = [dataset(corpus, rank=r, world_size=world, batch_size=2, epochs=3, **STREAM) for r in range(world)]
    for epoch in range(3):
        shard_readers = {}
        for rank, ds in enumerate(readers):
            ids = [i for b in islice(iter(ds), 30 * epoch, 30 * (epoch + 1)) for i in b["sample_ids"].tolist()]
            for sample in ids:
                shard_readers.setdefault(sample // 10, []).append(rank)
        own = sum(max(np.bincount(r).tolist()) for r in shard_readers.values())
        assert own / 240 >= 0.85


def test_resume_is_exact_on_every_world_size_that_divides_the_partitions(corpus):
    settings = dict(STREAM, partitions=4, seed=9)
    reference = global_stream(corpus, 1, 8, 40, **settings)
    first = dataset(corpus, rank=0, world_size=4, batch_size=2, **settings)
    state = first.state_dict(list(islice(iter(first), 7))[-1]["cursor"])
    for world in (1, 2, 4):
        assert global_stream(corpus, world, 8 // world, 33, state=state, **settings) == reference[56:]


def test_a_world_size_the_partitions_do_not_allow_is_one_line(corpus):
    with pytest.raises(UserError) as err:
        dataset(corpus, rank=0, world_size=3, batch_size=4, partitions=4, **{"order": "stream"})
    assert "data.partitions=4" in one_line_error(err)
    with pytest.raises(UserError) as err:
        dataset(corpus, rank=0, world_size=2, batch_size=3, partitions=4, **{"order": "stream"})
    assert "global batch" in one_line_error(err)


def test_mixture_weights_are_refused(corpus):
    with pytest.raises(UserError) as err:
        dataset([corpus, corpus], weights=[1.0, 0.5], **STREAM)
    assert "data.weights" in one_line_error(err)
