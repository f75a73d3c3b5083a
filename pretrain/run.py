"""What every trainer entry point does around its objective: config, processes, data, loop, export.

An entry point (tlm.py, paired.py, discrim.py) is a `Recipe`: its config schema, whether it reads paired
data, and how to build its objective (and the batch transform that feeds it) from the config and the
tokenizer. Everything else happens here once, for all of them.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from data_pipeline.errors import UserError, run_cli
from export.exporter import check_formats, export_model
from export.loading import init_from
from data_pipeline.readers import Transform
from data_pipeline.tokenizer import Tokenizer, load_tokenizer
from pretrain.config import load_config, to_dict
from pretrain.data import build_datasets, resolve_sample_data
from pretrain.distributed import distributed_session
from pretrain.metrics import setup_logging
from pretrain.trainer import ExportHook, TrainResult, seed_everything, train

log = logging.getLogger("pretrain")


@dataclass(frozen=True)
class Recipe:
    """One trainer: the config schema (sections data, model, objective, optim, train) and its objective."""

    prog: str                                                   # e.g. "python -m pretrain.tlm"
    description: str                                            # the head of --help
    schema: type
    paired: Callable[[Any], bool]                               # does this config read paired data?
    build_objective: Callable[[Any, Tokenizer], tuple[nn.Module, Transform | None]]


def run_recipe(recipe: Recipe, argv: Sequence[str]) -> TrainResult:
    """Load the config, join the job, build data and objective, train, and export at the end."""
    cfg = load_config(recipe.schema, argv, prog=recipe.prog, description=recipe.description)
    with distributed_session(cfg.train.device, cfg.train.dist_timeout_s) as env:
        setup_logging(env.rank)
        paired = recipe.paired(cfg)
        cfg = dataclasses.replace(cfg, data=resolve_sample_data(cfg.data, paired))
        tokenizer = load_tokenizer(cfg.data.tokenizer.spec())
        if cfg.model.vocab_size not in (0, tokenizer.vocab_size):
            raise UserError(f"model.vocab_size={cfg.model.vocab_size} but the tokenizer "
                            f"{cfg.data.tokenizer.vocab} has {tokenizer.vocab_size} ids: set model.vocab_size=0 "
                            "(taken from the tokenizer) or use the matching vocab")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size))
        seed_everything(cfg.train.seed)  # the same initial weights on every rank and every run
        objective, transform = recipe.build_objective(cfg, tokenizer)
        check_formats(objective.export_model(), cfg.train.export_formats)  # fail now, not after the run
        if cfg.train.init_from:
            init_from(objective.export_model(), cfg.train.init_from, expected_fingerprint=tokenizer.fingerprint)
        train_data, valid_data = build_datasets(cfg.data, tokenizer, env, seed=cfg.train.seed, paired=paired,
                                                transform=transform)
        resolved = to_dict(cfg)
        if env.is_main:
            log.info("%s on %d process(es), device %s; %.1fM parameters", recipe.prog, env.world_size,
                     env.device, sum(p.numel() for p in objective.parameters()) / 1e6)
        return train(objective, train_data, valid_data, cfg.train, cfg.optim, env, resolved,
                     export=export_hook(tokenizer, cfg.train.export_formats))


def export_hook(tokenizer: Tokenizer, formats: Sequence[str]) -> ExportHook | None:
    """Writes the trained model to run_dir/export in `formats` once a run completes (rank 0)."""
    if not formats:
        return None

    def export(objective: nn.Module, run_dir: Path) -> None:
        export_model(objective.export_model(), tokenizer.spec, run_dir / "export", formats)
    return export


EXIT_RESUME = 75   # EX_TEMPFAIL: stopped before max_steps by another rank's SIGTERM; run again to resume


def main_for(recipe: Recipe) -> Callable[[Sequence[str] | None], int]:
    """A console entry point for `recipe`: one-line errors; exit code 0 once the run completed or after
    this process's own SIGTERM; EXIT_RESUME when another rank's SIGTERM stopped it. Under
    `restartPolicy: OnFailure` a 0 would make its pod Succeeded (a Master: the whole job) short of
    max_steps; a failure restarts the pod, which resumes from the stop checkpoint."""
    def main(argv: Sequence[str] | None = None) -> int:
        def run() -> int:
            result = run_recipe(recipe, sys.argv[1:] if argv is None else argv)
            if result.stopped_by_peer:
                log.warning("another rank got SIGTERM at step %d: exiting %d so that this pod restarts and "
                            "resumes", result.step, EXIT_RESUME)
                return EXIT_RESUME
            return 0
        return run_cli(run)
    return main
