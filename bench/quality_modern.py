"""Held-out masked-LM loss at equal steps on the sample corpus: the modern tiny preset beside the BERT-shaped
one, and the modern preset with and without document masks, each trained in this process by the real
entry point (`pretrain.tlm`, configs/tiny_*.yaml) on the same data order.

    .venv/bin/python bench/quality_modern.py --steps 300 --sample-dir runs/sample

Every run masks 15% of the tokens (the modern preset's 30% is overridden, so the losses measure the same
task), validates on the same held-out shards (`--eval-batches` batches) and reports its training FLOPs per
token, since equal steps are not equal compute: the modern tiny model is wider in layers, narrower in FFN.
"""
from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from pathlib import Path

import torch
import yaml

from pretrain.model import TransformerConfig, flops_per_token
from pretrain.run import run_recipe
from pretrain.tlm import RECIPE

RUNS = {
    "BERT-shaped (tiny_mlm)": ("configs/tiny_mlm.yaml",),
    "modern, document-masked (tiny_modernbert_mlm)": ("configs/tiny_modernbert_mlm.yaml",),
    "modern, cross-document": ("configs/tiny_modernbert_mlm.yaml", "model.document_mask=false"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-batches", type=int, default=40)
    parser.add_argument("--sample-dir", default="runs/sample", help="built once, shared by the runs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for name, (config, *extra) in RUNS.items():
            start = time.perf_counter()
            run_dir = Path(runs) / str(len(rows))
            result = run_recipe(RECIPE, [
                "--config", config, f"data.sample.dir={args.sample_dir}", f"train.run_dir={run_dir}",
                f"train.max_steps={args.steps}", "train.eval_every=0", f"train.eval_batches={args.eval_batches}",
                "train.checkpoint_every=0", "train.tensorboard=false", "train.export_formats=[]",
                "train.num_workers=0", "objective.mask_rate=0.15", f"train.seed={args.seed}", *extra])
            resolved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
            flops = flops_per_token(TransformerConfig(**resolved["model"]), resolved["data"]["nctx"],
                                    output_fraction=0.15)
            rows.append((name, result.valid["lm"], flops, time.perf_counter() - start))
    print(f"{time.strftime('%Y-%m-%d')} | torch {torch.__version__} | CPU x {torch.get_num_threads()} threads | "
          f"{args.steps} steps, 15% masking, {args.eval_batches} held-out batches, seed {args.seed}")
    for name, loss, flops, seconds in rows:
        print(f"  {name:48s} held-out MLM loss {loss:.3f} (ppl {math.exp(loss):7.1f})  "
              f"{flops / 1e6:5.2f} MFLOPs/token  {seconds:5.0f} s")
    print(f"  modern - BERT-shaped: {rows[1][1] - rows[0][1]:+.3f} nats; "
          f"document-masked - cross-document: {rows[1][1] - rows[2][1]:+.3f} nats")


if __name__ == "__main__":
    main()
