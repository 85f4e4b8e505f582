"""``qft sweep run --jobs N`` against the same cells run one after another, as a shell loop would.

Both sides run the same qft command lines (those ``qft sweep run --dry-run`` prints for the grid):

* **loop**: each cell's ``python -m qft_cli ...`` in turn, with qft's default thread count (all
  usable cores, as a ``for`` loop in a shell gets it);
* **sweep**: ``python -m qft_cli sweep run GRID --jobs N`` in a fresh folder (``N`` workers x
  cores // N torch threads each).

It prints the wall-clock seconds of each, the ratio loop / sweep (above 1: the sweep is faster) and
the thread counts. On a small machine the gain comes from overlapping the per-cell start-up
(Python, torch and transformers imports, model construction), which a loop serialises.

    python benchmarks/bench_sweep.py                     # the smoke preset, --jobs 2
    python benchmarks/bench_sweep.py --grid my.yaml --jobs 4
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qft_cli.system.threads import default_threads  # noqa: E402


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cell_commands(grid_args: list[str], out: Path, jobs: int) -> list[list[str]]:
    """The qft arguments of every cell, from ``qft sweep run --dry-run`` (without --out/--threads)."""
    dry = subprocess.run([sys.executable, "-m", "qft_cli", "sweep", "run", *grid_args, "--out", str(out),
                          "--dry-run", "--jobs", str(jobs)], capture_output=True, text=True, env=_env(), check=True)
    cells = []
    for line in dry.stdout.splitlines():
        words = line.split(None, 2)
        if len(words) == 3 and words[1] == "run" and words[2].startswith("qft "):
            argv = shlex.split(words[2])[1:]
            i = argv.index("--out")
            del argv[i:i + 2]
            if "--threads" in argv:
                i = argv.index("--threads")
                del argv[i:i + 2]
            cells.append(argv)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, help="A grid file (default: the smoke preset).")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="Also write the numbers here.")
    args = parser.parse_args()
    grid_args = [str(args.grid)] if args.grid else ["--preset", "smoke"]
    cores = default_threads().count
    with tempfile.TemporaryDirectory(prefix="qft-bench-sweep-") as tmp:
        tmp = Path(tmp)
        cells = cell_commands(grid_args, tmp / "dry", args.jobs)
        start = time.perf_counter()
        for argv in cells:  # the shell loop
            subprocess.run([sys.executable, "-m", "qft_cli", *argv, "--out", str(tmp / "loop"), "--quiet"],
                           env=_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        loop_s = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "qft_cli", "sweep", "run", *grid_args, "--out", str(tmp / "sweep"),
                        "--jobs", str(args.jobs), "--quiet"], env=_env(), check=True, stdout=subprocess.DEVNULL)
        sweep_s = time.perf_counter() - start
        cell_json = [json.loads(p.read_text()) for p in (tmp / "sweep").glob("*/cell.json")]
    workers = min(args.jobs, cores)
    threads = sorted({c.get("threads") for c in cell_json})
    result = {"cells": len(cells), "usable_cores": cores, "loop_seconds": round(loop_s, 2),
              "loop_threads_per_cell": cores, "sweep_seconds": round(sweep_s, 2), "sweep_workers": workers,
              "sweep_threads_per_cell": threads, "ratio_loop_over_sweep": round(loop_s / sweep_s, 3)}
    print(f"{len(cells)} cells on {cores} usable cores")
    print(f"  loop  (one after another, {cores} threads each): {loop_s:8.1f} s")
    print(f"  sweep (--jobs {args.jobs}: {workers} workers x {threads} threads): {sweep_s:8.1f} s")
    print(f"  ratio loop / sweep: {loop_s / sweep_s:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
