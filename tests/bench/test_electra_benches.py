"""bench/electra_reference.py and bench/electra_ceiling.py run end to end on the tests' sample data: smoke tests of
the scripts (ours and HF's ELECTRA through the same recipe; the bigram detector and the discriminator alone), not
of learning, which takes the preset's budget (bench/RESULTS.md)."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from tests.pretrain.processes import REPO, process_env


@pytest.fixture(scope="module")
def tiny_overrides(sample_data) -> list[str]:
    return ["data.sample.dir=''", f"data.train=[{sample_data['train']}]", f"data.valid=[{sample_data['valid']}]",
            f"data.tokenizer.vocab={sample_data['vocab']}", "data.nctx=32", "data.batch_size=4", "model.d_model=64",
            "model.d_ff=128", "model.max_len=32", "train.eval_batches=2", "optim.warmup_steps=1"]


def run_bench(script: str, *args: str) -> list[str]:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], env=process_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout.splitlines()


@pytest.mark.slow
def test_reference_prints_both_models_curves(tiny_overrides):
    lines = run_bench("electra_reference.py", *tiny_overrides, "train.max_steps=2", "train.eval_every=1")
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| 2 |")]
    assert [row[1].strip() for row in rows] == ["ours", "HF"]
    for row in rows:
        generator_loss, _, discriminator_loss, accuracy, original, auc = (float(cell.strip(" %")) for cell in row[2:])
        assert 0 < generator_loss < 1.1 * math.log(1000) and 0 < discriminator_loss < 1.0
        assert 0 <= accuracy <= 1 and 0.5 < original < 1 and 0 <= auc <= 1


@pytest.mark.slow
def test_ceiling_prints_the_count_detector_and_the_discriminator_alone(tiny_overrides):
    lines = run_bench("electra_ceiling.py", *tiny_overrides, "--train-steps", "2", "--eval-every", "1")
    count_auc = float(lines[0].rsplit("AUC", 1)[1])
    assert 0.5 < count_auc <= 1.0  # bigram counts already beat chance on a small corpus
    assert [line.split(":")[0] for line in lines[1:]] == [f"discriminator alone, step {step}" for step in range(3)]
