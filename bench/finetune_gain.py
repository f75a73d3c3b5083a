"""Does pretraining pay off? Held-out quality of a pretrained export beside the same network from random init.

    .venv/bin/python bench/finetune_gain.py                        # tiny presets, 3 seeds
    .venv/bin/python bench/finetune_gain.py --seeds 5 --threads 1 --work-dir runs/finetune_gain
    .venv/bin/python bench/finetune_gain.py --mlm-config configs/small_mlm.yaml --work-dir runs/finetune_gain_small

Everything a user would run, in order:
1. `python -m pretrain.tlm --config <mlm preset>`, then `python -m export` of its last checkpoint;
2. classification (`examples/finetune_classify.py`): per seed, fine-tune that export and, with `--random-init`,
   the same architecture from scratch, with few labels; accuracy on the held-out fifth;
3. retrieval: per seed, `python -m pretrain.paired --config <dual-encoder preset>` twice, from the MLM export
   (`train.init_from`) and from random init, each exported and scored by `examples/evaluate_retrieval.py` on
   the held-out pairs: recall@1 and MRR among `--candidates`.
The MLM is pretrained once (its seed is the preset's); the seeds vary the fine-tuning and the random
initialisation. The table shows mean ± sample std over seeds of each arm and of the per-seed gain.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mlm-config", type=Path, default=REPO / "configs/tiny_mlm.yaml")
    parser.add_argument("--dual-config", type=Path, default=REPO / "configs/tiny_dual_encoder.yaml")
    parser.add_argument("--train-per-class", type=int, default=20, help="labelled examples per class")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dual-steps", type=int, help="dual-encoder training steps (default: the preset's)")
    parser.add_argument("--candidates", type=int, default=20, help="responses each held-out context is ranked among")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--data-dir", type=Path, default=REPO / "runs/sample", help="sample data (built if missing)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs/finetune_gain", help="runs and exports")
    return parser.parse_args()


def load_example(name: str) -> ModuleType:
    """An example script, imported from its path (it is not a package module)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def run_cli(args: argparse.Namespace, *command: str) -> None:
    """One of the project's CLIs in a child process, on `args.threads` threads; its output goes to our stderr."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", *command], check=True, cwd=REPO, env=env, stdout=sys.stderr)


def train_and_export(args: argparse.Namespace, recipe: str, config: Path, run_dir: Path, *overrides: str) -> Path:
    """Train `recipe` (tlm or paired) with `config` into run_dir (nothing else written) and export its last
    checkpoint; returns the export's model.pt. A finished run's export is reused."""
    export = run_dir / "export" / "model.pt"
    if not export.is_file():
        run_cli(args, f"pretrain.{recipe}", "--config", str(config), f"data.sample.dir={args.data_dir}",
                f"train.run_dir={run_dir}", "train.num_workers=0", "train.tensorboard=false",
                "train.export_formats=[]", "train.checkpoint_every=0", "train.eval_every=0", *overrides)
        checkpoint = max((run_dir / "checkpoints").glob("ckpt-*.pt"))
        run_cli(args, "export", "--checkpoint", str(checkpoint), "--format", "torch", "--out", str(export.parent))
    return export


def mean_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def print_table(metric: str, pretrained: list[float], scratch: list[float]) -> None:
    gains = [a - b for a, b in zip(pretrained, scratch)]
    print(f"{metric:32s}  {mean_spread(pretrained):>15s}  {mean_spread(scratch):>15s}  {mean_spread(gains):>15s}")


def main() -> None:
    args = parse_args()
    import torch

    from data_pipeline.sample_corpus import prepare_sample_data

    torch.set_num_threads(args.threads)
    pairs = prepare_sample_data(args.data_dir)["paired_valid_text"]
    mlm = train_and_export(args, "tlm", args.mlm_config, args.work_dir / "mlm")
    classify, retrieve = load_example("finetune_classify"), load_example("evaluate_retrieval")
    dual_steps = f"-{args.dual_steps}-steps" if args.dual_steps else ""
    print(f"{args.mlm_config.name} -> {args.dual_config.name}{dual_steps}, {args.seeds} seeds (mean ± std)")
    print(f"{'held-out metric':32s}  {'pretrained':>15s}  {'random init':>15s}  {'gain':>15s}", flush=True)
    accuracy: dict[bool, list[float]] = {True: [], False: []}
    for seed in range(args.seeds):
        for pretrained in (True, False):
            accuracy[pretrained].append(classify.finetune(mlm, random_init=not pretrained, seed=seed,
                                                          train_per_class=args.train_per_class,
                                                          epochs=args.epochs, log=False))
            log(seed, pretrained, f"accuracy {accuracy[pretrained][-1]:.3f}")
    print_table(f"accuracy, {args.train_per_class} labels per class", accuracy[True], accuracy[False])
    retrieval: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    max_len = classify.load_encoder(mlm)[0].cfg.max_len  # init_from needs the MLM's position table
    vocab_size = yaml.safe_load(args.mlm_config.read_text())["data"]["sample"]["vocab_size"]  # and its tokenizer
    for seed in range(args.seeds):
        for pretrained in (True, False):
            overrides = [f"train.init_from={mlm}"] if pretrained else []
            overrides += [f"train.max_steps={args.dual_steps}"] if args.dual_steps else []
            run_dir = args.work_dir / f"dual-{'pretrained' if pretrained else 'scratch'}-{seed}{dual_steps}"
            export = train_and_export(args, "paired", args.dual_config, run_dir, f"train.seed={seed}",
                                      f"model.max_len={max_len}", f"data.sample.vocab_size={vocab_size}", *overrides)
            retrieval[pretrained].append(retrieve.evaluate(export, pairs, args.candidates))
            log(seed, pretrained, str(retrieval[pretrained][-1]))
    for metric in retrieval[True][0]:
        print_table(f"{metric} among {args.candidates}", [r[metric] for r in retrieval[True]],
                    [r[metric] for r in retrieval[False]])


def log(seed: int, pretrained: bool, result: str) -> None:
    print(f"seed {seed} {'pretrained' if pretrained else 'random init'}: {result}", file=sys.stderr, flush=True)

if __name__ == "__main__":
    main()
