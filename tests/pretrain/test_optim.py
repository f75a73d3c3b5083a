from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pretrain.config import OptimConfig
from pretrain.optim import build_optimizer, build_scheduler, lr_multiplier, param_groups


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def group_names(groups, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in groups}


def test_biases_and_layernorm_weights_get_no_weight_decay():
    model = Block()
    groups = group_names(param_groups(model, 0.1), model)
    assert groups == {"decay": ["embed.weight", "proj.weight"],
                      "no_decay": ["norm.bias", "norm.weight", "proj.bias"]}


def test_objective_can_choose_its_own_no_decay_parameters():
    model = Block()
    model.no_weight_decay = lambda name, param: name.startswith("embed.") or param.ndim == 1
    groups = group_names(param_groups(model, 0.1), model)
    assert groups["decay"] == ["proj.weight"]
    assert "embed.weight" in groups["no_decay"]


def test_optimizer_applies_weight_decay_per_group():
    optimizer = build_optimizer(Block(), OptimConfig(weight_decay=0.1), torch.device("cpu"))
    assert [(g["name"], g["weight_decay"]) for g in optimizer.param_groups] == [("decay", 0.1), ("no_decay", 0.0)]
    assert not optimizer.defaults["fused"]


def lrs_used(cfg: OptimConfig, max_steps: int) -> list[float]:
    """The learning rate each optimizer step actually ran with."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg, max_steps)
    used = []
    for _ in range(max_steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_first_step_is_below_peak_and_second_step_is_not_zero(schedule):
    used = lrs_used(OptimConfig(lr=1.0, warmup_steps=4, schedule=schedule, min_lr_ratio=0.0), 20)
    assert 0 < used[0] < 1.0
    assert used[1] > used[0] > 0


def test_warmup_ramps_linearly_to_the_peak():
    used = lrs_used(OptimConfig(lr=1.0, warmup_steps=4, schedule="constant"), 6)
    assert used == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


@pytest.mark.parametrize("schedule, midpoint", [("linear", 0.55), ("cosine", 0.55)])
def test_decay_reaches_min_lr_ratio_at_max_steps(schedule, midpoint):
    cfg = OptimConfig(lr=1.0, warmup_steps=2, schedule=schedule, min_lr_ratio=0.1)
    assert lr_multiplier(2, cfg, 12) == pytest.approx(1.0)
    assert lr_multiplier(7, cfg, 12) == pytest.approx(midpoint)
    assert lr_multiplier(12, cfg, 12) == pytest.approx(0.1)
    assert lr_multiplier(50, cfg, 12) == pytest.approx(0.1)


def test_cosine_is_above_linear_early_in_the_decay():
    cosine = OptimConfig(warmup_steps=0, schedule="cosine", min_lr_ratio=0.0)
    linear = OptimConfig(warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert lr_multiplier(25, cosine, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_multiplier(25, cosine, 100) > lr_multiplier(25, linear, 100)


def test_restored_optimizer_and_scheduler_continue_the_same_schedule():
    cfg = OptimConfig(lr=1.0, warmup_steps=3, schedule="cosine")

    def build():
        optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        return optimizer, build_scheduler(optimizer, cfg, 10)

    optimizer, scheduler = build()
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    resumed_optimizer, resumed = build()
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(scheduler.state_dict())
    for opt, sched in ((optimizer, scheduler), (resumed_optimizer, resumed)):
        opt.step()
        sched.step()
    assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(lr_multiplier(6, cfg, 10))
