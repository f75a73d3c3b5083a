"""Unpadding paired batches: several sequences per row behind document masks give each sequence the
encoding it gets alone in a padded batch, and each packed response the loss it gets in a padded one."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pretrain.config import ConfigError
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.model.attention import cross_attention_mask
from pretrain.model.packing import pack_aligned, pack_sequences
from pretrain.objectives.dual_encoder import DualEncoder, DualEncoderConfig
from pretrain.objectives.seq2seq import Seq2Seq

PAD, START, END = 0, 1, 2
MODERN = TransformerConfig(vocab_size=50, d_model=16, num_heads=2, layers=3, d_ff=24, max_len=16, dropout=0.0,
                           norm="pre", embeddings="none", first_attn_norm=False, rope=True, ffn="geglu", bias=False,
                           global_every=3, local_window=4)
# Absolute positions (learned, sinusoidal) restart at each packed sequence too; Shaw's relative ones need not.
POSITIONS = {"rope": MODERN,
             "learned": dataclasses.replace(MODERN, rope=False, embeddings="learned", global_every=1),
             "sinusoidal": dataclasses.replace(MODERN, rope=False, embeddings="sinusoidal", norm="post",
                                               first_attn_norm=True),
             "relative": dataclasses.replace(MODERN, rope=False, rpr_k=3)}


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


def test_aligned_packing_puts_both_sequences_of_a_pair_in_the_same_row_index():
    left, right = uneven_batch(seed=3), uneven_batch(length=7, seed=4)
    sources, targets = pack_aligned([left, right], PAD)
    assert sources.tokens.shape[0] == targets.tokens.shape[0] < left.shape[0]
    for side, packed in ((left, sources), (right, targets)):
        flat = packed.tokens.reshape(-1)
        for index, row in enumerate(side):
            real = row[row != PAD]
            start = int(packed.starts[index])
            assert torch.equal(flat[start:start + real.numel()], real)
            assert start // side.shape[1] == (start + real.numel() - 1) // side.shape[1]
    assert torch.equal(sources.starts // left.shape[1], targets.starts // right.shape[1])


def test_cross_attention_mask_lets_a_target_see_its_own_source_only():
    queries, keys = torch.tensor([[0, 0, 1, 1, 1, -1]]), torch.tensor([[0, 1, 1, -1]])
    mask = cross_attention_mask(queries, keys)
    for i, query in enumerate(queries[0].tolist()):  # brute force
        for j, key in enumerate(keys[0].tolist()):
            assert bool(mask[0, 0, i, j]) == (query == key or query < 0)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_packed_pairs_give_the_padded_encodings_and_loss(pooling, positions):
    torch.manual_seed(0)
    cfg = POSITIONS[positions]
    padded = DualEncoder(TransformerLM(cfg), DualEncoderConfig(pooling=pooling), pad_id=PAD).eval()
    packed = DualEncoder(TransformerLM(cfg), DualEncoderConfig(pooling=pooling, packed=True), pad_id=PAD).eval()
    packed.load_state_dict(padded.state_dict())
    batch = {"left": uneven_batch(seed=1), "right": uneven_batch(seed=2)}
    torch.testing.assert_close(packed.encode_context(batch["left"]), padded.encode_context(batch["left"]),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed(batch)["losses"]["contrastive"][0], padded(batch)["losses"]["contrastive"][0],
                               atol=1e-5, rtol=1e-5)


def test_packing_needs_a_per_token_pooling():
    with pytest.raises(ConfigError, match="pooling"):
        DualEncoderConfig(pooling="2ha", packed=True)


@pytest.mark.parametrize("positions", POSITIONS)
def test_packed_seq2seq_gives_the_padded_loss_accuracy_and_gradients(positions):
    models = {}
    for packed in (False, True):
        torch.manual_seed(0)
        models[packed] = Seq2Seq(TransformerLM(POSITIONS[positions]), pad_id=PAD, start_id=START, end_id=END,
                                 packed=packed)
    batch = {"left": uneven_batch(seed=5), "right": uneven_batch(length=8, seed=6)}
    outputs = {packed: model(batch) for packed, model in models.items()}
    for kind, name in (("losses", "lm"), ("metrics", "accuracy")):
        torch.testing.assert_close(outputs[True][kind][name], outputs[False][kind][name], atol=1e-5, rtol=1e-5)
    for packed in models:
        outputs[packed]["losses"]["lm"][0].backward()
    for (name, packed_param), padded_param in zip(models[True].named_parameters(), models[False].parameters()):
        torch.testing.assert_close(packed_param.grad, padded_param.grad, atol=1e-5, rtol=1e-4, msg=name)
