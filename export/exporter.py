"""`export_model`: write a trained model in the requested formats, standalone or at the end of a run.

An export directory holds model.npz (8-mile layout), model.pt (torch), hf/ (HF transformers),
sentence-transformers/ and the tokenizer files. The directory is written whole beside its final name and
renamed into place, so a reader sees the previous export or the complete new one, and a failed export
(disk full) leaves nothing. What a model exports, and how its weights map onto each format, is its
adapter's business (pretrain/adapters.py); this module only writes files.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist
from torch import nn

from data_pipeline.atomic_files import atomic_directory
from data_pipeline.errors import UserError, describe_os_error
from data_pipeline.tokenizer import TokenizerSpec, load_tokenizer
from export.formats import FORMATS, OUTPUT_NAMES
from export.hf import write_hf
from export.manifest import describe, write_tokenizer_files
from export.npz import write_npz
from export.sentence_transformers import write_sentence_transformer
from export.torch_format import write_torch
from pretrain.adapters import adapter_of, first_non_finite

log = logging.getLogger(__name__)


def check_formats(model: nn.Module, formats: Sequence[str]) -> None:
    """Raise the UserError `export_model` would raise for these formats, without writing anything: call it
    before training so that a model a format cannot hold fails at start-up rather than after the run."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UserError(f"unknown export format {unknown[0]!r}: use one or more of {', '.join(FORMATS)}")
    adapter = adapter_of(model)
    if "npz" in formats:
        adapter.eight_mile(model)
    if "hf" in formats:
        adapter.hf(model)
    if "sentence-transformers" in formats:
        adapter.sentence_transformer(model)


def export_model(model: nn.Module, tokenizer_spec: TokenizerSpec, out_dir: str | Path,
                 formats: Sequence[str] = ("npz", "torch")) -> dict[str, Path]:
    """Write `model` (any model an adapter declares: a TransformerLM, a DualEncoder, a Seq2Seq...) with its
    tokenizer into `out_dir` in each of `formats`.

    Returns {format: path written}. Under torch.distributed only rank 0 writes (others return {}), so the
    end-of-run hook can call it on every rank.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return {}
    check_formats(model, formats)
    bad = first_non_finite(model.state_dict())
    if bad is not None:
        raise UserError(f"weight {bad!r} holds NaN or infinite values: refusing to export a model that "
                        "diverged; export an earlier checkpoint")
    out_dir = Path(out_dir)
    manifest, tokenizer_files = describe(model, tokenizer_spec)
    try:
        with atomic_directory(out_dir) as staging:
            write_tokenizer_files(tokenizer_files, staging)
            for fmt in formats:
                path = staging / OUTPUT_NAMES[fmt]
                if fmt == "npz":
                    write_npz(path, model, manifest, tokenizer_files)
                elif fmt == "torch":
                    write_torch(path, model, manifest, tokenizer_files)
                elif fmt == "hf":
                    architecture = write_hf(path, manifest.adapter.hf(model), load_tokenizer(tokenizer_spec),
                                            tokenizer_files)
                    log.info("HF export is a %s model", architecture)
                else:
                    write_sentence_transformer(path, manifest.adapter.sentence_transformer(model),
                                               load_tokenizer(tokenizer_spec), tokenizer_files)
    except OSError as err:
        raise UserError(describe_os_error(err, "write the export to", out_dir)) from None
    written = {fmt: out_dir / OUTPUT_NAMES[fmt] for fmt in formats}
    for fmt, path in written.items():
        log.info("exported %s to %s", fmt, path)
    return written
