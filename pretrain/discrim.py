"""ELECTRA pretraining: a small MLM generator corrupts the input, a discriminator detects replaced tokens.

    python -m pretrain.discrim --config configs/tiny_electra.yaml [section.key=value ...]
    torchrun --nproc_per_node 8 -m pretrain.discrim --config configs/electra_base_gpu.yaml

The `model` section shapes the discriminator (what gets exported); `objective` sizes the generator.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from torch import nn

from data_pipeline.readers import Transform
from data_pipeline.tokenizer import Tokenizer
from pretrain.config import OptimConfig, TrainConfig
from pretrain.data import DataConfig
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.objectives.electra import Electra, ElectraConfig, ReplacementMasker
from pretrain.objectives.masking import TokenMasker
from pretrain.run import Recipe, main_for


@dataclass(frozen=True)
class DiscrimConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: TransformerConfig = field(default_factory=TransformerConfig)
    objective: ElectraConfig = field(default_factory=ElectraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_objective(cfg: DiscrimConfig, tokenizer: Tokenizer) -> tuple[nn.Module, Transform]:
    cfg.model.refuse_document_mask("pretrain.discrim")
    masker = TokenMasker(cfg.objective.masking(), seed=cfg.train.seed, vocab_size=tokenizer.vocab_size,
                         mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids)
    electra = Electra(TransformerLM(cfg.model), cfg.objective, pad_id=tokenizer.pad_id,
                      special_ids=tokenizer.special_ids)
    return electra, ReplacementMasker(masker)


RECIPE = Recipe(prog="python -m pretrain.discrim", description=__doc__, schema=DiscrimConfig,
                paired=lambda cfg: False, build_objective=build_objective)
main = main_for(RECIPE)

if __name__ == "__main__":
    sys.exit(main())
