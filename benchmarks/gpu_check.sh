#!/usr/bin/env bash
# One short check of qft on a CUDA machine (about 5 minutes on one modern GPU; issue 9, section 5).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # from the repository root, venv active
#
# 1. the tests that need CUDA (pytest marker `cuda`; they skip without a GPU);
# 2. `qft norms weights` on the generated Llama-2-7B-shaped bf16 checkpoint (13.5 GB, written once to
#    $QFT_BENCH_DIR, default $TMPDIR/qft_bench_llama2-7b, TMPDIR defaulting to /tmp), bf16 on the GPU, float64 accumulation, timed;
# 3. `qft norms inputs` (smollm2 if its package is installed, else minilm) on the 1,531 MMLU validation
#    questions with --layers all (needs ../shared/data/mmlu/validation.csv or the hub cache);
# 4. with two or more GPUs: the same norms inputs as 2 processes under torchrun (NCCL), tables compared.
# Writes timings to OUT_DIR/gpu_check.txt (default runs/gpu_check).
set -euo pipefail
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.txt"
export PYTHONPATH=${PYTHONPATH:-$PWD} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
BENCH_DIR=${QFT_BENCH_DIR:-${TMPDIR:-/tmp}/qft_bench_llama2-7b}
MMLU=${QFT_MMLU:-../shared/data/mmlu/validation.csv}
say() { echo "$*" | tee -a "$LOG"; }
timed() { local t0=$SECONDS; "$@"; say "  -> $(( SECONDS - t0 )) s: $*"; }

say "== $(date -u) $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1), $(nproc) CPUs"
nvidia-smi -L | tee -a "$LOG"
say "== 1. CUDA tests"
timed python -m pytest -q -m cuda tests/test_cuda.py 2>&1 | tail -3 | tee -a "$LOG"

say "== 2. norms weights, Llama-2-7B shapes, bf16 on the GPU"
if [ ! -f "$BENCH_DIR/model.safetensors.index.json" ]; then
  timed python - "$BENCH_DIR" <<'PY'
import sys; from pathlib import Path
sys.path.insert(0, "benchmarks")
from bench_weights_scale import write_checkpoint
write_checkpoint(Path(sys.argv[1]), "llama2-7b", 2.0)
PY
fi
timed python -m qft_cli norms weights "$BENCH_DIR" --device cuda --quiet --out "$OUT"
timed python -m qft_cli norms weights "$BENCH_DIR" --device cuda --exact --quiet --out "$OUT"
python - "$OUT" <<'PY' | tee -a "$LOG"
import sys, pathlib, pandas as pd
runs = sorted(pathlib.Path(sys.argv[1]).glob("*/norms_weights.parquet"), key=lambda p: p.stat().st_mtime)[-2:]
fast, exact = (pd.read_parquet(p).set_index("parameter")["spectral_norm"] for p in runs)
print(f"  fast vs --exact: max relative difference {((fast - exact).abs() / exact).max():.3g} over {len(exact)} matrices")
PY

say "== 3. norms inputs on MMLU, --layers all"
MODEL=smollm2
python -m qft_cli models 2>/dev/null | grep -q smollm2 || MODEL=minilm
DATA=(--dataset mmlu); [ -f "$MMLU" ] && DATA+=(--data-file "$MMLU")
timed python -m qft_cli norms inputs "$MODEL" "${DATA[@]}" --layers all --device cuda --quiet --out "$OUT/one"

NGPU=$(nvidia-smi -L | wc -l)
if [ "$NGPU" -ge 2 ]; then
  say "== 4. the same as 2 processes (torchrun, NCCL)"
  timed python -m torch.distributed.run --nproc_per_node 2 -m qft_cli norms inputs "$MODEL" "${DATA[@]}" \
      --layers all --device cuda --quiet --out "$OUT/two"
  python - "$OUT" <<'PY' | tee -a "$LOG"
import sys, pathlib, pandas as pd
one = pd.read_parquet(next(pathlib.Path(sys.argv[1], "one").glob("*/norms_inputs.parquet")))
two = pd.read_parquet(next(pathlib.Path(sys.argv[1], "two").glob("*/norms_inputs.parquet")))
pd.testing.assert_frame_equal(one, two, check_exact=False, rtol=1e-5, atol=0)
print(f"  2 processes equal 1: {len(one)} rows")
PY
else
  say "== 4. skipped: one GPU"
fi
say "== done: $LOG"
