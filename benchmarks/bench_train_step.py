"""Time per training step of spectral- and Frobenius-normalised models against vanilla.

Same model (the qft transformer, same initial weights), same batch, same optimiser (AdamW); one
step = forward + backward + optimiser step, in training mode (so the spectral parametrization runs
its power-iteration step). Reports the median over ``--steps`` timed steps after ``--warmup``
steps, the ratio to vanilla (target: at most 1.3) and samples per second.

    python benchmarks/bench_train_step.py                      # CPU-sized defaults
    python benchmarks/bench_train_step.py --d-model 768 --num-heads 12 --d-ff 3072 --batch-size 32 \
        --seq-len 128 --device cuda                            # the paper's single-layer model
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qft_cli.train.modeling_qft import QftConfig, build_model  # noqa: E402
from qft_cli.train.normalization import apply_normalization  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(method, args, device) -> list[float]:
    """Seconds of each timed training step for ``method`` (None = vanilla)."""
    config = QftConfig(vocab_size=args.vocab_size, d_model=args.d_model, num_heads=args.num_heads, d_ff=args.d_ff,
                       num_layers=args.num_layers, num_labels=2)
    model = build_model(config, seed=0)
    if method:
        apply_normalization(model, method, max_gamma=args.max_gamma)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, args.vocab_size, (args.batch_size, args.seq_len), generator=g).to(device)
    labels = torch.randint(0, 2, (args.batch_size,), generator=g).to(device)
    mask = torch.ones_like(ids)
    times = []
    for step in range(args.warmup + args.steps):
        _sync(device)
        start = time.perf_counter()
        loss = model(ids, mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-gamma", type=float, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = (("vanilla", None), ("spectral", "spectral"), ("frobenius", "frobenius"))
    # variants alternate over --rounds rounds and the fastest round's median is kept, so that load
    # from other processes on a shared machine does not fall on one variant only
    best = {name: float("inf") for name, _ in variants}
    for _ in range(args.rounds):
        for name, method in variants:
            best[name] = min(best[name], statistics.median(time_steps(method, args, device)))
    base = best["vanilla"]
    rows = [{"variant": name, "seconds_per_step": best[name], "ratio_to_vanilla": best[name] / base,
             "samples_per_second": args.batch_size / best[name]} for name, _ in variants]
    print(f"device={device} d_model={args.d_model} d_ff={args.d_ff} layers={args.num_layers} "
          f"batch={args.batch_size} seq_len={args.seq_len} (best of {args.rounds} rounds of the median of {args.steps} steps)")
    print(f"{'variant':<10} {'ms/step':>9} {'ratio':>7} {'samples/s':>10}")
    for r in rows:
        print(f"{r['variant']:<10} {1e3 * r['seconds_per_step']:9.2f} {r['ratio_to_vanilla']:7.3f} "
              f"{r['samples_per_second']:10.1f}")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
