"""Sharding of the norms commands across ranks: balanced shards, the rank-0 merge equals the
single-process result, and ``norms weights`` under torchrun with 2 gloo processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from qft_cli.measure.weights import matrix_groups, merge_weight_results, weight_norms
from qft_cli.models.names import resolve_model
from qft_cli.system.distributed import balanced_shards, gather_to_main

ROOT = Path(__file__).resolve().parents[1]


def test_balanced_shards_cover_every_item_once_largest_first():
    costs = [10, 1, 1, 1, 7, 3, 3]
    shards = balanced_shards(costs, 3)
    assert sorted(i for s in shards for i in s) == list(range(len(costs)))
    assert [sum(costs[i] for i in s) for s in shards] == [10, 8, 8]  # 10 | 7+1 | 3+3+1+1 - greedy: 10, 7, 3, 3, then 1s to the lightest
    assert shards == balanced_shards(costs, 3)  # deterministic: every rank computes the same split
    assert balanced_shards([5.0], 2) == [[0], []]


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_merged_shards_equal_the_single_process_result(model):
    source = resolve_model(model)
    groups = matrix_groups(source)
    labels = {"model_alias": model}
    whole = weight_norms(source, labels=labels)
    parts = [weight_norms(source, labels=labels, parameters={p for i in shard for p in groups[i][1]})
             for shard in balanced_shards([size for _, _, size in groups], 2)]
    assert all(len(r.table) for r in parts)
    merged = merge_weight_results(parts, [key for key, _, _ in groups])
    pd.testing.assert_frame_equal(merged.table, whole.table)
    pd.testing.assert_frame_equal(merged.vectors, whole.vectors)
    pd.testing.assert_frame_equal(merged.heads, whole.heads)
    assert gather_to_main("x") == ["x"]  # no process group: the object itself


LAUNCHER = "from qft_cli.cli.app import main\nmain()\n"


def _two_processes_and_one(tmp_path, args: list[str]) -> tuple[Path, Path]:
    """Run ``qft *args`` as 2 gloo processes under torchrun and as one process; both must succeed and
    only rank 0 may print. Returns (the 2-process run directory, the 1-process one)."""
    launcher = tmp_path / "launch_qft.py"
    launcher.write_text(LAUNCHER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(launcher), *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results:") == 1  # rank 0 prints, rank 1 does not
    single = subprocess.run([sys.executable, str(launcher), *args, "--out", str(tmp_path / "one")], env=env,
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    (two,), (one,) = list((tmp_path / "two").iterdir()), list((tmp_path / "one").iterdir())  # one run directory each
    return two, one


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_norms_weights_two_gloo_processes_equal_one(tmp_path):
    two, one = _two_processes_and_one(tmp_path, ["norms", "weights", "tiny-llama", "tiny-gpt2", "--device", "cpu",
                                                 "--quiet"])
    for name in ("norms_weights", "norm_vectors", "norms_heads"):
        pd.testing.assert_frame_equal(pd.read_parquet(two / f"{name}.parquet"), pd.read_parquet(one / f"{name}.parquet"))
    import json

    assert json.loads((two / "run.json").read_text())["world_size"] == 2


def test_merged_input_shards_equal_the_single_process_result():
    from qft_cli.measure.inputs import hidden_state_norms
    from qft_cli.measure.workflows import merge_input_results
    from qft_cli.models.loading import load_model

    model = load_model(resolve_model("tiny-gpt2"))
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randint(0, 100, (n,), generator=gen).tolist() for n in (5, 17, 3, 9, 12, 1, 8)]
    whole = hidden_state_norms(model, samples, [0, 1, 2], batch_size=3, pad_token_id=0)
    parts = []
    for mine in balanced_shards([len(x) for x in samples], 3):
        part = hidden_state_norms(model, [samples[i] for i in mine], [0, 1, 2], batch_size=3, pad_token_id=0)
        parts.append((mine, part))
    merged = merge_input_results(parts)
    pd.testing.assert_frame_equal(merged.table, whole.table, check_exact=False, rtol=1e-6, atol=0)


def test_device_map_load_equals_plain_load(tmp_path):
    # a public transformers bug once returned zeros for later layers under device_map
    from qft_cli.measure.inputs import hidden_state_norms
    from qft_cli.models.loading import load_model
    from qft_cli.models.names import build_tiny_model

    build_tiny_model("tiny-llama").save_pretrained(tmp_path / "m")
    source = resolve_model(str(tmp_path / "m"))
    plain = load_model(source)
    mapped = load_model(source, device_map={"": "cpu"})
    samples = [[1, 2, 3, 4, 5], [7, 8, 9]]
    a = hidden_state_norms(plain, samples, [0, 1, 2], pad_token_id=0).table
    b = hidden_state_norms(mapped, samples, [0, 1, 2], pad_token_id=0).table
    pd.testing.assert_frame_equal(a, b)
    assert (b["frobenius_norm"] > 0).all()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_norms_inputs_two_gloo_processes_equal_one(tmp_path):
    two, one = _two_processes_and_one(tmp_path, ["norms", "inputs", "tiny-gpt2", "--dataset", "random", "--max-tokens",
                                                 "13", "--layers", "all", "--device", "cpu", "--quiet"])
    pd.testing.assert_frame_equal(pd.read_parquet(two / "norms_inputs.parquet"),
                                  pd.read_parquet(one / "norms_inputs.parquet"), check_exact=False, rtol=1e-6, atol=0)


@pytest.mark.parametrize("world", [3, 8])  # 8 ranks for 7 samples: one rank has none
def test_merged_attention_shards_equal_the_single_process_result(world):
    from qft_cli.measure.attention import attention_norms
    from qft_cli.measure.workflows import merge_sample_results
    from qft_cli.models.loading import load_model

    model = load_model(resolve_model("tiny-llama"))  # GQA: 4 query heads share 2 key/value heads
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randint(1, 100, (n,), generator=gen).tolist() for n in (5, 17, 3, 9, 12, 1, 8)]
    labels = {"model": "tiny", "model_alias": "tiny-llama", "dataset": "random"}
    shards = balanced_shards([len(x) for x in samples], world)
    assert (world > len(samples)) == any(not s for s in shards)

    def merged_and_whole(batch_size):
        whole = attention_norms(model, samples, [1, 2], batch_size=batch_size, pad_token_id=0, labels=labels)
        parts = [(mine, attention_norms(model, [samples[i] for i in mine], [1, 2], batch_size=batch_size,
                                        pad_token_id=0, labels=labels) if mine else None) for mine in shards]
        return merge_sample_results(parts, "sample_index", ["layer", "head_index"]), whole

    # one sample per forward pass: every sample is computed the same way alone or in a shard, so exactly equal
    merged, whole = merged_and_whole(1)
    assert type(merged) is type(whole)
    assert sorted(merged.table["sample_index"].unique()) == list(range(len(samples)))
    pd.testing.assert_frame_equal(merged.table, whole.table, check_exact=True)
    # padded batches of other samples: equal up to float32 rounding of the forward pass (float64 model here)
    model.double()
    merged, whole = merged_and_whole(3)
    pd.testing.assert_frame_equal(merged.table, whole.table, check_exact=False, rtol=1e-9, atol=0)
    # (the warnings' sample mapping: test_merge_maps_warning_samples_to_dataset_indices; none here)


def test_merge_maps_warning_samples_to_dataset_indices():
    from qft_cli.measure.attention import AttentionNormsResult
    from qft_cli.measure.workflows import merge_sample_results

    def part(samples):
        return AttentionNormsResult(pd.DataFrame({"sample_index": samples, "layer": [1] * len(samples),
                                                  "head_index": [0] * len(samples)}),
                                    nonfinite=[(0, 1)], all_zero=[(len(samples) - 1, 2)])

    merged = merge_sample_results([([4, 6], part([1, 0])), ([], None), ([0, 5], part([0, 1]))],
                                  "sample_index", ["layer", "head_index"])
    assert merged.table["sample_index"].tolist() == [0, 4, 5, 6]
    assert merged.table["sample_index"].dtype == "int64"
    assert merged.nonfinite == [(0, 1), (4, 1)]
    assert merged.all_zero == [(5, 2), (6, 2)]
    with pytest.raises(ValueError):
        merge_sample_results([([], None)], "sample_index", ["layer", "head_index"])


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_norms_attention_two_gloo_processes_equal_one(tmp_path):
    import json

    # --batch-size 1: each sample's forward pass is the same in both runs, so the tables are exactly equal
    two, one = _two_processes_and_one(tmp_path, ["norms", "attention", "tiny-llama", "--dataset", "random",
                                                 "--max-tokens", "9", "--batch-size", "1", "--device", "cpu", "--quiet"])
    tables = sorted(p.name for p in one.glob("*.parquet"))
    assert tables == sorted(p.name for p in two.glob("*.parquet")) and "norms_attention.parquet" in tables
    for name in tables:
        pd.testing.assert_frame_equal(pd.read_parquet(two / name), pd.read_parquet(one / name), check_exact=True)
    assert len(pd.read_parquet(one / "norms_attention.parquet")["sample_index"].unique()) == 9
    run_two, run_one = json.loads((two / "run.json").read_text()), json.loads((one / "run.json").read_text())
    assert (run_two["world_size"], run_one["world_size"]) == (2, 1)
    assert run_two["num_rows"] == run_one["num_rows"]
