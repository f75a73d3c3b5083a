"""Does the ELECTRA discriminator learn? Our objective beside HF `ElectraForMaskedLM` (generator) +
`ElectraForPreTraining` (discriminator) wired the paper's way, trained side by side on the same data.

    PYTHONPATH=$PWD .venv/bin/python bench/electra_reference.py                        # configs/tiny_electra.yaml
    PYTHONPATH=$PWD .venv/bin/python bench/electra_reference.py optim.lr=5e-4 train.max_steps=600

Both pairs take their shapes, recipe and optimizer from the config (overrides as on the pretrain.discrim
command line): the discriminator is the `model` section, the generator `objective.generator_fraction` of it,
sharing the discriminator's embeddings (HF's: word, position and LayerNorm, as in the paper), the logit's bias
starting at the replaced prior as ours does, lambda = `objective.discriminator_weight`, one AdamW with the
config's warmup, decay and gradient clipping. They read the same blocks of the sample corpus's training shards
in the same order with the same masks and the same sampling uniforms, and both go through `electra_terms`
(sampling, labels, losses, metrics), so the only difference is the two networks. Every `train.eval_every`
steps: generator MLM loss, share of targets the sample replaced, discriminator loss, its accuracy beside the
always-"original" accuracy, and ROC AUC on replaced-token detection, on fixed, fixed-masked blocks of the
validation shards.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import replace

import torch
from hf_parity import blocks, masked
from torch import nn

from data_pipeline.tokenizer import Tokenizer, load_tokenizer
from pretrain.data import resolve_sample_data
from pretrain.discrim import DiscrimConfig
from pretrain.config import load_config
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.objectives.electra import Electra, ElectraConfig, ReplacementMasker, electra_terms, generator_config
from pretrain.objectives.masking import TokenMasker
from pretrain.optim import build_optimizer, build_scheduler

COLUMNS = ("generator", "replaced_of_targets", "discriminator", "discriminator_accuracy", "original_rate",
           "replaced_auc")


def recipe_parser(description: str) -> argparse.ArgumentParser:
    """The flags of the ELECTRA benches: a pretrain.discrim config, its overrides, the thread count."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_electra.yaml")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for pretrain.discrim")
    return parser


def load_recipe(args: argparse.Namespace) -> tuple[DiscrimConfig, Tokenizer, torch.Tensor, torch.Tensor]:
    """The config with its overrides, its tokenizer, and its training and validation shards as nctx blocks (the
    sample data is built first where the config asks for it)."""
    torch.set_num_threads(args.threads)
    cfg = load_config(DiscrimConfig, ["--config", args.config, *args.overrides])
    data = resolve_sample_data(cfg.data, paired=False)
    tokenizer = load_tokenizer(data.tokenizer.spec())
    return cfg, tokenizer, blocks(data.train[0], cfg.data.nctx), blocks(data.valid[0], cfg.data.nctx)


def hf_electra_models(model: TransformerConfig, recipe: ElectraConfig, pad_id: int) -> tuple[nn.Module, nn.Module]:
    """(ElectraForMaskedLM, ElectraForPreTraining) at our shapes, the generator sharing the discriminator's
    embeddings (word, position, LayerNorm; its input projected to its width) and tying its output to them."""
    from transformers import ElectraConfig as HFConfig
    from transformers import ElectraForMaskedLM, ElectraForPreTraining
    common = {"vocab_size": model.vocab_size, "embedding_size": model.d_model, "max_position_embeddings": model.max_len,
              "num_hidden_layers": model.layers, "pad_token_id": pad_id, "hidden_dropout_prob": model.dropout,
              "attention_probs_dropout_prob": model.dropout, "layer_norm_eps": model.layer_norm_eps}
    small = generator_config(model, recipe)
    generator = ElectraForMaskedLM(HFConfig(hidden_size=small.d_model, num_attention_heads=small.num_heads,
                                            intermediate_size=small.d_ff, **common))
    discriminator = ElectraForPreTraining(HFConfig(hidden_size=model.d_model, num_attention_heads=model.num_heads,
                                                   intermediate_size=model.d_ff, **common))
    generator.electra.embeddings = discriminator.electra.embeddings
    generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight
    # Our head's logit bias starts at the replaced prior (DiscriminatorHead); HF's would start at zero.
    nn.init.constant_(discriminator.discriminator_predictions.dense_prediction.bias,
                      math.log(recipe.mask_rate / (1.0 - recipe.mask_rate)))
    return generator, discriminator


class HFElectra(nn.Module):
    """HF's pair behind our objective's interface: batch -> electra_terms."""

    def __init__(self, model: TransformerConfig, recipe: ElectraConfig, *, pad_id: int, banned: torch.Tensor) -> None:
        super().__init__()
        self.generator, self.discriminator = hf_electra_models(model, recipe, pad_id)
        self.loss_weights = {"generator": 1.0, "discriminator": recipe.discriminator_weight}
        self.pad_id = pad_id
        self.register_buffer("banned", banned, persistent=False)

    def forward(self, batch: dict) -> dict:
        logits = self.generator(input_ids=batch["inputs"]).logits.flatten(0, 1).index_select(0, batch["target_index"])
        return electra_terms(logits, lambda corrupted: self.discriminator(input_ids=corrupted).logits, batch,
                             banned=self.banned, pad_id=self.pad_id)


def weighted_loss(model: nn.Module, out: dict) -> torch.Tensor:
    """What the training loop backpropagates on one process: the weighted sum of per-term means."""
    return sum(model.loss_weights[name] * total / count for name, (total, count) in out["losses"].items())


@torch.no_grad()
def evaluate(model: nn.Module, valid: list[dict]) -> dict[str, float]:
    """Each term's pooled mean over the validation batches (AUC: the mean over batches, as the loop logs it)."""
    model.eval()
    sums: dict[str, list[float]] = {}
    for batch in valid:
        out = model(batch)
        for name, (total, count) in {**out["losses"], **out["metrics"]}.items():
            pooled = sums.setdefault(name, [0.0, 0.0])
            pooled[0] += float(total)
            pooled[1] += float(count)
    model.train()
    return {name: total / count if count else float("nan") for name, (total, count) in sums.items()}


def train_curves(cfg: DiscrimConfig, tokenizer, train: torch.Tensor, valid: list[dict]) -> dict[str, dict[int, dict]]:
    """{model name: {step: evaluate()}} for ours and HF's, from the same seed, batches, masks and uniforms."""
    seed, steps, batch_size = cfg.train.seed, cfg.train.max_steps, cfg.data.batch_size
    masker = ReplacementMasker(TokenMasker(cfg.objective.masking(), seed=seed, vocab_size=tokenizer.vocab_size,
                                           mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    model_cfg = replace(cfg.model, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(seed)
    ours = Electra(TransformerLM(model_cfg), cfg.objective, pad_id=tokenizer.pad_id,
                   special_ids=tokenizer.special_ids)
    torch.manual_seed(seed)
    hf = HFElectra(model_cfg, cfg.objective, pad_id=tokenizer.pad_id, banned=ours.banned.clone())
    curves: dict[str, dict[int, dict]] = {}
    for name, model in (("ours", ours), ("HF", hf)):
        optimizer = build_optimizer(model, cfg.optim, torch.device("cpu"))
        scheduler = build_scheduler(optimizer, cfg.optim, steps)
        torch.manual_seed(seed)  # the same dropout stream for both
        curve = curves.setdefault(name, {})
        for step in range(steps + 1):
            if step % cfg.train.eval_every == 0 or step == steps:
                curve[step] = evaluate(model, valid)
                print(f"{name} {step}: " + " ".join(f"{key} {curve[step][key]:.4f}" for key in COLUMNS), flush=True)
            if step == steps:
                break
            ids = order[(step * batch_size + torch.arange(batch_size)) % len(train)]
            weighted_loss(model, model(masked(masker, train[ids], ids))).backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return curves


def main() -> None:
    cfg, tokenizer, train, valid_blocks = load_recipe(recipe_parser(__doc__).parse_args())
    valid_masker = ReplacementMasker(TokenMasker(cfg.objective.masking(), seed=12345, vocab_size=tokenizer.vocab_size,
                                                 mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids))
    valid_blocks = valid_blocks[: cfg.train.eval_batches * cfg.data.batch_size]
    size = cfg.data.batch_size
    valid = [masked(valid_masker, rows, torch.arange(i * size, i * size + len(rows)))
             for i, rows in enumerate(valid_blocks.split(size))]
    curves = train_curves(cfg, tokenizer, train, valid)
    m, o = cfg.model, cfg.optim
    print(f"\nD {m.d_model}, L {m.layers}, H {m.num_heads}, F {m.d_ff}, generator x{cfg.objective.generator_fraction}, "
          f"V {tokenizer.vocab_size}, T {cfg.data.nctx}, B {cfg.data.batch_size}, lr {o.lr}, warmup {o.warmup_steps}, "
          f"lambda {cfg.objective.discriminator_weight}, seed {cfg.train.seed}; validation, {len(valid)} batches")
    print("| step | model | generator loss | replaced of targets | discriminator loss | accuracy | always-original "
          "| AUC |")
    print("|---|---|---|---|---|---|---|---|")
    for step in curves["ours"]:
        for name, curve in curves.items():
            row = curve[step]
            print(f"| {step} | {name} | {row['generator']:.3f} | {row['replaced_of_targets']:.1%} | "
                  f"{row['discriminator']:.3f} | {row['discriminator_accuracy']:.3f} | {row['original_rate']:.3f} | "
                  f"{row['replaced_auc']:.3f} |")


if __name__ == "__main__":
    main()
