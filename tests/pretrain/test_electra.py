"""ELECTRA: generator sizing and embedding sharing, the masking recipe, sampling, replaced-token labels,
the two loss terms and what gets exported."""
import math

import numpy as np
import pytest
import torch

from pretrain.config import ConfigError, OptimConfig
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.objectives.electra import (Electra, ElectraConfig, ReplacementMasker, electra_terms, generator_config,
                                         roc_auc, sample_tokens)
from pretrain.objectives.masking import TokenMasker
from pretrain.optim import build_optimizer, build_scheduler

VOCAB, PAD, MASK = 60, 0, 4
SPECIALS = frozenset(range(5))
MODEL = TransformerConfig(vocab_size=VOCAB, d_model=32, num_heads=4, layers=2, d_ff=64, max_len=16, dropout=0.0)


def electra(**overrides) -> Electra:
    torch.manual_seed(0)
    return Electra(TransformerLM(MODEL), ElectraConfig(**overrides), pad_id=PAD, special_ids=SPECIALS)


def masked_batch(rows: int = 4, seq: int = 16, seed: int = 0, **overrides) -> dict:
    tokens = torch.from_numpy(np.random.default_rng(seed).integers(5, VOCAB, size=(rows, seq)))
    masker = TokenMasker(ElectraConfig(**overrides).masking(), seed=3, vocab_size=VOCAB, mask_id=MASK,
                         special_ids=SPECIALS)
    return ReplacementMasker(masker)({"tokens": tokens, "sample_ids": torch.arange(rows),
                                      "epoch": torch.zeros(rows, dtype=torch.long), "cursor": rows})


def test_generator_is_a_fraction_of_the_discriminator_with_its_head_width():
    base = TransformerConfig(vocab_size=100, d_model=768, num_heads=12, d_ff=3072, layers=12)
    generator = generator_config(base, ElectraConfig(generator_fraction=1 / 3))
    assert (generator.d_model, generator.num_heads, generator.d_ff, generator.layers) == (256, 4, 1024, 12)
    small = generator_config(base, ElectraConfig(generator_layers=4))
    assert (small.d_model, small.num_heads, small.layers) == (192, 3, 4)


def test_generator_reads_and_writes_the_discriminators_word_table():
    model = electra()
    word = model.discriminator.encoder.embeddings.word
    assert model.generator.word_table() is word.weight
    assert sum(p is word.weight for p in model.parameters()) == 1  # one parameter, trained by both losses
    unshared = electra(share_embeddings=False)
    assert unshared.generator.word_table().shape == (VOCAB, 8)


def test_targets_are_masked_85_percent_and_otherwise_kept_never_randomised():
    batch = masked_batch(rows=64, seq=16)
    originals, corrupted = batch["targets"], batch["inputs"].reshape(-1)[batch["target_index"]]
    masked = (corrupted == MASK).float().mean().item()
    assert masked == pytest.approx(0.85, abs=0.05)
    assert torch.equal(corrupted[corrupted != MASK], originals[corrupted != MASK])


def test_sampling_uniforms_depend_only_on_seed_epoch_and_sample():
    full = masked_batch(rows=6)
    masker = ReplacementMasker(TokenMasker(ElectraConfig().masking(), seed=3, vocab_size=VOCAB, mask_id=MASK,
                                           special_ids=SPECIALS))
    last_four = {"tokens": full["tokens"][2:], "sample_ids": torch.arange(2, 6),
                 "epoch": torch.zeros(4, dtype=torch.long), "cursor": 6}
    assert full["sampling_uniform"].shape == full["targets"].shape
    assert torch.equal(masker(last_four)["sampling_uniform"], full["sampling_uniform"][full["target_index"] >= 32])
    next_epoch = dict(last_four, epoch=torch.ones(4, dtype=torch.long))
    assert not torch.equal(masker(next_epoch)["sampling_uniform"], masker(last_four)["sampling_uniform"])


def test_sampling_follows_the_softmax_and_never_draws_a_banned_token():
    logits = torch.tensor([[0.0, 2.0, 1.0, 0.5, 8.0]]).expand(10000, 5)
    banned = torch.tensor([False, False, False, False, True])
    uniform = (torch.arange(10000) + 0.5) / 10000  # evenly spread: counts match the probabilities exactly
    counts = torch.bincount(sample_tokens(logits, uniform, banned), minlength=5)
    expected = torch.softmax(logits[0, :4], -1) * 10000
    assert counts[4] == 0
    torch.testing.assert_close(counts[:4].float(), expected, atol=1.0, rtol=0)
    edge = sample_tokens(logits[:2], torch.tensor([0.0, 1.0 - 2 ** -24]), banned)
    assert edge.tolist() == [0, 3]


def test_a_sample_equal_to_the_original_is_not_counted_as_replaced():
    model = electra()
    batch = masked_batch()

    def certain_logits(hidden: torch.Tensor) -> torch.Tensor:  # the generator always guesses right
        return torch.nn.functional.one_hot(batch["targets"], VOCAB).float() * 100.0
    model.generator.logits = certain_logits
    metrics = model(batch)["metrics"]
    assert metrics["replaced_of_targets"][0] == 0 and metrics["original_rate"][0] == metrics["original_rate"][1]
    assert metrics["replaced_recall"][1] == 0
    assert metrics["replaced_auc"][1] == 0  # no replaced token: no AUC, rather than a NaN


def test_losses_metrics_and_weights():
    model = electra(discriminator_weight=50.0)
    out = model(masked_batch())
    assert model.loss_weights == {"generator": 1.0, "discriminator": 50.0}
    assert out["losses"]["discriminator"][1] == 4 * 16  # every non-padding position
    assert out["losses"]["generator"][1] == masked_batch()["targets"].numel()
    assert set(out["metrics"]) == {"generator_accuracy", "discriminator_accuracy", "original_rate",
                                   "replaced_recall", "replaced_auc", "replaced_of_targets"}
    hits, total = out["metrics"]["replaced_recall"]
    assert 0 <= hits <= total <= out["losses"]["generator"][1]


def test_auc_ranks_replaced_tokens_above_originals():
    scores = torch.tensor([0.1, 0.9, 0.4, 0.8, 0.3])
    assert roc_auc(scores, torch.tensor([False, True, False, True, False]))[0] == 1.0
    assert roc_auc(scores, torch.tensor([True, False, True, False, True]))[0] == 0.0
    auc, count = roc_auc(scores, torch.tensor([False, True, True, False, False]))  # 0.9, 0.4 vs 0.1, 0.8, 0.3
    assert count == 1 and auc.item() == pytest.approx(5 / 6)  # 0.4 loses only to 0.8


def test_tied_scores_share_their_rank_so_a_constant_discriminator_reads_one_half():
    positive = torch.tensor([True, False, False, True, False, False, False, True])
    assert roc_auc(torch.full((8,), 1.7), positive)[0] == 0.5
    one_tie = roc_auc(torch.tensor([0.2, 0.2, 0.1, 0.9]), torch.tensor([True, False, False, True]))[0]
    assert one_tie == 0.875  # 3 of the 4 pairs ordered right, the tied one counts half


def test_labels_mark_the_samples_that_differ_and_the_loss_covers_every_non_padding_position():
    tokens = torch.tensor([[7, 8, 9, 10, 11, PAD], [12, 13, 14, 15, PAD, PAD]])
    batch = {"tokens": tokens, "target_index": torch.tensor([1, 2, 7]), "targets": torch.tensor([8, 9, 13]),
             "sampling_uniform": torch.tensor([0.5, 0.5, 0.5])}
    # The generator is sure of 20 at position 1, of the original 9 at 2, of 30 at row 1's position 1.
    generator_logits = torch.nn.functional.one_hot(torch.tensor([20, 9, 30]), VOCAB).float() * 100.0
    seen = []
    scores = torch.linspace(-2.0, 2.0, 12).view(2, 6)

    def discriminate(corrupted: torch.Tensor) -> torch.Tensor:
        seen.append(corrupted)
        return scores
    out = electra_terms(generator_logits, discriminate, batch, banned=torch.zeros(VOCAB, dtype=torch.bool),
                        pad_id=PAD)
    # The discriminator sees the samples in place (not [MASK]); a sample equal to the original is original.
    assert seen[0].tolist() == [[7, 20, 9, 10, 11, PAD], [12, 30, 14, 15, PAD, PAD]]
    replaced = torch.zeros(2, 6)
    replaced[0, 1] = replaced[1, 1] = 1.0
    real = tokens != PAD
    expected = torch.nn.functional.binary_cross_entropy_with_logits(scores[real], replaced[real], reduction="sum")
    loss_sum, count = out["losses"]["discriminator"]
    assert count == 9 and torch.isclose(loss_sum, expected)
    assert out["metrics"]["replaced_of_targets"] == (2, 3)
    assert out["metrics"]["original_rate"][0] == 7
    assert out["metrics"]["replaced_auc"][0] == pytest.approx(6 / 14)  # ranks 2 and 7 of the 9 real positions


def test_the_discriminator_starts_at_the_replaced_prior_and_does_not_collapse_to_a_constant():
    """From a zero logit bias, AdamW's first steps turn the discriminator into a constant "original" answer
    (its hidden states' spread over tokens falls to ~0.05 here, against ~0.56 from the prior), a plateau it
    does not leave."""
    model = electra(mask_rate=0.15)
    probe = masked_batch(rows=8, seed=999)["tokens"]
    with torch.no_grad():
        assert model.discriminate(probe).mean().item() == pytest.approx(math.log(0.15 / 0.85), abs=0.1)
    optim = OptimConfig(lr=1e-3, warmup_steps=5, schedule="constant")
    optimizer = build_optimizer(model, optim, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, optim, max_steps=40)
    for seed in range(40):
        losses = model(masked_batch(rows=8, seed=seed))["losses"]
        loss = sum(model.loss_weights[name] * total / count for name, (total, count) in losses.items())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        assert model.discriminator(probe).std(dim=(0, 1)).mean() > 0.3


def test_no_gradient_flows_through_the_sample():
    model = electra()
    loss_sum, _ = model(masked_batch())["losses"]["discriminator"]
    loss_sum.backward()
    assert all(p.grad is None for p in model.generator.encoder.layers.parameters())
    assert model.discriminator.encoder.embeddings.word.weight.grad is not None


def test_export_is_the_whole_model():
    model = electra()
    assert model.export_model() is model


def test_bad_recipe_values_are_config_errors():
    with pytest.raises(ConfigError, match="generator_fraction=0 must be in"):
        ElectraConfig(generator_fraction=0)
    with pytest.raises(ConfigError, match="discriminator_weight"):
        ElectraConfig(discriminator_weight=0)
