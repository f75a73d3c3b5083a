"""ShardedDataset throughput and memory on a small (~10 MB) and a large (~1 GB) shard set.

    .venv/bin/python bench/reader.py                 # DataLoader, 2 workers, nctx 512, batch 32
    .venv/bin/python bench/reader.py --large-mb 200  # quicker

Both shard sets are random uint16 tokens written through ShardWriter in 64k-token documents (so the
generator never holds more than one document) into a temporary directory that is deleted afterwards.
Each set is read in a fresh process, so peak RSS (getrusage's ru_maxrss: the main process, and the
largest DataLoader worker) belongs to reading alone; the large/small ratio should be ~1.0. The GPU line
is what one GPU consumes when training BERT-base, for scale; see `gpu_tokens_per_s` for the estimate.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from data_pipeline.readers import ShardedDataset
from data_pipeline.shards import LM_STREAMS, ShardWriter, shard_prefix
from pretrain.model.config import TransformerConfig
from pretrain.model.flops import flops_per_token

NCTX, BATCH, WORKERS = 512, 32, 2
BERT_VOCAB = 30522
DOC_TOKENS = 1 << 16
H100_BF16_DENSE_TFLOPS = 989.0


class _BenchTokenizer:
    """The header fields of a BERT-sized vocab; the tokens themselves are random."""

    kind, vocab_size, fingerprint, sep_id = "wordpiece", BERT_VOCAB, "bench-random-ids", 102


def write_corpus(directory: Path, megabytes: int, num_shards: int) -> int:
    """Write ~`megabytes` of uint16 tokens over `num_shards` shards; returns the token count."""
    rng = np.random.default_rng(0)
    docs_per_shard = max(1, megabytes * (1 << 20) // 2 // DOC_TOKENS // num_shards)
    for index in range(num_shards):
        writer = ShardWriter(shard_prefix(directory, index), LM_STREAMS, _BenchTokenizer())
        for _ in range(docs_per_shard):
            writer.add(rng.integers(0, BERT_VOCAB, DOC_TOKENS - 1, dtype=np.uint16))
        writer.close()
    return num_shards * docs_per_shard * DOC_TOKENS


def measure(directory: Path, batches: int, workers: int) -> dict[str, float]:
    """Read `batches` shuffled batches after a warm-up; tokens/s and peak RSS (MiB) of this process tree."""
    loader = DataLoader(ShardedDataset(directory, nctx=NCTX, batch_size=BATCH), batch_size=None,
                        num_workers=workers)
    stream = iter(loader)
    for _ in islice(stream, 2 * max(workers, 1)):
        pass
    start = time.perf_counter()
    tokens = sum(batch["tokens"].numel() for batch in islice(stream, batches))
    elapsed = time.perf_counter() - start
    del stream  # joins the workers, so RUSAGE_CHILDREN covers them
    mib = 1024.0  # ru_maxrss is in KiB on Linux
    return {"tokens_per_s": tokens / elapsed,
            "rss_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mib,
            "rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mib}


def gpu_tokens_per_s(mfu: float) -> float:
    """BERT-base MLM training tokens/s on one H100 SXM: peak bf16 dense FLOP/s x MFU / FLOPs per token.

    FLOPs per token come from the trainer's own count (6 x matmul weights + attention, MLM projecting
    15% of positions) at T = 512; MFU is an assumption (40% is what well-tuned BERT pretraining reaches).
    """
    bert_base = TransformerConfig(vocab_size=BERT_VOCAB, d_model=768, num_heads=12, layers=12, d_ff=3072,
                                  head_transform=True)
    return H100_BF16_DENSE_TFLOPS * 1e12 * mfu / flops_per_token(bert_base, NCTX, output_fraction=0.15)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-mb", type=int, default=10)
    parser.add_argument("--large-mb", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=1000, help="timed batches per corpus")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for the GPU reference line")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one fresh process per set
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.batches, args.workers)))
        return

    print(f"# {time.strftime('%Y-%m-%d')}  {cpu_name()} x {os.cpu_count()}  python {platform.python_version()}"
          f"  torch {torch.__version__}  numpy {np.__version__}")
    print(f"# DataLoader workers {args.workers}, nctx {NCTX}, batch {BATCH}, {args.batches} timed batches, "
          f"shuffled (random block order)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-reader-") as tmp:
        for name, megabytes, shards in (("small", args.small_mb, 1), ("large", args.large_mb, 8)):
            directory = Path(tmp) / name
            started = time.perf_counter()
            num_tokens = write_corpus(directory, megabytes, shards)
            written = time.perf_counter() - started
            command = [sys.executable, __file__, "--measure", str(directory), "--batches", str(args.batches),
                       "--workers", str(args.workers)]
            run = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
            result = results[name] = json.loads(run.stdout.splitlines()[-1])
            print(f"{name:5s} {num_tokens * 2 / 2**20:5.0f} MiB, {shards} shards (written in {written:4.1f} s): "
                  f"{result['tokens_per_s'] / 1e6:6.2f} M tokens/s, peak RSS main "
                  f"{result['rss_main_mib']:6.1f} MiB, worker {result['rss_worker_mib']:6.1f} MiB")
    small, large = results["small"], results["large"]
    print(f"large/small peak RSS: main {large['rss_main_mib'] / small['rss_main_mib']:.3f}, "
          f"worker {large['rss_worker_mib'] / small['rss_worker_mib']:.3f}")
    print(f"reference: one H100 training BERT-base (T {NCTX}, bf16, MFU {args.mfu:.0%}) consumes "
          f"~{gpu_tokens_per_s(args.mfu) / 1e3:.0f} k tokens/s")


if __name__ == "__main__":
    main()
