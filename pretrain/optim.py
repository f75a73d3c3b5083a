"""AdamW with decoupled weight decay on matrices only, and a warmup-then-decay learning-rate schedule."""
from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from pretrain.config import OptimConfig


def default_no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, LayerNorm weights and any other vector parameter are not decayed; matrices are."""
    return param.ndim <= 1


def param_groups(objective: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups, "decay" and "no_decay", split by `objective.no_weight_decay(name, param)` if the
    objective defines it, else by `default_no_weight_decay`. Both groups always exist (possibly empty) so
    the optimizer's state layout does not depend on the model."""
    no_decay_rule = getattr(objective, "no_weight_decay", default_no_weight_decay)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in objective.named_parameters():
        if param.requires_grad:
            (no_decay if no_decay_rule(name, param) else decay).append(param)
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(objective: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `objective`'s trainable parameters; `fused: auto` uses the fused kernel on CUDA."""
    fused = device.type == "cuda" if cfg.fused == "auto" else cfg.fused
    return torch.optim.AdamW(param_groups(objective, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps, fused=fused)


def lr_multiplier(step_index: int, cfg: OptimConfig, max_steps: int) -> float:
    """Factor applied to `cfg.lr` for the optimizer step with 0-based index `step_index`.

    Warmup ramps (i + 1) / (warmup + 1), so the first step runs at a small non-zero rate and the peak
    is reached at the first step after warmup; the rate then decays (linearly or on a half cosine) to
    `min_lr_ratio` at `max_steps` and stays there.
    """
    warmup = cfg.warmup_steps
    if step_index < warmup:
        return (step_index + 1) / (warmup + 1)
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step_index - warmup) / max(1, max_steps - warmup))
    floor = cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int) -> LambdaLR:
    """LambdaLR over `lr_multiplier`; call `.step()` after every optimizer step."""
    return LambdaLR(optimizer, functools.partial(lr_multiplier, cfg=cfg, max_steps=max_steps))
