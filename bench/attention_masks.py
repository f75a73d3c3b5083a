"""Document-masked attention on CPU: SDPA with an explicit boolean mask (what the model uses) beside
torch.nn.attention.flex_attention with a block mask, eager and compiled, measured in one run.

    .venv/bin/python bench/attention_masks.py --threads 1

Shape: B 8, H 4, T 512, head width 64, documents of random lengths (a separator every ~60 tokens). Forward
only for flex: in torch 2.13 flex_attention has no backward on CPU (the script checks and says so), which is
why training uses SDPA. Medians over --steps calls after one warm-up call (which includes compilation).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from pretrain.model.attention import self_attention_mask


def median_seconds(call: Callable[[], object], steps: int) -> float:
    call()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, heads, length, width = 8, 4, 512, 64
    q, k, v = (torch.randn(batch, heads, length, width) for _ in range(3))
    documents = (torch.rand(batch, length) < 1 / 60).long().cumsum(1)
    mask = self_attention_mask(length, q.device, documents=documents)

    def same_document(b, h, q_idx, kv_idx):
        return documents[b, q_idx] == documents[b, kv_idx]

    block_mask = create_block_mask(same_document, batch, None, length, length, device="cpu")
    compiled = torch.compile(flex_attention)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    start = time.perf_counter()
    torch.testing.assert_close(compiled(q, k, v, block_mask=block_mask), reference, atol=1e-4, rtol=1e-4)
    compile_s = time.perf_counter() - start
    figures = {
        "SDPA, explicit bool mask": median_seconds(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                                                   args.steps),
        "SDPA, no mask (attends across documents)": median_seconds(lambda: F.scaled_dot_product_attention(q, k, v),
                                                                   args.steps),
        "flex_attention eager (unfused)": median_seconds(lambda: flex_attention(q, k, v, block_mask=block_mask),
                                                         args.steps),
        "flex_attention compiled": median_seconds(lambda: compiled(q, k, v, block_mask=block_mask), args.steps),
    }
    q.requires_grad_()
    try:
        compiled(q, k, v, block_mask=block_mask).sum().backward()
        backward = "runs"
    except Exception as err:  # report whatever torch says, on one line
        backward = f"fails: {type(err).__name__}: {str(err).splitlines()[0]}"
    print(f"{time.strftime('%Y-%m-%d')} | torch {torch.__version__} | CPU x {torch.get_num_threads()} threads | "
          f"B {batch}, H {heads}, T {length}, d {width}, {int(documents[:, -1].float().mean()) + 1} docs/row; "
          f"forward, median of {args.steps}")
    for name, seconds in figures.items():
        print(f"  {name:44s} {seconds * 1e3:8.1f} ms")
    print(f"  first compiled call (compilation): {compile_s:.0f} s; flex backward on CPU {backward}")
    print(f"  SDPA with mask is faster than compiled flex by: {figures['flex_attention compiled'] / figures['SDPA, explicit bool mask']:.2f}x")


if __name__ == "__main__":
    main()
