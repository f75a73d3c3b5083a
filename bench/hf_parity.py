"""Convergence parity: our masked LM's held-out loss beside HF `BertForMaskedLM`'s at equal steps, over seeds.

    .venv/bin/python bench/hf_parity.py                          # 4 seeds x 1000 steps, the tiny_mlm shape
    .venv/bin/python bench/hf_parity.py --seeds 2 --steps 100 --eval-every 50   # a quick look
    .venv/bin/python bench/hf_parity.py --jobs 4 --threads 1      # the seeds side by side

Both models have the same shape (BERT's: post-LN, learned positions + token-type-0 bias, embedding LN, MLM
head transform, tied output with bias), the same initial distribution (N(0, 0.02) weights, zero biases,
unit LayerNorms), read the same blocks of the sample corpus's training shards in the same order, with the
same masks (our TokenMasker, 15% targets, 80/10/10), and train with the same AdamW, warmup and linear decay
(`pretrain.optim`). Held-out loss: mean cross-entropy at the targets of fixed, fixed-masked blocks of the
validation shards. Per evaluation step the table shows the mean and sample standard deviation over seeds
of each model's loss and of the per-seed difference (ours - HF); each evaluation is logged to stderr as it
happens. HF's head is applied at the target positions only (its loss and gradients are those of projecting
every position, to float rounding; it saves most of its vocabulary matmuls).
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from harness import model_config, shape_parser
from torch import nn

from data_pipeline.sample_corpus import prepare_sample_data
from data_pipeline.shards import Shard, find_shards
from data_pipeline.tokenizer import TokenizerSpec, load_tokenizer
from pretrain.config import OptimConfig
from pretrain.model import TransformerLM
from pretrain.objectives.language_modeling import MaskedLM
from pretrain.objectives.masking import MaskingConfig, TokenMasker
from pretrain.optim import build_optimizer, build_scheduler

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = shape_parser(__doc__)
    parser.set_defaults(d_model=128, layers=2, heads=4, d_ff=512, seq=128, batch=16, steps=1000)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="per seed")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, each in its own process")
    parser.add_argument("--data-dir", type=Path, default=REPO / "runs/sample",
                        help="sample data (built there if missing, kept)")
    return parser.parse_args()


def blocks(shard_dir: Path, seq: int) -> torch.Tensor:
    """Every whole block of `seq` tokens of a shard directory's text stream, in order."""
    tokens = np.concatenate([np.asarray(Shard.open(prefix).tokens("text")) for prefix in find_shards(shard_dir)])
    usable = len(tokens) // seq * seq
    return torch.from_numpy(tokens[:usable].astype(np.int64)).view(-1, seq)


def masked(masker: TokenMasker, rows: torch.Tensor, sample_ids: torch.Tensor) -> dict:
    return masker({"tokens": rows, "epoch": torch.zeros(len(rows), dtype=torch.long), "sample_ids": sample_ids,
                   "cursor": int(sample_ids.max()) + 1})


def target_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean cross-entropy at the targets, for either model."""
    if isinstance(model, MaskedLM):
        loss_sum, count = model(batch)["losses"]["lm"]
        return loss_sum / count
    # BertForMaskedLM's own encoder and head, with the head (position-wise) applied at the targets only: the
    # same loss and gradients as projecting every position, at a fraction of the vocabulary matmuls' cost.
    hidden = model.bert(input_ids=batch["inputs"]).last_hidden_state
    logits = model.cls(hidden.flatten(0, 1).index_select(0, batch["target_index"]))
    return F.cross_entropy(logits.float(), batch["targets"])


def build_models(args: argparse.Namespace, vocab_size: int, pad_id: int, seed: int) -> dict[str, nn.Module]:
    from transformers import BertConfig, BertForMaskedLM

    args.vocab = vocab_size
    torch.manual_seed(seed)
    ours = MaskedLM(TransformerLM(model_config(args, embeddings="learned-bias", head_transform=True,
                                               output_bias=True)), mask_rate=0.15)
    torch.manual_seed(seed)
    hf = BertForMaskedLM(BertConfig(vocab_size=vocab_size, hidden_size=args.d_model, num_hidden_layers=args.layers,
                                    num_attention_heads=args.heads, intermediate_size=args.d_ff, hidden_act="gelu",
                                    max_position_embeddings=512, pad_token_id=pad_id))
    return {"ours": ours, "HF": hf}


def run_seed(args: argparse.Namespace, seed: int, train: torch.Tensor, valid: list[dict], tokenizer) -> dict:
    """{model name: {step: held-out loss}} for one seed. The models take their steps in turn, so a run stopped
    early has logged both curves to the same step."""
    masker = TokenMasker(MaskingConfig(), seed=seed, vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                         special_ids=tokenizer.special_ids)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    optim_cfg = OptimConfig(lr=args.lr, warmup_steps=args.warmup_steps, schedule="linear", min_lr_ratio=0.0)
    models = build_models(args, tokenizer.vocab_size, tokenizer.pad_id, seed)
    optimizers = {name: build_optimizer(model, optim_cfg, torch.device("cpu")) for name, model in models.items()}
    schedulers = {name: build_scheduler(optimizer, optim_cfg, args.steps) for name, optimizer in optimizers.items()}
    torch.manual_seed(seed)
    # Both models read the same generator stream. HF's torch dropout and our CPU dropout
    # (pretrain/model/dropout.py) draw their masks from it differently: same distribution, other masks.
    dropout_rng = dict.fromkeys(models, torch.get_rng_state())
    curves: dict[str, dict[int, float]] = {name: {} for name in models}
    start = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            for name, model in models.items():
                model.eval()
                with torch.no_grad():
                    curves[name][step] = statistics.fmean(target_loss(model, batch).item() for batch in valid)
                model.train()
                print(f"seed {seed} {name} step {step}: {curves[name][step]:.3f} "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        if step == args.steps:
            break
        ids = order[(step * args.batch + torch.arange(args.batch)) % len(train)]
        batch = masked(masker, train[ids], ids)
        for name, model in models.items():
            torch.set_rng_state(dropout_rng[name])
            target_loss(model, batch).backward()
            dropout_rng[name] = torch.get_rng_state()
            nn.utils.clip_grad_norm_(model.parameters(), optim_cfg.clip_grad_norm)
            optimizers[name].step()
            schedulers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
    return curves


def mean_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):7.3f} ± {spread:5.3f}"


def seed_curves(args: argparse.Namespace, seed: int) -> dict:
    """run_seed on the sample data, loaded here: a worker process's whole job."""
    torch.set_num_threads(args.threads)
    paths = prepare_sample_data(args.data_dir)
    tokenizer = load_tokenizer(TokenizerSpec("wordpiece", str(paths["vocab"])))
    train = blocks(paths["train"], args.seq)
    valid_blocks = blocks(paths["valid"], args.seq)[: args.eval_batches * args.batch]
    valid_masker = TokenMasker(MaskingConfig(), seed=12345, vocab_size=tokenizer.vocab_size,
                               mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids)
    valid = [masked(valid_masker, rows, torch.arange(i * args.batch, i * args.batch + len(rows)))
             for i, rows in enumerate(valid_blocks.split(args.batch))]
    return run_seed(args, seed, train, valid, tokenizer)


def main() -> None:
    args = parse_args()
    paths = prepare_sample_data(args.data_dir)  # once, before any worker reads it
    vocab_size = load_tokenizer(TokenizerSpec("wordpiece", str(paths["vocab"]))).vocab_size
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            runs = pool.starmap(seed_curves, [(args, seed) for seed in range(args.seeds)])
    else:
        runs = [seed_curves(args, seed) for seed in range(args.seeds)]
    print(f"D {args.d_model}, L {args.layers}, H {args.heads}, F {args.d_ff}, V {vocab_size}, "
          f"T {args.seq}, B {args.batch}, lr {args.lr}, {args.seeds} seeds; held-out MLM loss, mean ± std")
    print(f"{'step':>6s}  {'ours':>15s}  {'HF BertForMaskedLM':>18s}  {'ours - HF':>15s}")
    for step in runs[0]["ours"]:
        ours, hf = ([run[name][step] for run in runs] for name in ("ours", "HF"))
        print(f"{step:6d}  {mean_spread(ours)}  {mean_spread(hf):>18s}  "
              f"{mean_spread([a - b for a, b in zip(ours, hf)])}")


if __name__ == "__main__":
    main()
