"""One-shot GPU check: throughput, MFU and memory of the flagship shapes beside HF, a NCCL process group, and a
bit-exact checkpoint resume, in one script that finishes in a few minutes on one H200.

    .venv/bin/python bench/gpu_check.py                      # one GPU: BERT-base MLM T 512, GPT-2-small CLM
    .venv/bin/python bench/gpu_check.py --device cpu --tiny  # smoke test of the script (the test suite runs it)

Throughput rows (each: bf16 autocast on CUDA, SDPA attention, fused AdamW on CUDA, torch.compile unless
--no-compile; median of --steps timed steps after --warmup, compile included in the warm-up):
  ours BERT-base MLM     MaskedLM over TransformerLM, post-LN, T 512, B 32, vocab 30522, 15% targets
  HF BertForMaskedLM     the same shape, the same batch and masks (HF's default attention: SDPA)
  ours GPT-2-small CLM   CausalLM over TransformerLM, pre-LN, T 1024, B 16, vocab 50257
  HF GPT2LMHeadModel     the same shape and tokens (attn_implementation="sdpa")
MFU is against the device's dense bf16 peak (`pretrain.metrics.PEAK_BF16_FLOPS`; not shown on a CPU or an
unlisted GPU). Then: a 1-process NCCL group (gloo on CPU) all-reduces a tensor, and the real trainer
(`pretrain.tlm`) runs 6 steps, is cut back to its step-2 checkpoint and resumed: the step-6 weights and
optimizer state must equal the uninterrupted run's bit for bit. Exit status 1 if a check fails.
"""
from __future__ import annotations

import os

# Deterministic cuBLAS workspaces, set before torch initialises cuBLAS: needed for a bit-exact resume.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from harness import Contender  # noqa: E402
from train_step import full_logits_loss, hf_bert, masked_batch, ours  # noqa: E402

from pretrain.checkpoint import list_checkpoints  # noqa: E402
from pretrain.metrics import mfu, peak_bf16_flops  # noqa: E402
from pretrain.model import TransformerConfig, TransformerLM  # noqa: E402
from pretrain.objectives.language_modeling import CausalLM  # noqa: E402
from pretrain.run import run_recipe  # noqa: E402
from pretrain.tlm import RECIPE as TLM_RECIPE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# (d_model, layers, heads, d_ff, vocab, seq, batch) of each throughput workload, full size and --tiny.
BERT_BASE = dict(d_model=768, layers=12, heads=12, d_ff=3072, vocab=30522, seq=512, batch=32)
GPT2_SMALL = dict(d_model=768, layers=12, heads=12, d_ff=3072, vocab=50257, seq=1024, batch=16)
TINY = dict(d_model=64, layers=2, heads=2, d_ff=128, vocab=1000, seq=64, batch=4)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes, 2 timed steps and a 2,000-token vocab: checks the script")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per workload")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per workload (compilation)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile each workload (default: on CUDA only)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "runs/sample",
                        help="sample data for the resume check (built there if missing, kept)")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
    if args.compile is None:
        args.compile = args.device.startswith("cuda")
    return args


def shape(args: argparse.Namespace, full: dict) -> argparse.Namespace:
    """The namespace train_step's builders read, at a workload's shape."""
    return argparse.Namespace(**(TINY if args.tiny else full), seed=0, device=args.device)


def gpt2_batch(s: argparse.Namespace) -> dict:
    tokens = torch.randint(3, s.vocab, (s.batch, s.seq), generator=torch.Generator().manual_seed(s.seed))
    return {"tokens": tokens.to(s.device)}


def ours_gpt2(s: argparse.Namespace, batch: dict) -> Contender:
    cfg = TransformerConfig(vocab_size=s.vocab, d_model=s.d_model, num_heads=s.heads, layers=s.layers, d_ff=s.d_ff,
                            dropout=0.0, max_len=s.seq, norm="pre", embeddings="learned",
                            embeddings_layer_norm=False)
    objective = CausalLM(TransformerLM(cfg), pad_id=0).to(s.device)

    def loss() -> torch.Tensor:
        loss_sum, count = objective(batch)["losses"]["lm"]
        return loss_sum / count

    return Contender("ours GPT-2-small CLM", objective, loss, s.batch * (s.seq - 1),
                     objective.flops_per_token(s.seq - 1))


def hf_gpt2(s: argparse.Namespace, batch: dict) -> Contender:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=s.vocab, n_positions=s.seq, n_embd=s.d_model, n_layer=s.layers, n_head=s.heads,
                        n_inner=s.d_ff, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=s.vocab - 1, eos_token_id=s.vocab - 1, attn_implementation="sdpa")
    model = GPT2LMHeadModel(config).to(s.device)
    tokens = batch["tokens"]
    flops = ours_gpt2(s, batch).flops_per_token
    return Contender("HF GPT2LMHeadModel", model,
                     lambda: full_logits_loss(model(input_ids=tokens[:, :-1]).logits, tokens[:, 1:]),
                     s.batch * (s.seq - 1), flops)


def time_steps(contender: Contender, device: torch.device, warmup: int, steps: int, compile: bool) -> float:
    """Median seconds per optimizer step under bf16 autocast on CUDA (fp32 on CPU), with fused AdamW on CUDA."""
    cuda = device.type == "cuda"
    contender.optimizer = torch.optim.AdamW(contender.model.parameters(), lr=1e-4, weight_decay=0.01, fused=cuda)
    if compile:
        contender.loss = torch.compile(contender.loss)
    times = []
    for step in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            contender.step()
        if cuda:
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput_rows(args: argparse.Namespace, device: torch.device) -> list[str]:
    """One table row per workload: tokens/s, MFU, peak memory, and each HF peer's ratio to ours."""
    peak = peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    rows = [f"{'workload':28s} {'tokens/s':>10s} {'MFU':>6s} {'peak mem':>9s}  ours / HF"]
    for full, builders in ((BERT_BASE, (ours, hf_bert)), (GPT2_SMALL, (ours_gpt2, hf_gpt2))):
        s = shape(args, full)
        batch = masked_batch(s) if full is BERT_BASE else gpt2_batch(s)
        rates = []
        for build in builders:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            contender = build(s, batch)
            rate = contender.tokens / time_steps(contender, device, args.warmup, args.steps, args.compile)
            rates.append(rate)
            util = f"{mfu(contender.flops_per_token, rate, peak, 1):6.1%}" if peak else f"{'n/a':>6s}"
            memory = (f"{torch.cuda.max_memory_allocated(device) / 2**30:6.1f} GiB" if device.type == "cuda"
                      else f"{'n/a':>9s}")
            ratio = f"  {rates[0] / rate:.2f}x" if len(rates) == 2 else ""
            rows.append(f"{contender.name:28s} {rate:10.0f} {util} {memory}{ratio}")
            del contender
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_group_check(device: torch.device) -> str:
    """A 1-process group (NCCL on CUDA, gloo on CPU) comes up, all-reduces, barriers and goes down."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            device_id=device if device.type == "cuda" else None)
    try:
        value = torch.full((4,), 2.0, device=device)
        dist.all_reduce(value)
        dist.barrier()
        ok = bool((value == 2.0).all())
    finally:
        dist.destroy_process_group()
    return f"{backend} process group (world size 1): {'ok' if ok else 'FAILED'}"


def resume_check(args: argparse.Namespace, device: torch.device, run_dir: Path) -> str:
    """The real MLM trainer: 6 steps straight, then cut back to the step-2 checkpoint and resumed."""
    trainer_args = ["--config", str(REPO / "configs/tiny_mlm.yaml"), f"data.sample.dir={args.data_dir}",
                    f"train.device={device.type}", f"train.run_dir={run_dir}", "train.max_steps=6",
                    "train.checkpoint_every=2", "train.keep_checkpoints=3", "train.eval_every=0",
                    "train.tensorboard=false", "train.export_formats=[]", "train.log_every=2"]
    if args.tiny:
        trainer_args += ["data.sample.vocab_size=2000", "data.nctx=32", "model.max_len=32", "model.d_model=32",
                         "model.d_ff=64", "model.num_heads=2", "data.batch_size=4", "train.num_workers=0"]
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        run_recipe(TLM_RECIPE, trainer_args)
        checkpoints = dict(list_checkpoints(run_dir / "checkpoints"))
        straight = torch.load(checkpoints[6], weights_only=True)
        for step in (4, 6):
            checkpoints[step].unlink()
        run_recipe(TLM_RECIPE, trainer_args)
        resumed = torch.load(dict(list_checkpoints(run_dir / "checkpoints"))[6], weights_only=True)
    finally:
        torch.use_deterministic_algorithms(False)
    same = all(same_nested(straight[part], resumed[part]) for part in ("objective", "optimizer"))
    return f"checkpoint resume at step 2 -> step 6 on {device.type}: {'bit-exact' if same else 'DIFFERS'}"


def same_nested(a: object, b: object) -> bool:
    """Equal nested dicts/lists of tensors and plain values, tensors compared bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_nested(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same_nested, a, b))
    return a == b


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    started = time.perf_counter()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x {torch.get_num_threads()}"
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} | torch {torch.__version__} | {where} | "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'} | compile {args.compile} | "
          f"median of {args.steps} steps after {args.warmup}{' | --tiny' if args.tiny else ''}")
    lines = throughput_rows(args, device)
    print("\n".join(lines), flush=True)
    lines.append(process_group_check(device))
    print(lines[-1], flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        lines.append(resume_check(args, device, Path(tmp) / "run"))
    print(lines[-1])
    print(f"# {time.perf_counter() - started:.0f} s")
    return 1 if any(line.endswith(("FAILED", "DIFFERS")) for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
