"""The one training loop, shared by every entry point.

An entry point does:

    env = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    seed_everything(cfg.train.seed)      # before building the model: the same init on every rank
    objective = ...                      # an nn.Module following docs/ARCHITECTURE.md
    result = train(objective, train_data, valid_data, cfg.train, cfg.optim, env, to_dict(cfg))

`train_data`/`valid_data` are readers (IterableDatasets yielding whole per-rank batches that carry a
`cursor`, with `state_dict(cursor)`/`load_state_dict(state)`); `valid_data` may be None.
"""
from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset

from data_pipeline.errors import UserError, describe_os_error
from pretrain.checkpoint import capture_rng_state, restore_rng_state
from pretrain.checkpointer import CheckpointManager
from pretrain.config import OptimConfig, TrainConfig
from pretrain.distributed import DistEnv, all_gather_object, all_reduce_sum
from pretrain.metrics import MeanAccumulator, MetricsLogger, Stopwatch, TrainRecord, mfu, peak_bf16_flops
from pretrain.object_run_storage import local_mirror, sync_mirror
from pretrain.optim import build_optimizer, build_scheduler
from pretrain.precision import use_bf16

log = logging.getLogger(__name__)

ExportHook = Callable[[nn.Module, Path], None]
"""Called on rank 0 with the (unwrapped) objective and the run directory once training completes."""


@dataclass(frozen=True)
class TrainResult:
    step: int                          # optimizer steps done, counting those of the run resumed from
    completed: bool                    # False when SIGTERM stopped the run before max_steps
    checkpoint: Path | None            # last checkpoint written (rank 0 only; None elsewhere)
    train: dict[str, float] = field(default_factory=dict)  # last progress report: loss terms, metrics
    valid: dict[str, float] = field(default_factory=dict)  # last validation: loss terms, *_ppl, metrics
    stopped_by_peer: bool = False      # another rank got SIGTERM (this one did not): its pod is going down


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(objective: nn.Module, train_data: IterableDataset, valid_data: IterableDataset | None,
          train_cfg: TrainConfig, optim_cfg: OptimConfig, env: DistEnv, resolved_config: dict[str, Any],
          export: ExportHook | None = None) -> TrainResult:
    """Train `objective` to `train_cfg.max_steps`, resuming as `train_cfg.resume` says.

    Checkpoints every `checkpoint_every` steps, at the end and on SIGTERM (after which it returns
    normally with `completed=False`, so the process exits 0 and a restart resumes). `resolved_config`
    (see config.to_dict) is written to run_dir/config.yaml and into every checkpoint.
    """
    return Trainer(objective, train_data, valid_data, train_cfg, optim_cfg, env, resolved_config, export).fit()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def add_terms(out: dict[str, Any], losses: MeanAccumulator, metrics: MeanAccumulator) -> None:
    """Accumulate an objective output's loss terms and metrics, each a (sum, count) pair."""
    for name, (total, count) in out["losses"].items():
        losses.add(name, total, count)
    for name, (total, count) in out.get("metrics", {}).items():
        metrics.add(name, total, count)


class StopRequest:
    """Set by SIGTERM, which Kubernetes sends a grace period (30 s by default) before killing a pod."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def on_sigterm(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            log.warning("train() runs outside the main thread: SIGTERM will end it without a checkpoint")
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


@contextmanager
def sigterm_held() -> Iterator[None]:
    """Hold SIGTERM back while DataLoader workers start: they inherit the blocked signal until
    `leave_sigterm_to_the_trainer` runs in them, so a SIGTERM that arrives meanwhile cannot kill one;
    here it is delivered (to StopRequest) on leaving."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def leave_sigterm_to_the_trainer(worker_id: int) -> None:
    """DataLoader worker_init_fn: ignore SIGTERM. torchrun forwards it to each rank's whole process
    group, and `kill -TERM -- -PGID` (systemd, Slurm) reaches every process; a worker dying of it would
    fail the step that StopRequest is about to finish and checkpoint. A worker still ends when the
    trainer shuts the loader down, or by itself once the trainer's process is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


class Trainer:
    """State of one training run; `fit()` runs it. See `train` for the behaviour."""

    def __init__(self, objective: nn.Module, train_data: IterableDataset, valid_data: IterableDataset | None,
                 train_cfg: TrainConfig, optim_cfg: OptimConfig, env: DistEnv, resolved_config: dict[str, Any],
                 export: ExportHook | None = None) -> None:
        self.cfg, self.env, self.resolved_config, self.export = train_cfg, env, resolved_config, export
        self.objective = objective.to(env.device)
        self.train_data, self.valid_data = train_data, valid_data
        self.run_dir = local_mirror(train_cfg.run_dir)  # config, TensorBoard, export (synced to a URI)
        self.optimizer = build_optimizer(self.objective, optim_cfg, env.device)
        self.scheduler = build_scheduler(self.optimizer, optim_cfg, train_cfg.max_steps)
        self.max_grad_norm = optim_cfg.clip_grad_norm if optim_cfg.clip_grad_norm > 0 else math.inf
        self.bf16 = use_bf16(train_cfg.precision, env.device)
        self.checkpoints = CheckpointManager(train_cfg.run_dir, env, train_cfg.keep_checkpoints, train_cfg.resume,
                                             resolved_config, train_cfg.owner_lease_s)
        self.rng = RankRng(env, train_cfg.seed)
        self.metrics = MetricsLogger(self.run_dir, env.is_main, train_cfg.tensorboard, train_cfg.max_steps)
        self.peak_flops = peak_bf16_flops(torch.cuda.get_device_name(env.device)) if env.device.type == "cuda" else None
        self.valid_loader: DataLoader | None = None
        self.train_batches: Iterator[dict[str, Any]] | None = None
        self.step = 0
        self.cursor: int | None = None     # the train reader's cursor after the last consumed batch
        self.nonfinite_in_a_row = 0
        self.last_train: dict[str, float] = {}
        self.last_valid: dict[str, float] = {}
        # Per report window: loss terms and metrics (sum, count), input tokens, grad norms, timing.
        self.loss_window, self.metric_window = MeanAccumulator(), MeanAccumulator()
        self.tokens = torch.zeros((), dtype=torch.float64, device=env.device)
        self.grad_norms = torch.zeros((), dtype=torch.float64, device=env.device)
        self.reports_tokens = False
        self.seq_len = 0
        self.lr = 0.0

    def fit(self) -> TrainResult:
        try:
            with StopRequest().on_sigterm() as stop:
                self._run(stop)
            self.checkpoints.wait()  # the last checkpoint is on disk (or its error raised) before any export
            completed = self.step >= self.cfg.max_steps
            if completed and self.export is not None and self.env.is_main:
                self.export(self.objective, self.run_dir)
            stopped_by_peer = self._stop_votes(stop) > 0 and not stop.requested
        finally:
            self._stop_workers()
            try:
                self.checkpoints.close()
            finally:
                self.metrics.close()
                if self.env.is_main:
                    sync_mirror(self.cfg.run_dir)
        return TrainResult(self.step, completed, self.checkpoints.last_saved, self.last_train, self.last_valid,
                           stopped_by_peer=stopped_by_peer)

    def _stop_votes(self, stop: StopRequest) -> int:
        """How many ranks got SIGTERM during the run, counted once more when it is over (after the export:
        this all-reduce is also where every rank waits for rank 0's).

        The step's vote misses a SIGTERM that lands after the last step's all-reduce (in the final
        validation or checkpoint). That rank's torchrun is going down and never reaches torchrun's exit
        barrier, where the other pods' torchruns, their ranks all exited 0, would wait for it for 5
        minutes before the Master pod could succeed. So its peers exit EXIT_RESUME instead: restarted (by
        their torchrun, in place) with the re-created pod, the job resumes at max_steps and ends at once."""
        vote = torch.tensor([float(stop.requested)], dtype=torch.float64, device=self.env.device)
        return int(all_reduce_sum(vote, self.env).item())

    def _stop_workers(self) -> None:
        """Shut the DataLoader workers down now. They ignore SIGTERM (leave_sigterm_to_the_trainer), so the
        terminate() that multiprocessing sends its children at interpreter exit cannot end them: a loader
        kept alive until then by a reference cycle would leave the process waiting for its workers forever."""
        for batches in (self.train_batches, getattr(self.valid_loader, "_iterator", None)):
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _states(self) -> dict[str, Any]:
        """The stateful components a checkpoint holds, by their name in the file."""
        return {"objective": self.objective, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "data": ReaderPosition(self), "rng": self.rng}

    def _run(self, stop: StopRequest) -> None:
        self.step = self.checkpoints.restore(self._states())
        first_step = self.step + 1
        model = self._wrap()
        with sigterm_held():
            batches = self.train_batches = iter(self._loader(self.train_data))
        # Last before the loop, so nothing else draws from the RNGs between the restore and the first step.
        self.rng.apply()
        self.objective.train()
        watch = Stopwatch()
        stopping = False
        while self.step < self.cfg.max_steps and not stopping:
            stopping = self._train_step(model, batches, watch, stop)
            self.step += 1
            if self.step == first_step and self.env.is_main:
                # Only once a step ran: a start that fails (bad shapes, data) leaves no config.yaml behind.
                self._write_config()
            if stopping:
                log.warning("SIGTERM received: stopping at step %d after a checkpoint", self.step)
            if stopping or self._due(self.cfg.log_every):
                self._report(watch)
            if not stopping and self.valid_data is not None and self._due(self.cfg.eval_every):
                self.last_valid = self._validate()
            if stopping or self._due(self.cfg.checkpoint_every):
                self.checkpoints.save(self.step, self._states())
                if self.env.is_main:
                    sync_mirror(self.cfg.run_dir)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _due(self, every: int) -> bool:
        """Periodic work runs every `every` steps (never if 0) and always after the last step."""
        return self.step == self.cfg.max_steps or (every > 0 and self.step % every == 0)

    # -- one step ---------------------------------------------------------------------------------------

    def _train_step(self, model: nn.Module, batches: Iterator[dict[str, Any]], watch: Stopwatch,
                    stop: StopRequest) -> bool:
        """One optimizer step over grad_accum_steps micro-batches; True when any rank got SIGTERM.

        A step whose loss or gradients are not finite is skipped (no update, not reported); more than
        `nonfinite_skips` in a row stop the run. Gradients are already all-reduced, so every rank sees the
        same norm and decides alike, on the same device-to-host copy that reads the stop vote."""
        accum = self.cfg.grad_accum_steps
        outs = []
        for micro in range(accum):
            started = time.perf_counter()
            batch = next(batches)
            watch.data_wait_s += time.perf_counter() - started
            self.cursor = batch["cursor"]
            batch = to_device(batch, self.env.device)
            # Gradients are all-reduced only on the last micro-batch.
            syncless = self.env.world_size > 1 and micro < accum - 1
            with model.no_sync() if syncless else nullcontext():
                with self._autocast():
                    out = model(batch)
                loss, stop_votes = self._scaled_loss(out, stop.requested)
                loss.backward()
            outs.append((batch, detached(out)))
        grad_norm = nn.utils.clip_grad_norm_(self.objective.parameters(), self.max_grad_norm)
        votes, finite = torch.stack([stop_votes.double(), torch.isfinite(grad_norm).double()]).tolist()
        watch.steps += 1
        if not finite:
            self._skip_nonfinite_step(grad_norm.item())
            return votes > 0
        self.nonfinite_in_a_row = 0
        for batch, out in outs:
            self._record(batch, out)
        self.grad_norms += grad_norm.detach().to(torch.float64)
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return votes > 0

    def _skip_nonfinite_step(self, grad_norm: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        step = self.step + 1
        if self.nonfinite_in_a_row > self.cfg.nonfinite_skips:
            last_good = self.checkpoints.newest() or "none (no checkpoint was written)"
            raise UserError(f"step {step}: loss or gradients NaN/inf for {self.nonfinite_in_a_row} steps in a row "
                            f"(train.nonfinite_skips={self.cfg.nonfinite_skips}); last good checkpoint: "
                            f"{last_good}; lower optim.lr, check the data or init_from weights")
        log.warning("step %d: loss or gradients are not finite (grad norm %s): step skipped (%d in a row, "
                    "train.nonfinite_skips=%d)", step, grad_norm, self.nonfinite_in_a_row, self.cfg.nonfinite_skips)

    def _scaled_loss(self, out: dict[str, Any], stop_requested: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to backpropagate, number of ranks asking to stop).

        loss = sum over terms of weight * sum * world_size / (global count * grad_accum_steps); DDP then
        averages gradients over ranks, which makes each term the mean over every rank's targets: 2 ranks
        x B gives exactly the gradient of 1 rank x 2B. The stop vote rides on the counts' all-reduce.
        """
        losses = out["losses"]
        names = sorted(losses)
        device = self.env.device
        counts = [torch.as_tensor(losses[name][1], dtype=torch.float64, device=device).reshape(()) for name in names]
        vote = torch.tensor(float(stop_requested), dtype=torch.float64, device=device)
        reduced = all_reduce_sum(torch.stack([*counts, vote]), self.env)
        global_counts = reduced[:-1].clamp(min=1.0)
        scales = (self.env.world_size / (global_counts * self.cfg.grad_accum_steps)).to(torch.float32)
        weights = self.objective.loss_weights
        loss = sum(weights[name] * losses[name][0].float() * scales[i] for i, name in enumerate(names))
        return loss, reduced[-1]

    def _record(self, batch: dict[str, Any], out: dict[str, Any]) -> None:
        add_terms(out, self.loss_window, self.metric_window)
        if "tokens" in out:
            self.reports_tokens = True
            self.tokens += torch.as_tensor(out["tokens"], dtype=torch.float64, device=self.env.device)
        # Sequence length for MFU: the longest 2-D input of the batch.
        self.seq_len = max([self.seq_len] + [v.shape[-1] for v in batch.values()
                                              if isinstance(v, torch.Tensor) and v.dim() == 2])

    # -- reporting and validation -------------------------------------------------------------------------

    def _report(self, watch: Stopwatch) -> None:
        losses = self.loss_window.reduce(self.env)
        metrics = self.metric_window.reduce(self.env)
        tokens = all_reduce_sum(self.tokens.clone(), self.env).item()
        elapsed, data_wait, steps = watch.lap()
        if not losses:  # every step of the window was skipped (non-finite): already warned about
            return
        tokens_per_s = tokens / elapsed if self.reports_tokens else None
        losses = {"loss": self._weighted(losses), **losses}
        record = TrainRecord(
            step=self.step, losses=losses, metrics=metrics, lr=self.lr,
            grad_norm=self.grad_norms.item() / steps, tokens_per_s=tokens_per_s,
            data_wait=data_wait / elapsed, mfu=self._utilisation(tokens_per_s),
            eta_s=(self.cfg.max_steps - self.step) * elapsed / steps,
        )
        self.tokens.zero_()
        self.grad_norms.zero_()
        self.metrics.train(record)
        self.last_train = {**losses, **metrics}

    def _weighted(self, means: dict[str, float]) -> float:
        return sum(self.objective.loss_weights[name] * value for name, value in means.items())

    def _utilisation(self, tokens_per_s: float | None) -> float | None:
        """MFU against the GPU's bf16 peak; None off GPU, for an unknown GPU or without a FLOP count."""
        flops_per_token = getattr(self.objective, "flops_per_token", None)
        if tokens_per_s is None or self.peak_flops is None or flops_per_token is None:
            return None
        return mfu(flops_per_token(self.seq_len), tokens_per_s, self.peak_flops, self.env.world_size)

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        """Means over `eval_batches` batches of every rank: loss terms, their weighted sum ("loss"),
        exp(loss) ("NAME_ppl") for the terms in `objective.perplexity_terms`, and metrics."""
        if self.valid_loader is None:
            self.valid_loader = self._loader(self.valid_data)
        losses, metrics = MeanAccumulator(), MeanAccumulator()
        self.objective.eval()
        with sigterm_held():
            valid_batches = iter(self.valid_loader)
        for _, batch in zip(range(self.cfg.eval_batches), valid_batches):
            with self._autocast():
                add_terms(self.objective(to_device(batch, self.env.device)), losses, metrics)
        self.objective.train()
        means = losses.reduce(self.env)
        results = {"loss": self._weighted(means), **means}
        for name in getattr(self.objective, "perplexity_terms", ()):
            if name in means:
                results[f"{name}_ppl"] = math.exp(means[name]) if means[name] < 700 else math.inf
        results.update(metrics.reduce(self.env))
        self.metrics.valid(self.step, results)
        return results

    # -- set-up, checkpoints, resume ---------------------------------------------------------------------

    def _wrap(self) -> nn.Module:
        model: nn.Module = self.objective
        if self.env.world_size > 1:
            device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    def _loader(self, dataset: IterableDataset) -> DataLoader:
        """Readers yield whole batches: the loader only adds worker processes and pinned memory. Its own
        generator (which seeds the workers) keeps it from drawing on the global RNG, so a resumed run
        replays the same dropout; randomness inside readers is seeded per sample, not by the worker."""
        workers = self.cfg.num_workers
        return DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=self.env.device.type == "cuda", worker_init_fn=leave_sigterm_to_the_trainer,
                          generator=torch.Generator().manual_seed(self.cfg.seed + self.env.rank))

    def _write_config(self) -> None:
        text = yaml.safe_dump(self.resolved_config, sort_keys=False)
        path = self.run_dir / "config.yaml"
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as err:
            raise UserError(describe_os_error(err, "write", path)) from None
        log.info("resolved config:\n%s", text.rstrip())


def detached(out: dict[str, Any]) -> dict[str, Any]:
    """An objective output without autograd history, kept until the step is known to be finite."""
    def strip(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach()
        if isinstance(value, dict):
            return {key: strip(inner) for key, inner in value.items()}
        if isinstance(value, tuple):
            return tuple(strip(inner) for inner in value)
        return value
    return strip(out)


class ReaderPosition:
    """The train reader's state at the trainer's cursor, as a checkpoint component."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return self.trainer.train_data.state_dict(self.trainer.cursor)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.train_data.load_state_dict(state)


class RankRng:
    """Every rank's RNG streams as a checkpoint component: saved from all ranks (so a resumed run replays
    every rank's dropout exactly), restored by `apply()` just before the loop."""

    def __init__(self, env: DistEnv, seed: int) -> None:
        self.env, self.seed = env, seed
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> list[dict[str, Any]]:
        return all_gather_object(capture_rng_state(), self.env)

    def load_state_dict(self, per_rank: list[dict[str, Any]]) -> None:
        if self.env.rank < len(per_rank):
            self.pending = per_rank[self.env.rank]
        else:
            log.warning("the checkpoint was written by %d ranks: rank %d starts from a fresh seed", len(per_rank),
                        self.env.rank)

    def apply(self) -> None:
        if self.pending is None:
            seed_everything(self.seed + self.env.rank)
        else:
            restore_rng_state(self.pending)
