"""Benchmark `qft norms inputs` and `qft norms weights` against straightforward implementations.

Run:  python benchmarks/bench_norms.py [--num-samples 1531] [--mmlu ../shared/data/mmlu/validation.csv]

1. Hidden-state norms of MiniLM on the MMLU validation questions (max 512 tokens, batch 8):
   qft (length-sorted batches padded to the longest sample, forward stopped after block 1,
   batched float64 Gram eigenvalues) against a straightforward implementation (every batch padded
   to 512 tokens, the full model with output_hidden_states, a full numpy SVD of each sample's
   real-token rows). Both must give the same values; prints the speed ratio (target >= 10x).
2. Peak resident memory of `norms weights` (streamed tensor by tensor) against loading the whole
   model, each in a fresh subprocess, relative to the size of the checkpoint file (Linux only:
   the peak is read from /proc/self/status after resetting it through /proc/self/clear_refs).

Speeds are ratios measured in the same run on the same machine, never absolute timings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qft_cli.data.text_data import mmlu_questions  # noqa: E402
from qft_cli.measure.inputs import hidden_state_norms  # noqa: E402
from qft_cli.models.loading import load_model  # noqa: E402
from qft_cli.models.names import load_tokenizer, resolve_model  # noqa: E402


def naive_input_norms(model, tokenizer, texts, max_tokens=512, batch_size=8):
    """Pad every batch to max_tokens, run the whole model, full SVD per sample (U, S, V)."""
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], padding="max_length", truncation=True,
                            max_length=max_tokens, return_tensors="pt")
            hs = model(**enc, output_hidden_states=True).hidden_states
            for j in range(enc["input_ids"].shape[0]):
                n = int(enc["attention_mask"][j].sum())
                for layer in (0, 1):
                    s = hs[layer][j, :n].double().numpy()
                    _, sv, _ = np.linalg.svd(s, full_matrices=True)
                    rows.append((start + j, layer, sv[0], np.linalg.norm(s)))
    return rows


def bench_inputs(csv: Path | None, num_samples: int) -> dict:
    source = resolve_model("minilm")
    model, tok = load_model(source), load_tokenizer(source)
    texts = mmlu_questions(csv)[:num_samples]
    ids = [list(x) for x in tok(texts, truncation=True, max_length=512)["input_ids"]]

    t0 = time.perf_counter()
    fast = hidden_state_norms(model, ids, [0, 1], batch_size=8, pad_token_id=tok.pad_token_id).table
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = naive_input_norms(model, tok, texts)
    t_slow = time.perf_counter() - t0

    fast = fast.set_index(["sample_index", "layer"])
    err = max(max(abs(fast.loc[(i, l), "spectral_norm"] / s - 1), abs(fast.loc[(i, l), "frobenius_norm"] / f - 1))
              for i, l, s, f in slow)
    return {"samples": len(texts), "max_relative_difference": err, "speedup": t_slow / t_fast}


_PEAK = """
import sys, json
sys.path.insert(0, {root!r})
import torch
from qft_cli.models.loading import load_model
from qft_cli.models.names import resolve_model
from qft_cli.measure.weights import weight_norms
from qft_cli.measure.norms import matrix_norm_record
from qft_cli.models.layout import classify_model
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
source = resolve_model("minilm")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS")
if {mode!r} == "qft":
    weight_norms(source)
else:
    model = load_model(source)
    params = dict(model.named_parameters())
    for spec in classify_model(model):
        matrix_norm_record(spec.extract(params[spec.parameter].detach()))
peak = status("VmHWM")
print(json.dumps({{"extra_kib": peak - base}}))
"""


def bench_weights_memory() -> dict:
    from safetensors import safe_open

    from qft_cli.models.names import minilm_dir

    path = minilm_dir() / "model.safetensors"
    size_kib = path.stat().st_size / 1024
    with safe_open(str(path), framework="pt") as f:
        largest_kib = max(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()) / 1024
    out = {}
    for mode in ("qft", "whole_model"):
        res = subprocess.run([sys.executable, "-c", _PEAK.format(root=str(ROOT), mode=mode)], capture_output=True,
                             text=True, check=True)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])["extra_kib"] / size_kib
    return {"checkpoint_mib": size_kib / 1024, "largest_tensor_mib": largest_kib / 1024, "peak_extra_over_checkpoint_qft": out["qft"],
            "peak_extra_over_checkpoint_whole_model": out["whole_model"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmlu", type=Path, default=ROOT.parent / "shared" / "data" / "mmlu" / "validation.csv")
    parser.add_argument("--num-samples", type=int, default=1531)
    args = parser.parse_args()
    csv = args.mmlu if args.mmlu.is_file() else None
    torch.manual_seed(0)
    inputs = bench_inputs(csv, args.num_samples)
    print(f"norms inputs, MiniLM, {inputs['samples']} MMLU questions: qft is {inputs['speedup']:.1f}x faster than "
          f"the straightforward implementation (target >= 10x); max relative difference "
          f"{inputs['max_relative_difference']:.2e}")
    mem = bench_weights_memory()
    print(f"norms weights, MiniLM ({mem['checkpoint_mib']:.0f} MiB checkpoint, largest tensor "
          f"{mem['largest_tensor_mib']:.0f} MiB): peak extra RSS = "
          f"{mem['peak_extra_over_checkpoint_qft']:.2f}x the checkpoint size streamed, "
          f"{mem['peak_extra_over_checkpoint_whole_model']:.2f}x when the whole model is loaded")


if __name__ == "__main__":
    main()
