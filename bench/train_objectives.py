"""Training throughput of the paired and ELECTRA objectives, each beside a peer of the same shape measured in
the same run, and beside our masked LM of the same size as the common reference.

    .venv/bin/python bench/train_objectives.py      # defaults: D 256, 4 layers, 4 heads, FFN 1024, V 8192,
                                                    # T 128 (64 per side for pairs), B 32; fp32 on CPU,
                                                    # bf16 autocast on CUDA

Contenders (all AdamW on one fixed random batch; tokens/s counts input tokens, padding included: B x T, or
B x (Tl + Tr) for pairs, whose rows are padded from random lengths):
  ours MaskedLM                       the reference: BERT MLM at the same size
  ours DualEncoder / mead PairedModel ConveRT dual encoders: shared encoder, 2-head reduction, one projection
                                      per side, symmetric in-batch loss with a learned temperature
  ours Seq2Seq / HF BART              encoder-decoder with tied embeddings, teacher forcing
  ours Electra / HF Electra           generator (1/4 width, shared embeddings) + discriminator, lambda 50
Steps run round-robin (one step of each in turn) so load from other processes hits all alike; the figure is
the median over the timed steps after warm-up. Needs `transformers` and `mead-baseline==2.4.2`.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from electra_reference import hf_electra_models
from harness import Contender, model_config, restore_collections_aliases, run_header, shape_parser, time_round_robin
from torch import nn

from pretrain.model import TransformerLM
from pretrain.objectives.dual_encoder import DualEncoder, DualEncoderConfig
from pretrain.objectives.electra import Electra, ElectraConfig, ReplacementMasker
from pretrain.objectives.language_modeling import MaskedLM
from pretrain.objectives.masking import MaskingConfig, TokenMasker
from pretrain.objectives.seq2seq import Seq2Seq, teacher_forcing

# mead-baseline's special ids (ARCHITECTURE.md): <PAD> <GO> <EOS> <UNK> [CLS] [MASK].
PAD_ID, GO_ID, EOS_ID, MASK_ID, NUM_SPECIAL = 0, 1, 2, 5, 6
SPECIALS = frozenset(range(NUM_SPECIAL))


def parse_args() -> argparse.Namespace:
    parser = shape_parser(__doc__, seq_help="LM block; paired sides get half each")
    parser.add_argument("--only", choices=("mlm", "dual", "seq2seq", "electra"), nargs="*",
                        help="run only these groups (default: all)")
    return parser.parse_args()


def on_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def random_tokens(args: argparse.Namespace, rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(NUM_SPECIAL, args.vocab, size=(rows, cols)))


def lm_batch(args: argparse.Namespace) -> dict:
    return {"tokens": random_tokens(args, args.batch, args.seq, args.seed),
            "epoch": torch.zeros(args.batch, dtype=torch.long), "sample_ids": torch.arange(args.batch),
            "cursor": args.batch}


def paired_batch(args: argparse.Namespace) -> dict:
    """Sides of seq/2 tokens, each row cut to a random length in [seq/4, seq/2] and padded, as real pairs are
    (an unpadded batch would let HF's models skip their attention masks and flatter them)."""
    half = args.seq // 2
    rng = np.random.default_rng(args.seed)
    batch = {}
    for side in ("left", "right"):
        tokens = random_tokens(args, args.batch, half, int(rng.integers(1 << 30)))
        lengths = torch.from_numpy(rng.integers(half // 2, half + 1, size=(args.batch, 1)))
        batch[side] = tokens.masked_fill(torch.arange(half) >= lengths, PAD_ID)
    return on_device(batch, args.device)


def mean_loss(objective: nn.Module, batch: dict) -> Callable[[], torch.Tensor]:
    """The single-process loss the loop would backpropagate: sum of weighted per-term means."""
    def loss() -> torch.Tensor:
        losses = objective(batch)["losses"]
        return sum(objective.loss_weights[name] * total / count for name, (total, count) in losses.items())
    return loss


# -- contenders ----------------------------------------------------------------------------------------

def ours_mlm(args: argparse.Namespace) -> list[Contender]:
    masker = TokenMasker(MaskingConfig(), seed=args.seed, vocab_size=args.vocab, mask_id=MASK_ID,
                         special_ids=SPECIALS)
    batch = on_device(masker(lm_batch(args)), args.device)
    objective = MaskedLM(TransformerLM(model_config(args, head_transform=True)), mask_rate=0.15).to(args.device)
    return [Contender("ours MaskedLM (reference)", objective, mean_loss(objective, batch), args.batch * args.seq)]


def dual_encoders(args: argparse.Namespace) -> list[Contender]:
    batch = paired_batch(args)
    tokens = batch["left"].numel() + batch["right"].numel()
    heads = DualEncoderConfig(pooling="2ha", embed_dim=args.d_model, temperature=0.05)
    ours = DualEncoder(TransformerLM(model_config(args)), heads, pad_id=PAD_ID).to(args.device)

    from eight_mile.pytorch.embeddings import LearnedPositionalLookupTableEmbeddings
    from eight_mile.pytorch.layers import PairedModel
    embeddings = LearnedPositionalLookupTableEmbeddings(vsz=args.vocab, dsz=args.d_model, mxlen=512)
    mead = PairedModel(embeddings, args.d_model, args.d_ff, 0.1, args.heads, args.layers,
                       d_out=args.d_model, reduction_d_k=args.d_model // 2, layer_norms_after=True,
                       embeddings_reduction="sum-layer-norm").to(args.device)
    mead_loss = mead.create_loss("symmetric", init_temp=0.05, learn_temp=True).to(args.device)
    return [Contender("ours DualEncoder", ours, mean_loss(ours, batch), tokens),
            Contender("mead-baseline PairedModel", nn.ModuleList([mead, mead_loss]),
                      lambda: mead_loss(batch["left"], batch["right"]), tokens)]


def seq2seqs(args: argparse.Namespace) -> list[Contender]:
    batch = paired_batch(args)
    ours = Seq2Seq(TransformerLM(model_config(args)), pad_id=PAD_ID, start_id=GO_ID,
                   end_id=EOS_ID).to(args.device)
    inputs, targets = teacher_forcing(batch["right"], PAD_ID, GO_ID, EOS_ID)
    tokens = batch["left"].numel() + inputs.numel()

    from transformers import BartConfig, BartForConditionalGeneration
    config = BartConfig(vocab_size=args.vocab, d_model=args.d_model, encoder_layers=args.layers,
                        decoder_layers=args.layers, encoder_attention_heads=args.heads,
                        decoder_attention_heads=args.heads, encoder_ffn_dim=args.d_ff, decoder_ffn_dim=args.d_ff,
                        max_position_embeddings=512, pad_token_id=PAD_ID, bos_token_id=GO_ID,
                        eos_token_id=EOS_ID, decoder_start_token_id=GO_ID, tie_word_embeddings=True)
    bart = BartForConditionalGeneration(config).to(args.device)

    def bart_loss() -> torch.Tensor:
        logits = bart(input_ids=batch["left"], attention_mask=batch["left"] != PAD_ID,
                      decoder_input_ids=inputs).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
    return [Contender("ours Seq2Seq", ours, mean_loss(ours, batch), tokens),
            Contender("HF BartForConditionalGeneration", bart, bart_loss, tokens)]


def electras(args: argparse.Namespace) -> list[Contender]:
    recipe = ElectraConfig(generator_fraction=0.25)
    masker = ReplacementMasker(TokenMasker(recipe.masking(), seed=args.seed, vocab_size=args.vocab,
                                           mask_id=MASK_ID, special_ids=SPECIALS))
    batch = on_device(masker(lm_batch(args)), args.device)
    ours = Electra(TransformerLM(model_config(args)), recipe, pad_id=PAD_ID, special_ids=SPECIALS).to(args.device)
    return [Contender("ours Electra", ours, mean_loss(ours, batch), args.batch * args.seq),
            hf_electra(args, batch, recipe)]


def hf_electra(args: argparse.Namespace, batch: dict, recipe: ElectraConfig) -> Contender:
    """HF's generator and discriminator wired as the paper does (bench/electra_reference.py), the generator
    sampling with Gumbel noise, the discriminator loss over every position."""
    generator, discriminator = hf_electra_models(model_config(args), recipe, PAD_ID)
    pair = nn.ModuleList([generator, discriminator]).to(args.device)
    labels = torch.full_like(batch["tokens"], -100).view(-1).index_copy(0, batch["target_index"], batch["targets"])
    labels = labels.view_as(batch["tokens"])

    def loss() -> torch.Tensor:
        out = generator(input_ids=batch["inputs"], labels=labels)
        logits = out.logits.view(-1, args.vocab).index_select(0, batch["target_index"]).detach().float()
        gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-9, 1.0)))
        sampled = (logits + gumbel).argmax(-1)
        corrupted = batch["tokens"].view(-1).index_copy(0, batch["target_index"], sampled).view_as(batch["tokens"])
        replaced = (corrupted != batch["tokens"]).float()
        return out.loss + recipe.discriminator_weight * discriminator(input_ids=corrupted, labels=replaced).loss
    return Contender("HF ElectraForMaskedLM + ElectraForPreTraining", pair, loss, args.batch * args.seq)


GROUPS = {"mlm": ours_mlm, "dual": dual_encoders, "seq2seq": seq2seqs, "electra": electras}


def main() -> None:
    args = parse_args()
    restore_collections_aliases()
    torch.manual_seed(args.seed)
    groups = [GROUPS[name](args) for name in (args.only or GROUPS)]
    seconds = time_round_robin([c for group in groups for c in group], args.device, args.warmup, args.steps)
    reference = seconds.get("ours MaskedLM (reference)")
    print(run_header(args.device))
    print(f"D {args.d_model}, L {args.layers}, H {args.heads}, F {args.d_ff}, V {args.vocab}, T {args.seq} "
          f"(pairs: {args.seq // 2} + {args.seq // 2}), B {args.batch}; median of {args.steps} steps after "
          f"{args.warmup} warm-up")
    for group in groups:
        for contender in group:
            rate = contender.tokens / seconds[contender.name]
            line = f"{contender.name:46s} {rate:9.0f} tokens/s {seconds[contender.name] * 1e3:8.1f} ms/step"
            if reference is not None:
                line += f"  {rate / (args.batch * args.seq / reference):5.2f}x MLM tokens/s"
            print(line)
        if len(group) > 1:
            print(f"  {group[0].name} / {group[1].name}: {seconds[group[1].name] / seconds[group[0].name]:.2f}x")


if __name__ == "__main__":
    main()
