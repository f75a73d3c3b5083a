"""Unpadding paired batches: several sequences per row behind document masks give each sequence the
encoding it gets alone in a padded batch."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from data_pipeline.errors import UserError
from pretrain.config import ConfigError
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.model.packing import pack_sequences
from pretrain.objectives.dual_encoder import DualEncoder, DualEncoderConfig

PAD = 0
MODERN = TransformerConfig(vocab_size=50, d_model=16, num_heads=2, layers=3, d_ff=24, max_len=16, dropout=0.0,
                           norm="pre", embeddings="none", first_attn_norm=False, rope=True, ffn="geglu", bias=False,
                           global_every=3, local_window=4)


def uneven_batch(rows: int = 9, length: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 50, (rows, length), generator=g)
    lengths = torch.randint(1, length + 1, (rows,), generator=g)
    return tokens.masked_fill(torch.arange(length) >= lengths[:, None], PAD)


def test_packing_puts_each_sequence_whole_into_a_row_in_batch_order():
    tokens = uneven_batch()
    packed = pack_sequences(tokens, PAD)
    assert packed.tokens.shape[0] < tokens.shape[0]
    flat, documents = packed.tokens.reshape(-1), packed.documents.reshape(-1)
    for index, row in enumerate(tokens):  # brute force: each sequence's tokens, contiguous, under its id
        real = row[row != PAD]
        start = int(packed.starts[index])
        assert torch.equal(flat[start:start + real.numel()], real)
        assert (documents[start:start + real.numel()] == index).all()
        assert start // tokens.shape[1] == (start + real.numel() - 1) // tokens.shape[1]  # never split
    assert int((documents >= 0).sum()) == int((tokens != PAD).sum())
    assert (flat[documents < 0] == PAD).all()


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_packed_pairs_give_the_padded_encodings_and_loss(pooling):
    torch.manual_seed(0)
    padded = DualEncoder(TransformerLM(MODERN), DualEncoderConfig(pooling=pooling), pad_id=PAD).eval()
    packed = DualEncoder(TransformerLM(MODERN), DualEncoderConfig(pooling=pooling, packed=True), pad_id=PAD).eval()
    packed.load_state_dict(padded.state_dict())
    batch = {"left": uneven_batch(seed=1), "right": uneven_batch(seed=2)}
    torch.testing.assert_close(packed.encode_context(batch["left"]), padded.encode_context(batch["left"]),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed(batch)["losses"]["contrastive"][0], padded(batch)["losses"]["contrastive"][0],
                               atol=1e-5, rtol=1e-5)


def test_packing_needs_positions_that_restart_and_a_per_token_pooling():
    with pytest.raises(ConfigError, match="pooling"):
        DualEncoderConfig(pooling="2ha", packed=True)
    with pytest.raises(UserError, match="model.rope=true"):
        DualEncoder(TransformerLM(dataclasses.replace(MODERN, rope=False, embeddings="learned")),
                    DualEncoderConfig(pooling="mean", packed=True), pad_id=PAD)
