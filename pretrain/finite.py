"""Finding NaN/inf in weights: no checkpoint, export or initialisation is made from non-finite tensors."""
from __future__ import annotations

from collections.abc import Mapping

import torch


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None
