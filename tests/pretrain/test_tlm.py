"""End to end: `python -m pretrain.tlm` (masked and causal LM) on the real pipeline, from the sample
corpus through vocab, shards, reader and masking to the loop, its processes and its checkpoints.

The models are tiny (d_model 32, one layer, 32-token blocks) and the sample data (vocab 2000) is built
once per session, so the file takes about a minute on two CPU cores.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
import yaml

from data_pipeline.tokenizer import load_tokenizer
from export import load_pretrained
from pretrain.checkpoint import checkpoint_path, list_checkpoints
from pretrain.run import run_recipe
from pretrain.tlm import RECIPE
from pretrain.trainer import TrainResult
from tests.conftest import SMALL_VOCAB
from tests.pretrain.processes import (REPO, assert_same_params, final_params, finish, free_port,
                                      kill_after_first_checkpoint, one_thread, pod_env, process_env, run_two_pods,
                                      start)

CONFIGS = {"mlm": "configs/tiny_mlm.yaml", "clm": "configs/tiny_clm.yaml",
           "modernbert": "configs/tiny_modernbert_mlm.yaml", "llama": "configs/tiny_llama_clm.yaml"}
# The modern MLM keeps three layers so that a sliding-window layer (8 tokens) sits between global ones.
SHAPE = {"modernbert": ("model.layers=3", "model.local_window=8")}
TINY = ("model.d_model=32", "model.num_heads=2", "model.layers=1", "model.d_ff=64", "model.max_len=32",
        "data.nctx=32", "data.batch_size=8", "optim.lr=3e-3", "optim.warmup_steps=10", "train.num_workers=0",
        "train.tensorboard=false", "train.log_every=1000", "train.eval_every=0", "train.eval_batches=8",
        "train.checkpoint_every=0")

pytestmark = pytest.mark.slow


def tlm_args(objective: str, sample_dir: Path, run_dir: Path, *overrides: str) -> list[str]:
    """Arguments of a tiny run of the shipped config for `objective`; later overrides win."""
    return ["--config", str(REPO / CONFIGS[objective]), f"data.sample.dir={sample_dir}",
            f"data.sample.vocab_size={SMALL_VOCAB}", f"train.run_dir={run_dir}", *TINY,
            *SHAPE.get(objective, ()), *overrides]


def train_in_process(argv: list[str]) -> TrainResult:
    """Run pretrain.tlm here as a single-process job: without the outer environment's launcher
    variables, on one intra-op thread like the subprocesses (a tiny model gains nothing from more, and
    on a busy 2-core box spinning OpenMP threads slow it several-fold), and with pytest's log handlers
    back in place afterwards (setup_logging replaces them)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with one_thread(), pytest.MonkeyPatch.context() as env:
        for name in os.environ.keys() - process_env().keys():
            env.delenv(name)
        try:
            return run_recipe(RECIPE, argv)
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)


def tlm_command(args: list[str]) -> list[str]:
    """`python` arguments that run pretrain.tlm with `args`."""
    return ["-m", "pretrain.tlm", *args]


def resolved_config(run_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))


def succeed(procs: list[subprocess.Popen]) -> list[str]:
    """Outputs of `procs`, each checked to have exited 0."""
    results = finish(procs)
    for code, out in results:
        assert code == 0, out
    return [out for _, out in results]


def cli_error(args: list[str]) -> str:
    """The output of a pretrain.tlm run that must fail as a user error: exit code 2 and a single line."""
    [(code, out)] = finish([start(tlm_command(args))])
    assert code == 2 and len(out.splitlines()) == 1, out
    return out.rstrip("\n")


# -- learning --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=sorted(CONFIGS))
def trained(request, small_sample, tmp_path_factory) -> tuple[TrainResult, Path]:
    """150 steps of each objective, validated at the end: (result, run_dir)."""
    run_dir = tmp_path_factory.mktemp(f"trained_{request.param}")
    return train_in_process(tlm_args(request.param, small_sample.dir, run_dir, "train.max_steps=150")), run_dir


def test_validation_loss_falls_well_below_uniform_predictions(trained):
    # Training starts near ln V (uniform predictions, 7.6 nats). Measured at step 150 over seeds 0-3:
    # 6.10-6.31 (MLM) and 6.14-6.25 (CLM); the held-out text's unigram entropy is 6.2.
    result, run_dir = trained
    assert result.completed
    assert result.valid["lm"] < math.log(resolved_config(run_dir)["model"]["vocab_size"]) - 1.0


def test_validation_accuracy_is_far_below_what_a_label_leak_gives(trained):
    # Measured at step 150: 0.03-0.05. The same run seeing its targets (MLM inputs left unmasked, CLM
    # labels not shifted) reaches 0.60 (MLM) and 0.73 (CLM).
    result, _ = trained
    assert result.valid["accuracy"] < 0.2


def test_bf16_autocast_on_cpu_trains_with_fp32_weights_and_optimizer_state(small_sample, tmp_path):
    runs = {precision: train_in_process(tlm_args("mlm", small_sample.dir, tmp_path / precision,
                                                 "train.max_steps=60", f"train.precision={precision}",
                                                 "train.checkpoint_every=60"))
            for precision in ("bf16", "fp32")}
    bf16 = runs["bf16"]
    assert bf16.completed
    assert bf16.valid["lm"] < math.log(resolved_config(tmp_path / "bf16")["model"]["vocab_size"]) - 1.0
    assert abs(bf16.valid["lm"] - runs["fp32"].valid["lm"]) < 0.3
    state = torch.load(bf16.checkpoint, weights_only=True)
    assert all(value.dtype == torch.float32 for value in state["objective"].values())
    assert all(value.dtype == torch.float32 for per_param in state["optimizer"]["state"].values()
               for name, value in per_param.items() if name != "step")
    # The bf16 run really computed in bf16: the same steps in fp32 end at other weights.
    fp32_state = torch.load(runs["fp32"].checkpoint, weights_only=True)
    assert any(not torch.equal(value, fp32_state["objective"][name]) for name, value in state["objective"].items())

@pytest.mark.parametrize("trained,auto_class", [("modernbert", "AutoModelForMaskedLM"),
                                               ("llama", "AutoModelForCausalLM")], indirect=["trained"])
def test_modern_presets_export_hf_models_that_give_the_trained_logits(trained, auto_class):
    _, run_dir = trained
    ours, spec = load_pretrained(run_dir / "export" / "model.pt")
    hf = getattr(transformers, auto_class).from_pretrained(run_dir / "export" / "hf").eval()
    tokens = torch.tensor([load_tokenizer(spec).encode("Return the number of items in a container.")])
    with torch.no_grad():
        theirs = hf(input_ids=tokens).logits
        mine = ours.eval().logits(ours(tokens, causal=auto_class.endswith("CausalLM")))
    torch.testing.assert_close(theirs, mine, rtol=1e-4, atol=1e-4)


# -- tokenizers and input formats -------------------------------------------------------------------------

def test_bpe_tokenizer_trains_on_the_sample_corpus(small_sample, tmp_path):
    result = train_in_process(tlm_args("mlm", small_sample.dir, tmp_path, "data.tokenizer.kind=bpe",
                                       "train.max_steps=3"))
    assert result.completed and math.isfinite(result.valid["lm"])
    assert Path(resolved_config(tmp_path)["data"]["tokenizer"]["codes"]).is_file()


def test_raw_text_mode_trains_on_the_sample_text_files(small_sample, tmp_path):
    paths = small_sample.paths
    text = ["data.format=text", "data.sample.dir=''", f"data.train=[{paths['train_text']}]",
            f"data.valid=[{paths['valid_text']}]", f"data.tokenizer.vocab={paths['vocab']}"]
    result = train_in_process(tlm_args("mlm", small_sample.dir, tmp_path, *text, "train.max_steps=3"))
    assert result.completed and math.isfinite(result.valid["lm"])


# -- processes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["mlm", "modernbert"])
def test_two_ranks_train_the_parameters_of_one_rank_with_the_same_global_batch(small_sample, tmp_path, preset):
    # Masking is seeded per sample and the loss is normalised by the global target count, so 2 ranks x 4
    # and 1 rank x 8 differ only in the order of float sums.
    same = ("train.max_steps=4", "model.dropout=0.0")
    one = start(tlm_command(tlm_args(preset, small_sample.dir, tmp_path / "one", *same, "data.batch_size=8")))
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}"]
    two_args = tlm_args(preset, small_sample.dir, tmp_path / "two", *same, "data.batch_size=4")
    two = start([*torchrun, *tlm_command(two_args)])
    succeed([one, two])
    assert_same_params(final_params(tmp_path / "two"), final_params(tmp_path / "one"), atol=1e-6)


@pytest.mark.parametrize("preset", ["mlm", "modernbert"])
def test_run_killed_after_a_checkpoint_resumes_to_the_parameters_of_an_uninterrupted_run(small_sample, tmp_path,
                                                                                        preset):
    # Dropout and a DataLoader worker: the resumed run must restore the RNGs and the reader's position.
    # The kill lands at the first checkpoint (step 5) or a few steps later, far from the end.
    steps = 100

    def args(name: str) -> list[str]:
        return tlm_command(tlm_args(preset, small_sample.dir, tmp_path / name, f"train.max_steps={steps}",
                            "train.checkpoint_every=5", "model.dropout=0.1", "train.num_workers=1"))

    reference = start(args("reference"))
    code, out = kill_after_first_checkpoint(args("killed"), tmp_path / "killed")
    assert code == -signal.SIGKILL, out
    resumed_out, _ = succeed([start(args("killed")), reference])
    resumed = re.search(r"resumed from \S+ at step (\d+)", resumed_out)
    assert resumed and 0 < int(resumed.group(1)) < steps, resumed_out
    assert_same_params(final_params(tmp_path / "killed"), final_params(tmp_path / "reference"))


def test_pytorchjob_pods_train_with_the_real_entry_point_and_only_rank_0_writes(small_sample, tmp_path):
    # Two pods of one process each, launched as the training operator does (RANK, WORLD_SIZE, MASTER_*,
    # PET_*). Each pod gets its own run_dir, which a fresh run never reads, so any write by rank 1 shows.
    port = free_port()
    pods = [start(tlm_command(tlm_args("mlm", small_sample.dir, tmp_path / f"pod{rank}", "train.max_steps=3")),
                  pod_env(rank, 2, port, 1)) for rank in range(2)]
    master_out, _ = succeed(pods)
    assert "on 2 process(es)" in master_out
    assert [step for step, _ in list_checkpoints(tmp_path / "pod0" / "checkpoints")] == [3]
    assert len(torch.load(checkpoint_path(tmp_path / "pod0" / "checkpoints", 3), weights_only=True)["rng"]) == 2
    assert [p for p in (tmp_path / "pod1").rglob("*") if p.is_file()] == []


def test_pytorchjob_pods_sharing_a_sample_dir_build_it_once(small_sample, tmp_path):
    # Both pods have local rank 0 and see the same data.sample.dir, as on a shared volume. The validation
    # shards are left out of the copy for the job to build: two pods building them at once would race.
    unbuilt = shutil.ignore_patterns(small_sample.paths["valid"].name, small_sample.paths["paired_valid"].name)
    shutil.copytree(small_sample.dir, tmp_path / "sample", ignore=unbuilt)
    run_two_pods(tlm_command(tlm_args("mlm", tmp_path / "sample", tmp_path / "run", "train.max_steps=1")))


# -- user errors -------------------------------------------------------------------------------------------

def test_unknown_key_exits_2_with_one_line_naming_the_nearest_key(small_sample, tmp_path):
    error = cli_error(tlm_args("mlm", small_sample.dir, tmp_path, "model.layer=2"))
    assert error == "error: override 'model.layer=2': unknown key 'model.layer'; did you mean 'model.layers'?"


def test_missing_data_path_exits_2_with_one_line_naming_it(small_sample, tmp_path):
    missing = tmp_path / "no-such-shards"
    error = cli_error(tlm_args("mlm", small_sample.dir, tmp_path, "data.sample.dir=''", f"data.train=[{missing}]",
                               f"data.tokenizer.vocab={small_sample.paths['vocab']}"))
    assert error.startswith(f"error: {missing}: no shards found")
