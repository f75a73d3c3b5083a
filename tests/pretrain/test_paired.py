"""pretrain.paired end to end: NTP and NSP data, both models learning on sample-corpus text, DDP with
gathered negatives equal to one process, exact resume after a kill, and skipped bad pairs in the log."""
from __future__ import annotations

import math
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.errors import UserError
from data_pipeline.preprocess import preprocess
from data_pipeline.tokenizer import TokenizerSpec
from pretrain.objectives.next_sentence import LineSplitter, line_halves
from pretrain.paired import RECIPE
from pretrain.run import run_recipe
from tests.pretrain.processes import (
    REPO,
    assert_same_params,
    final_params,
    kill_after_first_checkpoint,
    one_thread,
    run_two_pods,
)

SEP, PAD = 3, 0
PRESETS = {"bert": "configs/tiny_dual_encoder.yaml", "modern": "configs/tiny_modern_dual_encoder.yaml"}


def tiny_args(data: dict[str, Path], run_dir: Path, *overrides: str, paired: bool = True,
              preset: str = "bert", config: str | None = None) -> list[str]:
    """A 1-layer, 32-wide model on short sides: a few steps take well under a second each on one core.
    config: a config file to start from instead of the preset's."""
    kind = "paired_" if paired else ""
    return ["--config", str(REPO / (config or PRESETS[preset])), "data.sample.dir=''",
            f"data.train=[{data[kind + 'train']}]", f"data.valid=[{data[kind + 'valid']}]",
            f"data.tokenizer.vocab={data['vocab']}", "data.nctx=24",
            "data.batch_size=8", "model.d_model=32", "model.num_heads=2", "model.layers=1", "model.d_ff=64",
            "model.max_len=32", "objective.dual_encoder.recall_candidates=8",
            "objective.dual_encoder.projection_hidden=[]", "objective.dual_encoder.embed_dim=32",
            "train.num_workers=0", "train.tensorboard=false", "train.log_every=5", "train.eval_every=0",
            "train.eval_batches=2", "train.checkpoint_every=0", "optim.warmup_steps=3", "optim.lr=3e-3",
            f"train.run_dir={run_dir}", *overrides]


# -- data: Next Sentence Prediction pairs from LM blocks ----------------------------------------------

def test_nsp_splits_a_line_of_the_block_at_its_middle():
    block = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    out = LineSplitter(seed=0, sep_id=SEP, pad_id=PAD)({"tokens": block, "sample_ids": torch.tensor([4]),
                                                        "epoch": torch.tensor([0]), "cursor": 1})
    assert out.keys() == {"left", "right", "sample_ids", "epoch", "cursor"}
    assert out["left"].tolist() == [[5, 6, 7, 8, 9]] and out["right"].tolist() == [[10, 11, 12, 13, 14]]


def test_nsp_never_crosses_a_separator_and_picks_lines_by_length():
    block = np.array([7, 8, SEP, 10, 11, 12, 13, 14, 15, 16, 17, SEP, 9], dtype=np.int64)  # lines of 2, 8, 1
    halves = [line_halves(block, SEP, np.random.default_rng([0, 0, i])) for i in range(2000)]
    assert {(tuple(a), tuple(b)) for a, b in halves} == {((7,), (8,)), ((10, 11, 12, 13), (14, 15, 16, 17))}
    assert np.mean([a[0] == 10 for a, _ in halves]) == pytest.approx(0.8, abs=0.03)


def test_nsp_pairs_depend_only_on_seed_epoch_and_sample():
    splitter = LineSplitter(seed=1, sep_id=SEP, pad_id=PAD)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(4, 50, size=(6, 40)))
    tokens[tokens % 7 == 0] = SEP
    batch = {"tokens": tokens, "sample_ids": torch.arange(6), "epoch": torch.zeros(6, dtype=torch.long),
             "cursor": 6}
    tail = {"tokens": tokens[3:], "sample_ids": torch.arange(3, 6), "epoch": torch.zeros(3, dtype=torch.long),
            "cursor": 6}
    full, part = splitter(batch), splitter(tail)
    for row in range(3):
        for side in ("left", "right"):
            got, want = part[side][row], full[side][row + 3]
            assert got[got != PAD].tolist() == want[want != PAD].tolist()


# -- training -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_dual_encoder_learns_to_retrieve_responses(sample_data, tmp_path, preset):
    result = run_recipe(RECIPE, tiny_args(sample_data, tmp_path, "train.max_steps=80", preset=preset))
    assert result.completed
    # Untrained (or collapsed onto one encoding) the in-batch loss is log(8): each context's response is one
    # of 8 equally likely ones.
    assert result.train["contrastive"] < 0.75 * math.log(8)
    assert 0.0 <= result.valid["recall@1"] <= 1.0


@pytest.mark.parametrize("preset", PRESETS)
def test_seq2seq_learns_to_generate_responses(sample_data, tmp_path, preset):
    result = run_recipe(RECIPE, tiny_args(sample_data, tmp_path, "objective.name=seq2seq", "train.max_steps=40",
                                          preset=preset))
    # Untrained, the loss is about log(V) (1000 ids); validation reports perplexity.
    assert result.train["lm"] < 0.9 * math.log(1000)
    assert result.valid["lm_ppl"] == pytest.approx(math.exp(result.valid["lm"]))


def test_packed_seq2seq_preset_trains_like_the_padded_one(sample_data, tmp_path):
    """objective.seq2seq.packed on the tiny seq2seq preset (learned positions): the same steps as padded
    batches, to fp32 rounding (no dropout, so both runs draw the same random numbers)."""
    results = {packed: run_recipe(RECIPE, tiny_args(sample_data, tmp_path / str(packed), "train.max_steps=20",
                                                    "model.dropout=0.0", f"objective.seq2seq.packed={packed}",
                                                    config="configs/tiny_seq2seq.yaml"))
               for packed in (False, True)}
    assert results[True].completed
    assert results[True].train["lm"] < math.log(1000)  # learning: below the untrained log(V)
    for split in ("train", "valid"):
        assert getattr(results[True], split)["lm"] == pytest.approx(getattr(results[False], split)["lm"], rel=1e-4)


def test_nsp_pairs_train_the_dual_encoder_from_lm_shards(sample_data, tmp_path):
    result = run_recipe(RECIPE, tiny_args(sample_data, tmp_path, "objective.pairs=nsp", "data.nctx=48",
                                          "train.max_steps=60", paired=False))
    assert result.train["contrastive"] < 0.6 * math.log(8)


def test_lm_shards_in_ntp_mode_are_a_user_error(sample_data, tmp_path):
    with pytest.raises(UserError, match="needs paired"):
        run_recipe(RECIPE, tiny_args(sample_data, tmp_path, paired=False))


def test_skipped_pairs_are_reported_in_the_training_log(sample_data, tmp_path, capsys):
    lines = sample_data["paired_train_text"].read_text(encoding="utf-8").splitlines()[:40]
    bad = tmp_path / "pairs.tsv"
    bad.write_text("\n".join(lines + ["no tab on this line", "two\ttabs\there", "\tempty context"]) + "\n",
                   encoding="utf-8")
    spec = TokenizerSpec(kind="wordpiece", vocab=str(sample_data["vocab"]))
    shards = preprocess([bad], tmp_path / "shards", spec, paired=True, processes=1, progress=False).out_dir
    capsys.readouterr()  # preprocess's own report is not what this test is about
    run_recipe(RECIPE, tiny_args(sample_data, tmp_path / "run", f"data.train=[{shards}]", "data.valid=[]",
                                 "train.max_steps=1"))
    log = capsys.readouterr().err
    assert re.search(r"paired_not_one_tab_lines\W{0,3}2\b", log), log
    assert re.search(r"paired_empty_side_lines\W{0,3}1\b", log), log


# -- processes: DDP and kills ---------------------------------------------------------------------------

# optim.eps: attention key biases get an exactly-zero gradient (a shift of every score of a query, which the
# softmax ignores), so their "gradient" is rounding noise, different between a 1- and a 2-rank sum; Adam's
# default eps (1e-8) would scale that noise up to lr-sized steps. 1e-4 leaves real gradients (>> 1e-4) alone.
DETERMINISTIC = ["model.dropout=0.0", "train.max_steps=6", "train.checkpoint_every=2", "train.grad_accum_steps=2",
                 "optim.eps=1e-4"]


@pytest.fixture(scope="module")
def one_rank_reference(sample_data, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Global batch 8 per micro-batch (1 rank x 8), 2 micro-batches per step."""
    run_dir = tmp_path_factory.mktemp("reference")
    with one_thread():
        run_recipe(RECIPE, tiny_args(sample_data, run_dir, *DETERMINISTIC))
    return final_params(run_dir)


@pytest.mark.slow
def test_two_ranks_with_gathered_negatives_equal_one_rank_with_the_global_batch(sample_data, tmp_path,
                                                                                one_rank_reference):
    run_two_pods(["-m", "pretrain.paired", *tiny_args(sample_data, tmp_path, *DETERMINISTIC, "data.batch_size=4",
                                                      "objective.dual_encoder.recall_candidates=4")])
    assert_same_params(final_params(tmp_path), one_rank_reference, atol=1e-5)


@pytest.mark.slow
def test_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(sample_data, tmp_path,
                                                                           one_rank_reference):
    args = tiny_args(sample_data, tmp_path, *DETERMINISTIC)
    code, out = kill_after_first_checkpoint(["-m", "pretrain.paired", *args], tmp_path)
    assert code == -signal.SIGKILL, out
    with one_thread():
        result = run_recipe(RECIPE, args)
    assert result.completed
    assert_same_params(final_params(tmp_path), one_rank_reference)
