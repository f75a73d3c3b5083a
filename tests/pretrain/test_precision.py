"""train.precision: what "auto" picks on each device (the end-to-end bf16 run is in test_tlm.py)."""
from __future__ import annotations

import pytest
import torch

from pretrain.precision import use_bf16

CPU = torch.device("cpu")


@pytest.mark.parametrize("amx", [True, False])
def test_auto_on_a_cpu_is_bf16_exactly_where_it_has_amx(monkeypatch, amx):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert use_bf16("auto", CPU) is amx
    assert use_bf16("bf16", CPU) and not use_bf16("fp32", CPU)
