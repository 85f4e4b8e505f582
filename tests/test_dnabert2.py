"""Native DNABERT-2: checkpoint names, ALiBi, padding, layout, and a forward pass against an
independent re-implementation from the raw state dict."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from qft_cli.dnabert2 import (HUB_ID, alibi_bias, alibi_head_slopes, build_tiny_dnabert, is_dnabert2_source,
                              save_published_style_checkpoint)
from qft_cli.errors import QftInputError
from qft_cli.layout import classify_model
from qft_cli.loading import load_dnabert2, load_model
from qft_cli.loading import read_state_dict as read_checkpoint
from qft_cli.models import ModelSource


@pytest.fixture(scope="module")
def published_dir(tmp_path_factory):
    return save_published_style_checkpoint(tmp_path_factory.mktemp("dnabert2-hub"), seed=3)


def test_published_checkpoint_loads_with_every_key(published_dir):
    raw = read_checkpoint(published_dir)
    assert "bert.encoder.layer.0.attention.self.Wqkv.weight" in raw
    assert "bert.encoder.layer.1.mlp.gated_layers.weight" in raw and "cls.predictions.decoder.bias" in raw
    model = load_dnabert2(published_dir, num_labels=2)
    state = model.state_dict()
    for name, tensor in raw.items():
        if name.startswith("cls."):
            assert name not in state
            continue
        assert torch.equal(state[name], tensor), name
    # only the new heads are not from the checkpoint
    assert sorted(set(state) - set(raw)) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                             "classifier.bias", "classifier.weight"]


def test_safetensors_checkpoint_and_base_model(tmp_path):
    directory = save_published_style_checkpoint(tmp_path, seed=1, safetensors=True)
    model = load_dnabert2(directory, task="base")
    raw = read_checkpoint(directory)
    assert torch.equal(model.encoder.layer[1].mlp.wo.weight, raw["bert.encoder.layer.1.mlp.wo.weight"])


def test_renamed_key_is_an_error_listing_it(tmp_path, published_dir):
    raw = read_checkpoint(published_dir)
    raw["bert.encoder.layer.1.attention.self.qkv.weight"] = raw.pop("bert.encoder.layer.1.attention.self.Wqkv.weight")
    (tmp_path / "config.json").write_text((published_dir / "config.json").read_text())
    torch.save(raw, tmp_path / "pytorch_model.bin")
    with pytest.raises(QftInputError) as err:
        load_dnabert2(tmp_path, num_labels=2)
    message = str(err.value)
    assert "\n" not in message
    assert "missing from the checkpoint: 1 (bert.encoder.layer.1.attention.self.Wqkv.weight)" in message
    assert "unexpected in the checkpoint: 1 (bert.encoder.layer.1.attention.self.qkv.weight)" in message


def test_wrong_shape_and_non_dnabert_config_are_errors(tmp_path, published_dir):
    raw = read_checkpoint(published_dir)
    raw["bert.encoder.layer.0.mlp.wo.weight"] = torch.zeros(3, 3)
    (tmp_path / "config.json").write_text((published_dir / "config.json").read_text())
    torch.save(raw, tmp_path / "pytorch_model.bin")
    with pytest.raises(QftInputError, match=r"of another shape: 1 \(bert.encoder.layer.0.mlp.wo.weight \(3, 3\) != \(64, 128\)\)"):
        load_dnabert2(tmp_path, num_labels=2)
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(QftInputError, match="not a DNABERT-2 model"):
        load_dnabert2(other)


def test_alibi_slopes_against_the_formula():
    # powers of two: 2^(-8 i / n), i = 1..n
    assert alibi_head_slopes(8) == pytest.approx([2.0 ** -i for i in range(1, 9)], rel=1e-15)
    assert alibi_head_slopes(4) == pytest.approx([2.0 ** (-2 * i) for i in range(1, 5)], rel=1e-15)
    # 12 heads (DNABERT-2): the 8 slopes of 8 heads, then slopes 1, 3, 5, 7 (1-based) of 16 heads: 2^(-i/2)
    expected = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5]
    assert alibi_head_slopes(12) == pytest.approx(expected, rel=1e-15)
    # 6 heads: 4 slopes of 4 heads then slopes 1, 3 of 8 heads
    assert alibi_head_slopes(6) == pytest.approx([0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125], rel=1e-15)


def test_alibi_bias_matrix():
    bias = alibi_bias(12, 5, dtype=torch.float64)
    slopes = alibi_head_slopes(12)
    assert bias.shape == (12, 5, 5)
    for h in (0, 7, 11):
        for i in range(5):
            for j in range(5):
                assert bias[h, i, j].item() == pytest.approx(-slopes[h] * abs(i - j), rel=1e-15, abs=0)


def _reference_logits(state: dict[str, torch.Tensor], ids: list[int], num_heads: int, eps: float) -> torch.Tensor:
    """DNABERT-2 on one unpadded sequence written out from the formulas, from the raw state dict."""
    def ln(x, prefix):
        return F.layer_norm(x, x.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], eps)

    x = state["bert.embeddings.word_embeddings.weight"][ids] + state["bert.embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "bert.embeddings.LayerNorm").double()
    state = {k: v.double() for k, v in state.items()}
    n, d = x.shape
    hd = d // num_heads
    slopes = alibi_head_slopes(num_heads)
    layer = 0
    while f"bert.encoder.layer.{layer}.mlp.wo.weight" in state:
        p = f"bert.encoder.layer.{layer}."
        w, b = state[p + "attention.self.Wqkv.weight"], state[p + "attention.self.Wqkv.bias"]
        q, k, v = (x @ w[i * d:(i + 1) * d].T + b[i * d:(i + 1) * d] for i in range(3))
        heads = []
        for h in range(num_heads):
            cols = slice(h * hd, (h + 1) * hd)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(hd)
            scores = scores - slopes[h] * torch.tensor([[abs(i - j) for j in range(n)] for i in range(n)],
                                                       dtype=torch.float64)
            heads.append(torch.softmax(scores, dim=-1) @ v[:, cols])
        attn = torch.cat(heads, dim=1) @ state[p + "attention.output.dense.weight"].T + state[p + "attention.output.dense.bias"]
        x = ln(attn + x, p + "attention.output.LayerNorm")
        gu = x @ state[p + "mlp.gated_layers.weight"].T
        inter = gu.shape[1] // 2
        ffn = F.gelu(gu[:, :inter]) * gu[:, inter:]
        x = ln(ffn @ state[p + "mlp.wo.weight"].T + state[p + "mlp.wo.bias"] + x, p + "mlp.layernorm")
        layer += 1
    pooled = torch.tanh(x[0] @ state["bert.pooler.dense.weight"].T + state["bert.pooler.dense.bias"])
    return pooled @ state["classifier.weight"].T + state["classifier.bias"]


def test_forward_matches_independent_reference():
    model = build_tiny_dnabert("sequence", num_labels=3).double()
    ids = [2, 17, 99, 45, 200, 3]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    reference = _reference_logits(model.state_dict(), ids, model.config.num_attention_heads,
                                  model.config.layer_norm_eps)
    torch.testing.assert_close(logits, reference, rtol=1e-10, atol=1e-12)


def test_same_sequence_alone_and_in_a_padded_batch():
    model = build_tiny_dnabert("sequence", num_labels=2)
    token_model = build_tiny_dnabert("token", num_labels=5)
    short = [2, 40, 41, 42, 3]
    long = [2] + list(range(50, 61)) + [3]
    batch = torch.zeros(2, len(long), dtype=torch.long)
    mask = torch.zeros_like(batch)
    batch[0, :len(short)], mask[0, :len(short)] = torch.tensor(short), 1
    batch[1], mask[1] = torch.tensor(long), 1
    with torch.no_grad():
        alone = model(torch.tensor([short])).logits[0]
        padded = model(batch, attention_mask=mask).logits[0]
        alone_long = model(torch.tensor([long])).logits[0]
        padded_long = model(batch, attention_mask=mask).logits[1]
        tok_alone = token_model(torch.tensor([short])).logits[0]
        tok_padded = token_model(batch, attention_mask=mask).logits[0, :len(short)]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded_long, alone_long, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tok_padded, tok_alone, rtol=1e-5, atol=1e-6)


def test_layout_finds_every_matrix_per_layer():
    model = build_tiny_dnabert("sequence", num_labels=2)
    specs = classify_model(model)
    for layer in (1, 2):
        found = sorted(s.matrix for s in specs if s.layer == layer)
        assert found == sorted(["q", "k", "v", "o", "ffn_gate", "ffn_up", "ffn_down"])
    q = next(s for s in specs if s.layer == 1 and s.matrix == "q")
    wqkv = model.bert.encoder.layer[0].attention.self.Wqkv.weight
    assert torch.equal(q.extract(wqkv), wqkv[:64])
    assert [s.matrix for s in specs if s.layer == 0] == ["embedding"]


def test_models_load_model_uses_native_class_for_local_dnabert2(published_dir):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    source = ModelSource(str(published_dir), "local", str(published_dir))
    assert is_dnabert2_source(str(published_dir), "local")
    assert is_dnabert2_source(HUB_ID, "hub") and not is_dnabert2_source("bert-base-uncased", "hub")
    model = load_model(source, auto_class=AutoModelForSequenceClassification, num_labels=4)
    assert type(model).__name__ == "DnaBert2ForSequenceClassification" and model.config.num_labels == 4
    tok = load_model(source, auto_class=AutoModelForTokenClassification, num_labels=3)
    assert type(tok).__name__ == "DnaBert2ForTokenClassification"


def test_save_pretrained_round_trip(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = build_tiny_dnabert("sequence", num_labels=2)
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    native = load_dnabert2(tmp_path)
    x = torch.randint(5, 261, (3, 9))
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, model(x).logits, rtol=0, atol=0)
        torch.testing.assert_close(native(x).logits, model(x).logits, rtol=0, atol=0)


def test_dnabert_alias_routes_to_the_native_class(monkeypatch, published_dir):
    """The hub id resolves to qft's classes without remote code (the hub download is replaced by
    the local published-style directory)."""
    import qft_cli.models as models
    from transformers import AutoModelForSequenceClassification

    calls = []

    def fake_snapshot(source, allow_patterns):
        calls.append((source.location, tuple(allow_patterns)))
        return published_dir

    monkeypatch.setattr(models, "hub_snapshot", fake_snapshot)
    source = models.resolve_model("dnabert")
    assert source.location == HUB_ID
    model = load_model(source, auto_class=AutoModelForSequenceClassification, num_labels=2)
    assert type(model).__name__ == "DnaBert2ForSequenceClassification"
    assert calls and calls[0][0] == HUB_ID and "pytorch_model.bin" in calls[0][1]
