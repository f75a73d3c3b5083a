"""The Transformer family (8-mile's encoder stack): one configurable model for BERT-, GPT- and relative-
attention variants. See TransformerConfig for the variants and TransformerLM for the API."""
from pretrain.model.config import TransformerConfig
from pretrain.model.flops import flops_per_token
from pretrain.model.lm import TransformerEncoder, TransformerLM

__all__ = ["TransformerConfig", "TransformerEncoder", "TransformerLM", "flops_per_token"]
