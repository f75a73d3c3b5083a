"""Held-out masked-LM loss on the sample corpus, over several seeds: the modern tiny preset beside the
BERT-shaped one at equal steps and at equal compute, and the modern preset with and without document masks,
each trained in this process by the real entry point (`pretrain.tlm`, configs/tiny_*.yaml).

    .venv/bin/python bench/quality_modern.py --steps 150 --seeds 0 1 2 --sample-dir runs/sample

Every run masks 15% of the tokens (the modern preset's 30% is overridden, so the losses measure the same
task) and validates on the same held-out shards (`--eval-batches` batches). Equal steps are not equal
compute (the modern tiny model has more, narrower-FFN layers), so the BERT-shaped model also runs for
--steps x (modern FLOPs/token / BERT FLOPs/token) steps, with its schedule stretched to match. A seed sets
the initial weights, the masking and the data order, the same for every run of that seed; differences are
taken per seed and reported as mean +- sample standard deviation over the seeds.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from pretrain.model import TransformerConfig, flops_per_token
from pretrain.run import run_recipe
from pretrain.tlm import RECIPE

MODERN, CROSS, BERT, BERT_COMPUTE = ("modern, document-masked", "modern, cross-document",
                                     "BERT-shaped, equal steps", "BERT-shaped, equal compute")
CONFIGS = {MODERN: ("configs/tiny_modernbert_mlm.yaml",),
           CROSS: ("configs/tiny_modernbert_mlm.yaml", "model.document_mask=false"),
           BERT: ("configs/tiny_mlm.yaml",),
           BERT_COMPUTE: ("configs/tiny_mlm.yaml",)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="steps of the modern runs (and equal-steps BERT)")
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--sample-dir", default="runs/sample", help="built once, shared by the runs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    return parser.parse_args()


def train_once(args: argparse.Namespace, run_dir: Path, name: str, steps: int, seed: int) -> tuple[float, float]:
    """(held-out MLM loss, training FLOPs per token) of one run of `name`."""
    config, *extra = CONFIGS[name]
    result = run_recipe(RECIPE, [
        "--config", config, f"data.sample.dir={args.sample_dir}", f"train.run_dir={run_dir}",
        f"train.max_steps={steps}", "train.eval_every=0", f"train.eval_batches={args.eval_batches}",
        "train.checkpoint_every=0", "train.tensorboard=false", "train.export_formats=[]",
        "train.num_workers=0", "objective.mask_rate=0.15", f"train.seed={seed}", *extra])
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    flops = flops_per_token(TransformerConfig(**resolved["model"]), resolved["data"]["nctx"], output_fraction=0.15)
    return result.valid["lm"], flops


def seed_runs(args: argparse.Namespace, seed: int) -> tuple[dict[str, float], dict[str, float], int]:
    """({run: loss}, {run: FLOPs/token}, equal-compute BERT steps) for one seed."""
    losses, flops = {}, {}
    compute_steps = args.steps
    with tempfile.TemporaryDirectory() as runs:
        for name in CONFIGS:
            if name == BERT_COMPUTE:
                compute_steps = round(args.steps * flops[MODERN] / flops[BERT])
            steps = compute_steps if name == BERT_COMPUTE else args.steps
            start = time.perf_counter()
            losses[name], flops[name] = train_once(args, Path(runs) / str(len(losses)), name, steps, seed)
            print(f"seed {seed} | {name:28s} {steps:4d} steps  held-out MLM loss {losses[name]:.3f}  "
                  f"{flops[name] / 1e6:5.2f} MFLOPs/token  {time.perf_counter() - start:5.0f} s", flush=True)
    return losses, flops, compute_steps


def mean_std(values: list[float], sign: str = "") -> str:
    """"mean +- sample std" of `values` (std 0 for a single seed)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{sign}.3f} +- {spread:.3f}"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)
    per_seed = [seed_runs(args, seed) for seed in args.seeds]
    flops, compute_steps = per_seed[0][1], per_seed[0][2]
    print(f"{time.strftime('%Y-%m-%d')} | torch {torch.__version__} | CPU x {torch.get_num_threads()} threads | "
          f"{args.steps} steps ({compute_steps} for equal compute), 15% masking, {args.eval_batches} held-out "
          f"batches, seeds {' '.join(map(str, args.seeds))}")
    for name in CONFIGS:
        losses = [seed[0][name] for seed in per_seed]
        print(f"  {name:28s} held-out MLM loss {mean_std(losses)}  {flops[name] / 1e6:5.2f} MFLOPs/token")
    for label, first, second in (("modern - BERT-shaped, equal steps", MODERN, BERT),
                                 ("modern - BERT-shaped, equal compute", MODERN, BERT_COMPUTE),
                                 ("document-masked - cross-document", MODERN, CROSS)):
        print(f"  {label:38s} {mean_std([seed[0][first] - seed[0][second] for seed in per_seed], '+')} nats")


if __name__ == "__main__":
    main()
