"""bench/gpu_check.py runs end to end on a CPU (`--device cpu --tiny`): a smoke test of the script, not of speed."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.pretrain.processes import REPO, process_env


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_its_checks_pass(small_sample):
    proc = subprocess.run([sys.executable, str(REPO / "bench/gpu_check.py"), "--device", "cpu", "--tiny",
                           "--data-dir", str(small_sample.dir)], env=process_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    table = proc.stdout.splitlines()
    for workload in ("ours (MaskedLM)", "HF BertForMaskedLM", "ours GPT-2-small CLM", "HF GPT2LMHeadModel"):
        [row] = [line for line in table if line.startswith(workload)]
        assert float(row[len(workload):].split()[0]) > 0  # tokens/s
    assert "gloo process group (world size 1): ok" in table
    assert "checkpoint resume at step 2 -> step 6 on cpu: bit-exact" in table
