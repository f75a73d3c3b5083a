"""Joins the process group as an entry point does and writes what it saw to OUT_DIR/rank{RANK}.json."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from pretrain.distributed import all_gather_object, all_reduce_sum, init_distributed, shutdown_distributed


def main(out_dir: Path) -> None:
    env = init_distributed("cpu", timeout_s=60)
    try:
        total = all_reduce_sum(torch.ones(1), env).item()
        pods = all_gather_object(os.environ.get("PET_NODE_RANK"), env)
        report = {"rank": env.rank, "world_size": env.world_size, "local_rank": env.local_rank,
                  "all_reduce_sum": total, "pod_of_rank": pods}
        (out_dir / f"rank{env.rank}.json").write_text(json.dumps(report))
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
