"""How the fault tests start a tiny MLM on the session's sample data (tests/conftest.py)."""
from __future__ import annotations

from pathlib import Path


def tlm_args(sample_data: dict[str, Path], run_dir: Path, *overrides: str) -> list[str]:
    """`python -m pretrain.tlm` arguments for a tiny MLM on the sample shards."""
    return ["-m", "pretrain.tlm", "--config", "configs/tiny_mlm.yaml", "data.sample.dir=",
            f"data.train={sample_data['train']}", f"data.valid={sample_data['valid']}",
            f"data.tokenizer.vocab={sample_data['vocab']}", "data.nctx=32", "model.max_len=32",
            "data.batch_size=4", "model.layers=1", "model.d_model=32", "model.d_ff=64", "train.max_steps=2",
            "train.eval_every=0", "train.eval_batches=1", "train.num_workers=0", "train.tensorboard=false",
            f"train.run_dir={run_dir}", "train.export_formats=[]", *overrides]
