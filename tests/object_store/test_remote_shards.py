"""Shards in S3 (moto's real S3 API on localhost): preprocess uploads and publishes a manifest last, the
reader streams through a bounded, verified cache and survives the server going away for a few seconds."""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from itertools import islice

import pytest
import torch
from torch.utils.data import DataLoader

from data_pipeline.__main__ import main as data_cli
from data_pipeline.errors import DataError, UserError
from data_pipeline.object_store import is_uri
from data_pipeline.preprocess import preprocess
from data_pipeline.readers import ShardedDataset
from data_pipeline.remote_dataset import MANIFEST_NAME, DatasetUpload, read_manifest
from data_pipeline.shard_cache import ShardCache
from data_pipeline.shards import Shard, ShardHeader, find_shards
from data_pipeline.tokenizer import load_tokenizer
from tests.data_pipeline.conftest import one_line_error
from tests.data_pipeline.test_readers import write_blocks



@pytest.fixture(scope="module")
def local_corpus(tmp_path_factory):
    """200 blocks of nctx=4 over 20 shards (block k is doc k, so tokens say which sample they are)."""
    directory = tmp_path_factory.mktemp("remote") / "lm"
    write_blocks(directory, [10] * 20)
    return directory


@pytest.fixture(scope="module")
def remote_corpus(s3, local_corpus) -> str:
    """The same shards uploaded to s3://shards/lm with their manifest."""
    uri = s3.create_bucket("shards") + "/lm"
    upload = DatasetUpload(uri)
    for prefix in find_shards(local_corpus):
        copy = local_corpus.parent / "upload" / prefix.name
        copy.parent.mkdir(exist_ok=True)
        for path in prefix.parent.glob(prefix.name + ".*"):
            (copy.parent / path.name).write_bytes(path.read_bytes())
        upload.add(copy, read_shard_header(prefix))
    upload.publish()
    return uri


def read_shard_header(prefix) -> ShardHeader:
    return Shard.open(prefix).header


def shard_bytes(uri: str) -> int:
    """The size of the largest shard of a remote dataset (all its files)."""
    return max(s.size for s in read_manifest(uri))


def reader(path, tmp_path, limit=1 << 30, **kwargs) -> ShardedDataset:
    kwargs = {"nctx": 4, "batch_size": 4, "cache": ShardCache(tmp_path / "cache", limit), **kwargs}
    return ShardedDataset(path, **kwargs)


def tokens(ds, batches) -> torch.Tensor:
    return torch.cat([b["tokens"] for b in islice(iter(ds), batches)])


def test_preprocess_cli_uploads_shards_then_the_manifest(s3, small_corpus, wordpiece_spec, tmp_path):
    uri = s3.create_bucket("preprocessed") + "/train"
    code = data_cli(["preprocess", str(small_corpus.train), "--out", uri, "--tokenizer", "wordpiece",
                     "--vocab", wordpiece_spec.vocab, "--shard-tokens", "5000", "--processes", "1"])
    assert code == 0
    local = preprocess([small_corpus.train], tmp_path / "local", wordpiece_spec, max_shard_tokens=5000,
                       processes=1)
    shards = read_manifest(uri)
    assert [s.name for s in shards] == [p.name for p in local.shards]
    stored = {o["Key"]: o["Size"] for o in s3.client().list_objects_v2(Bucket="preprocessed")["Contents"]}
    for shard in shards:
        for f in shard.files:
            assert stored[f"train/{f.name}"] == f.size == (tmp_path / "local" / f.name).stat().st_size
    # The vocab went up beside the shards: a tokenizer loads from its URI, and it is the same tokenizer.
    vocab_name = wordpiece_spec.vocab.rsplit("/", 1)[-1]
    assert stored[f"train/{vocab_name}"] == os.path.getsize(wordpiece_spec.vocab)
    remote = load_tokenizer(dataclasses.replace(wordpiece_spec, vocab=f"{uri}/{vocab_name}"))
    assert remote.fingerprint == load_tokenizer(wordpiece_spec).fingerprint
    assert not is_uri(remote.spec.vocab) and remote.encode("import os") == load_tokenizer(wordpiece_spec).encode("import os")


def test_a_dataset_without_its_manifest_is_not_readable(s3, local_corpus, tmp_path):
    uri = s3.create_bucket("half-uploaded") + "/lm"
    upload = DatasetUpload(uri)
    prefix = find_shards(local_corpus)[0]
    copy = tmp_path / prefix.name
    for path in prefix.parent.glob(prefix.name + ".*"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    upload.add(copy, read_shard_header(prefix))  # killed before publish()
    with pytest.raises(DataError) as err:
        reader(uri, tmp_path)
    assert MANIFEST_NAME in one_line_error(err) and uri in str(err.value)


def test_preprocess_refuses_a_prefix_that_holds_objects(s3, remote_corpus, wordpiece_spec, small_corpus):
    with pytest.raises(UserError) as err:
        preprocess([small_corpus.train], remote_corpus, wordpiece_spec, processes=1)
    assert remote_corpus in one_line_error(err)


@pytest.mark.parametrize("order", ["uniform", "stream"])
def test_remote_shards_read_like_the_local_ones(remote_corpus, local_corpus, tmp_path, order):
    settings = dict(order=order, seed=4, rank=1, world_size=2)
    assert torch.equal(tokens(reader(remote_corpus, tmp_path, **settings), 60),
                       tokens(ShardedDataset(local_corpus, nctx=4, batch_size=4, **settings), 60))


def test_the_cache_stays_under_its_limit_and_fetches_each_shard_about_once(remote_corpus, tmp_path):
    limit = 4 * shard_bytes(remote_corpus)
    ds = reader(remote_corpus, tmp_path, limit, order="stream", window_shards=2, epochs=1, rank=0,
                world_size=2, lookahead=2)
    cache = ShardCache(tmp_path / "cache", limit)
    seen = []
    for batch in ds:
        seen += batch["sample_ids"].tolist()
        assert cache.used_bytes() <= limit
    fetched = cache.fetch_log()
    assert len(seen) == 100
    assert sum(size for _, size in fetched) <= 1.2 * sum(s.size for s in read_manifest(remote_corpus)) / 2


def test_two_workers_share_one_rank_cache(remote_corpus, tmp_path):
    ds = reader(remote_corpus, tmp_path, order="stream", epochs=1, rank=0, world_size=2)
    seen = [i for b in DataLoader(ds, batch_size=None, num_workers=2) for i in b["sample_ids"].tolist()]
    keys = [key for key, _ in ShardCache(tmp_path / "cache", 1).fetch_log()]
    assert len(seen) == 100 and len(keys) == len(set(keys))


def test_a_shard_corrupted_in_the_bucket_is_reported_with_its_uri(s3, local_corpus, tmp_path):
    uri = s3.create_bucket("corrupt") + "/lm"
    upload = DatasetUpload(uri)
    for prefix in find_shards(local_corpus)[:2]:
        for path in prefix.parent.glob(prefix.name + ".*"):
            (tmp_path / path.name).write_bytes(path.read_bytes())
        upload.add(tmp_path / prefix.name, read_shard_header(prefix))
    upload.publish()
    size = read_manifest(uri)[1].files[0].size
    s3.client().put_object(Bucket="corrupt", Key="lm/shard-00001.text.bin", Body=b"\0" * size)
    with pytest.raises(DataError) as err:
        list(reader(uri, tmp_path, order="uniform", epochs=1, shuffle=False))
    assert f"{uri}/shard-00001.text.bin: corrupt" in one_line_error(err)


def test_a_truncated_cached_copy_is_fetched_again(remote_corpus, tmp_path):
    first = tokens(reader(remote_corpus, tmp_path, shuffle=False), 3)
    cached = next((tmp_path / "cache").glob("*/shard-00000.text.bin"))
    cached.write_bytes(cached.read_bytes()[:50])
    assert torch.equal(tokens(reader(remote_corpus, tmp_path, shuffle=False), 3), first)


@pytest.mark.slow
def test_the_server_gone_for_a_few_seconds_mid_epoch_does_not_stop_the_reader(s3, remote_corpus, tmp_path):
    ds = reader(remote_corpus, tmp_path, 4 * shard_bytes(remote_corpus), order="stream", epochs=1,
                batch_size=2, window_shards=1, lookahead=1)
    seen, outage = [], None
    for batch in ds:
        seen += batch["sample_ids"].tolist()
        if len(seen) == 40:  # the reader goes on fetching while the server is away
            outage = threading.Thread(target=lambda: s3.down_for(3.0))
            outage.start()
            assert s3.is_down.wait(timeout=30)
            began = time.monotonic()
    waited = time.monotonic() - began
    outage.join()
    assert sorted(seen) == list(range(200))
    assert waited >= 2.0  # the rest of the epoch needed shards the cache did not hold: it waited for them
