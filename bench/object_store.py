"""Streaming shards from object storage: fetch efficiency, throughput, a bounded cache, and the order at scale.

Against moto's S3 server on localhost (started here, as in the tests):
  1. bytes fetched per rank per epoch / (dataset bytes / world size), streaming order vs the uniform
     order (the peer), for 1, 2 and 4 ranks with the cache at its minimum useful size;
  2. reader throughput (samples/s) from S3 with a cold cache, a warm cache, and from local disk;
  3. peak RSS and peak cache size reading a dataset 10x larger than data.cache_limit;
and without any process: 4. the order and partition functions alone for up to 1,024 ranks x 8 workers
(exactly-once, resume positions agree across world sizes, time per batch as the dataset grows).

Run: PYTHONPATH=. python bench/object_store.py [--shards 32 --shard-tokens 16384]
"""
from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data_pipeline.readers import ShardedDataset
from data_pipeline.remote_dataset import DatasetUpload, read_manifest
from data_pipeline.shard_cache import ShardCache
from data_pipeline.shards import Shard, ShardWriter, find_shards, shard_prefix
from data_pipeline.stream_order import StreamOrder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.object_store.s3_server import S3Server  # noqa: E402 - the tests' server, started the same way

NCTX, BATCH = 64, 8


class _Tokenizer:
    kind, vocab_size, fingerprint, sep_id = "wordpiece", 30000, "bench", 3


def write_dataset(directory: Path, shards: int, tokens_per_shard: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(shards):
        writer = ShardWriter(shard_prefix(directory, index), ("text",), _Tokenizer())
        docs = rng.integers(5, 30000, size=tokens_per_shard - 1)
        writer.add(docs)
        writer.close()


def upload(directory: Path, uri: str) -> None:
    staging = Path(tempfile.mkdtemp())
    upload = DatasetUpload(uri)
    for prefix in find_shards(directory):
        for path in prefix.parent.glob(prefix.name + ".*"):
            (staging / path.name).write_bytes(path.read_bytes())
        upload.add(staging / prefix.name, Shard.open(prefix).header)
    upload.publish()


def fetched_ratio(uri: str, world: int, order: str, limit: int, work: Path, batches: int | None) -> float:
    """Mean over ranks of bytes fetched in one epoch / (dataset bytes / world); with `batches`, the epoch's
    figure is extrapolated from its first `batches` batches (the uniform peer thrashes: a whole epoch of
    it would take hours here)."""
    total = sum(s.size for s in read_manifest(uri))
    ratios = []
    for rank in range(world):
        cache = ShardCache(work / f"{order}-{world}-{rank}", limit)
        ds = ShardedDataset(uri, nctx=NCTX, batch_size=BATCH, rank=rank, world_size=world, epochs=1,
                            order=order, window_shards=1, cache=cache, lookahead=1, seed=1)
        per_epoch = -(-ds.samples_per_epoch // (BATCH * world))
        read = sum(1 for _ in itertools.islice(ds, batches))
        fetched = sum(size for _, size in cache.fetch_log()) * per_epoch / read
        ratios.append(fetched / (total / world))
    return statistics.mean(ratios)


def samples_per_s(ds: ShardedDataset) -> float:
    start, count = time.perf_counter(), 0
    for batch in ds:
        count += len(batch["sample_ids"])
    return count / (time.perf_counter() - start)


def order_at_scale() -> None:
    """1,024 ranks x 8 workers, 2 samples per rank and batch (G = 2048), 1,024 canonical partitions."""
    print("\n## order at scale (no processes): 1,024 ranks x 8 workers, batch 2 per rank, 1,024 partitions")
    g, per_shard = 2048, 250
    order = StreamOrder(np.full(4096, per_shard), window=4 * per_shard, partitions=1024, chunk=g // 1024, seed=0)
    n = order.n
    epoch = order(0, np.arange(n))
    # Worker w of rank r reads global batches s = w mod 8, rank slice r: together every position once.
    seen = np.zeros(n, dtype=np.int64)
    for worker in range(8):
        for s in range(worker, n // g, 8):
            seen[epoch[s * g:(s + 1) * g]] += 1
    once = bool(np.all(seen <= 1)) and int(seen.sum()) == n // g * g  # the last partial batch is not read
    print(f"N={n}: every sample at most once and {n // g * g} of {n} read (whole global batches): {once}")
    # The order does not depend on the world size, so at the same G rank r of W=512 reads exactly what
    # ranks 2r and 2r+1 of W=1024 read: a cursor saved at one world size resumes at the other.
    cursor = 37 * g  # saved by a W=1024 run after 37 global batches
    at_1024 = np.concatenate([order(0, np.arange(cursor + r * 2, cursor + r * 2 + 2)) for r in range(1024)])
    at_512 = np.concatenate([order(0, np.arange(cursor + r * 4, cursor + r * 4 + 4)) for r in range(512)])
    agree = np.array_equal(at_1024, at_512)
    print(f"resume positions agree across W=512 and W=1024: {agree}")
    print("| samples N | shards | first batch of an epoch (ms) | next batches (ms, median of 200) | per-epoch table |")
    print("|---|---|---|---|---|")
    for shard_count in (1_000, 100_000, 1_000_000):
        order = StreamOrder(np.full(shard_count, 10_000), window=40_000, partitions=1024, chunk=2, seed=0)
        start = time.perf_counter()
        order(3, np.arange(2, 4))
        first = (time.perf_counter() - start) * 1e3
        times = []
        for step in range(1, 201):
            start = time.perf_counter()
            order(3, np.arange(step * g + 2, step * g + 4))  # rank 1's batch
            times.append((time.perf_counter() - start) * 1e3)
        print(f"| {shard_count * 10_000:.0e} | {shard_count:,} | {first:.1f} | {statistics.median(times):.2f} | "
              f"{shard_count * 16 / 2**20:.1f} MiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--shard-tokens", type=int, default=16384)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-object-store-"))
    write_dataset(work / "local", args.shards, args.shard_tokens)
    server = S3Server()
    os.environ.update(server.env)
    try:
        bucket = server.create_bucket("bench")
        uri = f"{bucket}/data"
        upload(work / "local", uri)
        shard_bytes = max(s.size for s in read_manifest(uri))
        dataset_bytes = sum(s.size for s in read_manifest(uri))
        print(f"dataset: {args.shards} shards x {shard_bytes / 2**20:.2f} MiB = {dataset_bytes / 2**20:.1f} MiB, "
              f"nctx {NCTX}, batch {BATCH} per rank")
        limit = 4 * shard_bytes  # window 1 shard + next + one straddling + the one being read
        print("\n## bytes fetched per rank per epoch / (dataset / world size), cache_limit = 4 shards")
        print("| world size | stream order | uniform order (peer) | uniform / stream |")
        print("|---|---|---|---|")
        for world in (1, 2, 4):
            stream = fetched_ratio(uri, world, "stream", limit, work, None)
            uniform = fetched_ratio(uri, world, "uniform", max(limit, (BATCH + 2) * shard_bytes), work, 100)
            print(f"| {world} | {stream:.3f} | {uniform:.2f} | {uniform / stream:.1f}x |")

        print("\n## reader throughput (1 rank, stream order, samples/s; nctx 64)")
        cache_dir = work / "throughput"
        def remote() -> ShardedDataset:
            return ShardedDataset(uri, nctx=NCTX, batch_size=BATCH, epochs=1, order="stream",
                                  cache=ShardCache(cache_dir, 2 * dataset_bytes), seed=2)
        cold = samples_per_s(remote())
        warm = samples_per_s(remote())
        local = samples_per_s(ShardedDataset(work / "local", nctx=NCTX, batch_size=BATCH, epochs=1,
                                             order="stream", seed=2))
        print(f"| S3 cold | S3 warm | local disk | cold / local | warm / local |\n|---|---|---|---|---|\n"
              f"| {cold:.0f} | {warm:.0f} | {local:.0f} | {cold / local:.2f} | {warm / local:.2f} |")

        print("\n## a dataset 10x the cache limit")
        small = dataset_bytes // 10
        cache = ShardCache(work / "bounded", small)
        ds = ShardedDataset(uri, nctx=NCTX, batch_size=BATCH, epochs=1, order="stream", cache=cache,
                            window_shards=1, lookahead=1, seed=3)
        peak_cache, batches = 0, 0
        for _ in ds:
            batches += 1
            if batches % 20 == 0:
                peak_cache = max(peak_cache, cache.used_bytes())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"cache_limit {small / 2**20:.2f} MiB, dataset {dataset_bytes / 2**20:.1f} MiB: peak cache "
              f"{peak_cache / 2**20:.2f} MiB (limit respected: {peak_cache <= small}), peak RSS {rss:.0f} MiB")
    finally:
        server.stop()
    order_at_scale()


if __name__ == "__main__":
    main()
