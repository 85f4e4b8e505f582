"""Benchmark `qft norms weights` at 1B-7B scale on a seeded random bf16 checkpoint (issue 9).

Run:  python benchmarks/bench_weights_scale.py --shape tinyllama [--threads N] [--sample-layers K]
      python benchmarks/bench_weights_scale.py --shape llama2-7b --sample-layers 2      # 13.5 GB on disk
      python benchmarks/bench_weights_scale.py --shape tiny                              # dry run, seconds
      python benchmarks/bench_weights_scale.py --shape tinyllama --weightwatcher          # + WeightWatcher (if installed)

1. Writes (once; reused when present) a Hugging Face Llama checkpoint with the shapes of
   TinyLlama-1.1B or Llama-2-7B (``tiny``: a 2-layer d = 640 model for dry runs): random normal
   weights (std 0.02, seeded) in bf16, shards of about ``--shard-gb`` GB and
   ``model.safetensors.index.json``, written one tensor at a time (the safetensors header is
   written first from the known shapes, then each tensor's bytes), so the writer never holds more
   than one tensor.
2. Times (wall, and CPU seconds, which a busy machine disturbs less), in this order and in the same
   run: reading every tensor once (safetensors, each tensor copied once, no maths);
   ``qft norms weights DIR`` in a subprocess (peak anonymous memory RssAnon sampled every 20 ms
   from /proc, and the same for the ``tiny-llama`` model as the baseline); the straightforward
   method (each tensor qft measured to float32, ``torch.linalg.matrix_norm(ord=2)``, i.e. a full
   float32 SVD; the LM head, which qft does not measure, is left out of it too);
   WeightWatcher when installed (``--weightwatcher``, see below); the float64 reference (float64
   Gram matrix of the short side + ``eigvalsh``, equal to the float64 SVD's largest singular value
   to ~1e-15 relative).
   With ``--sample-layers K`` the straightforward method and the reference run on the embedding,
   the LM head and the first K blocks only; the time for all blocks is extrapolated as
   t(embedding + head) + t(K blocks) * L / K (every block has the same shapes).
3. Prints qft's time as ratios (straightforward / qft, qft / read-once), qft's peak RssAnon, that
   peak above the baseline next to the largest tensor as stored, and the largest relative difference
   of qft's spectral norms to the float64 reference. Add ``--json FILE`` to keep the numbers.
4. ``--weightwatcher`` (not on the llama2-7b shape: the issue compares on the smaller one; one line
   says it is skipped there, or when ``weightwatcher`` is not installed): WeightWatcher
   (``pip install weightwatcher``; not a qft dependency) reads the checkpoint directory itself
   (``WeightWatcher(model=DIR)``: its safetensors reader, in the order of
   ``model.safetensors.index.json``) in a subprocess timed like qft's (wall, CPU, peak RssAnon;
   ``weightwatcher_analyze_s`` is ``analyze()`` alone, without start-up and imports), with its
   cheapest options that still give the spectral norm (``WEIGHTWATCHER_OPTIONS``: no
   randomisation, MP fit, plots, eigenvectors or detX; ``analyze()`` always runs a full float64
   SVD, ``scipy.linalg.svd`` without CUDA, and a power-law fit per matrix). Its ``spectral_norm``
   column is the largest eigenvalue of W^T W, i.e. the *squared* spectral norm (``lambda_max``
   too; ``sv_max`` is unsquared): square roots are taken, and checked against ``sv_max``. Its
   layers are matched to the checkpoint's tensors by name (``<name>.weight``) and shape
   (N = long side, M = short side); it skips 1-D tensors and matrices with a short side above
   15,000 or a long side above 50,000 (its ``max_evals``/``max_N``), so the count it covered is
   printed. Prints its time as a ratio to qft's and its largest relative difference to the
   float64 reference over the matrices both report.

Speeds are ratios measured in the same run; the machine, the thread count and its load matter:
state them next to the numbers (docs/performance.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qft_cli.measure.norms import matrix_stats  # noqa: E402
from qft_cli.system.threads import default_threads  # noqa: E402

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": dict(hidden=640, intermediate=1536, layers=2, heads=10, kv_heads=5, vocab=4000),
    "tinyllama": dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000),
    "llama2-7b": dict(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000),
}


def tensor_shapes(s: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of a Llama checkpoint (LlamaForCausalLM, untied head), in file order."""
    d, f, kv = s["hidden"], s["intermediate"], s["hidden"] // s["heads"] * s["kv_heads"]
    out = [("model.embed_tokens.weight", (s["vocab"], d))]
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (d, d)), (p + "self_attn.k_proj.weight", (kv, d)),
                (p + "self_attn.v_proj.weight", (kv, d)), (p + "self_attn.o_proj.weight", (d, d)),
                (p + "mlp.gate_proj.weight", (f, d)), (p + "mlp.up_proj.weight", (f, d)),
                (p + "mlp.down_proj.weight", (d, f)), (p + "input_layernorm.weight", (d,)),
                (p + "post_attention_layernorm.weight", (d,))]
    return out + [("model.norm.weight", (d,)), ("lm_head.weight", (s["vocab"], d))]


def _numel(shape) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def write_checkpoint(directory: Path, shape: str, shard_gb: float, seed: int = 0) -> None:
    """Seeded random bf16 checkpoint in HF layout, written one tensor at a time (see module doc)."""
    s = SHAPES[shape]
    directory.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": s["hidden"],
              "intermediate_size": s["intermediate"], "num_hidden_layers": s["layers"],
              "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"], "vocab_size": s["vocab"],
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
              "torch_dtype": "bfloat16", "hidden_act": "silu"}
    shards, current, size = [], [], 0
    for name, shp in tensor_shapes(s):
        nbytes = 2 * _numel(shp)
        if current and size + nbytes > shard_gb * 1e9:
            shards.append(current)
            current, size = [], 0
        current.append((name, shp))
        size += nbytes
    shards.append(current)
    gen = torch.Generator().manual_seed(seed)
    weight_map = {}
    for k, shard in enumerate(shards, start=1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name, shp in shard:
            header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [offset, offset + 2 * _numel(shp)]}
            offset += 2 * _numel(shp)
            weight_map[name] = fname
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(directory / (fname + ".part"), "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)) + raw)
            for name, shp in shard:
                if len(shp) == 1:
                    t = torch.ones(shp, dtype=torch.bfloat16)
                else:
                    t = (torch.randn(shp, generator=gen) * 0.02).to(torch.bfloat16)
                fh.write(t.view(torch.int16).numpy().tobytes())
                del t
        os.replace(directory / (fname + ".part"), directory / fname)
    total = sum(2 * _numel(shp) for _, shp in tensor_shapes(s))
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (directory / "config.json").write_text(json.dumps(config, indent=1))


def matrices(directory: Path, layers: int | None = None):
    """Yield (name, bf16 tensor) of every 2-D tensor (only embedding, head and blocks < layers if given)."""
    from safetensors import safe_open

    index = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    for fname in sorted(set(index.values())):
        with safe_open(str(directory / fname), framework="pt") as fh:
            for name in fh.keys():
                if len(fh.get_slice(name).get_shape()) != 2:
                    continue
                if layers is not None and name.startswith("model.layers.") and int(name.split(".")[2]) >= layers:
                    continue
                yield name, fh.get_tensor(name)


def read_once(directory: Path) -> float:
    t0 = time.perf_counter()
    from safetensors import safe_open

    index = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    for fname in sorted(set(index.values())):
        with safe_open(str(directory / fname), framework="pt") as fh:
            for name in fh.keys():
                fh.get_tensor(name).clone()  # touch every byte (get_tensor alone may only map pages)
    return time.perf_counter() - t0


def run_with_peak(cmd: list[str], env: dict, cwd: str | None = None) -> tuple[float, int, subprocess.CompletedProcess]:
    """(wall seconds, peak RssAnon bytes sampled every 20 ms, completed process); the child's CPU
    seconds (user + system) are in ``LAST_CPU[0]``."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        path = f"/proc/{proc.pid}/status"
        while proc.poll() is None:
            try:
                for line in open(path):
                    if line.startswith("RssAnon:"):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            except OSError:
                break
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    watcher.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST_CPU[0] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, peak[0], subprocess.CompletedProcess(cmd, proc.returncode, out, err)


LAST_CPU = [0.0]


def qft_weights(model: str, threads: int, extra: list[str]) -> tuple[float, int, Path]:
    out = Path(tempfile.mkdtemp(prefix="qft_bench_"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "qft_cli", "norms", "weights", model, "--quiet", "--out", str(out),
           "--threads", str(threads), "--device", "cpu", *extra]
    wall, peak, done = run_with_peak(cmd, env)
    tables = list(out.glob("*/norms_weights.parquet"))
    if done.returncode not in (0, 2) or not tables:  # 2 with a table: warnings (printed below)
        raise SystemExit(f"qft failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    if done.stderr.strip():
        print(f"qft {model}: {done.stderr.strip()[-500:]}")
    return wall, peak, tables[0]


def timed_straightforward(directory: Path, layers: int | None,
                          only: set | None = None) -> tuple[dict, dict[str, float]]:
    """{name: float32 SVD norm} and the seconds of the embedding + head (``ends``) and of the blocks
    (``blocks``), wall and CPU (``ends_cpu``, ``blocks_cpu``), one float32 SVD per matrix timed by
    both clocks; ``only``: the matrices qft measured (the same work)."""
    norms, t = {}, {"ends": 0.0, "blocks": 0.0, "ends_cpu": 0.0, "blocks_cpu": 0.0}
    for name, w in matrices(directory, layers):
        if only is not None and name not in only:
            continue
        wall, cpu = time.perf_counter(), time.process_time()
        norms[name] = float(torch.linalg.matrix_norm(w.float(), ord=2))
        part = "blocks" if name.startswith("model.layers.") else "ends"
        t[part] += time.perf_counter() - wall
        t[part + "_cpu"] += time.process_time() - cpu
    return norms, t


#: WeightWatcher's cheapest ``analyze()`` options that still give the spectral norm: no randomised
#: ESD, Marchenko-Pastur fit, plots, eigenvectors or detX (the power-law fit always runs).
#: ``svd_method="accurate"`` pins scipy's float64 SVD; without CUDA "fast" is the same, with CUDA
#: "fast" would copy each matrix to the GPU in float16 (not comparable at 1e-6).
WEIGHTWATCHER_OPTIONS = dict(randomize=False, mp_fit=False, plot=False, vectors=False, detX=False,
                             fix_fingers=False, svd_method="accurate")


def weightwatcher_child(directory: Path, out: Path) -> None:
    """Run in the subprocess: WeightWatcher's ``analyze()`` on the checkpoint directory; writes
    JSON (version, import and analyze seconds, options, one row per layer: longname, N, M,
    spectral_norm, sv_max) to ``out`` through a temporary file."""
    t0 = time.perf_counter()
    import weightwatcher as ww

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    details = ww.WeightWatcher(model=str(directory)).analyze(**WEIGHTWATCHER_OPTIONS)
    t_analyze = time.perf_counter() - t0
    rows = [{"longname": str(r["longname"]), "N": int(r["N"]), "M": int(r["M"]),
             "spectral_norm": float(r["spectral_norm"]), "sv_max": float(r["sv_max"])}
            for _, r in details.iterrows()]
    part = out.with_suffix(".part")
    part.write_text(json.dumps({"version": ww.__version__, "import_s": t_import, "analyze_s": t_analyze,
                                "options": WEIGHTWATCHER_OPTIONS, "rows": rows}))
    os.replace(part, out)


def weightwatcher_spectral_norms(rows: list[dict], shapes: dict[str, tuple[int, ...]]) -> tuple[dict, list, float]:
    """WeightWatcher's rows matched to the checkpoint's 2-D tensors.

    ``rows``: dicts with ``longname``, ``N``, ``M`` (long and short side), ``spectral_norm`` (its
    squared spectral norm, the largest eigenvalue of W^T W) and ``sv_max`` (its largest singular
    value). ``shapes``: {parameter name: shape}. Returns ({parameter name: spectral norm =
    sqrt(spectral_norm)} for rows whose ``longname + ".weight"`` is a 2-D tensor of the same
    (long, short) sides, [longnames not matched], the largest |sqrt(spectral_norm) / sv_max - 1|:
    about 1e-16 when ``spectral_norm`` is the square; a larger value means WeightWatcher changed its
    convention and the square roots are wrong).
    """
    norms, unmatched, squared_check = {}, [], 0.0
    for r in rows:
        name, shape = r["longname"] + ".weight", shapes.get(r["longname"] + ".weight")
        if shape is None or len(shape) != 2 or (max(shape), min(shape)) != (r["N"], r["M"]):
            unmatched.append(r["longname"])
            continue
        norms[name] = math.sqrt(r["spectral_norm"])
        squared_check = max(squared_check, abs(norms[name] / r["sv_max"] - 1.0))
    return norms, unmatched, squared_check


def weightwatcher_run(directory: Path, threads: int) -> dict | None:
    """WeightWatcher on ``directory`` in a subprocess (``weightwatcher_child``), timed like qft's:
    {"wall_s", "cpu_s", "peak_rss_anon" (bytes), plus the child's JSON}; None (one line printed)
    when it is not installed or fails."""
    if importlib.util.find_spec("weightwatcher") is None:
        print("WeightWatcher: not installed, comparison skipped (pip install weightwatcher)")
        return None
    work = Path(tempfile.mkdtemp(prefix="qft_bench_ww_"))  # its cwd too: nothing lands in the repository
    out = work / "weightwatcher.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--dir", str(directory), "--weightwatcher-child", str(out)]
    wall, peak, done = run_with_peak(cmd, env, cwd=str(work))
    if done.returncode != 0 or not out.is_file():
        print(f"WeightWatcher: failed ({done.returncode}), comparison skipped: {done.stderr.strip()[-800:]}")
        return None
    return {"wall_s": wall, "cpu_s": LAST_CPU[0], "peak_rss_anon": peak, **json.loads(out.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama")
    parser.add_argument("--dir", type=Path, default=None, help="checkpoint directory (default qft_bench_<shape> in the temporary directory, $TMPDIR)")
    parser.add_argument("--shard-gb", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None, help="default: qft's (affinity, cgroup quota)")
    parser.add_argument("--sample-layers", type=int, default=None,
                        help="straightforward method and reference on embedding, head and the first K blocks")
    parser.add_argument("--weightwatcher", action="store_true",
                        help="also time WeightWatcher (if installed; not on llama2-7b) and compare its spectral norms")
    parser.add_argument("--weightwatcher-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()
    if args.weightwatcher_child is not None:  # the subprocess of weightwatcher_run
        weightwatcher_child(args.dir, args.weightwatcher_child)
        return
    threads = args.threads or default_threads().count
    torch.set_num_threads(threads)
    spec = SHAPES[args.shape]
    directory = args.dir or Path(tempfile.gettempdir()) / f"qft_bench_{args.shape}"
    shard_gb = args.shard_gb if args.shape != "tiny" else min(args.shard_gb, 0.005)  # tiny: several shards too
    if not (directory / "model.safetensors.index.json").is_file():
        t0 = time.perf_counter()
        write_checkpoint(directory, args.shape, shard_gb)
        print(f"wrote {directory} in {time.perf_counter() - t0:.0f} s")
    shapes = tensor_shapes(spec)
    largest = max(2 * _numel(s) for _, s in shapes)
    total = sum(2 * _numel(s) for _, s in shapes)
    print(f"shape {args.shape}: {total / 2**30:.2f} GiB bf16, largest tensor {largest / 2**20:.0f} MiB, "
          f"{threads} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    t_read = read_once(directory)
    t_qft, peak, table_path = qft_weights(str(directory), threads, [])
    cpu_qft = LAST_CPU[0]
    _, base_peak, _ = qft_weights("tiny-llama", threads, [])
    import pandas as pd

    table = pd.read_parquet(table_path)
    qft_norm = dict(zip(table["parameter"], table["spectral_norm"]))
    layers = args.sample_layers
    measured = set(qft_norm)  # the straightforward method does the same work: qft's matrices only
    norms_f32, t = timed_straightforward(directory, layers, only=measured)
    sampled = layers is not None and layers < spec["layers"]
    scale = spec["layers"] / layers if sampled else 1.0
    t_straight = t["ends"] + t["blocks"] * scale
    cpu_straight = t["ends_cpu"] + t["blocks_cpu"] * scale  # CPU: robust to load
    ww, ww_norm = None, {}
    if args.weightwatcher and args.shape == "llama2-7b":
        print("WeightWatcher: skipped on llama2-7b (the issue compares it on the smaller shape)")
    elif args.weightwatcher:
        ww = weightwatcher_run(directory, threads)
    if ww is not None:
        ww_norm, ww_unmatched, ww_squared_check = weightwatcher_spectral_norms(ww["rows"], dict(shapes))
        if ww_unmatched:
            print(f"WeightWatcher layers not matched to a checkpoint tensor by name and shape: {ww_unmatched}")
        if ww_squared_check > 1e-12:
            print(f"WARNING: WeightWatcher's spectral_norm is not sv_max squared (max |sqrt/sv_max - 1| = "
                  f"{ww_squared_check:.3g}): its convention changed, the comparison below is wrong")
    ref, worst, worst_f32, worst_ww, compared_qft, compared_ww = {}, 0.0, 0.0, 0.0, 0, 0
    for name, w in matrices(directory, layers):
        if name not in qft_norm:
            print(f"not measured by qft: {name}")
            if name not in ww_norm:
                continue
        ref[name] = matrix_stats(w, exact=True).spectral_norm
        if name in qft_norm:
            compared_qft += 1
            worst = max(worst, abs(qft_norm[name] - ref[name]) / ref[name])
            worst_f32 = max(worst_f32, abs(norms_f32[name] - ref[name]) / ref[name])
        if name in ww_norm:
            compared_ww += 1
            worst_ww = max(worst_ww, abs(ww_norm[name] - ref[name]) / ref[name])
    result = {
        "shape": args.shape, "threads": threads, "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
        "checkpoint_gib": total / 2**30, "largest_tensor_mib": largest / 2**20,
        "read_once_s": t_read, "qft_s": t_qft, "straightforward_s": t_straight,
        "straightforward_extrapolated": sampled, "ratio_straightforward_over_qft": t_straight / t_qft,
        "qft_cpu_s": cpu_qft, "straightforward_cpu_s": cpu_straight,
        "ratio_straightforward_over_qft_cpu": cpu_straight / cpu_qft,
        "ratio_qft_over_read_once": t_qft / t_read, "qft_peak_rss_anon_mib": peak / 2**20,
        "baseline_peak_rss_anon_mib": base_peak / 2**20, "qft_peak_above_baseline_mib": (peak - base_peak) / 2**20,
        "memory_goal_mib": largest / 2**20 + 300,
        "max_rel_diff_qft_vs_float64": worst, "max_rel_diff_float32_svd_vs_float64": worst_f32,
        "matrices_compared": compared_qft, "spectral_norm_error_bound_max": float(table["spectral_norm_error_bound"].max()),
    }
    if ww is not None:
        result.update({
            "weightwatcher_version": ww["version"],
            "weightwatcher_options": ", ".join(f"{k}={v}" for k, v in ww["options"].items()),
            "weightwatcher_s": ww["wall_s"], "weightwatcher_cpu_s": ww["cpu_s"],
            "weightwatcher_analyze_s": ww["analyze_s"], "weightwatcher_import_s": ww["import_s"],
            "ratio_weightwatcher_over_qft": ww["wall_s"] / t_qft,
            "ratio_weightwatcher_over_qft_cpu": ww["cpu_s"] / cpu_qft,
            "weightwatcher_peak_rss_anon_mib": ww["peak_rss_anon"] / 2**20,
            "checkpoint_matrices": sum(len(shp) == 2 for _, shp in shapes),
            "weightwatcher_matrices_reported": len(ww["rows"]),
            "weightwatcher_matrices_matched": len(ww_norm),
            "weightwatcher_matrices_compared": compared_ww,
            "max_rel_diff_weightwatcher_vs_float64": worst_ww,
            "weightwatcher_sqrt_vs_sv_max_max_rel": ww_squared_check,
        })
    for key, value in result.items():
        print(f"{key:40s} {value:.4g}" if isinstance(value, float) else f"{key:40s} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
