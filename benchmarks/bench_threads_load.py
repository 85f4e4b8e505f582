"""Benchmark torch's thread count for the small linear algebra of training start-up (issue 18).

Run:  python benchmarks/bench_threads_load.py [--busy 1] [--repeats 1]

`qft finetune minilm` measures the spectral and Frobenius norm of the 36 MiniLM-sized matrices
(6 blocks x q, k, v, o 384 x 384, FFN up 1536 x 384, FFN down 384 x 1536) before training
(:func:`qft_cli.train.training.matrix_norm_rows`: float64 Gram matrix + ``eigvalsh``). With
``--busy N`` the benchmark first starts N other processes that each keep one core busy (a Python
busy loop), as on a shared machine. It then times the 36 norms

1. with torch's default thread count (one per visible core: the straightforward implementation),
2. with one thread (what ``matrix_norm_rows`` now uses for matrices this small),
3. with qft's default (:func:`qft_cli.system.threads.default_threads`, which follows the load),

and prints each time with its thread count and the ratio default / one thread. Speeds are ratios
in the same run on the same machine; the values of all three must agree.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qft_cli.measure.norms import frobenius_norm, spectral_norm  # noqa: E402
from qft_cli.system.threads import available_cpus, default_threads, load_average  # noqa: E402

SHAPES = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]


def minilm_matrices(seed: int = 0) -> list[torch.Tensor]:
    """36 float32 matrices of MiniLM's shapes (6 blocks), N(0, 0.02^2) entries."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * 0.02 for _ in range(6) for shape in SHAPES]


def time_norms(mats: list[torch.Tensor], threads: int, repeats: int) -> tuple[float, list[float]]:
    """Best wall time (s) of the 36 spectral + Frobenius norms on ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best, values = float("inf"), []
        for _ in range(repeats):
            start = time.perf_counter()
            values = []
            for w in mats:
                values.append(float(spectral_norm(w)))
                frobenius_norm(w)
            best = min(best, time.perf_counter() - start)
        return best, values
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=0, help="other processes each keeping one core busy")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        if busy:
            time.sleep(20)  # let the 1-minute load average see them
        torch_default = torch.get_num_threads()
        choice = default_threads()
        mats = minilm_matrices()
        time_norms(mats[:2], 1, 1)  # warm-up (eigvalsh's first call loads LAPACK)
        t_default, v_default = time_norms(mats, torch_default, args.repeats)
        t_one, v_one = time_norms(mats, 1, args.repeats)
        t_qft, v_qft = time_norms(mats, choice.count, args.repeats)
        assert max(abs(a - b) / a for a, b in zip(v_default, v_one)) < 1e-12
        assert max(abs(a - b) / a for a, b in zip(v_qft, v_one)) < 1e-12
        print(f"usable cpus {available_cpus()}, other busy processes {args.busy}, "
              f"1-minute load average {load_average():.2f}")
        print(f"36 MiniLM matrices, spectral + Frobenius norm (float64 eigvalsh), best of {args.repeats}:")
        print(f"  torch default, {torch_default} threads: {t_default:8.3f} s")
        print(f"  one thread:                 {t_one:8.3f} s")
        print(f"  qft default, {choice.count} thread(s) ({choice.source}): {t_qft:8.3f} s")
        print(f"ratio torch default / one thread: {t_default / t_one:.1f}x")
    finally:
        for p in busy:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
