"""Our CPU dropout: Bernoulli masks drawn from torch's generator, about half the cost of F.dropout's."""
from __future__ import annotations

import pytest
import torch

from pretrain.model.dropout import Dropout, dropout, dropout_rate

P = 0.1
SIZE = 1 << 20


def dropped_and_output(seed: int = 0, threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.ones(SIZE // 256, 256, requires_grad=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        torch.manual_seed(seed)
        out = dropout(x, P, training=True)
    finally:
        torch.set_num_threads(previous)
    out.sum().backward()
    torch.testing.assert_close(x.grad, out.detach())  # d(x * mask)/dx is the mask: the backward reuses it
    return out.detach() == 0, out.detach()


def test_every_element_drops_at_the_rate_asked_and_the_expectation_is_kept():
    dropped, out = dropped_and_output()
    assert dropout_rate(P) == pytest.approx(P, abs=1e-5)
    tolerance = 5 * (P * (1 - P) / SIZE) ** 0.5  # five binomial standard deviations
    assert dropped.float().mean().item() == pytest.approx(P, abs=tolerance)
    # Each 64-bit draw makes four masks: none of the four lanes may be biased (a lane of a 63-bit draw was).
    for lane in range(4):
        assert dropped.view(-1)[lane::4].float().mean().item() == pytest.approx(P, abs=2 * tolerance)
    assert out.unique().tolist() == [0.0, pytest.approx(1 / (1 - dropout_rate(P)))]
    assert out.mean().item() == pytest.approx(1.0, abs=2e-3)


def test_masks_follow_torch_seed_whatever_the_thread_count_and_differ_between_calls():
    first, _ = dropped_and_output(seed=3, threads=1)
    again, _ = dropped_and_output(seed=3, threads=2)
    other, _ = dropped_and_output(seed=4)
    assert torch.equal(first, again)
    assert (first != other).float().mean().item() > 0.1


def test_eval_mode_and_zero_rate_are_the_identity():
    x = torch.randn(8, 4)
    assert dropout(x, P, training=False) is x and dropout(x, 0.0, training=True) is x
    module = Dropout(P).eval()
    assert module(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)
