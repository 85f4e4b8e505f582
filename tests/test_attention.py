"""qft_cli.measure.attention against an independent computation from each model's own modules.

The reference forms Q, K, V by hand from the model's weights (GPT-2's fused Conv1D ``c_attn``,
Llama's q/k/v with transformers' own ``apply_rotary_pos_emb`` and GQA pairing, BERT's query/key/
value, DNABERT-2's fused ``Wqkv``), the logits explicitly as N x N matrices, and every norm with
``torch.linalg.matrix_norm`` in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qft_cli.measure.attention import (
    ATTENTION_COLUMNS,
    attention_fits,
    attention_norms,
    gram_norms,
    gram_product_norms,
    head_grams,
    parse_blocks,
    product_norms,
    weight_composites,
)
from qft_cli.models.loading import load_model
from qft_cli.models.names import build_tiny_model, load_tokenizer, resolve_model
from qft_cli.system.errors import QftInputError

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hi", "Quantum transformers block-encode matrices.",
         "A somewhat longer sentence, so that the batch has samples of quite different lengths in it."]
RATIOS = ["q_bound_ratio", "k_bound_ratio", "v_bound_ratio", "logits_unmasked_qk_bound_ratio",
          "logits_unmasked_weight_bound_ratio"]
NUMERIC = [c for c in ATTENTION_COLUMNS if c.endswith(("_norm", "_bound", "_ratio"))]


def spec(a):
    return torch.linalg.matrix_norm(a, ord=2).item()


def frob(a):
    return torch.linalg.matrix_norm(a, ord="fro").item()


def _randomize_biases(model):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.dim() == 1 and "norm" not in name.lower() and "ln" not in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _expected(x, q, k, v, wq, bq, wk, bk, wv, bv, rotary):
    """Rows of one (sample, layer): x (N, d); q (H, N, dh); k, v (H_kv, N, dh); W* (H or H_kv, dh, d)."""
    heads, n, dh = q.shape
    rep = heads // k.shape[0]
    rows = []
    xs, xf = spec(x), frob(x)
    for h in range(heads):
        g = h // rep
        logits = q[h] @ k[g].T / math.sqrt(dh)  # N x N, formed explicitly

        def bound(w, b, rotated):
            if rotated:
                return min(xf * spec(w), xs * frob(w)) + math.sqrt(n) * b.norm().item()
            return xs * spec(w) + math.sqrt(n) * b.norm().item()

        rows.append({"head_index": h, "kv_head_index": g, "num_tokens": n, "head_dim": dh, "x_spectral_norm": xs,
                     "x_frobenius_norm": xf, "q_spectral_norm": spec(q[h]), "q_frobenius_norm": frob(q[h]),
                     "k_spectral_norm": spec(k[g]), "k_frobenius_norm": frob(k[g]),
                     "v_spectral_norm": spec(v[g]), "v_frobenius_norm": frob(v[g]),
                     "logits_unmasked_spectral_norm": spec(logits), "logits_unmasked_frobenius_norm": frob(logits),
                     "q_spectral_bound": bound(wq[h], bq[h], rotary), "k_spectral_bound": bound(wk[g], bk[g], rotary),
                     "v_spectral_bound": bound(wv[g], bv[g], False),
                     "logits_unmasked_qk_bound": spec(q[h]) * spec(k[g]) / math.sqrt(dh),
                     "logits_unmasked_weight_bound": (float("nan") if rotary or bq.abs().sum() + bk.abs().sum() > 0
                                                      else xs ** 2 * spec(wq[h].T @ wk[g]) / math.sqrt(dh))})
    return rows


def _heads(w, b, dh):
    """(d_out, d) weight and (d_out,) bias -> (heads, dh, d), (heads, dh)."""
    return w.reshape(-1, dh, w.shape[1]), b.reshape(-1, dh)


def reference_gpt2(model, ids, layer):
    hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    block = model.h[layer - 1]
    x = block.ln_1(hidden[layer - 1])[0]
    d, heads = model.config.n_embd, model.config.n_head
    dh = d // heads
    w = block.attn.c_attn.weight.T  # Conv1D stores (d_in, 3d): oriented (3d, d)
    b = block.attn.c_attn.bias
    qkv = x @ w.T + b
    q, k, v = (qkv[:, i * d:(i + 1) * d].reshape(-1, heads, dh).transpose(0, 1) for i in range(3))
    ws = [_heads(w[i * d:(i + 1) * d], b[i * d:(i + 1) * d], dh) for i in range(3)]
    return _expected(x, q, k, v, *ws[0], *ws[1], *ws[2], rotary=False)


def reference_llama(model, ids, layer):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    block = model.layers[layer - 1]
    x = block.input_layernorm(hidden[layer - 1])  # (1, N, d)
    attn = block.self_attn
    dh = attn.head_dim
    n = x.shape[1]
    q = attn.q_proj(x).view(1, n, -1, dh).transpose(1, 2)
    k = attn.k_proj(x).view(1, n, -1, dh).transpose(1, 2)
    v = attn.v_proj(x).view(1, n, -1, dh).transpose(1, 2)
    cos, sin = model.rotary_emb(x, torch.arange(n)[None])
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    zeros = lambda lin: torch.zeros(lin.weight.shape[0], dtype=x.dtype) if lin.bias is None else lin.bias  # noqa: E731
    ws = [_heads(lin.weight, zeros(lin), dh) for lin in (attn.q_proj, attn.k_proj, attn.v_proj)]
    return _expected(x[0], q[0], k[0], v[0], *ws[0], *ws[1], *ws[2], rotary=True)


def reference_bert(model, ids, layer):
    hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    x = hidden[layer - 1][0]
    attn = model.encoder.layer[layer - 1].attention.self
    dh = attn.attention_head_size
    proj = [attn.query, attn.key, attn.value]
    q, k, v = ((x @ lin.weight.T + lin.bias).reshape(-1, attn.num_attention_heads, dh).transpose(0, 1) for lin in proj)
    ws = [_heads(lin.weight, lin.bias, dh) for lin in proj]
    return _expected(x, q, k, v, *ws[0], *ws[1], *ws[2], rotary=False)


def reference_dnabert(model, ids, layer):
    hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    x = hidden[layer - 1][0]
    attn = model.encoder.layer[layer - 1].attention.self
    d = x.shape[1]
    w, b = attn.Wqkv.weight, attn.Wqkv.bias
    qkv = x @ w.T + b
    q, k, v = (qkv[:, i * d:(i + 1) * d].reshape(-1, attn.num_heads, attn.head_dim).transpose(0, 1) for i in range(3))
    ws = [_heads(w[i * d:(i + 1) * d], b[i * d:(i + 1) * d], attn.head_dim) for i in range(3)]
    return _expected(x, q, k, v, *ws[0], *ws[1], *ws[2], rotary=False)


REFERENCES = {"tiny-gpt2": reference_gpt2, "tiny-llama": reference_llama, "tiny-bert": reference_bert,
              "tiny-dnabert": reference_dnabert}


def _compare(table, model, ids_list, layers, reference, rel=1e-6):
    for i, ids in enumerate(ids_list):
        for layer in layers:
            with torch.no_grad():
                expected = reference(model, ids, layer)
            got = table[(table["sample_index"] == i) & (table["layer"] == layer)].sort_values("head_index")
            assert len(got) == len(expected)
            for row, exp in zip(got.to_dict("records"), expected):
                for key, value in exp.items():
                    if isinstance(value, float) and math.isnan(value):
                        assert math.isnan(row[key]), key
                    else:
                        assert row[key] == pytest.approx(value, rel=rel, abs=1e-12), (key, i, layer, row["head_index"])


def _assert_bounds_hold(table):
    for col in RATIOS:
        values = table[col].dropna()
        assert (values <= 1 + 1e-9).all(), (col, values.max())
        assert (values > 0).all(), col
    for col in RATIOS[:4]:  # these bounds apply to every model
        assert table[col].notna().all(), col


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-bert", "tiny-dnabert"])
def test_tiny_models_against_projections_by_hand(name):
    source = resolve_model(name)
    model, tok = load_model(source).double(), load_tokenizer(source)
    _randomize_biases(model)
    ids = [tok(t)["input_ids"] for t in TEXTS]
    table = attention_norms(model, ids, [1, 2], batch_size=3, pad_token_id=0).table
    assert list(table.columns) == ATTENTION_COLUMNS[ATTENTION_COLUMNS.index("sample_index"):]
    assert len(table) == len(ids) * 2 * 4
    _compare(table, model, ids, [1, 2], REFERENCES[name])
    _assert_bounds_hold(table)
    if name == "tiny-llama":  # GQA: 4 query heads share 2 key/value heads
        assert table["kv_head_index"].tolist()[:4] == [0, 0, 1, 1]
    assert model.config._attn_implementation in ("sdpa", "eager")  # restored


def test_weight_bound_without_biases_and_rotary():
    model = build_tiny_model("tiny-bert").double()  # biases initialised to zero
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.self.query.bias.zero_()
            layer.attention.self.key.bias.zero_()
    ids = [[2, 10, 40, 77, 3], [2, 5, 3]]
    table = attention_norms(model, ids, [1, 2], batch_size=-1).table
    assert table["logits_unmasked_weight_bound"].notna().all()
    _compare(table, model, ids, [1, 2], reference_bert)
    _assert_bounds_hold(table)


@pytest.mark.minilm
@pytest.mark.slow
def test_minilm_against_projections_by_hand(minilm_source):
    model, tok = load_model(minilm_source).double(), load_tokenizer(minilm_source)
    ids = [tok(t)["input_ids"] for t in TEXTS[:2]]
    table = attention_norms(model, ids, [1, 6], batch_size=2, pad_token_id=tok.pad_token_id).table
    _compare(table, model, ids, [1, 6], reference_bert)
    _assert_bounds_hold(table)


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_gguf_decoder_against_projections_by_hand(smollm2_source):
    from qft_cli.models.loading import load_model as load

    model, tok = load(smollm2_source).double(), load_tokenizer(smollm2_source)  # 9 query, 3 key/value heads
    ids = [tok(t)["input_ids"] for t in TEXTS[:3]]
    depth = model.config.num_hidden_layers
    table = attention_norms(model, ids, [1, depth], batch_size=2, pad_token_id=0).table
    assert table["kv_head_index"].tolist()[:9] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    _compare(table, model, ids, [1, depth], reference_llama)
    _assert_bounds_hold(table)


def test_training_model_records_directly():
    from qft_cli.train.modeling_qft import (
        QftConfig,
        QftModel,
        apply_rotary,
        rotary_cos_sin,
    )

    torch.manual_seed(0)
    model = QftModel(QftConfig(vocab_size=50, d_model=16, num_heads=2, d_ff=32, num_layers=2,
                               layer_norm=True)).eval().double()
    _randomize_biases(model)
    ids = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]

    def reference(m, sample, layer):
        x = m.embed_tokens(torch.tensor([sample]))
        for block in m.layers[:layer - 1]:
            x = block(x, None)
        block = m.layers[layer - 1]
        x = block.attn_norm(x)
        attn = block.attn
        n = x.shape[1]
        heads = lambda z: z.view(1, n, attn.num_heads, attn.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x))
        cos, sin = rotary_cos_sin(n, attn.head_dim, attn.theta, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        ws = [_heads(lin.weight, lin.bias, attn.head_dim) for lin in (attn.q_proj, attn.k_proj, attn.v_proj)]
        return _expected(x[0], q[0], k[0], v[0], *ws[0], *ws[1], *ws[2], rotary=True)

    table = attention_norms(model, ids, [1, 2], batch_size=-1).table
    _compare(table, model, ids, [1, 2], reference)
    _assert_bounds_hold(table)
    assert all(m.qkv_observer is None for m in model.modules() if hasattr(m, "qkv_observer"))


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-bert", "tiny-dnabert"])
def test_alone_padded_and_unlimited_batches_agree(name):
    source = resolve_model(name)
    model, tok = load_model(source).double(), load_tokenizer(source)
    _randomize_biases(model)
    ids = [tok(t * (1 + i % 3))["input_ids"] for i, t in enumerate(TEXTS * 2)]
    alone = attention_norms(model, ids, [1, 2], batch_size=1).table
    padded = attention_norms(model, ids, [1, 2], batch_size=3, pad_token_id=5).table
    everything = attention_norms(model, ids, [1, 2], batch_size=-1).table
    for other in (padded, everything):
        assert other[["sample_index", "layer", "head_index", "num_tokens"]].equals(alone[["sample_index", "layer", "head_index", "num_tokens"]])
        for col in NUMERIC:
            np.testing.assert_allclose(other[col].to_numpy(), alone[col].to_numpy(), rtol=1e-6, equal_nan=True)


def test_float32_model_bounds_hold_on_every_row():
    source = resolve_model("tiny-llama")
    model, tok = load_model(source), load_tokenizer(source)
    table = attention_norms(model, [tok(t)["input_ids"] for t in TEXTS], [1, 2], batch_size=2).table
    _assert_bounds_hold(table)


def test_blocks_after_the_deepest_do_not_run():
    model = build_tiny_model("tiny-gpt2")
    calls = {0: 0, 1: 0}
    for i, block in enumerate(model.h):
        block.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
    table = attention_norms(model, [[1, 2, 3]], [1]).table
    assert calls == {0: 1, 1: 0} and set(table["layer"]) == {1}


class _OwnAttentionModel(torch.nn.Module):
    """A model with a transformers config whose attention never dispatches through the interface."""

    def __init__(self):
        super().__init__()
        from transformers import PretrainedConfig

        self.config = PretrainedConfig(num_hidden_layers=1)
        self.emb = torch.nn.Embedding(10, 8)
        self.layers = torch.nn.ModuleList([torch.nn.MultiheadAttention(8, 2, batch_first=True)])

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        for layer in self.layers:
            h = layer(h, h, h)[0]
        return h


def test_unsupported_architecture_is_one_clear_error():
    with pytest.raises(QftInputError, match="not supported for this architecture.*AttentionInterface"):
        attention_norms(_OwnAttentionModel().eval(), [[1, 2, 3]], [1])
    model = build_tiny_model("tiny-gpt2", reorder_and_upcast_attn=True)
    model.set_attn_implementation("eager")  # GPT-2's upcast path bypasses the AttentionInterface
    with pytest.raises(QftInputError, match="not supported for this architecture"):
        attention_norms(model, [[1, 2, 3]], [1])
    assert model.config._attn_implementation == "eager"


def test_eager_implementation_is_recorded_and_delegated():
    model = build_tiny_model("tiny-bert").double()
    model.set_attn_implementation("eager")
    ids = [[2, 10, 40, 77, 3], [2, 5, 3]]
    eager = attention_norms(model, ids, [1, 2], batch_size=-1).table
    with torch.no_grad():
        out = model(torch.tensor([ids[1]])).last_hidden_state
    model.set_attn_implementation("sdpa")
    sdpa = attention_norms(model, ids, [1, 2], batch_size=-1).table
    for col in NUMERIC:
        np.testing.assert_allclose(eager[col].to_numpy(), sdpa[col].to_numpy(), rtol=1e-9, equal_nan=True)
    with torch.no_grad():
        assert torch.allclose(model(torch.tensor([ids[1]])).last_hidden_state, out, rtol=1e-9, atol=1e-12)


def test_product_norms_match_the_formed_product():
    gen = torch.Generator().manual_seed(0)
    for n, m, p in ((50, 40, 8), (3, 5, 8), (8, 8, 8), (1, 30, 4)):
        a = torch.randn(2, n, p, generator=gen, dtype=torch.float64)
        b = torch.randn(2, m, p, generator=gen, dtype=torch.float64)
        s, f = product_norms(a, b)
        full = a @ b.mT
        assert s.tolist() == pytest.approx(torch.linalg.matrix_norm(full, ord=2).tolist(), rel=1e-10)
        assert f.tolist() == pytest.approx(torch.linalg.matrix_norm(full).tolist(), rel=1e-10)
        padded = torch.cat([a, torch.zeros(2, 7, p, dtype=torch.float64)], dim=1)  # zero rows change nothing
        assert product_norms(padded, b)[0].tolist() == pytest.approx(s.tolist(), rel=1e-12)


def test_gram_product_norms_match_the_formed_product_also_for_singular_grams():
    gen = torch.Generator().manual_seed(1)
    for n, m, p in ((50, 40, 8), (3, 5, 8), (8, 8, 8), (1, 30, 4)):  # (3, 5, 8): both Grams singular
        a = torch.randn(2, n, p, generator=gen, dtype=torch.float64)
        b = torch.randn(2, m, p, generator=gen, dtype=torch.float64)
        s, f = gram_product_norms(a.mT @ a, b.mT @ b)
        full = a @ b.mT
        assert s.tolist() == pytest.approx(torch.linalg.matrix_norm(full, ord=2).tolist(), rel=1e-10)
        assert f.tolist() == pytest.approx(torch.linalg.matrix_norm(full).tolist(), rel=1e-10)


@pytest.mark.parametrize("side", ["rows", "columns"])
def test_head_grams_give_each_heads_norms(side):
    blocks = torch.randn(5, 6, 20, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    grams = head_grams(blocks, side, chunk_bytes=6 * 20 * 8 * 2)  # two heads at a time
    assert grams.shape == ((5, 6, 6) if side == "rows" else (5, 20, 20)) and grams.dtype == torch.float64
    s, f = gram_norms(grams)
    whole = blocks.double()
    assert s.tolist() == pytest.approx(torch.linalg.matrix_norm(whole, ord=2).tolist(), rel=1e-12)
    assert f.tolist() == pytest.approx(torch.linalg.matrix_norm(whole).tolist(), rel=1e-12)
    with pytest.raises(ValueError):
        head_grams(blocks, "heads")


def test_weight_composites_with_gqa_pairing():
    gen = torch.Generator().manual_seed(0)
    heads, kv, dh, d = 4, 2, 3, 10
    wq = torch.randn(heads, dh, d, generator=gen, dtype=torch.float64)
    wk, wv = (torch.randn(kv, dh, d, generator=gen, dtype=torch.float64) for _ in range(2))
    wo = torch.randn(heads, d, dh, generator=gen, dtype=torch.float64)
    c = weight_composites(wq, wk, wv, wo)
    for h in range(heads):
        qk, ov = wq[h].T @ wk[h // 2], wo[h] @ wv[h // 2]  # d x d, formed explicitly
        assert c["qk_spectral_norm"][h].item() == pytest.approx(spec(qk), rel=1e-10)
        assert c["qk_frobenius_norm"][h].item() == pytest.approx(frob(qk), rel=1e-10)
        assert c["ov_spectral_norm"][h].item() == pytest.approx(spec(ov), rel=1e-10)
        assert c["ov_frobenius_norm"][h].item() == pytest.approx(frob(ov), rel=1e-10)


def test_parse_blocks():
    assert parse_blocks("all", 3) == [1, 2, 3]
    assert parse_blocks("1-2", 3) == [1, 2]
    with pytest.raises(QftInputError, match="layer 0 is the embedding"):
        parse_blocks("0,1", 3)
    with pytest.raises(QftInputError, match="does not exist"):
        parse_blocks("4", 3)


def test_fits_use_the_per_sample_maximum_over_heads():
    model = build_tiny_model("tiny-gpt2")
    ids = [list(range(1, n + 1)) for n in (3, 6, 11, 20)]
    table = attention_norms(model, ids, [1], labels={"model": "m", "model_alias": "m", "dataset": "d"}).table
    fits = attention_fits(table)
    assert sorted(set(fits["quantity"])) == ["k", "logits_unmasked", "q", "v"]
    assert list(fits.columns[:5]) == ["model", "model_alias", "dataset", "layer", "quantity"]
    per_sample = table.groupby("sample_index").agg(n=("num_tokens", "first"), y=("logits_unmasked_spectral_norm", "max"))
    from scipy.stats import linregress

    ref = linregress(np.log(per_sample["n"]), np.log(per_sample["y"]))
    row = fits[(fits.quantity == "logits_unmasked") & (fits.norm == "spectral")].iloc[0]
    assert row["exponent"] == pytest.approx(ref.slope, rel=1e-9)
    assert row["num_points"] == 4


def test_nonfinite_and_all_zero_inputs_are_named():
    model = build_tiny_model("tiny-bert")
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[77] = float("inf")
    result = attention_norms(model, [[2, 10, 11, 3], [2, 77, 3], [2, 12, 3]], [1], batch_size=-1)
    assert result.nonfinite == [(1, 1)] and result.all_zero == []
    bad = result.table[result.table["sample_index"] == 1]
    assert not bad["finite"].any() and bad["q_spectral_norm"].isna().all()
    assert result.table[result.table["sample_index"] != 1]["q_spectral_norm"].notna().all()
    zero = build_tiny_model("tiny-llama")
    with torch.no_grad():
        zero.embed_tokens.weight.zero_()
    result = attention_norms(zero, [[1, 2, 3]], [1])
    assert result.all_zero == [(0, 1)]


def test_qk_normalised_attention_has_no_q_k_or_weight_bound():
    # Qwen3 normalises q and k per head (q_norm, k_norm): ||X W_q|| no longer bounds Q, so those
    # bounds and the weight-only logits bound are NaN; V and the Q-K logits bound still hold
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    model = Qwen3Model(config).double().eval()
    ids = [[1, 5, 9, 13, 2], [3, 4, 6]]
    table = attention_norms(model, ids, [1, 2], batch_size=-1, pad_token_id=0).table
    assert len(table) == 2 * 2 * 4
    for col in ("q_spectral_bound", "k_spectral_bound", "logits_unmasked_weight_bound"):
        assert table[col].isna().all(), col
    for measured, bound in (("v_spectral_norm", "v_spectral_bound"),
                            ("logits_unmasked_spectral_norm", "logits_unmasked_qk_bound")):
        assert table[bound].notna().all() and (table[measured] <= table[bound] * (1 + 1e-9)).all(), bound
    # Q itself equals the q-normalised projection of X, computed by hand for block 1, sample 0
    x = model.embed_tokens(torch.tensor([ids[0]]))
    attn = model.layers[0].self_attn
    h = model.layers[0].input_layernorm(x)
    q = attn.q_norm(attn.q_proj(h).view(1, 5, 4, 8))
    cos, sin = model.rotary_emb(h, torch.arange(5)[None])
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

    q, _ = apply_rotary_pos_emb(q.transpose(1, 2), q.transpose(1, 2), cos, sin)
    expected = torch.linalg.matrix_norm(q[0], ord=2)
    got = table[(table["sample_index"] == 0) & (table["layer"] == 1)].sort_values("head_index")["q_spectral_norm"]
    np.testing.assert_allclose(got.to_numpy(), expected.detach().numpy(), rtol=1e-9)


def test_gemma_logits_use_query_pre_attn_scalar():
    """Issue 21: Gemma 3 multiplies Q K^T by query_pre_attn_scalar^-1/2, not d_head^-1/2. The same
    weights with query_pre_attn_scalar = d_head and = 4 d_head give block 1 the same Q, K, V and
    logits norms in the ratio (4 d_head / d_head)^-1/2 = 1/2, worked by hand; the d_head case is
    Q K^T / sqrt(d_head)."""
    from transformers import Gemma3TextConfig, Gemma3TextModel

    from qft_cli.measure.attention import logit_scale

    tables = {}
    for scalar in (16, 64):
        torch.manual_seed(0)
        config = Gemma3TextConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  query_pre_attn_scalar=scalar, sliding_window=4)
        model = Gemma3TextModel(config).double().eval()
        assert logit_scale(model.layers[0].self_attn, 16) == pytest.approx(scalar ** -0.5)
        tables[scalar] = attention_norms(model, [[2, 5, 9, 13, 7, 11], [2, 4, 6]], [1, 2], batch_size=-1).table
    a, b = (t[t["layer"] == 1].reset_index(drop=True) for t in (tables[16], tables[64]))  # same input X
    for col in ("q_spectral_norm", "k_spectral_norm", "v_spectral_norm"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-12)
    for col in ("logits_unmasked_spectral_norm", "logits_unmasked_frobenius_norm", "logits_unmasked_qk_bound"):
        np.testing.assert_allclose(b[col], a[col] * 0.5, rtol=1e-12)
    # d_head = query_pre_attn_scalar = 16: ||Q K^T||_2 / 4 <= ||Q||_2 ||K||_2 / 4
    assert (a["logits_unmasked_spectral_norm"] <= a["q_spectral_norm"] * a["k_spectral_norm"] / 4 * (1 + 1e-9)).all()
    assert (tables[64]["logits_unmasked_qk_bound_ratio"] <= 1 + 1e-9).all()
