"""The quality cost of the streaming order: held-out MLM loss at equal steps, streaming vs uniform order.

The tiny MLM preset (configs/tiny_mlm.yaml) is trained by the real entry point (`pretrain.tlm`) on the
sample corpus, once per (seed, order), and validated on the same held-out shards. The training text is
re-cut into many small shards first (`--shard-tokens`): with the sample's single shard both orders would
be the same. Its documents are in corpus order (docstrings of one module next to each other), so a shard
is topically narrow and the streaming order, which draws each batch from a few shards' window per
partition, sees more correlated batches than the uniform permutation: that is the cost measured here.
Local shards suffice: the order, not where the bytes come from, decides what the model sees.

    PYTHONPATH=. .venv/bin/python bench/stream_quality.py --steps 300 --seeds 0 1 2 --threads 1 [--windows 4 16]

`train.seed` sets the initial weights, the masks and the order; both orders run with each seed, so the
per-seed difference (stream - uniform) is a paired comparison. Printed: mean +- std (sample std over the
seeds) of each order's loss and of the difference; with several `--windows`, one streaming run per
window and seed against the same uniform run.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from data_pipeline.preprocess import preprocess
from data_pipeline.sample_corpus import prepare_sample_data
from data_pipeline.shards import find_shards
from data_pipeline.tokenizer import TokenizerSpec
from pretrain.run import run_recipe
from pretrain.tlm import RECIPE


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shard-tokens", type=int, default=25_000,
                        help="tokens per training shard (the sample's ~0.8M tokens -> ~32 shards)")
    parser.add_argument("--windows", type=int, nargs="+", default=[4],
                        help="data.shuffle_window of the streaming order, in shards (default 4, the config's)")
    parser.add_argument("--partitions", type=int, default=4,
                        help="data.partitions of the streaming order (as a 4-rank job would have)")
    parser.add_argument("--eval-batches", type=int, default=40, help="the whole held-out set at 40 x 16")
    parser.add_argument("--sample-dir", default="runs/sample", help="built once if missing, then only read")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    return parser.parse_args()


def training_shards(sample: dict[str, Path], work: Path, shard_tokens: int) -> Path:
    """The sample's training text cut into shards of about `shard_tokens` tokens."""
    out = work / "train"
    preprocess([sample["train_text"]], out, TokenizerSpec(kind="wordpiece", vocab=str(sample["vocab"])),
               processes=1, max_shard_tokens=shard_tokens, progress=False)
    return out


def held_out_loss(args: argparse.Namespace, data: list[str], run_dir: Path, seed: int, window: int | None) -> float:
    """`window` None: the uniform order; else the streaming order with that shuffle window."""
    order = ["data.shuffle=stream", f"data.shuffle_window={window}", f"data.partitions={args.partitions}"] \
        if window else ["data.shuffle=uniform"]
    result = run_recipe(RECIPE, [
        "--config", "configs/tiny_mlm.yaml", "data.sample.dir=", *data, f"train.run_dir={run_dir}", *order,
        f"train.max_steps={args.steps}", "train.eval_every=0", f"train.eval_batches={args.eval_batches}",
        "train.checkpoint_every=0", "train.tensorboard=false", "train.export_formats=[]",
        "train.num_workers=0", f"train.seed={seed}"])
    return result.valid["lm"]


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} +- {spread:.4f}"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)
    sample = prepare_sample_data(args.sample_dir)
    variants = {"uniform": None, **{f"stream, window {w}": w for w in args.windows}}
    losses: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as work:
        shards = training_shards(sample, Path(work), args.shard_tokens)
        shard_count = len(find_shards(shards))
        data = [f"data.train=[{shards}]", f"data.valid=[{sample['valid']}]", f"data.tokenizer.vocab={sample['vocab']}"]
        for seed in args.seeds:
            for index, (name, window) in enumerate(variants.items()):
                start = time.perf_counter()
                loss = held_out_loss(args, data, Path(work) / f"{index}-{seed}", seed, window)
                losses[name].append(loss)
                print(f"  seed {seed} {name:18s} held-out MLM loss {loss:.4f}  ({time.perf_counter() - start:.0f} s)",
                      flush=True)
    print(f"{time.strftime('%Y-%m-%d')} | torch {torch.__version__} | CPU x {args.threads} threads | tiny_mlm, "
          f"{args.steps} steps x 16, {shard_count} training shards of ~{args.shard_tokens} tokens, "
          f"{args.partitions} partitions, seeds {' '.join(map(str, args.seeds))}")
    for name in variants:
        print(f"  {name:18s} held-out MLM loss {mean_std(losses[name])} (mean +- std over seeds)")
    for name in list(variants)[1:]:
        differences = [s - u for s, u in zip(losses[name], losses["uniform"])]
        print(f"  {name} - uniform: {mean_std(differences)} nats (per seed: "
              f"{', '.join(f'{d:+.4f}' for d in differences)})")


if __name__ == "__main__":
    main()
