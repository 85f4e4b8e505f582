"""The qft transformer: layout names, rotary maths, padding, heads, embedding init, save/reload."""

from __future__ import annotations

import pytest
import torch

from qft_cli.models.layout import classify_model
from qft_cli.system.errors import QftInputError
from qft_cli.train import normalization as qn
from qft_cli.train.modeling_qft import (
    QftConfig,
    QftForSequenceClassification,
    apply_rotary,
    build_model,
    rotary_cos_sin,
)


def _config(**kw):
    base = dict(vocab_size=30, d_model=16, num_heads=4, d_ff=24, num_layers=2, num_labels=3, dropout=0.1,
                attention_dropout=0.1)
    base.update(kw)
    return QftConfig(**base)


def test_layout_finds_every_matrix_with_its_layer():
    model = build_model(_config())
    found = {(s.layer, s.matrix) for s in classify_model(model)}
    expected = {(0, "embedding")} | {(l, m) for l in (1, 2) for m in ("q", "k", "v", "o", "ffn_up", "ffn_down")}
    assert found == expected
    spec = next(s for s in classify_model(model) if (s.layer, s.matrix) == (2, "ffn_up"))
    assert spec.parameter == "model.layers.1.ffn.up_proj.weight" and spec.extract(
        model.model.layers[1].ffn.up_proj.weight).shape == (24, 16)


def test_rotary_matches_complex_multiplication():
    torch.manual_seed(0)
    t, d = 7, 8
    x = torch.randn(1, 1, t, d, dtype=torch.float64)
    cos, sin = rotary_cos_sin(t, d, 10000.0, "cpu", torch.float64)
    got = apply_rotary(x, cos, sin)
    # independent: pair (x_i, x_{i+d/2}) as a complex number times exp(i * p * theta^(-2i/d))
    half = d // 2
    z = torch.complex(x[..., :half], x[..., half:])
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / d)
    angle = torch.arange(t, dtype=torch.float64)[:, None] * freqs[None, :]
    rot = z * torch.polar(torch.ones_like(angle), angle)
    torch.testing.assert_close(got, torch.cat([rot.real, rot.imag], dim=-1))
    # relative position property: <R_p q, R_s k> depends only on p - s
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    cos, sin = rotary_cos_sin(10, d, 10000.0, "cpu", torch.float64)
    rq = apply_rotary(q.expand(1, 1, 10, d), cos, sin)[0, 0]
    rk = apply_rotary(k.expand(1, 1, 10, d), cos, sin)[0, 0]
    assert float(rq[5] @ rk[2]) == pytest.approx(float(rq[7] @ rk[4]), rel=1e-6)  # angles are float32, as in HF


def test_padded_batch_gives_same_outputs_as_alone():
    model = build_model(_config()).eval()
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 3]])
    alone = model(ids, torch.ones_like(ids)).logits
    batch = torch.tensor([[2, 5, 6, 7, 8, 9, 3], [2, 11, 12, 3, 0, 0, 0]])
    mask = (torch.arange(7)[None] < torch.tensor([[7], [4]])).long()
    torch.testing.assert_close(model(batch, mask).logits[:1], alone)
    short = model(batch[1:, :4], mask[1:, :4]).logits
    torch.testing.assert_close(model(batch, mask).logits[1:], short, rtol=1e-5, atol=1e-6)


def test_heads_and_losses_against_cross_entropy():
    torch.manual_seed(0)
    ids = torch.randint(0, 30, (3, 5))
    seq = build_model(_config()).eval()
    with torch.no_grad():
        out = seq(ids, labels=torch.tensor([0, 2, 1]))
    assert out.logits.shape == (3, 3)
    assert float(out.loss) == pytest.approx(float(torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2, 1]))))
    tok = build_model(_config(task="token_classification")).eval()
    labels = torch.tensor([[-100, 1, 2, -100, 0]] * 3)
    with torch.no_grad():
        out = tok(ids, labels=labels)
    assert out.logits.shape == (3, 5, 3)
    keep = labels != -100
    assert float(out.loss) == pytest.approx(float(torch.nn.functional.cross_entropy(out.logits[keep], labels[keep])))


def test_attention_dropout_only_in_training():
    model = build_model(_config(attention_dropout=0.5, dropout=0.0))
    ids = torch.randint(0, 30, (2, 6))
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)


def test_embedding_from_pretrained_and_frozen():
    emb = torch.randn(30, 16)
    model = build_model(_config(), embedding=emb, freeze_embedding=True)
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert not model.get_input_embeddings().weight.requires_grad
    with pytest.raises(QftInputError, match="pass --d-model 12"):
        build_model(_config(), embedding=torch.randn(30, 12))


def test_minilm_embedding_init(minilm_source):
    from qft_cli.train.modeling_qft import pretrained_embedding

    emb = pretrained_embedding("minilm")
    assert emb.shape == (30522, 384)
    model = build_model(_config(vocab_size=30522, d_model=384, num_heads=6, d_ff=64, num_layers=1), embedding=emb)
    assert torch.equal(model.get_input_embeddings().weight, emb)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert", "tiny-gpt2"])
def test_pretrained_embedding_equals_the_loaded_models_input_embedding(name):
    # read as one tensor from the checkpoint (no model built) = the embedding of the loaded model
    from qft_cli.models.loading import load_model
    from qft_cli.models.names import resolve_model
    from qft_cli.train.modeling_qft import pretrained_embedding

    expected = load_model(resolve_model(name)).get_input_embeddings().weight.detach().float()
    assert torch.equal(pretrained_embedding(name), expected)


def test_bad_shapes():
    with pytest.raises(QftInputError, match="not divisible"):
        build_model(_config(d_model=18, num_heads=4))
    with pytest.raises(QftInputError, match="odd"):
        build_model(_config(d_model=12, num_heads=4))
    with pytest.raises(QftInputError, match="--num-heads must be at least 1"):  # not a ZeroDivisionError
        build_model(_config(d_model=16, num_heads=0))


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(1)
    expected = torch.rand(2)
    torch.manual_seed(1)
    a = build_model(_config(), seed=7)
    assert torch.equal(torch.rand(2), expected)
    b = build_model(_config(), seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _aligned_copy(model):
    """Every parameter and buffer moved into freshly allocated (64-byte aligned) memory, same bits."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.data = t.data.clone()
    return model


@pytest.mark.parametrize("method", [None, "spectral", "frobenius"])
def test_save_pretrained_from_pretrained_identical(tmp_path, method):
    """What a save/reload guarantees: the same bits in every tensor of the state dict, and hence the
    same logits bit for bit once the tensors sit in aligned memory. Straight from ``from_pretrained``
    the tensors are views of the memory-mapped safetensors file (4-byte aligned), where the BLAS
    matrix-vector kernel of the spectral norm's ``u^T W v`` sums in another order: the logits then
    agree to float32 rounding only (seen: 3.5e-10 absolute, 3e-7 relative), not bit for bit."""
    from transformers import AutoModelForSequenceClassification

    model = build_model(_config()).train()
    if method:
        qn.apply_normalization(model, method, max_gamma=1.0 if method == "frobenius" else None)
    ids = torch.randint(0, 30, (2, 6))
    model(ids)  # a training forward (power-iteration step)
    model.eval()
    ref = model(ids).logits
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(again, QftForSequenceClassification)
    saved, loaded = model.state_dict(), again.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    torch.testing.assert_close(again(ids).logits, ref, rtol=1e-6, atol=1e-6)
    _aligned_copy(again)
    torch.testing.assert_close(again(ids).logits, ref, rtol=0, atol=0)
    if method:
        qn.fold_normalization(again)
        torch.testing.assert_close(again(ids).logits, ref, rtol=0, atol=0)
