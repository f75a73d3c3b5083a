"""Fine-tune an exported encoder to tell which standard-library package a docstring or comment comes from.

    python examples/finetune_classify.py --pretrained runs/tiny_mlm/export/model.pt
    python examples/finetune_classify.py --pretrained runs/tiny_mlm/export/model.npz --train-per-class 20
    python examples/finetune_classify.py --pretrained runs/tiny_mlm/export --random-init   # the baseline

The labelled set is made here, deterministically: the sample corpus's documents (docstrings and comment
blocks, read with `ast`, nothing imported) of five stdlib packages, labelled with their package; a hash
of each text puts a fifth of them in the test split. The model is the export's encoder (any export: a
language model, or the encoder of a dual encoder or encoder-decoder) with its tokenizer, mean-pooled over
real tokens, under a new linear head; the whole network is fine-tuned. `--random-init` trains the same
architecture from scratch: what pretraining has to beat, most visibly with few labels.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from data_pipeline.errors import run_cli
from data_pipeline.sample_corpus import (
    MIN_WORDS,
    file_documents,
    source_files,
    stdlib_dir,
)
from data_pipeline.tokenizer import Tokenizer, load_tokenizer
from export import load_encoder
from pretrain.model import TransformerLM

PACKAGES = ("asyncio", "email", "logging", "unittest", "xml")


@dataclass(frozen=True)
class Example:
    text: str
    label: int


def labelled_documents(packages: Sequence[str] = PACKAGES) -> list[Example]:
    """The sample corpus's documents (docstrings and comment blocks, one line each) of each package, labelled
    with the package's index; texts found in two packages are dropped."""
    root = stdlib_dir()
    labels: dict[str, set[int]] = {}
    for path in source_files(root):
        package = path.relative_to(root).parts[0]
        if package in packages:
            for paragraphs in file_documents(path, root):
                text = " ".join(paragraphs)
                if len(text.split()) >= MIN_WORDS:
                    labels.setdefault(text, set()).add(packages.index(package))
    return [Example(text, found.pop()) for text, found in labels.items() if len(found) == 1]


def is_test(example: Example) -> bool:
    """A fifth of the examples, chosen by a hash of the text: stable across runs and Python versions."""
    return int.from_bytes(hashlib.sha256(example.text.encode()).digest()[:8], "little") % 5 == 0


def split(examples: Sequence[Example], train_per_class: int | None) -> tuple[list[Example], list[Example]]:
    """(train, test); `train_per_class` keeps the first N training examples of each class (few labels)."""
    train = [e for e in examples if not is_test(e)]
    if train_per_class is not None:
        taken: Counter[int] = Counter()
        kept = []
        for example in train:
            if taken[example.label] < train_per_class:
                kept.append(example)
                taken[example.label] += 1
        train = kept
    return train, [e for e in examples if is_test(e)]


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [N, T] (each text + the separator pretraining put after every document, padded) and the
    padding mask (True at real tokens)."""
    rows = [ids[: max_len - 1] + [tokenizer.sep_id] for ids in tokenizer.encode_batch(texts)]
    length = max(len(row) for row in rows)
    tokens = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens, tokens != tokenizer.pad_id


class Classifier(nn.Module):
    """Encoder -> mean over real tokens -> dropout -> linear: one logit per class."""

    def __init__(self, encoder: TransformerLM, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.cfg.d_model, num_classes)

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(tokens, padding_mask=padding_mask)
        weights = padding_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1)
        return self.head(self.dropout(pooled))


def accuracy(model: Classifier, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
             batch_size: int) -> float:
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(tokens[i:i + batch_size], mask[i:i + batch_size]).argmax(-1)
                                 for i in range(0, len(tokens), batch_size)])
    return (predictions == labels).float().mean().item()


def finetune(pretrained: str | Path, *, random_init: bool = False, epochs: int = 10, lr: float = 1e-3,
             batch_size: int = 16, train_per_class: int | None = None, max_len: int = 64, seed: int = 0,
             log: bool = True) -> float:
    """Fine-tune the export at `pretrained` (or, with random_init, its architecture from scratch) on the
    package task; returns the test accuracy after the last epoch."""
    encoder, spec = load_encoder(pretrained)
    tokenizer = load_tokenizer(spec)
    torch.manual_seed(seed)
    if random_init:
        encoder = TransformerLM(encoder.cfg)
    model = Classifier(encoder, len(PACKAGES))
    train, test = split(labelled_documents(), train_per_class)
    max_len = min(max_len, encoder.cfg.max_len)
    train_tokens, train_mask = encode(tokenizer, [e.text for e in train], max_len)
    test_tokens, test_mask = encode(tokenizer, [e.text for e in test], max_len)
    train_labels = torch.tensor([e.label for e in train])
    test_labels = torch.tensor([e.label for e in test])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    order = torch.Generator().manual_seed(seed)
    if log:
        print(f"{len(train)} training and {len(test)} test documents from {', '.join(PACKAGES)}; "
              f"{'random init' if random_init else pretrained}")
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(train), generator=order).split(batch_size):
            loss = F.cross_entropy(model(train_tokens[batch], train_mask[batch]), train_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        if log:
            test_accuracy = accuracy(model, test_tokens, test_mask, test_labels, batch_size * 4)
            print(f"epoch {epoch}: train loss {total / len(train):.3f}, test accuracy {test_accuracy:.3f}")
    return accuracy(model, test_tokens, test_mask, test_labels, batch_size * 4)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", required=True, help="export file (.pt or .npz) or directory")
    parser.add_argument("--random-init", action="store_true", help="same architecture, no pretrained weights")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-per-class", type=int, help="use only N labelled examples per class")
    parser.add_argument("--max-len", type=int, default=64, help="tokens per document")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    finetune(args.pretrained, random_init=args.random_init, epochs=args.epochs, lr=args.lr,
             batch_size=args.batch_size, train_per_class=args.train_per_class, max_len=args.max_len,
             seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
