"""Training telemetry: rank-summed means, the console progress line, TensorBoard scalars and MFU."""
from __future__ import annotations

import datetime
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pretrain.distributed import DistEnv, all_reduce_sum

log = logging.getLogger("pretrain.train")

# Dense (no sparsity) bf16 tensor-core peak per GPU, matched on torch.cuda.get_device_name(); first
# match wins, so the PCIe H100 comes before the SXM pattern.
PEAK_BF16_FLOPS: tuple[tuple[re.Pattern[str], float], ...] = (
    (re.compile(r"\bH100\b.*\bPCIe\b"), 756e12),
    (re.compile(r"\b(H100|H200|GH200)\b"), 989e12),
    (re.compile(r"\bA100\b"), 312e12),
    (re.compile(r"\bL40S\b"), 362e12),
    (re.compile(r"\bL4\b"), 121e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of the named GPU, or None when it is not in the table (MFU is then not shown)."""
    return next((peak for pattern, peak in PEAK_BF16_FLOPS if pattern.search(device_name)), None)


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float, world_size: int) -> float:
    """Model FLOPs utilisation: the fraction of the GPUs' peak that the model's own FLOPs account for."""
    return flops_per_token * tokens_per_s / (peak_flops * world_size)


def setup_logging(rank: int) -> None:
    """`time level [rank r] logger: message` on stderr; ranks other than 0 log warnings and errors only."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, force=True,
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")


class MeanAccumulator:
    """Per-name (sum, count) pairs accumulated on-device over micro-batches, turned into means over all
    ranks on demand, so logging costs one small collective per report instead of a sync per step."""

    def __init__(self) -> None:
        self._totals: dict[str, torch.Tensor] = {}

    def add(self, name: str, total: torch.Tensor, count: torch.Tensor | float) -> None:
        pair = torch.stack([total.detach().to(torch.float64).reshape(()),
                            torch.as_tensor(count, dtype=torch.float64, device=total.device).reshape(())])
        if name in self._totals:
            self._totals[name] += pair
        else:
            self._totals[name] = pair

    def reduce(self, env: DistEnv) -> dict[str, float]:
        """Mean per name over everything added on every rank since the last call (then reset); a name
        with no count anywhere (a precision with no positive prediction) is left out, not reported as nan.
        Every rank must call it at the same point with the same names."""
        if not self._totals:
            return {}
        names = sorted(self._totals)
        packed = all_reduce_sum(torch.stack([self._totals[name] for name in names]).to(env.device), env)
        self._totals = {}
        return {name: s / c for name, (s, c) in zip(names, packed.tolist()) if c > 0}


class Stopwatch:
    """Wall time, time spent waiting for batches and optimizer steps since the last lap."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self.data_wait_s = 0.0
        self.steps = 0

    def lap(self) -> tuple[float, float, int]:
        """(elapsed seconds, seconds waiting for data, steps) since the last lap; starts a new one."""
        now = time.perf_counter()
        lap = (now - self._start, self.data_wait_s, self.steps)
        self._start, self.data_wait_s, self.steps = now, 0.0, 0
        return lap


@dataclass(frozen=True)
class TrainRecord:
    """One progress report, averaged over the steps since the previous one."""

    step: int
    losses: dict[str, float]           # per loss term, plus "loss": the weighted total
    metrics: dict[str, float]
    lr: float
    grad_norm: float
    tokens_per_s: float | None         # None when the objective does not report "tokens"
    data_wait: float                   # fraction of wall time spent waiting for the data loader
    mfu: float | None                  # None off GPU or when the GPU's peak is unknown
    eta_s: float


def format_progress(record: TrainRecord, max_steps: int) -> str:
    """The console progress line, e.g. `step 100/1000 | loss 3.2104 | mlm 3.2104 | lr 1.00e-04 | ...`."""
    parts = [f"step {record.step}/{max_steps}", f"loss {record.losses['loss']:.4f}"]
    parts += [f"{name} {value:.4f}" for name, value in record.losses.items() if name != "loss"]
    parts += [f"{name} {value:.4f}" for name, value in record.metrics.items()]
    parts += [f"lr {record.lr:.2e}", f"grad {record.grad_norm:.3f}"]
    if record.tokens_per_s is not None:
        parts.append(f"{_si(record.tokens_per_s)} tok/s")
    if record.mfu is not None:
        parts.append(f"mfu {100 * record.mfu:.1f}%")
    parts += [f"data {100 * record.data_wait:.0f}%", f"eta {datetime.timedelta(seconds=round(record.eta_s))}"]
    return " | ".join(parts)


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"


class MetricsLogger:
    """Progress lines through `logging` and, optionally, TensorBoard scalars; active on rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, max_steps: int) -> None:
        self.enabled = enabled
        self.max_steps = max_steps
        self._writer: Any = None
        # Opened at the first scalars, so that a run failing at start-up leaves no event file behind.
        self._log_dir = run_dir / "tensorboard" if enabled and tensorboard else None

    def train(self, record: TrainRecord) -> None:
        if not self.enabled:
            return
        log.info(format_progress(record, self.max_steps))
        scalars = {**record.losses, **record.metrics, "lr": record.lr, "grad_norm": record.grad_norm,
                   "data_wait": record.data_wait, "tokens_per_s": record.tokens_per_s, "mfu": record.mfu}
        self._scalars("train", scalars, record.step)

    def valid(self, step: int, results: dict[str, float]) -> None:
        if not self.enabled:
            return
        log.info(" | ".join([f"valid step {step}", *(f"{name} {value:.4f}" for name, value in results.items())]))
        self._scalars("valid", results, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._log_dir = None

    def _scalars(self, prefix: str, scalars: dict[str, float | None], step: int) -> None:
        if self._log_dir is None:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported only when used: it is slow

            self._writer = SummaryWriter(log_dir=str(self._log_dir))
        for name, value in scalars.items():
            if value is not None:
                self._writer.add_scalar(f"{prefix}/{name}", value, step)
        self._writer.flush()
