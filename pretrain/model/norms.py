"""The norm every block, embedding and head uses, as the config chooses it."""
from __future__ import annotations

from torch import nn

from pretrain.model.config import TransformerConfig


def make_norm(cfg: TransformerConfig) -> nn.Module:
    """The configured norm over d_model: LayerNorm (with or without its bias) or RMSNorm."""
    if cfg.norm_layer == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.layer_norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
