"""Orientation, layer numbering and fused-projection splits, checked against the modules' own maths."""

import torch

from qft_cli.models import layout
from qft_cli.models.names import build_tiny_model


def _specs_by(specs):
    return {(s.part, s.layer, s.matrix): s for s in specs}


def test_gpt2_conv1d_orientation_and_c_attn_split():
    model = build_tiny_model("tiny-gpt2")
    d = model.config.n_embd
    specs = _specs_by(layout.classify_model(model))
    params = dict(model.named_parameters())
    attn = model.h[0].attn
    x = torch.randn(3, d, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fused = attn.c_attn(x) - attn.c_attn.bias  # Conv1D: x @ weight, weight stored (d_in, d_out)
        for i, name in enumerate("qkv"):
            w = specs[("", 1, name)].extract(params["h.0.attn.c_attn.weight"])
            assert w.shape == (d, d)  # (d_out, d_in)
            torch.testing.assert_close(x @ w.T, fused[:, i * d:(i + 1) * d], rtol=1e-5, atol=1e-6)
        up = specs[("", 1, "ffn_up")].extract(params["h.0.mlp.c_fc.weight"])
        assert up.shape == (model.config.n_inner, d)
        torch.testing.assert_close(x @ up.T, model.h[0].mlp.c_fc(x) - model.h[0].mlp.c_fc.bias, rtol=1e-5, atol=1e-6)
        down = specs[("", 1, "ffn_down")].extract(params["h.0.mlp.c_proj.weight"])
        assert down.shape == (d, model.config.n_inner)


def test_layer_numbering_and_embedding_once():
    model = build_tiny_model("tiny-bert")
    specs = layout.classify_model(model)
    assert specs[0].matrix == "embedding" and specs[0].layer == 0
    assert [s.matrix for s in specs].count("embedding") == 1
    assert sorted({s.layer for s in specs}) == [0, 1, 2]
    q2 = _specs_by(specs)[("", 2, "q")]
    assert q2.parameter == "encoder.layer.1.attention.self.query.weight"
    assert _specs_by(specs)[("", 1, "o")].parameter == "encoder.layer.0.attention.output.dense.weight"
    assert _specs_by(specs)[("", 1, "ffn_down")].parameter == "encoder.layer.0.output.dense.weight"


def test_gqa_keeps_real_shapes():
    model = build_tiny_model("tiny-llama")
    params = dict(model.named_parameters())
    specs = _specs_by(layout.classify_model(model))
    shapes = {m: tuple(specs[("", 1, m)].extract(params[specs[("", 1, m)].parameter]).shape)
              for m in ("q", "k", "v", "o", "ffn_gate", "ffn_up", "ffn_down")}
    assert shapes == {"q": (64, 64), "k": (32, 64), "v": (32, 64), "o": (64, 64),
                      "ffn_gate": (128, 64), "ffn_up": (128, 64), "ffn_down": (64, 128)}


def test_fused_wqkv_rows_and_gated_layers():
    d, inter = 12, 20
    names = [("bert.embeddings.word_embeddings.weight", (50, d)),
             ("bert.encoder.layer.0.attention.self.Wqkv.weight", (3 * d, d)),
             ("bert.encoder.layer.0.attention.output.dense.weight", (d, d)),
             ("bert.encoder.layer.0.mlp.gated_layers.weight", (2 * inter, d)),
             ("bert.encoder.layer.0.mlp.wo.weight", (d, inter))]
    specs = _specs_by(layout.classify(names))
    w = torch.arange(3 * d * d, dtype=torch.float32).view(3 * d, d)
    for i, m in enumerate("qkv"):
        torch.testing.assert_close(specs[("", 1, m)].extract(w), w[i * d:(i + 1) * d])
    g = torch.randn(2 * inter, d)
    torch.testing.assert_close(specs[("", 1, "ffn_gate")].extract(g), g[:inter])
    torch.testing.assert_close(specs[("", 1, "ffn_up")].extract(g), g[inter:])
    assert specs[("", 1, "ffn_down")].parameter.endswith("mlp.wo.weight")


def test_multihead_attention_in_proj():
    mha = torch.nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16)
    stack = torch.nn.TransformerEncoder(mha, num_layers=2, enable_nested_tensor=False)
    specs = _specs_by(layout.classify_model(stack))
    assert {m for (_, l, m) in specs if l == 1} == {"q", "k", "v", "o", "ffn_up", "ffn_down"}
    w = stack.layers[0].self_attn.in_proj_weight
    torch.testing.assert_close(specs[("", 1, "k")].extract(w), w[8:16])


def test_phi3_style_qkv_proj_gqa():
    cfg = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 16}
    names = [("model.layers.0.self_attn.qkv_proj.weight", (16 + 8 + 8, 16)),
             ("model.layers.0.self_attn.o_proj.weight", (16, 16))]
    specs = _specs_by(layout.classify(names, cfg))
    w = torch.randn(32, 16)
    assert specs[("", 1, "q")].extract(w).shape == (16, 16)
    torch.testing.assert_close(specs[("", 1, "k")].extract(w), w[16:24])
    torch.testing.assert_close(specs[("", 1, "v")].extract(w), w[24:32])


def test_neox_interleaved_query_key_value():
    from transformers import GPTNeoXConfig, GPTNeoXModel

    cfg = GPTNeoXConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=32, rotary_pct=1.0)
    torch.manual_seed(0)
    model = GPTNeoXModel(cfg).eval()
    specs = _specs_by(layout.classify_model(model))
    qkv = model.layers[0].attention.query_key_value
    x = torch.randn(2, 16)
    with torch.no_grad():
        fused = (qkv(x) - qkv.bias).view(2, 4, 3 * 4)  # GPT-NeoX: (heads, 3 * head_dim)
        q_ref = fused[..., :4].reshape(2, 16)
        v_ref = fused[..., 8:].reshape(2, 16)
        torch.testing.assert_close(x @ specs[("", 1, "q")].extract(qkv.weight).T, q_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x @ specs[("", 1, "v")].extract(qkv.weight).T, v_ref, rtol=1e-5, atol=1e-6)


def test_encoder_decoder_stacks_and_cross_attention():
    from transformers import BartConfig, BartModel

    cfg = BartConfig(vocab_size=60, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)
    specs = layout.classify_model(BartModel(cfg))
    keys = {(s.part, s.layer, s.matrix) for s in specs}
    assert ("encoder", 2, "ffn_down") in keys and ("decoder", 1, "cross_q") in keys
    assert ("decoder", 1, "q") in keys and not any(k[0] == "" and k[2] != "embedding" for k in keys)
    assert [s.matrix for s in specs].count("embedding") == 1


def test_lm_head_and_position_embeddings_are_not_listed():
    names = [("transformer.wte.weight", (10, 4)), ("transformer.wpe.weight", (16, 4)), ("lm_head.weight", (10, 4)),
             ("transformer.h.0.attn.c_attn.weight", (4, 12))]
    specs = layout.classify(names)
    assert [s.parameter for s in specs if s.matrix == "embedding"] == ["transformer.wte.weight"]
    assert not any("lm_head" in s.parameter or "wpe" in s.parameter for s in specs)


def test_gpt2_cross_attention_c_attn_is_k_and_v():
    # GPT-2 cross-attention: q from its own q_attn, c_attn = Conv1D(d -> 2d) holding k | v
    from transformers import GPT2Config, GPT2Model

    d = 12
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=50, n_embd=d, n_layer=1, n_head=2, n_inner=24, add_cross_attention=True,
                                 bos_token_id=0, eos_token_id=0)).eval()
    specs = layout.classify_model(model)
    cross = [(s.matrix, s.parameter.rsplit(".", 2)[-2]) for s in specs if s.matrix.startswith("cross_")]
    assert sorted(cross) == [("cross_k", "c_attn"), ("cross_o", "c_proj"), ("cross_q", "q_attn"), ("cross_v", "c_attn")]
    by = _specs_by(specs)
    ca = model.h[0].crossattention
    x = torch.randn(3, d, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        k_ref, v_ref = (ca.c_attn(x) - ca.c_attn.bias).split(d, dim=1)
        for name, ref in (("cross_k", k_ref), ("cross_v", v_ref)):
            w = by[("", 1, name)].extract(ca.c_attn.weight)
            assert w.shape == (d, d)
            torch.testing.assert_close(x @ w.T, ref, rtol=1e-5, atol=1e-6)
