"""What an encoder-decoder exports: the whole Seq2Seq (encoder, decoder, shared embeddings).

In an NPZ it follows mead's save_transformer_seq2seq_npz: Seq2Seq/SrcEmbeddings/x (with the learned bias
and LayerNorm as in a TLM), Seq2Seq/TransformerEncoderStack, Seq2Seq/TransformerDecoderStack/{i}/
{self_attn,src_attn,ffn,ln1,ln2,ln3}; the shared word and position tables are written again as
Seq2Seq/TgtEmbedding/y for mead's loader, which reads the decoder's from there.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from data_pipeline.tokenizer import Tokenizer
from pretrain.exportable import Entry, ExportAdapter, Layout, RunModel, objective_name, run_model_config
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.model.eight_mile import mead_notes, decoder_stack, embeddings, encoder_stack
from pretrain.objectives.seq2seq import Seq2Seq


class Seq2SeqAdapter(ExportAdapter):
    name = "Seq2Seq"
    model_class = Seq2Seq

    def config_of(self, model: Seq2Seq) -> dict[str, Any]:
        return {"model": dataclasses.asdict(model.encoder.cfg), "pad_id": model.pad_id, "start_id": model.start_id,
                "end_id": model.end_id}

    def build(self, config: Mapping[str, Any]) -> Seq2Seq:
        return Seq2Seq(TransformerLM(TransformerConfig(**config["model"])), pad_id=config["pad_id"],
                       start_id=config["start_id"], end_id=config["end_id"])

    def encoder(self, model: Seq2Seq) -> TransformerLM:
        return model.encoder

    def from_run(self, config: Mapping[str, Any], tokenizer: Tokenizer) -> RunModel | None:
        if objective_name(config) != "seq2seq":
            return None
        return RunModel(Seq2Seq.for_tokenizer(TransformerLM(run_model_config(config, tokenizer.vocab_size)),
                                              tokenizer), prefix="")

    def eight_mile(self, model: Seq2Seq, name: str = "Seq2Seq") -> Layout:
        cfg = model.encoder.cfg
        layout = embeddings(cfg, "encoder.encoder.embeddings", f"{name}/SrcEmbeddings", "x")
        layout += encoder_stack(cfg, "encoder.encoder", f"{name}/TransformerEncoderStack")
        layout += decoder_stack(cfg, "decoder", f"{name}/TransformerDecoderStack")
        shared = {entry.ours.removeprefix("encoder.encoder."): entry for entry in layout
                  if entry.ours.startswith("encoder.encoder.embeddings.")}
        for suffix, entry in shared.items():
            theirs = tuple(key.replace("/SrcEmbeddings/x/", "/TgtEmbedding/y/") for key in entry.theirs)
            layout.append(Entry(f"decoder.{suffix}", theirs, entry.bias_row))
        return layout


    def mead_notes(self, model: Seq2Seq) -> list[str]:
        return mead_notes(model.encoder.cfg)


ADAPTER = Seq2SeqAdapter()
