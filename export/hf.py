"""HF transformers directories: config.json + model.safetensors (+ the tokenizer files), written without
importing transformers. The model's adapter says which HF architecture it is and maps its weights (see
pretrain/model/hf.py); this module writes the files.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from data_pipeline.atomic_files import atomic_write_bytes
from data_pipeline.tokenizer import Tokenizer
from export.safetensors_file import save_safetensors
from pretrain.adapters import HFModel


def write_json(path: Path, content: object) -> None:
    atomic_write_bytes(path, json.dumps(content, indent=2).encode())


def write_hf(directory: Path, model: HFModel, tokenizer: Tokenizer, tokenizer_files: Mapping[str, bytes]) -> str:
    """Write `model` as an HF model directory; returns its architecture (config.json's `architectures`).

    A WordPiece vocab also gets a tokenizer_config.json naming BertTokenizer, so AutoTokenizer loads it;
    fastBPE files are copied as they are (HF has no fastBPE tokenizer: tokenize with this project's).
    """
    save_safetensors(model.tensors, directory / "model.safetensors", metadata={"format": "pt"})
    for name, data in tokenizer_files.items():
        atomic_write_bytes(directory / name, data)
    if tokenizer.kind == "wordpiece":
        write_json(directory / "tokenizer_config.json", {"tokenizer_class": "BertTokenizer",
                                                         "do_lower_case": tokenizer.spec.lowercase,
                                                         "model_max_length": model.max_len})
    token_ids = {key: getattr(tokenizer, attribute) for key, attribute in model.token_ids.items()}
    write_json(directory / "config.json", {**model.config, **token_ids})
    return ", ".join(model.config.get("architectures", []))
