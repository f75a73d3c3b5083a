from __future__ import annotations

import logging
import math

import pytest
import torch

from pretrain.distributed import DistEnv
from pretrain.metrics import MeanAccumulator, MetricsLogger, TrainRecord, format_progress, mfu, peak_bf16_flops

SINGLE = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA L40S", 362e12),
    ("NVIDIA L4", 121e12),
    ("Tesla T4", None),
    ("NVIDIA L40", None),
])
def test_peak_flops_is_matched_on_the_device_name(name, peak):
    assert peak_bf16_flops(name) == peak


def test_accumulator_gives_count_weighted_means_and_resets():
    acc = MeanAccumulator()
    acc.add("lm", torch.tensor(6.0), torch.tensor(2))
    acc.add("lm", torch.tensor(3.0), 4)
    acc.add("acc", torch.tensor(1.0), torch.tensor(4))
    assert acc.reduce(SINGLE) == {"acc": 0.25, "lm": 1.5}
    assert acc.reduce(SINGLE) == {}


def test_mfu_is_model_flops_over_the_peak_of_all_gpus():
    # 6 * 1e9 parameters * 50k tokens/s on 2 H100s: 3e14 of 2 x 989e12 FLOP/s.
    assert mfu(6e9, 5e4, 989e12, 2) == pytest.approx(3e14 / 1.978e15)


def record(**changes) -> TrainRecord:
    fields = dict(step=100, losses={"loss": 3.21044, "mlm": 3.21044}, metrics={"acc": 0.5}, lr=1e-4, grad_norm=0.8512,
                  tokens_per_s=45123.0, data_wait=0.031, mfu=0.412, eta_s=3723.4)
    return TrainRecord(**{**fields, **changes})


def test_progress_line_shows_step_loss_lr_throughput_and_eta():
    assert format_progress(record(), 1000) == (
        "step 100/1000 | loss 3.2104 | mlm 3.2104 | acc 0.5000 | lr 1.00e-04 | grad 0.851 | 45.1k tok/s | "
        "mfu 41.2% | data 3% | eta 1:02:03")


@pytest.mark.parametrize("rate, shown", [(812.4, "812 tok/s"), (45123.0, "45.1k tok/s"), (2.5e6, "2.5M tok/s")])
def test_progress_line_scales_the_token_rate(rate, shown):
    assert f"| {shown} |" in format_progress(record(tokens_per_s=rate), 1000)


def test_progress_line_omits_what_is_unknown():
    line = format_progress(record(tokens_per_s=None, mfu=None), 1000)
    assert "tok/s" not in line and "mfu" not in line


def test_logger_writes_the_line_and_tensorboard_scalars(tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=True, max_steps=1000)
    with caplog.at_level(logging.INFO, logger="pretrain.train"):
        logger.train(record(mfu=None))
        logger.valid(100, {"loss": 2.5, "mlm_ppl": math.exp(2.5)})
    logger.close()
    assert "step 100/1000 | loss 3.2104" in caplog.text
    assert "valid step 100 | loss 2.5000 | mlm_ppl 12.1825" in caplog.text
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/mlm", "train/acc", "train/lr", "train/grad_norm", "train/tokens_per_s",
            "train/data_wait", "valid/loss", "valid/mlm_ppl"} <= tags
    assert "train/mfu" not in tags
    assert events.Scalars("train/lr")[0].value == pytest.approx(1e-4)


def test_logger_on_other_ranks_is_silent(tmp_path, caplog):
    logger = MetricsLogger(tmp_path, enabled=False, tensorboard=True, max_steps=10)
    with caplog.at_level(logging.INFO):
        logger.train(record())
    logger.close()
    assert caplog.text == ""
    assert not (tmp_path / "tensorboard").exists()
