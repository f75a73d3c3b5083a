"""sentence-transformers model directories, written without importing sentence-transformers: the encoder
as an HF model at the top (config.json, model.safetensors, tokenizer.json giving our ids), then one module
directory per step, listed in modules.json:

    1_Pooling/config.json                    mean or CLS (first-token) pooling
    2_Dense/, 3_Dense/...                    the projection's Linear layers (config.json, model.safetensors)
    or 2_Router/                             contexts (queries) and responses (documents) projected apart:
        router_config.json, query_0_Dense/, document_0_Dense/, ...
    N_Normalize/                             L2 normalisation, as our encodings are

The module types are sentence-transformers' public `sentence_transformers.models.*` names. What the model
is, pooling and layers, comes from its adapter (pretrain/adapters.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from data_pipeline.tokenizer import Tokenizer
from export.hf import write_hf, write_json
from export.safetensors_file import save_safetensors
from pretrain.adapters import DenseLayer, SentenceTransformerModel

MODULES = "sentence_transformers.models."


def _write_dense(directory: Path, layer: DenseLayer) -> None:
    out_features, in_features = layer.weight.shape
    write_json(directory / "config.json", {"in_features": in_features, "out_features": out_features, "bias": True,
                                           "activation_function": layer.activation})
    save_safetensors({"linear.weight": layer.weight.float(), "linear.bias": layer.bias.float()},
                     directory / "model.safetensors")


def _projection_modules(directory: Path, model: SentenceTransformerModel, index: int) -> list[dict[str, object]]:
    """Write the Dense modules (or a Router over each side's) from module number `index`; their entries."""
    if model.document is None:
        entries = []
        for offset, layer in enumerate(model.query):
            path = f"{index + offset}_Dense"
            _write_dense(directory / path, layer)
            entries.append({"name": str(index + offset), "path": path, "type": MODULES + "Dense"})
        return entries
    path = f"{index}_Router"
    structure: dict[str, list[str]] = {}
    for route, layers in (("query", model.query), ("document", model.document)):
        structure[route] = [f"{route}_{i}_Dense" for i in range(len(layers))]
        for name, layer in zip(structure[route], layers):
            _write_dense(directory / path / name, layer)
    write_json(directory / path / "router_config.json", {
        "types": {name: MODULES + "Dense" for names in structure.values() for name in names},
        "structure": structure,
        "parameters": {"default_route": "document", "allow_empty_key": True, "route_mappings": {}}})
    return [{"name": str(index), "path": path, "type": MODULES + "Router"}]


def write_sentence_transformer(directory: Path, model: SentenceTransformerModel, tokenizer: Tokenizer,
                               tokenizer_files: Mapping[str, bytes]) -> None:
    """Write `model` as a sentence-transformers directory that SentenceTransformer(directory) loads."""
    write_hf(directory, model.encoder, tokenizer, tokenizer_files, plain_ids=True)
    write_json(directory / "sentence_bert_config.json", {"max_seq_length": model.encoder.max_len,
                                                         "do_lower_case": False})
    write_json(directory / "config_sentence_transformers.json", {
        "model_type": "SentenceTransformer", "similarity_fn_name": "cosine", "prompts": {},
        "default_prompt_name": None})
    width = model.encoder.config["hidden_size"]
    write_json(directory / "1_Pooling/config.json", {
        "word_embedding_dimension": width, "pooling_mode_cls_token": model.pooling == "cls",
        "pooling_mode_mean_tokens": model.pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})
    modules = [{"name": "0", "path": "", "type": MODULES + "Transformer"},
               {"name": "1", "path": "1_Pooling", "type": MODULES + "Pooling"}]
    modules += _projection_modules(directory, model, index=2)
    normalize = f"{len(modules)}_Normalize"
    write_json(directory / normalize / "config.json", {})
    modules.append({"name": str(len(modules)), "path": normalize, "type": MODULES + "Normalize"})
    write_json(directory / "modules.json", [dict(entry, idx=i) for i, entry in enumerate(modules)])
