"""The MLM masking recipe: rates, special tokens, per-sample determinism, whole words."""
import numpy as np
import pytest
import torch

from data_pipeline.errors import UserError
from pretrain.objectives.masking import MaskingConfig, TokenMasker

VOCAB = 1000
SPECIALS = frozenset({0, 1, 2, 3, 4})
MASK_ID = 4


def make_batch(rows: int = 64, seq: int = 128, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, VOCAB, size=(rows, seq))
    tokens[:, 0] = 2  # a [CLS]-like special at the start of every sample
    tokens[:, -3:] = 0  # and padding at the end
    return {"tokens": torch.from_numpy(tokens), "sample_ids": torch.arange(rows),
            "epoch": torch.zeros(rows, dtype=torch.long), "cursor": rows}


def masker(**overrides) -> TokenMasker:
    return TokenMasker(MaskingConfig(**overrides), seed=7, vocab_size=VOCAB, mask_id=MASK_ID,
                       special_ids=SPECIALS)


def test_mask_rate_and_replacement_split_follow_the_recipe():
    batch = masker()(make_batch(rows=256))
    tokens, inputs = batch["tokens"].reshape(-1), batch["inputs"].reshape(-1)
    index = batch["target_index"]
    non_special = (~np.isin(batch["tokens"].numpy(), list(SPECIALS))).sum()
    assert index.numel() / non_special == pytest.approx(0.15, abs=0.005)
    assert torch.equal(batch["targets"], tokens[index])
    masked = (inputs[index] == MASK_ID).float().mean().item()
    kept = (inputs[index] == tokens[index]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.02)  # random replacements rarely hit the original token
    untouched = torch.ones_like(inputs, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(inputs[untouched], tokens[untouched])


def test_special_tokens_are_never_targets_or_replacements():
    batch = masker(replace_with_mask=0.0, replace_with_random=1.0)(make_batch())
    targets_at = batch["tokens"].reshape(-1)[batch["target_index"]]
    assert not np.isin(targets_at.numpy(), list(SPECIALS)).any()
    assert not np.isin(batch["inputs"].reshape(-1)[batch["target_index"]].numpy(), list(SPECIALS)).any()


def test_every_sample_gets_at_least_one_target():
    batch = make_batch(rows=8, seq=6)
    batch["tokens"][:, 1:] = 0
    batch["tokens"][:, 1] = 9  # a single maskable token per sample
    out = masker()(batch)
    assert out["target_index"].tolist() == [row * 6 + 1 for row in range(8)]


def test_masks_depend_only_on_seed_epoch_and_sample_not_on_batch_composition():
    full = masker()(make_batch(rows=16))
    part = make_batch(rows=16)
    part = {k: (v[10:] if torch.is_tensor(v) else v) for k, v in part.items()}
    tail = masker()(part)
    assert torch.equal(full["inputs"][10:], tail["inputs"])
    other_epoch = make_batch(rows=16)
    other_epoch["epoch"] += 1
    assert not torch.equal(masker()(other_epoch)["inputs"], full["inputs"])


def test_whole_word_masking_takes_every_piece_of_a_chosen_word():
    def word_starts(tokens: np.ndarray) -> np.ndarray:
        return tokens % 2 == 0  # odd ids continue the previous word
    m = TokenMasker(MaskingConfig(whole_word=True), seed=1, vocab_size=VOCAB, mask_id=MASK_ID,
                    special_ids=SPECIALS, word_starts=word_starts)
    batch = make_batch(rows=32)
    out = m(batch)
    tokens = batch["tokens"].numpy()
    chosen = np.zeros(tokens.size, dtype=bool)
    chosen[out["target_index"].numpy()] = True
    chosen = chosen.reshape(tokens.shape)
    for row in range(tokens.shape[0]):
        for t in range(2, tokens.shape[1] - 3):
            if tokens[row, t] % 2 == 1:  # a continuation is chosen exactly when its word start is
                assert chosen[row, t] == chosen[row, t - 1]


def test_bad_rates_are_one_line_user_errors():
    with pytest.raises(UserError, match="mask_rate"):
        masker(mask_rate=1.5)
    with pytest.raises(UserError, match="replace_with_mask"):
        masker(replace_with_mask=0.9, replace_with_random=0.2)


def target_fraction(batch: dict) -> float:
    return batch["target_index"].numel() / (~np.isin(batch["tokens"].numpy(), list(SPECIALS))).sum()


def test_mask_rate_decays_linearly_with_the_global_cursor():
    cfg = MaskingConfig(mask_rate=0.3, mask_rate_final=0.15, mask_rate_decay_samples=1000)
    assert [cfg.rate_at(c) for c in (0, 500, 1000, 5000)] == pytest.approx([0.3, 0.225, 0.15, 0.15])
    m = TokenMasker(cfg, seed=7, vocab_size=VOCAB, mask_id=MASK_ID, special_ids=SPECIALS)
    for cursor, rate in ((0, 0.3), (1000, 0.15)):
        assert target_fraction(m(dict(make_batch(rows=64), cursor=cursor))) == pytest.approx(rate, abs=0.005)


def test_span_masking_chooses_contiguous_spans_at_the_mask_rate():
    batch = masker(span_length=3.8)(make_batch(rows=64))
    assert target_fraction(batch) == pytest.approx(0.15, abs=0.005)
    positions = batch["target_index"].numpy()
    runs = np.split(positions, np.flatnonzero(np.diff(positions) != 1) + 1)
    assert 2.5 < np.mean([len(run) for run in runs]) <= 10  # single-token masking gives ~1.2
    single = masker()(make_batch(rows=64))["target_index"].numpy()
    assert np.mean([len(r) for r in np.split(single, np.flatnonzero(np.diff(single) != 1) + 1)]) < 1.5


def test_span_masks_depend_only_on_seed_epoch_and_sample():
    full, tail = masker(span_length=3.0)(make_batch(rows=8)), make_batch(rows=8)
    part = masker(span_length=3.0)({key: value[4:] if key != "cursor" else value for key, value in tail.items()})
    assert torch.equal(part["inputs"], full["inputs"][4:])


@pytest.mark.parametrize("bad", [dict(mask_rate_final=0.15), dict(span_length=0.5),
                                 dict(span_length=3.0, whole_word=True)])
def test_invalid_schedule_or_span_settings_are_user_errors(bad):
    with pytest.raises(UserError):
        MaskingConfig(**bad).validate()
