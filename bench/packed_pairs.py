"""Paired training throughput on real pairs of uneven lengths: padded batches beside packed ones (several
sequences per row behind document masks: objective.dual_encoder.packed, objective.seq2seq.packed), for the
dual encoder and the encoder-decoder, each pair measured in one run.

    .venv/bin/python bench/packed_pairs.py --threads 1 --sample-dir runs/sample [--objective seq2seq]

The batch is the first --batch context/response pairs of the sample corpus's paired training shards (real
tokens, each side cut at --seq), so the lengths are those of real conversation turns. Both contenders of an
objective are the same ModernBERT-style model (the dual encoder pools by mean; the encoder-decoder reads
start + response in its decoder), with the same initial weights, stepped round-robin (see harness.py);
tokens/s counts real (non-pad) tokens only, the work both do: both sides' tokens, and for the
encoder-decoder the decoder's start token too.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from harness import Contender, run_header, shape_parser, time_round_robin

from data_pipeline.sample_corpus import prepare_sample_data
from data_pipeline.shards import Shard, find_shards
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.model.packing import pack_aligned, pack_sequences
from pretrain.objectives.dual_encoder import DualEncoder, DualEncoderConfig
from pretrain.objectives.seq2seq import Seq2Seq

PAD_ID, START_ID, END_ID = 0, 2, 3  # the sample WordPiece vocabulary's [PAD], [CLS], [SEP]
OBJECTIVES = ("dual_encoder", "seq2seq")


def parse_args() -> argparse.Namespace:
    parser = shape_parser(__doc__, seq_help="tokens per side (sequences are cut there; padded rows are this long)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU intra-op threads")
    parser.add_argument("--sample-dir", default="runs/sample")
    parser.add_argument("--objective", choices=[*OBJECTIVES, "both"], default="both")
    parser.set_defaults(batch=128, layers=3, d_ff=512)
    return parser.parse_args()


def real_pairs(args: argparse.Namespace) -> tuple[dict, int]:
    """({left, right} [B, seq] right-padded with the first B pairs of the sample shards, vocab size)."""
    paths = prepare_sample_data(args.sample_dir)
    shard = Shard.open(find_shards(paths["paired_train"])[0])
    batch = {}
    for side in ("left", "right"):
        tokens, offsets = shard.tokens(side), shard.offsets(side)
        rows = np.full((args.batch, args.seq), PAD_ID, dtype=np.int64)
        for i in range(args.batch):
            doc = tokens[offsets[i]:offsets[i + 1]][:args.seq]
            rows[i, :doc.size] = doc
        batch[side] = torch.from_numpy(rows).to(args.device)
    return batch, shard.header.vocab_size


def contender(args: argparse.Namespace, batch: dict, vocab: int, objective_name: str, packed: bool) -> Contender:
    torch.manual_seed(args.seed)
    cfg = TransformerConfig(vocab_size=vocab, d_model=args.d_model, num_heads=args.heads, layers=args.layers,
                            d_ff=args.d_ff, dropout=0.0, max_len=args.seq + 1, norm="pre", embeddings="none",
                            first_attn_norm=False, rope=True, ffn="geglu", bias=False, global_every=3,
                            local_window=64)
    real = int((batch["left"] != PAD_ID).sum() + (batch["right"] != PAD_ID).sum())
    if objective_name == "seq2seq":
        objective = Seq2Seq(TransformerLM(cfg), pad_id=PAD_ID, start_id=START_ID, end_id=END_ID, packed=packed)
        term, real = "lm", real + batch["right"].shape[0]
    else:
        objective = DualEncoder(TransformerLM(cfg), DualEncoderConfig(pooling="mean", packed=packed), pad_id=PAD_ID)
        term = "contrastive"
    objective.to(args.device)

    def loss() -> torch.Tensor:
        loss_sum, count = objective(batch)["losses"][term]
        return loss_sum / count

    return Contender("packed (document masks)" if packed else "padded", objective, loss, real)


def packed_rows(batch: dict, objective_name: str) -> str:
    """How many rows the packed contender's batches have."""
    if objective_name == "seq2seq":
        return f"{pack_aligned([batch['left'], batch['right']], PAD_ID)[0].tokens.shape[0]} aligned rows"
    rows = {side: pack_sequences(batch[side], PAD_ID).tokens.shape[0] for side in ("left", "right")}
    return f"{rows['left']} contexts, {rows['right']} responses"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    batch, vocab = real_pairs(args)
    print(run_header(args.device))
    for objective_name in OBJECTIVES if args.objective == "both" else (args.objective,):
        contenders = [contender(args, batch, vocab, objective_name, packed) for packed in (True, False)]
        seconds = time_round_robin(contenders, args.device, args.warmup, args.steps)
        real = contenders[0].tokens
        padded = 2 * args.batch * args.seq + (args.batch if objective_name == "seq2seq" else 0)
        print(f"{objective_name}: D {args.d_model}, L {args.layers}, H {args.heads}, F {args.d_ff}, V {vocab}, "
              f"T {args.seq} per side, B {args.batch} pairs, {real} real tokens of {padded} "
              f"padded ({real / padded:.0%}); packed rows: {packed_rows(batch, objective_name)};"
              f" median of {args.steps} steps after {args.warmup} warm-up")
        for c in contenders:
            print(f"  {c.name:26s} {c.tokens / seconds[c.name]:9.0f} real tokens/s "
                  f"{seconds[c.name] * 1e3:8.1f} ms/step")
        print(f"  packed / padded: {seconds['padded'] / seconds['packed (document masks)']:.2f}x")


if __name__ == "__main__":
    main()
