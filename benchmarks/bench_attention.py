"""Benchmark what the attention factors cost: `qft norms attention` against `qft norms inputs`.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_attention.py [--num-samples 1531]
          [--mmlu ../shared/data/mmlu/validation.csv] [--out attention.parquet]

Both measure MiniLM on the MMLU validation questions (max 512 tokens, same batches, same blocks
1..6, so the same forward passes run): `norms inputs` the hidden-state norms of the block outputs,
`norms attention` per head the norms of X, Q, K, V and the unmasked logits with their bounds.
Prints the time ratio attention / inputs (measured in the same run; never absolute timings as a
target), checks that the two agree where they measure the same matrix (BERT is post-LN, so X of
block l+1 is the output of block l), and prints the median measured / bound ratio per bound and
block. ``--out`` keeps the norms_attention table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qft_cli.data.text_data import mmlu_questions  # noqa: E402
from qft_cli.measure.attention import attention_norms, summarize_attention  # noqa: E402
from qft_cli.measure.inputs import hidden_state_norms  # noqa: E402
from qft_cli.models.loading import load_model  # noqa: E402
from qft_cli.models.names import load_tokenizer, resolve_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=int, default=1531)
    parser.add_argument("--mmlu", type=Path, default=ROOT.parent / "shared" / "data" / "mmlu" / "validation.csv")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    source = resolve_model("minilm")
    model, tok = load_model(source), load_tokenizer(source)
    texts = mmlu_questions(args.mmlu if args.mmlu.is_file() else None)[:args.num_samples]
    ids = [list(x) for x in tok(texts, truncation=True, max_length=512)["input_ids"]]
    blocks = list(range(1, model.config.num_hidden_layers + 1))
    pad = tok.pad_token_id
    labels = {"model": source.model_id, "model_alias": "minilm", "dataset": "mmlu"}
    attention_norms(model, ids[:8], blocks, batch_size=args.batch_size, pad_token_id=pad)  # warm-up
    t0 = time.perf_counter()
    inputs = hidden_state_norms(model, ids, blocks, batch_size=args.batch_size, pad_token_id=pad).table
    t1 = time.perf_counter()
    attention = attention_norms(model, ids, blocks, batch_size=args.batch_size, pad_token_id=pad,
                                labels=labels).table
    t2 = time.perf_counter()
    print(f"samples: {len(ids)}, tokens: {sum(map(len, ids))}, blocks 1..{blocks[-1]}, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"time ratio norms attention / norms inputs: {(t2 - t1) / (t1 - t0):.2f} "
          f"(attention rows: {len(attention)}, inputs rows: {len(inputs)})")
    # consistency: X of block l+1 (post-LN BERT) is the output of block l, measured by norms inputs
    x = attention[attention["head_index"] == 0].set_index(["sample_index", "layer"])["x_spectral_norm"]
    s = inputs.set_index(["sample_index", "layer"])["spectral_norm"]
    pairs = [(x[(i, l + 1)], s[(i, l)]) for i in range(len(ids)) for l in blocks[:-1]]
    rel = max(abs(a - b) / b for a, b in pairs)
    print(f"max relative difference ||X_(l+1)||_2 vs ||S_l||_2: {rel:.2e}")
    ratios = summarize_attention(attention)
    with np.printoptions(precision=4):
        print("median measured / bound per block (over samples and heads):")
        print(ratios.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.out is not None:
        attention.to_parquet(args.out)


if __name__ == "__main__":
    main()
