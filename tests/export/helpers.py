"""Test helpers: a small WordPiece vocab and Transformer LMs whose every parameter is distinct.

Fresh models have unit LayerNorm weights and zero biases, under which swapping two LayerNorms or
dropping a bias changes nothing; `random_model` perturbs every parameter so that any mapping mistake
changes the outputs.
"""
from __future__ import annotations

from pathlib import Path

import torch

from data_pipeline.tokenizer import TokenizerSpec
from pretrain.model import TransformerConfig, TransformerLM

VOCAB_SIZE = 64
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_config(**overrides) -> TransformerConfig:
    settings = dict(vocab_size=VOCAB_SIZE, d_model=16, num_heads=2, layers=2, d_ff=32, max_len=24, dropout=0.0)
    settings.update(overrides)
    return TransformerConfig(**settings)


def random_model(seed: int = 0, **overrides) -> TransformerLM:
    """A TransformerLM in eval mode with every parameter moved off its initial value."""
    torch.manual_seed(seed)
    model = TransformerLM(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    return model


def token_batch(seed: int = 1, batch: int = 3, length: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(len(SPECIALS), VOCAB_SIZE, (batch, length), generator=generator)


def write_vocab(directory: Path, size: int = VOCAB_SIZE, word: str = "tok") -> TokenizerSpec:
    """A WordPiece vocab.txt of `size` tokens: the specials, then word0, word1, ..."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = SPECIALS + [f"{word}{i}" for i in range(size - len(SPECIALS))]
    path = directory / "vocab.txt"
    path.write_text("".join(f"{token}\n" for token in tokens), encoding="utf-8")
    return TokenizerSpec(kind="wordpiece", vocab=str(path))
