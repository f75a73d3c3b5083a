"""Paired pretraining: a ConveRT dual encoder or a Transformer encoder-decoder over (context, response).

    python -m pretrain.paired --config configs/tiny_dual_encoder.yaml [section.key=value ...]
    torchrun --nproc_per_node 8 -m pretrain.paired --config configs/dual_encoder_gpu.yaml

Pairs come from `left<TAB>right` data (objective.pairs=ntp: Next Turn Prediction, paired shards or text)
or from single lines of LM data split in two (objective.pairs=nsp: Next Sentence Prediction).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.readers import Transform
from data_pipeline.tokenizer import Tokenizer
from pretrain.config import OptimConfig, TrainConfig
from pretrain.data import DataConfig
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.objectives.dual_encoder import DualEncoder, DualEncoderConfig
from pretrain.objectives.next_sentence import LineSplitter
from pretrain.objectives.seq2seq import Seq2Seq, Seq2SeqConfig
from pretrain.run import Recipe, main_for


@dataclass(frozen=True)
class PairedObjectiveConfig:
    """name: dual_encoder (in-batch negatives) or seq2seq (generate the response); pairs: ntp or nsp."""

    name: Literal["dual_encoder", "seq2seq"] = "dual_encoder"
    pairs: Literal["ntp", "nsp"] = "ntp"
    dual_encoder: DualEncoderConfig = field(default_factory=DualEncoderConfig)
    seq2seq: Seq2SeqConfig = field(default_factory=Seq2SeqConfig)


@dataclass(frozen=True)
class PairedConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: TransformerConfig = field(default_factory=TransformerConfig)
    objective: PairedObjectiveConfig = field(default_factory=PairedObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_objective(cfg: PairedConfig, tokenizer: Tokenizer) -> tuple[nn.Module, Transform | None]:
    cfg.model.refuse_document_mask("pretrain.paired")
    model = TransformerLM(cfg.model)
    split = LineSplitter(seed=cfg.train.seed, sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id) \
        if cfg.objective.pairs == "nsp" else None
    if cfg.objective.name == "seq2seq":
        return Seq2Seq.for_tokenizer(model, tokenizer, packed=cfg.objective.seq2seq.packed), split
    candidates = cfg.objective.dual_encoder.recall_candidates
    if cfg.data.valid and cfg.data.batch_size < candidates:
        raise UserError(f"data.batch_size={cfg.data.batch_size} is below objective.dual_encoder.recall_candidates="
                        f"{candidates}: validation ranks each context among that many responses of its batch; "
                        "raise the batch size or lower recall_candidates")
    return DualEncoder(model, cfg.objective.dual_encoder, pad_id=tokenizer.pad_id), split


RECIPE = Recipe(prog="python -m pretrain.paired", description=__doc__, schema=PairedConfig,
                paired=lambda cfg: cfg.objective.pairs == "ntp", build_objective=build_objective)
main = main_for(RECIPE)

if __name__ == "__main__":
    sys.exit(main())
