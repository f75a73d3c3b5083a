"""The encoder-decoder: teacher forcing, causal decoding, cross-attention over real source tokens only,
tied embeddings, and the loss as a token cross-entropy."""
import math

import pytest
import torch

from data_pipeline.errors import UserError
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.objectives.masking import IGNORE_INDEX
from pretrain.objectives.seq2seq import Seq2Seq, teacher_forcing

PAD, START, END = 0, 1, 2
MODEL = TransformerConfig(vocab_size=40, d_model=16, num_heads=2, layers=2, d_ff=32, max_len=12, dropout=0.0)


def seq2seq(**model) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = TransformerConfig(**{**MODEL.__dict__, **model})
    return Seq2Seq(TransformerLM(cfg), pad_id=PAD, start_id=START, end_id=END).eval()


def test_teacher_forcing_shifts_in_a_start_and_ends_each_response():
    right = torch.tensor([[7, 8, 9], [5, PAD, PAD]])
    inputs, targets = teacher_forcing(right, PAD, START, END)
    assert inputs.tolist() == [[START, 7, 8, 9], [START, 5, PAD, PAD]]
    assert targets.tolist() == [[7, 8, 9, END], [5, END, IGNORE_INDEX, IGNORE_INDEX]]


def test_decoder_only_sees_earlier_response_tokens():
    model = seq2seq()
    left = torch.randint(3, 40, (1, 6))
    right = torch.randint(3, 40, (1, 5))
    changed = right.clone()
    changed[0, 3] = (right[0, 3] + 1 - 3) % 37 + 3
    memory = model.encoder(left)
    first = model.decoder(teacher_forcing(right, PAD, START, END)[0], memory)
    second = model.decoder(teacher_forcing(changed, PAD, START, END)[0], memory)
    torch.testing.assert_close(first[:, :4], second[:, :4])  # input position 4 holds right[3]
    assert not torch.allclose(first[:, 4:], second[:, 4:])


def test_source_padding_does_not_change_the_loss():
    model = seq2seq()
    left = torch.randint(3, 40, (2, 5))
    right = torch.randint(3, 40, (2, 4))
    padded = torch.cat([left, torch.full((2, 3), PAD)], dim=1)
    plain = model({"left": left, "right": right})["losses"]["lm"]
    extended = model({"left": padded, "right": right})["losses"]["lm"]
    torch.testing.assert_close(plain[0], extended[0])
    assert plain[1] == extended[1] == 2 * 5  # 4 response tokens + the end token per row


def test_output_projection_and_both_sides_share_one_embedding_table():
    model = seq2seq()
    assert model.decoder.embeddings is model.encoder.encoder.embeddings
    batch = {"left": torch.randint(3, 40, (2, 5)), "right": torch.randint(3, 40, (2, 4))}
    loss, count = model.train()(batch)["losses"]["lm"]
    assert loss.item() / count.item() == pytest.approx(math.log(40), rel=0.15)  # untrained: near uniform
    loss.backward()
    assert model.encoder.encoder.embeddings.word.weight.grad.abs().sum() > 0


def test_responses_longer_than_max_len_are_a_user_error():
    model = seq2seq(max_len=6)
    with pytest.raises(UserError, match="exceed model.max_len=6: set data.nctx below model.max_len"):
        model({"left": torch.randint(3, 40, (1, 4)), "right": torch.randint(3, 40, (1, 6))})
