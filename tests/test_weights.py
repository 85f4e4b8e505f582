"""`norms weights` numbers against float64 torch.linalg.matrix_norm of matrices taken from the modules."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from qft_cli.measure.weights import weight_norms
from qft_cli.models.loading import load_model
from qft_cli.models.names import ModelSource, build_tiny_model, resolve_model
from qft_cli.system.errors import QftInputError


def _reference_matrices(model, kind):
    """(layer, matrix) -> W (d_out, d_in), read from module attributes, independent of layout.py."""
    ref = {}
    if kind == "gpt2":
        d = model.config.n_embd
        ref[(0, "embedding")] = model.wte.weight
        for i, block in enumerate(model.h, start=1):
            c_attn = block.attn.c_attn.weight.T  # Conv1D stores (d_in, d_out)
            ref[(i, "q")], ref[(i, "k")], ref[(i, "v")] = c_attn[:d], c_attn[d:2 * d], c_attn[2 * d:]
            ref[(i, "o")] = block.attn.c_proj.weight.T
            ref[(i, "ffn_up")] = block.mlp.c_fc.weight.T
            ref[(i, "ffn_down")] = block.mlp.c_proj.weight.T
    elif kind == "bert":
        ref[(0, "embedding")] = model.embeddings.word_embeddings.weight
        for i, layer in enumerate(model.encoder.layer, start=1):
            ref[(i, "q")] = layer.attention.self.query.weight
            ref[(i, "k")] = layer.attention.self.key.weight
            ref[(i, "v")] = layer.attention.self.value.weight
            ref[(i, "o")] = layer.attention.output.dense.weight
            ref[(i, "ffn_up")] = layer.intermediate.dense.weight
            ref[(i, "ffn_down")] = layer.output.dense.weight
    elif kind == "llama":
        ref[(0, "embedding")] = model.embed_tokens.weight
        for i, layer in enumerate(model.layers, start=1):
            for m in "qkvo":
                ref[(i, m)] = getattr(layer.self_attn, f"{m}_proj").weight
            for m in ("gate", "up", "down"):
                ref[(i, f"ffn_{m}")] = getattr(layer.mlp, f"{m}_proj").weight
    return {k: v.detach().double() for k, v in ref.items()}


def _check(table, ref):
    assert len(table) == len(ref)
    for _, row in table.iterrows():
        w = ref[(row.layer, row.matrix)]
        assert (row.d_out, row.d_in) == tuple(w.shape)
        assert row.spectral_norm == pytest.approx(torch.linalg.matrix_norm(w, ord=2).item(), rel=1e-10)
        assert row.frobenius_norm == pytest.approx(torch.linalg.matrix_norm(w, ord="fro").item(), rel=1e-10)
        sv = torch.linalg.svdvals(w)
        assert row.stable_rank == pytest.approx(((sv ** 2).sum() / sv[0] ** 2).item(), rel=1e-9)
        cols = torch.linalg.vector_norm(w, dim=0)
        rows = torch.linalg.vector_norm(w, dim=1)
        assert row.column_norm_max == pytest.approx(cols.max().item(), rel=1e-10)
        assert row.column_norm_var == pytest.approx(cols.var(unbiased=False).item(), rel=1e-8)
        assert row.row_norm_mean == pytest.approx(rows.mean().item(), rel=1e-10)
        assert row.finite


@pytest.mark.parametrize("name,kind", [("tiny-gpt2", "gpt2"), ("tiny-bert", "bert"), ("tiny-llama", "llama")])
def test_tiny_models_against_modules(name, kind):
    result = weight_norms(resolve_model(name))
    _check(result.table, _reference_matrices(build_tiny_model(name), kind))


def test_minilm_against_modules(minilm_source):
    result = weight_norms(minilm_source, labels={"model_alias": "minilm"})
    model = load_model(minilm_source)
    _check(result.table, _reference_matrices(model, "bert"))
    assert len(result.table) == 1 + 6 * 6
    emb = result.vectors.query("matrix == 'embedding'")
    ref = torch.linalg.vector_norm(model.embeddings.word_embeddings.weight.double(), dim=1)
    assert len(emb) == 30522 and (emb["kind"] == "token_norm").all()
    torch.testing.assert_close(torch.tensor(emb["value"].to_numpy()), ref, rtol=1e-10, atol=0)


def test_norm_vectors_are_column_norms_of_qkv():
    result = weight_norms(resolve_model("tiny-llama"))
    model = build_tiny_model("tiny-llama")
    k2 = result.vectors.query("layer == 2 and matrix == 'k'").sort_values("vector_index")
    ref = torch.linalg.vector_norm(model.layers[1].self_attn.k_proj.weight.double(), dim=0)
    assert len(k2) == 64  # columns = d_in
    torch.testing.assert_close(torch.tensor(k2["value"].to_numpy()), ref, rtol=1e-10, atol=0)
    assert set(result.vectors["matrix"]) == {"q", "k", "v", "embedding"}


def test_streamed_safetensors_and_bin_match_in_memory(tmp_path):
    model = build_tiny_model("tiny-gpt2")
    model.save_pretrained(tmp_path / "st")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    (bin_dir / "config.json").write_text(json.dumps(model.config.to_dict()))
    mem = weight_norms(resolve_model("tiny-gpt2")).table
    for d in ("st", "bin"):
        streamed = weight_norms(ModelSource(d, "local", str(tmp_path / d))).table
        assert list(streamed["matrix"]) == list(mem["matrix"])
        for col in ("spectral_norm", "frobenius_norm", "row_norm_max"):
            assert streamed[col].tolist() == pytest.approx(mem[col].tolist(), rel=1e-12)


def test_half_and_bfloat16_match_float32_within_precision():
    ref = weight_norms(resolve_model("tiny-bert"), dtype=torch.float32).table
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)):
        low = weight_norms(resolve_model("tiny-bert"), dtype=dtype).table
        assert low["spectral_norm"].tolist() == pytest.approx(ref["spectral_norm"].tolist(), rel=tol)
        assert low["frobenius_norm"].tolist() == pytest.approx(ref["frobenius_norm"].tolist(), rel=tol)
        # the cast really happened: exact against float64 norms of the rounded module matrix
        # (with the dtype ignored the approx checks above would still pass)
        w = build_tiny_model("tiny-bert").encoder.layer[0].attention.self.query.weight.detach().to(dtype).double()
        q1 = low.query("layer == 1 and matrix == 'q'").iloc[0]
        assert q1.spectral_norm == pytest.approx(torch.linalg.matrix_norm(w, 2).item(), rel=1e-12)
        assert q1.spectral_norm != ref.query("layer == 1 and matrix == 'q'").iloc[0].spectral_norm


def test_nonfinite_weight_is_reported_and_rest_kept(tmp_path):
    model = build_tiny_model("tiny-bert")
    with torch.no_grad():
        model.encoder.layer[1].attention.self.key.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path)
    result = weight_norms(ModelSource("broken", "local", str(tmp_path)))
    assert result.nonfinite == ["encoder.layer.1.attention.self.key.weight"]
    bad = result.table[~result.table["finite"]]
    assert list(zip(bad.layer, bad.matrix)) == [(2, "k")] and bad["spectral_norm"].isna().all()
    assert result.table["finite"].sum() == len(result.table) - 1


def test_no_attention_matrices_is_an_error(tmp_path):
    save_file({"encoder.blocks.0.mixer.weight": torch.zeros(4, 4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(QftInputError, match="no attention matrices.*mixer"):
        weight_norms(ModelSource("odd", "local", str(tmp_path)))


def test_directory_without_weights_is_an_error(tmp_path):
    with pytest.raises(QftInputError, match="no \\*.safetensors"):
        weight_norms(ModelSource("empty", "local", str(tmp_path)))


def test_per_head_norms_against_module_slices():
    model = build_tiny_model("tiny-llama")  # 4 query heads, 2 key/value heads, head_dim 16
    heads = weight_norms(resolve_model("tiny-llama")).heads
    attn = model.layers[0].self_attn
    k = heads.query("layer == 1 and matrix == 'k'").sort_values("head_index")
    assert len(k) == 2 and len(heads.query("layer == 1 and matrix == 'q'")) == 4
    w_k = attn.k_proj.weight.detach().double()
    for h in range(2):
        block = w_k[h * 16:(h + 1) * 16]
        assert k.spectral_norm.iloc[h] == pytest.approx(torch.linalg.matrix_norm(block, 2).item(), rel=1e-10)
    o = heads.query("layer == 1 and matrix == 'o'").sort_values("head_index")
    w_o = attn.o_proj.weight.detach().double()
    assert o.frobenius_norm.iloc[3] == pytest.approx(torch.linalg.matrix_norm(w_o[:, 48:64]).item(), rel=1e-10)
    # Frobenius norms of the heads add up in squares to that of the whole matrix
    whole = torch.linalg.matrix_norm(w_o).item()
    assert (o.frobenius_norm ** 2).sum() == pytest.approx(whole ** 2, rel=1e-10)


def test_cross_attention_output_heads_are_column_slices(tmp_path):
    # BART's encoder_attn.out_proj (cross_o) maps the concatenated heads to d: head h owns columns
    from transformers import BartConfig, BartModel

    config = BartConfig(vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = BartModel(config)
    with torch.no_grad():  # make the head slices differ in scale, so rows and columns give other norms
        model.decoder.layers[0].encoder_attn.out_proj.weight.mul_(torch.linspace(0.5, 4.0, 32))
    model.save_pretrained(tmp_path)
    heads = weight_norms(ModelSource("bart", "local", str(tmp_path))).heads
    cross_o = heads.query("part == 'decoder' and layer == 1 and matrix == 'cross_o'").sort_values("head_index")
    w = model.decoder.layers[0].encoder_attn.out_proj.weight.detach().double()
    assert len(cross_o) == 4
    for h in range(4):
        block = w[:, h * 8:(h + 1) * 8]
        assert cross_o.spectral_norm.iloc[h] == pytest.approx(torch.linalg.matrix_norm(block, 2).item(), rel=1e-10)
        assert cross_o.frobenius_norm.iloc[h] == pytest.approx(torch.linalg.matrix_norm(block).item(), rel=1e-10)
    cross_q = heads.query("part == 'decoder' and layer == 1 and matrix == 'cross_q'").sort_values("head_index")
    w_q = model.decoder.layers[0].encoder_attn.q_proj.weight.detach().double()
    assert cross_q.spectral_norm.iloc[2] == pytest.approx(torch.linalg.matrix_norm(w_q[16:24], 2).item(), rel=1e-10)


def test_explicit_head_dim_differs_from_hidden_over_heads(tmp_path):
    # Mistral-Nemo and Gemma: head_dim != hidden_size / num_attention_heads; q_proj is (heads*head_dim, d)
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, intermediate_size=96, max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaModel(config)
    model.save_pretrained(tmp_path)
    result = weight_norms(ModelSource("llama-hd32", "local", str(tmp_path)))
    q_row = result.table.query("layer == 1 and matrix == 'q'").iloc[0]
    assert (q_row.d_out, q_row.d_in) == (128, 64)
    attn = model.layers[0].self_attn
    for matrix, weight, count in (("q", attn.q_proj.weight, 4), ("k", attn.k_proj.weight, 2)):
        got = result.heads.query(f"layer == 1 and matrix == '{matrix}'").sort_values("head_index")
        assert len(got) == count
        w = weight.detach().double()
        for h in range(count):
            block = w[h * 32:(h + 1) * 32]
            assert got.spectral_norm.iloc[h] == pytest.approx(torch.linalg.matrix_norm(block, 2).item(), rel=1e-10)
    o = result.heads.query("layer == 1 and matrix == 'o'").sort_values("head_index")
    w_o = attn.o_proj.weight.detach().double()  # (64, 128): head h owns columns h*32:(h+1)*32
    assert len(o) == 4
    assert o.frobenius_norm.iloc[1] == pytest.approx(torch.linalg.matrix_norm(w_o[:, 32:64]).item(), rel=1e-10)


def test_stray_safetensors_copy_without_index_is_not_read(tmp_path):
    model = build_tiny_model("tiny-llama")
    model.save_pretrained(tmp_path)
    state = {k: v.detach() * 10 for k, v in model.state_dict().items()}
    for stray in ("zz_copy.safetensors", "model_copy.safetensors"):  # same names, weights x10
        save_file(state, str(tmp_path / stray))
    got = weight_norms(ModelSource("stray", "local", str(tmp_path))).table
    w_q = model.layers[0].self_attn.q_proj.weight.detach().double()
    q = got.query("layer == 1 and matrix == 'q'").iloc[0]
    assert q.spectral_norm == pytest.approx(torch.linalg.matrix_norm(w_q, 2).item(), rel=1e-10)
    assert len(got) == len(weight_norms(resolve_model("tiny-llama")).table)


def test_several_safetensors_without_model_file_or_index_is_an_error(tmp_path):
    model = build_tiny_model("tiny-llama")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "a.safetensors"))
    save_file(state, str(tmp_path / "b.safetensors"))
    with pytest.raises(QftInputError, match=r"2 \.safetensors files .*a\.safetensors, b\.safetensors"):
        weight_norms(ModelSource("two", "local", str(tmp_path)))


def test_incomplete_shards_without_index_are_an_error(tmp_path):
    model = build_tiny_model("tiny-llama")
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    (tmp_path / "model.safetensors.index.json").unlink()
    sorted(tmp_path.glob("model-*-of-*.safetensors"))[-1].unlink()
    with pytest.raises(QftInputError, match="incomplete sharded checkpoint"):
        weight_norms(ModelSource("part", "local", str(tmp_path)))


def test_legacy_non_zip_bin_checkpoint(tmp_path):
    # checkpoints saved before torch 1.6 cannot be memory-mapped; they must still be read
    model = build_tiny_model("tiny-bert")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    streamed = weight_norms(ModelSource("legacy", "local", str(tmp_path))).table
    mem = weight_norms(resolve_model("tiny-bert")).table
    assert streamed["spectral_norm"].tolist() == pytest.approx(mem["spectral_norm"].tolist(), rel=1e-12)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_damaged_weights_file_is_bad_input(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00\x01 not a checkpoint " * 8)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(QftInputError, match=f"could not read weights file .*{name}"):
        weight_norms(ModelSource("damaged", "local", str(tmp_path)))


def test_all_weights_nonfinite_keeps_the_columns(tmp_path):
    from qft_cli.measure.weights import WEIGHT_COLUMNS, summarize_weights

    model = build_tiny_model("tiny-bert")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.save_pretrained(tmp_path)
    result = weight_norms(ModelSource("nan", "local", str(tmp_path)), labels={"model": "x", "model_alias": "nan", "model_format": "transformers"})
    assert list(result.table.columns) == WEIGHT_COLUMNS
    assert result.table["spectral_norm"].isna().all() and result.table["spectral_norm"].dtype == "float64"
    assert len(summarize_weights(result.table)) == 7


def test_sharded_checkpoint_reads_the_index_not_other_copies(tmp_path):
    model = build_tiny_model("tiny-llama")
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    # a second copy of the weights under other names, as Mistral's consolidated.safetensors
    save_file({"layers.0.attention.wq.weight": torch.ones(64, 64)}, str(tmp_path / "consolidated.safetensors"))
    streamed = weight_norms(ModelSource("sharded", "local", str(tmp_path))).table
    mem = weight_norms(resolve_model("tiny-llama")).table
    assert len(streamed) == len(mem)
    assert streamed["spectral_norm"].tolist() == pytest.approx(mem["spectral_norm"].tolist(), rel=1e-12)


def test_tiny_dnabert_fused_wqkv_and_gated_ffn_against_modules():
    from qft_cli.models.dnabert2 import build_tiny_dnabert

    table = weight_norms(resolve_model("tiny-dnabert")).table.set_index(["layer", "matrix"])
    model = build_tiny_dnabert("base")
    layer = model.encoder.layer[1]
    d, inter = model.config.hidden_size, model.config.intermediate_size
    wqkv = layer.attention.self.Wqkv.weight.detach().double()
    gated = layer.mlp.gated_layers.weight.detach().double()
    expected = {"q": wqkv[:d], "k": wqkv[d:2 * d], "v": wqkv[2 * d:], "ffn_gate": gated[:inter],
                "ffn_up": gated[inter:], "ffn_down": layer.mlp.wo.weight.detach().double()}
    for matrix, w in expected.items():
        assert table.loc[(2, matrix), "spectral_norm"] == pytest.approx(torch.linalg.matrix_norm(w, 2).item(), rel=1e-10)
        assert table.loc[(2, matrix), "frobenius_norm"] == pytest.approx(torch.linalg.matrix_norm(w).item(), rel=1e-10)


def test_weights_by_layer_is_the_table_pivoted_without_loss():
    import pandas as pd

    from qft_cli.measure.weights import weights_by_layer

    table = pd.concat([weight_norms(resolve_model(name), labels={"model_alias": name}).table
                       for name in ("tiny-gpt2", "tiny-llama")],
                      ignore_index=True)
    wide = weights_by_layer(table)
    assert list(wide.columns) == ["model_alias", "layer", "norm", "q", "k", "v", "o", "ffn_gate", "ffn_up", "ffn_down"]
    assert wide[["model_alias", "layer", "norm"]].values.tolist() == [
        [m, l, n] for m in ("tiny-gpt2", "tiny-llama") for l in (1, 2) for n in ("spectral", "frobenius")]
    assert wide[wide["model_alias"] == "tiny-gpt2"]["ffn_gate"].isna().all()  # GPT-2 has no gated FFN
    blocks = table[table["layer"] >= 1]
    assert wide[["q", "k", "v", "o", "ffn_gate", "ffn_up", "ffn_down"]].notna().sum().sum() == 2 * len(blocks)
    for _, r in blocks.iterrows():
        for norm in ("spectral", "frobenius"):
            cell = wide[(wide["model_alias"] == r["model_alias"]) & (wide["layer"] == r["layer"])
                        & (wide["norm"] == norm)][r["matrix"]]
            assert cell.item() == r[f"{norm}_norm"]
    with pytest.raises(ValueError, match="two matrices of one type"):
        weights_by_layer(pd.concat([table, table.iloc[[3]]]))


def test_dtype_column_is_the_stored_or_cast_dtype(tmp_path):
    model = build_tiny_model("tiny-bert").to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    stored = weight_norms(ModelSource("bf16", "local", str(tmp_path))).table
    assert set(stored["dtype"]) == {"bfloat16"}  # as stored: the report shows "as stored (bfloat16)"
    cast = weight_norms(ModelSource("bf16", "local", str(tmp_path)), dtype=torch.float16).table
    assert set(cast["dtype"]) == {"float16"}


def test_fast_path_equals_exact_path_on_a_checkpoint_wider_than_exact_below(tmp_path):
    # d = 576 > EXACT_BELOW: the default path is the block Krylov one for every matrix but k/v (GQA: 192 rows)
    from transformers import LlamaConfig, LlamaForCausalLM

    from qft_cli.measure.norms import EXACT_BELOW
    from qft_cli.models.names import resolve_model

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=576, intermediate_size=1024, num_hidden_layers=1, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=700, tie_word_embeddings=True)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "m")
    source = resolve_model(str(tmp_path / "m"))
    fast, exact = weight_norms(source), weight_norms(source, exact=True)
    assert 576 > EXACT_BELOW
    assert (fast.table["spectral_norm_error_bound"] > 0).sum() >= 5  # q, o, gate, up, down, embedding
    assert (fast.table["spectral_norm_error_bound"] <= 1e-6).all() and (exact.table["spectral_norm_error_bound"] == 0).all()
    rel = (fast.table["spectral_norm"] - exact.table["spectral_norm"]).abs() / exact.table["spectral_norm"]
    assert (rel <= 1e-6).all(), rel.max()
    for name, tensor in LlamaForCausalLM.from_pretrained(tmp_path / "m").state_dict().items():
        if name == "model.layers.0.mlp.down_proj.weight":  # independent float64 SVD
            ref = torch.linalg.matrix_norm(tensor.double(), ord=2).item()
            got = fast.table.loc[fast.table["parameter"] == name, "spectral_norm"].item()
            assert abs(got - ref) / ref <= 1e-6
    cols = ["frobenius_norm", "column_norm_mean", "column_norm_var", "column_norm_max", "row_norm_mean",
            "row_norm_var", "row_norm_max"]
    pd.testing.assert_frame_equal(fast.table[cols], exact.table[cols])
    pd.testing.assert_frame_equal(fast.heads, exact.heads)


def _qk_ov_reference(wq, wk, wv, wo, heads, kv_heads, dh):
    """Per query head: W_q,h^T W_k,g and W_o,h W_v,g (g = h // (heads / kv_heads)) formed as d x d."""
    rep = heads // kv_heads
    out = []
    for h in range(heads):
        g = h // rep
        qk = wq[h * dh:(h + 1) * dh].T @ wk[g * dh:(g + 1) * dh]
        ov = wo[:, h * dh:(h + 1) * dh] @ wv[g * dh:(g + 1) * dh]
        out.append((qk, ov))
    return out


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_qk_and_ov_composites_against_formed_products(name):
    model = build_tiny_model(name)
    heads = weight_norms(resolve_model(name)).heads
    for layer in (1, 2):
        if name == "tiny-llama":  # GQA: 4 query heads, 2 key/value heads, head_dim 16
            attn = model.layers[layer - 1].self_attn
            wq, wk, wv, wo = (lin.weight.detach().double() for lin in (attn.q_proj, attn.k_proj, attn.v_proj,
                                                                         attn.o_proj))
            ref = _qk_ov_reference(wq, wk, wv, wo, 4, 2, 16)
        else:  # fused Conv1D c_attn, stored (d_in, 3 d)
            attn = model.h[layer - 1].attn
            w = attn.c_attn.weight.detach().double().T
            wq, wk, wv = w[:64], w[64:128], w[128:]
            ref = _qk_ov_reference(wq, wk, wv, attn.c_proj.weight.detach().double().T, 4, 4, 16)
        for matrix, index in (("qk", 0), ("ov", 1)):
            rows = heads.query(f"layer == {layer} and matrix == '{matrix}'").sort_values("head_index")
            assert rows["head_index"].tolist() == [0, 1, 2, 3]
            for h, pair in enumerate(ref):
                full = pair[index]
                assert rows.spectral_norm.iloc[h] == pytest.approx(torch.linalg.matrix_norm(full, 2).item(), rel=1e-9)
                assert rows.frobenius_norm.iloc[h] == pytest.approx(torch.linalg.matrix_norm(full).item(), rel=1e-9)


def test_workers_give_the_same_tables_and_restore_the_thread_count(tmp_path):
    import torch

    from qft_cli.measure.weights import one_thread_each
    from qft_cli.models.names import resolve_model

    source = resolve_model("tiny-llama")
    with one_thread_each():
        torch.set_num_threads(2)  # what weight_norms(workers > 1) must restore
        one = weight_norms(source, workers=1)
        two = weight_norms(source, workers=2)
        assert torch.get_num_threads() == 2
        three = weight_norms(source, workers=3)
    for other in (two, three):
        pd.testing.assert_frame_equal(other.table, one.table)
        pd.testing.assert_frame_equal(other.vectors, one.vectors)
        pd.testing.assert_frame_equal(other.heads, one.heads)


def test_krylov_path_gives_the_same_numbers_on_worker_threads():
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from qft_cli.measure.norms import matrix_stats
    from qft_cli.measure.weights import one_thread_each

    gen = torch.Generator().manual_seed(3)
    mats = [(torch.randn(700, 600, generator=gen) * 0.02).to(torch.bfloat16) for _ in range(3)]
    with one_thread_each():
        alone = [matrix_stats(m) for m in mats]
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(matrix_stats, mats))
    assert all(s.method == "krylov" for s in alone)
    assert [s.spectral_norm for s in together] == [s.spectral_norm for s in alone]
    assert [s.spectral_error_bound for s in together] == [s.spectral_error_bound for s in alone]


def test_one_thread_each_sets_one_thread_and_restores_also_on_error():
    from qft_cli.measure.weights import one_thread_each

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread_each():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), one_thread_each():
            raise RuntimeError("a worker failed")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name, edit, needle", [
    ("tiny-bert", {"hidden_size": 48}, "attention.self.query.weight is (64, 64), the config implies (48, 48)"),
    ("tiny-bert", {"num_attention_heads": 3}, "do not divide"),
    ("tiny-llama", {"num_attention_heads": 8}, "q_proj.weight is (64, 64), the config implies (128, 64)"),
    ("tiny-llama", {"num_key_value_heads": 4}, "k_proj.weight is (32, 64), the config implies (64, 64)"),
    ("tiny-gpt2", {"n_embd": 32}, "q block (q of h.0.attn.c_attn.weight) is (64, 64), the config implies (32, 32)"),
])
def test_config_that_does_not_match_its_weights_is_refused(name, edit, needle, tmp_path):
    """Issue 21, item 3: a config.json whose hidden size or head counts were changed is an error
    naming the tensor, its shape and the shape the config implies (exit 2, nothing written), not a
    run with an empty or wrongly split norms_heads table; the unchanged checkpoint passes."""
    from typer.testing import CliRunner

    from qft_cli.cli.app import app

    directory = tmp_path / name
    build_tiny_model(name).save_pretrained(directory)
    assert len(weight_norms(ModelSource(name, "local", str(directory))).heads) > 0
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(QftInputError, match="config.json") as err:
        weight_norms(ModelSource(name, "local", str(directory)))
    assert needle in str(err.value) and "\n" not in str(err.value)
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["norms", "weights", str(directory), "--out", str(out), "-q"])
    assert result.exit_code == 2 and needle in result.stderr, result.output
    assert not out.exists() or not any(out.iterdir())
