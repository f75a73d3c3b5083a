"""A writer for the safetensors format, so that HF exports need no package beyond torch.

The format: an 8-byte little-endian header length N, N bytes of JSON naming each tensor's dtype, shape and
[begin, end) byte range in the data that follows (padded with spaces to a multiple of 8 so the data is
aligned), then the tensors' raw little-endian bytes in C order.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from data_pipeline.atomic_files import atomic_open

_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` to `path` (atomically) in the safetensors format, in sorted-name order."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in _DTYPES:
            raise ValueError(f"safetensors: no dtype code for {name} ({tensor.dtype})")
        blob = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with atomic_open(path) as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for blob in blobs:
            handle.write(blob)
