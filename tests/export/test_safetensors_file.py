"""Our safetensors writer against the reference reader (the `safetensors` package)."""
from __future__ import annotations

import struct

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from export.safetensors_file import save_safetensors


def test_reference_reader_gets_back_every_tensor_and_the_metadata(tmp_path):
    tensors = {"b.weight": torch.randn(3, 5), "a.bias": torch.randn(7).to(torch.bfloat16),
               "half": torch.randn(2, 2, 2).half(), "ids": torch.arange(5), "scalar": torch.tensor(2.5),
               "transposed": torch.randn(4, 6).t(), "empty": torch.zeros(0, 3)}
    path = tmp_path / "model.safetensors"
    save_safetensors(tensors, path, metadata={"format": "pt"})
    loaded = load_file(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    with safe_open(path, framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}


def test_header_is_padded_so_the_data_starts_8_byte_aligned(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_safetensors({"x": torch.ones(3, dtype=torch.uint8)}, path)
    header_length = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_length % 8 == 0
