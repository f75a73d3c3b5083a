"""Training throughput of our masked LM beside two peers of the same shape, measured in the same run.

    .venv/bin/python bench/train_step.py            # defaults: D 256, 4 layers, 4 heads, FFN 1024, V 8192,
                                                    # T 128, B 32; fp32 then bf16 autocast, all three models
    .venv/bin/python bench/train_step.py --precision fp32 --profile   # + where our step's time goes

Peers: Hugging Face `BertForMaskedLM` and mead-baseline's 8-mile `TransformerMaskedLanguageModel`, both
BERT-shaped (post-LN, learned positions + token-type-0 bias, embedding LayerNorm, tied output with bias).
Ours is the same architecture with BERT's MLM head transform (as the HF peer has). All three train with
AdamW on one batch masked once by our TokenMasker (15% targets), with the loss on the targets only; the
peers project every position to the vocabulary because that is how they work, ours projects only the
targets. Steps run round-robin (one step of each model in turn), so load from other processes hits all
three alike; the reported figure is the median over the timed steps after warm-up. On a CPU shared with
other jobs, `--threads 1` keeps thread oversubscription from drowning the differences. Each precision is
its own round robin, the peers under the same autocast as ours; MFU is against this machine's matmul peak
in that precision, measured at the start (printed), or the vendor's bf16 peak on a known GPU.
Needs `transformers` and `mead-baseline==2.4.2` (which brings mead-layers) in the venv.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from harness import (Contender, matmul_peak_flops, model_config, restore_collections_aliases, run_header,
                     shape_parser, time_round_robin)

from pretrain.metrics import mfu, peak_bf16_flops
from pretrain.model import TransformerLM, flops_per_token
from pretrain.objectives.language_modeling import MaskedLM
from pretrain.objectives.masking import IGNORE_INDEX, MaskingConfig, TokenMasker

# mead-baseline's special ids (ARCHITECTURE.md): <PAD> <GO> <EOS> <UNK> [CLS] [MASK].
PAD_ID, MASK_ID, NUM_SPECIAL = 0, 5, 6
MASKING = MaskingConfig()  # BERT's recipe: 15% targets, 80% [MASK] / 10% random / 10% kept


def parse_args() -> argparse.Namespace:
    parser = shape_parser(__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU intra-op threads")
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    parser.add_argument("--profile", action="store_true", help="then profile 3 steps of ours per precision")
    return parser.parse_args()


def masked_batch(args: argparse.Namespace) -> dict:
    """One batch of random non-special tokens, masked by the trainer's own TokenMasker."""
    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(NUM_SPECIAL, args.vocab, size=(args.batch, args.seq))
    masker = TokenMasker(MASKING, seed=args.seed, vocab_size=args.vocab, mask_id=MASK_ID,
                         special_ids=frozenset(range(NUM_SPECIAL)))
    batch = masker({"tokens": torch.from_numpy(tokens), "epoch": torch.zeros(args.batch, dtype=torch.long),
                    "sample_ids": torch.arange(args.batch), "cursor": args.batch})
    labels = torch.full((args.batch * args.seq,), IGNORE_INDEX, dtype=torch.long)
    labels[batch["target_index"]] = batch["targets"]
    batch["labels"] = labels.view(args.batch, args.seq)
    return {k: v.to(args.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def ours(args: argparse.Namespace, batch: dict) -> Contender:
    cfg = model_config(args, embeddings="learned-bias", head_transform=True, output_bias=True)
    objective = MaskedLM(TransformerLM(cfg), mask_rate=MASKING.mask_rate).to(args.device)

    def loss() -> torch.Tensor:
        loss_sum, count = objective(batch)["losses"]["lm"]
        return loss_sum / count

    return Contender("ours (MaskedLM)", objective, loss, args.batch * args.seq, objective.flops_per_token(args.seq))


def full_logits_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets of [B, T, V] logits: how both peers compute their MLM loss."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


def hf_bert(args: argparse.Namespace, batch: dict) -> Contender:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=args.vocab, hidden_size=args.d_model, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=args.d_ff, hidden_act="gelu",
                        max_position_embeddings=512, pad_token_id=PAD_ID)
    model = BertForMaskedLM(config).to(args.device)
    flops = flops_per_token(model_config(args, head_transform=True), args.seq)
    return Contender("HF BertForMaskedLM", model,
                     lambda: full_logits_loss(model(input_ids=batch["inputs"]).logits, batch["labels"]),
                     args.batch * args.seq, flops)


def mead_tlm(args: argparse.Namespace, batch: dict) -> Contender:
    restore_collections_aliases()
    from baseline.pytorch.lm.model import TransformerMaskedLanguageModel
    from eight_mile.pytorch.embeddings import (
        LearnedPositionalLookupTableEmbeddingsWithBias,
    )

    embeddings = {"x": LearnedPositionalLookupTableEmbeddingsWithBias(vsz=args.vocab, dsz=args.d_model, mxlen=512)}
    model = TransformerMaskedLanguageModel.create(
        embeddings, tgt_key="x", src_keys=["x"], gpu=False, d_model=args.d_model, num_heads=args.heads,
        layers=args.layers, d_ff=args.d_ff, dropout=0.1, embeddings_dropout=0.1, activation="gelu",
        layer_norms_after=True, layer_norm_eps=1e-12, embeddings_reduction="sum-layer-norm", tie_weights=True,
        output_bias=True).to(args.device)
    flops = flops_per_token(model_config(args), args.seq)
    return Contender("mead-baseline TransformerMaskedLanguageModel", model,
                     lambda: full_logits_loss(model({"x": batch["inputs"]}, None)[0], batch["labels"]),
                     args.batch * args.seq, flops)


def report(args: argparse.Namespace, contenders: list[Contender], bf16: bool, peak: float) -> float:
    """Time one round robin at one precision, print its table; our median seconds per step."""
    seconds = time_round_robin(contenders, args.device, args.warmup, args.steps, bf16=bf16)
    print(run_header(args.device, bf16))
    for contender in contenders:
        tokens_per_s = contender.tokens / seconds[contender.name]
        print(f"{contender.name:46s} {tokens_per_s:9.0f} tokens/s {seconds[contender.name] * 1e3:8.1f} ms/step"
              f"  MFU {mfu(contender.flops_per_token, tokens_per_s, peak, world_size=1):.1%}")
    fastest_peer = min(seconds[c.name] for c in contenders[1:])
    print(f"ours / faster peer: {fastest_peer / seconds[contenders[0].name]:.2f}x")
    return seconds[contenders[0].name]


def profile(contender: Contender, device: str, bf16: bool) -> None:
    """Where our step's time goes: the ops with the most self time over 3 steps."""
    from torch.profiler import profile as torch_profile

    with torch_profile() as prof:
        for _ in range(3):
            with torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=bf16):
                contender.step()
    sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=15))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    batch = masked_batch(args)
    contenders = [build(args, batch) for build in (ours, hf_bert, mead_tlm)]
    gpu_peak = peak_bf16_flops(torch.cuda.get_device_name(args.device)) if args.device.startswith("cuda") else None
    print(f"D {args.d_model}, L {args.layers}, H {args.heads}, F {args.d_ff}, V {args.vocab}, T {args.seq}, "
          f"B {args.batch}, {batch['targets'].numel()} targets; median of {args.steps} steps after "
          f"{args.warmup} warm-up")
    ours_seconds = {}
    for precision in (("fp32", "bf16") if args.precision == "both" else (args.precision,)):
        bf16 = precision == "bf16"
        peak = gpu_peak or matmul_peak_flops(args.device, torch.bfloat16 if bf16 else torch.float32)
        print(f"\nmatmul peak {precision}: {peak / 1e9:.0f} GFLOP/s ({'vendor table' if gpu_peak else 'measured'})")
        ours_seconds[precision] = report(args, contenders, bf16, peak)
        if args.profile:
            profile(contenders[0], args.device, bf16)
    if len(ours_seconds) == 2:
        print(f"\nours bf16 / ours fp32: {ours_seconds['fp32'] / ours_seconds['bf16']:.2f}x")


if __name__ == "__main__":
    main()
