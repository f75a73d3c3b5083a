"""Which precision a run computes in: bf16 autocast where the hardware has bf16 matrix units, fp32 elsewhere.

Autocast only lowers the matmuls: parameters (the master weights), gradients, optimizer state and the
loss stay fp32. On CPUs, "auto" picks bf16 only where it is known to be faster: Intel AMX tiles (Sapphire
Rapids and later) multiply bf16 several times faster than fp32. Without AMX, bf16 runs through
conversions (or AVX512-BF16 dot products, not measured here) and "auto" stays fp32.
"""
from __future__ import annotations

import torch

from data_pipeline.errors import UserError


def cpu_has_bf16_matrix_units() -> bool:
    """True on CPUs with AMX tiles that the OS lets this process use."""
    detector = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(detector and detector())


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast for precision "bf16", and for "auto" on a GPU that supports it or a CPU with bf16
    matrix units; fp32 otherwise."""
    if device.type != "cuda":
        return precision == "bf16" or (precision == "auto" and cpu_has_bf16_matrix_units())
    supported = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not supported:
        raise UserError("train.precision=bf16 but this GPU has no bf16 support; use train.precision=auto or fp32")
    return precision != "fp32" and supported
