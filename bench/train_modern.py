"""Training throughput of our modern models beside HF transformers' of the same shape, measured in one run.

    .venv/bin/python bench/train_modern.py --threads 1      # D 256, 6 layers, 4 heads, FFN 512, V 8192,
                                                            # T 128, B 32; fp32 on CPU

Pairs (each stepped round-robin with the others, medians after warm-up; see harness.py):
  ours ModernBERT-style MaskedLM (rope, GeGLU, no biases, pre-LN + embedding norm, every 3rd layer global,
  the others a 64-token window, 30% masking) vs HF `ModernBertForMaskedLM` of the same config, as shipped
  (logits at every position) and with `sparse_prediction` (only at the targets, as ours); SDPA attention;
  ours Llama-style CausalLM (rope, SwiGLU, RMSNorm, no biases) vs HF `LlamaForCausalLM` (tied embeddings).
Both of ours run without document masks here (one document per row, as the HF peers see it); the
`+ document mask` lines run ours on the same rows cut into 4 documents each, to show what the mask costs.
--profile adds, for ours and the fastest HF peer of each pair, where one step's CPU time goes
(torch.profiler self time: matmuls, attention kernels, everything else).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from harness import Contender, run_header, shape_parser, time_round_robin
from torch.profiler import ProfilerActivity, profile

from pretrain.model import TransformerConfig, TransformerLM
from pretrain.objectives.language_modeling import CausalLM, MaskedLM
from pretrain.objectives.masking import IGNORE_INDEX, MaskingConfig, TokenMasker

PAD_ID, SEP_ID, MASK_ID, NUM_SPECIAL = 0, 2, 5, 6
MASKING = MaskingConfig(mask_rate=0.3)
WINDOW = 64


def parse_args() -> argparse.Namespace:
    parser = shape_parser(__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU intra-op threads")
    parser.add_argument("--profile", action="store_true", help="break one step of ours and the peer down")
    parser.set_defaults(layers=6, d_ff=512)
    return parser.parse_args()


def modernbert_config(args: argparse.Namespace, document_mask: bool = False) -> TransformerConfig:
    return TransformerConfig(vocab_size=args.vocab, d_model=args.d_model, num_heads=args.heads, layers=args.layers,
                             d_ff=args.d_ff, dropout=0.0, max_len=512, layer_norm_eps=1e-5, norm="pre",
                             embeddings="none", first_attn_norm=False, rope=True, rope_theta=160000.0,
                             rope_local_theta=10000.0, ffn="geglu", bias=False, global_every=3,
                             local_window=WINDOW, head_transform=True, output_bias=True,
                             document_mask=document_mask)


def llama_config(args: argparse.Namespace, document_mask: bool = False) -> TransformerConfig:
    return TransformerConfig(vocab_size=args.vocab, d_model=args.d_model, num_heads=args.heads, layers=args.layers,
                             d_ff=args.d_ff, dropout=0.0, max_len=512, layer_norm_eps=1e-5, norm="pre",
                             norm_layer="rmsnorm", embeddings="none", embeddings_layer_norm=False, rope=True,
                             ffn="swiglu", bias=False, document_mask=document_mask)


def token_rows(args: argparse.Namespace, documents: int) -> torch.Tensor:
    """Random non-special tokens; with documents > 1 each row is cut into that many by separators."""
    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(NUM_SPECIAL, args.vocab, size=(args.batch, args.seq))
    for cut in range(1, documents):
        tokens[:, cut * args.seq // documents - 1] = SEP_ID
    return torch.from_numpy(tokens)


def masked(args: argparse.Namespace, tokens: torch.Tensor) -> dict:
    masker = TokenMasker(MASKING, seed=args.seed, vocab_size=args.vocab, mask_id=MASK_ID,
                         special_ids=frozenset(range(NUM_SPECIAL)))
    batch = masker({"tokens": tokens, "epoch": torch.zeros(args.batch, dtype=torch.long),
                    "sample_ids": torch.arange(args.batch), "cursor": args.batch})
    labels = torch.full((args.batch * args.seq,), IGNORE_INDEX, dtype=torch.long)
    labels[batch["target_index"]] = batch["targets"]
    batch["labels"] = labels.view(args.batch, args.seq)
    return {k: v.to(args.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def mean_loss(out: dict) -> torch.Tensor:
    loss_sum, count = out["losses"]["lm"]
    return loss_sum / count


def ours_mlm(args: argparse.Namespace, batch: dict, document_mask: bool, name: str) -> Contender:
    cfg = modernbert_config(args, document_mask)
    objective = MaskedLM(TransformerLM(cfg), mask_rate=MASKING.mask_rate, sep_id=SEP_ID).to(args.device)
    return Contender(name, objective, lambda: mean_loss(objective(batch)), args.batch * args.seq,
                     objective.flops_per_token(args.seq))


def hf_modernbert(args: argparse.Namespace, batch: dict, sparse: bool) -> Contender:
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    config = ModernBertConfig(vocab_size=args.vocab, hidden_size=args.d_model, num_hidden_layers=args.layers,
                              num_attention_heads=args.heads, intermediate_size=args.d_ff,
                              max_position_embeddings=512, local_attention=WINDOW, global_attn_every_n_layers=3,
                              global_rope_theta=160000.0, local_rope_theta=10000.0, pad_token_id=PAD_ID,
                              bos_token_id=1, eos_token_id=SEP_ID, cls_token_id=1, sep_token_id=SEP_ID,
                              sparse_prediction=sparse, attn_implementation="sdpa")
    model = ModernBertForMaskedLM(config).to(args.device)
    name = "HF ModernBertForMaskedLM" + (" (sparse)" if sparse else "")
    return Contender(name, model,
                     lambda: model(input_ids=batch["inputs"], labels=batch["labels"]).loss, args.batch * args.seq)


def ours_clm(args: argparse.Namespace, tokens: torch.Tensor, document_mask: bool, name: str) -> Contender:
    objective = CausalLM(TransformerLM(llama_config(args, document_mask)), pad_id=PAD_ID, sep_id=SEP_ID)
    objective.to(args.device)
    batch = {"tokens": tokens.to(args.device)}
    return Contender(name, objective, lambda: mean_loss(objective(batch)), args.batch * (args.seq - 1),
                     objective.flops_per_token(args.seq - 1))


def hf_llama(args: argparse.Namespace, tokens: torch.Tensor) -> Contender:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d_model, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.heads, intermediate_size=args.d_ff,
                         max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=SEP_ID, attn_implementation="sdpa",
                         use_cache=False)
    model = LlamaForCausalLM(config).to(args.device)
    tokens = tokens.to(args.device)

    def loss() -> torch.Tensor:  # the same T - 1 predictions as ours
        logits = model(input_ids=tokens[:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())

    return Contender("HF LlamaForCausalLM", model, loss, args.batch * (args.seq - 1))


def report(title: str, contenders: list[Contender], peers: int, seconds: dict[str, float]) -> None:
    """The contenders' figures; the ratio is ours (the first) against the fastest of the last `peers`."""
    print(title)
    for contender in contenders:
        tokens_per_s = contender.tokens / seconds[contender.name]
        print(f"  {contender.name:44s} {tokens_per_s:9.0f} tokens/s {seconds[contender.name] * 1e3:8.1f} ms/step")
    fastest_peer = min(seconds[c.name] for c in contenders[-peers:])
    print(f"  ours / fastest HF: {fastest_peer / seconds[contenders[0].name]:.2f}x")


def time_breakdown(contender: Contender) -> str:
    """One profiled step's self CPU time: total, and the shares of matmuls and attention kernels."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        contender.step()
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    matmul = sum(event.self_cpu_time_total for event in events if event.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    attention = sum(event.self_cpu_time_total for event in events if "scaled_dot_product" in event.key)
    return (f"  {contender.name:44s} {total / 1e3:8.1f} ms: matmuls {matmul / total:4.0%}, attention "
            f"{attention / total:4.0%}, the rest {(total - matmul - attention) / 1e3:7.1f} ms")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    one_document, four_documents = token_rows(args, 1), token_rows(args, 4)
    mlm = [ours_mlm(args, masked(args, one_document), False, "ours MaskedLM (ModernBERT-style)"),
           ours_mlm(args, masked(args, four_documents), True, "ours MaskedLM + document mask (4 docs/row)"),
           hf_modernbert(args, masked(args, one_document), sparse=False),
           hf_modernbert(args, masked(args, one_document), sparse=True)]
    clm = [ours_clm(args, one_document, False, "ours CausalLM (Llama-style)"),
           ours_clm(args, four_documents, True, "ours CausalLM + document mask (4 docs/row)"),
           hf_llama(args, one_document)]
    seconds = time_round_robin(mlm + clm, args.device, args.warmup, args.steps)
    print(run_header(args.device))
    print(f"D {args.d_model}, L {args.layers}, H {args.heads}, F {args.d_ff}, V {args.vocab}, T {args.seq}, "
          f"B {args.batch}; median of {args.steps} steps after {args.warmup} warm-up")
    report("masked LM (30% targets):", mlm, 2, seconds)
    report("causal LM:", clm, 1, seconds)
    if args.profile:
        print("one profiled step (self CPU time):")
        for contender in (mlm[0], min(mlm[2:], key=lambda c: seconds[c.name]), clm[0], clm[2]):
            print(time_breakdown(contender))


if __name__ == "__main__":
    main()
