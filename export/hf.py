"""HF transformers directories: config.json + model.safetensors (+ the tokenizer files), written without
importing transformers. The model's adapter says which HF architecture it is and maps its weights (see
pretrain/model/hf.py); this module writes the files.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from data_pipeline.atomic_files import atomic_write_bytes
from data_pipeline.hf_tokenizer import hf_tokenizer_files
from data_pipeline.tokenizer import Tokenizer
from export.safetensors_file import save_safetensors
from pretrain.adapters import HFModel


def write_json(path: Path, content: object) -> None:
    atomic_write_bytes(path, json.dumps(content, indent=2).encode())


def write_hf_tokenizer(directory: Path, tokenizer: Tokenizer, tokenizer_files: Mapping[str, bytes],
                       max_len: int, plain_ids: bool = False) -> None:
    """Our tokenizer files, and what AutoTokenizer needs to give our ids from them: for WordPiece a
    BertTokenizer, which wraps a text in [CLS] ... [SEP] as BERT's users expect, unless `plain_ids`."""
    files = dict(tokenizer_files)
    if tokenizer.kind == "wordpiece" and not plain_ids:
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.spec.lowercase,
                  "model_max_length": max_len}
        files["tokenizer_config.json"] = json.dumps(config, indent=2).encode()
    else:
        files.update(hf_tokenizer_files(tokenizer.spec, max_len))
    for name, data in files.items():
        atomic_write_bytes(directory / name, data)


def write_hf(directory: Path, model: HFModel, tokenizer: Tokenizer, tokenizer_files: Mapping[str, bytes],
             plain_ids: bool = False) -> str:
    """Write `model` as an HF model directory; returns its architecture (config.json's `architectures`).

    A WordPiece vocab also gets a tokenizer_config.json naming BertTokenizer, and fastBPE codes a
    tokenizer.json (an HF BPE giving fastBPE's ids, data_pipeline/hf_tokenizer.py), so AutoTokenizer loads either
    and gives our ids; `plain_ids`: a tokenizer.json for WordPiece too, adding no [CLS]/[SEP].
    """
    save_safetensors(model.tensors, directory / "model.safetensors", metadata={"format": "pt"})
    write_hf_tokenizer(directory, tokenizer, tokenizer_files, model.max_len, plain_ids)
    token_ids = {key: getattr(tokenizer, attribute) for key, attribute in model.token_ids.items()}
    write_json(directory / "config.json", {**model.config, **token_ids})
    return ", ".join(model.config.get("architectures", []))
