"""Checkpoint exports (NPZ 8-mile layout, torch, HF, sentence-transformers) and their loaders. What a model
exports, and how its weights map onto each format, is its adapter's (pretrain/adapters.py).

    export_model(model, tokenizer_spec, out_dir, formats)   write an export (end of a run, or the CLI)
    load_pretrained(path) -> (model, tokenizer_spec)         read one back: the whole trained model
    load_encoder(path) -> (TransformerLM, tokenizer_spec)    its (encoder) language model, to fine-tune
    init_from(model, path)                                   start training from one
"""
from export.exporter import check_formats, export_model
from export.loading import init_from, load_encoder, load_pretrained

__all__ = ["check_formats", "export_model", "init_from", "load_encoder", "load_pretrained"]
