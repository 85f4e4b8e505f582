"""Normalisation library: effective norms against float64 torch.linalg, layouts, persistence."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qft_cli.models.layout import classify_model
from qft_cli.models.names import build_tiny_model
from qft_cli.system.errors import QftInputError
from qft_cli.train import normalization as qn


def _matrix_norm(w: torch.Tensor, ord) -> float:
    # independent reference: float64 SVD / entrywise norm from torch.linalg
    return float(torch.linalg.matrix_norm(w.detach().double(), ord=ord))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _converge(model: nn.Module, steps: int = 2000) -> None:
    """Run the power iteration to convergence without changing the weights: train-mode forwards
    of the parametrizations (one step each), then many steps of torch's own power method (random
    64 x 64 matrices have close top singular values, so convergence needs many steps)."""
    model.train()
    with torch.no_grad():
        for _, module, name, par in qn._parametrizations(model):
            getattr(module, name)
            if par.method == "spectral":
                original = module.parametrizations[name].original
                oriented = original.mT if par.transposed else original
                for i, sn in enumerate(par.spectral):
                    sn._power_method(par._block(oriented, i), steps)
    model.eval()


def _tiny(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_tiny_model(name)


def _oriented_blocks(model):
    """Effective oriented blocks via layout specs on the parametrized model's *current* weights."""
    out = {}
    for m in qn.effective_matrices(model):
        out[(m.parameter, m.matrix)] = m.weight
    return out


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
def test_frobenius_every_block_has_norm_one(name):
    model = _tiny(name)
    specs = qn.apply_normalization(model, "frobenius")
    assert specs, "something must be normalised"
    mats = qn.effective_matrices(model)
    assert len(mats) == len(specs)
    for m in mats:
        assert abs(_matrix_norm(m.weight, "fro") - 1.0) < 1e-5, (m.parameter, m.matrix)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
def test_spectral_every_block_within_1e3_after_convergence(name):
    model = _tiny(name)
    qn.apply_normalization(model, "spectral")
    _converge(model)
    for m in qn.effective_matrices(model):
        assert abs(_matrix_norm(m.weight, 2) - 1.0) < 1e-3, (m.parameter, m.matrix)


def test_gpt2_conv1d_fused_qkv_blocks_normalised_separately():
    model = _tiny("tiny-gpt2")
    raw = model.h[0].attn.c_attn.weight.detach().clone()  # Conv1D: (d_in, d_out) = (64, 192)
    qn.apply_normalization(model, "spectral", targets="attention", layers=[1])
    _converge(model)
    eff = model.h[0].attn.c_attn.weight.detach()
    assert eff.shape == raw.shape
    oriented, raw_oriented = eff.mT, raw.mT  # (192, 64): rows = outputs
    for i in range(3):
        block = oriented[64 * i: 64 * (i + 1)]
        ref = raw_oriented[64 * i: 64 * (i + 1)].double()
        ref = ref / torch.linalg.matrix_norm(ref, ord=2)
        assert abs(_matrix_norm(block, 2) - 1.0) < 1e-3
        torch.testing.assert_close(block.double(), ref, atol=2e-4, rtol=1e-3)
    # the whole fused matrix is *not* spectral-normalised as one: its norm exceeds 1
    assert _matrix_norm(oriented, 2) > 1.01


def test_bert_style_fused_wqkv_linear_blocks_frobenius():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.Wqkv = nn.Linear(8, 24)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.Module()
            self.attention.self = Attn()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.ModuleList([Layer(), Layer()])

    torch.manual_seed(1)
    model = Model()
    raw = model.layer[1].attention.self.Wqkv.weight.detach().clone()
    qn.apply_normalization(model, "frobenius", layers=[2])
    eff = model.layer[1].attention.self.Wqkv.weight.detach()
    for i in range(3):
        ref = raw[8 * i: 8 * (i + 1)].double()
        torch.testing.assert_close(eff[8 * i: 8 * (i + 1)].double(), ref / torch.linalg.matrix_norm(ref, "fro"))
    assert not qn.parametrize.is_parametrized(model.layer[0].attention.self.Wqkv)


def test_only_selected_layers_and_roles_are_touched():
    model = _tiny("tiny-bert")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    specs = qn.apply_normalization(model, "frobenius", targets="ffn", layers="2")
    assert {(s.layer, s.matrix) for s in specs} == {(2, "ffn_up"), (2, "ffn_down")}
    touched = {s.parameter for s in specs}
    for name, value in before.items():
        module_path, tensor = name.rsplit(".", 1)
        module = model.get_submodule(module_path)
        if name in touched:
            assert qn.parametrize.is_parametrized(module, tensor)
            assert not torch.equal(getattr(module, tensor), value)
        else:
            assert not qn.parametrize.is_parametrized(module, tensor), name
            assert torch.equal(getattr(module, tensor), value), name


def test_tied_embedding_never_normalised():
    from transformers import AutoModelForCausalLM

    model = build_tiny_model("tiny-gpt2", AutoModelForCausalLM)
    assert model.lm_head.weight is model.transformer.wte.weight
    specs = qn.apply_normalization(model, "spectral")
    assert all(s.role != "embedding" for s in specs)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not qn.parametrize.is_parametrized(model.transformer.wte)


def test_tied_attention_weight_is_refused():
    model = _tiny("tiny-bert")
    model.encoder.layer[1].attention.self.query.weight = model.encoder.layer[0].attention.self.query.weight
    with pytest.raises(QftInputError, match="tied"):
        qn.apply_normalization(model, "frobenius", targets="q")


@pytest.mark.parametrize("method", ["spectral", "frobenius"])
def test_learnable_scale_bounded_by_max_gamma(method):
    model = _tiny("tiny-bert")
    qn.apply_normalization(model, method, max_gamma=1.0)
    with torch.no_grad():
        for _, _, _, par in qn._parametrizations(model):
            par.g.fill_(30.0)  # sigmoid -> 1: the bound is reached but not exceeded
    _converge(model)
    for m in qn.effective_matrices(model):
        ord_ = 2 if method == "spectral" else "fro"
        assert _matrix_norm(m.weight, ord_) <= 1.0 + 1e-3
        assert m.gamma is not None and m.gamma <= 1.0
    # a scale of 0.3 * sigmoid(0) = 0.15 gives effective norm 0.15
    model = _tiny("tiny-bert")
    qn.apply_normalization(model, "frobenius", max_gamma=0.3)
    for m in qn.effective_matrices(model):
        assert abs(_matrix_norm(m.weight, "fro") - 0.15) < 1e-6
    assert {round(r["gamma"], 6) for r in qn.gammas(model)} == {0.15}


def test_gamma_learns_and_gradients_reach_original():
    model = _tiny("tiny-bert").train()
    qn.apply_normalization(model, "frobenius", max_gamma=1.0)
    ids = torch.randint(5, 200, (2, 7))
    model(input_ids=ids).last_hidden_state.pow(2).sum().backward()
    par = next(p for _, _, _, p in qn._parametrizations(model))
    assert par.g.grad is not None and torch.isfinite(par.g.grad).all()
    orig = model.encoder.layer[0].attention.self.query.parametrizations.weight.original
    assert orig.grad is not None and orig.grad.abs().sum() > 0


def test_two_forwards_then_one_backward_spectral():
    model = _tiny("tiny-gpt2").train()
    qn.apply_normalization(model, "spectral")
    ids = torch.randint(0, 256, (2, 6))
    a = model(input_ids=ids).last_hidden_state.sum()
    b = model(input_ids=ids.flip(0)).last_hidden_state.sum()
    (a - b).backward()
    assert model.h[0].attn.c_attn.parametrizations.weight.original.grad is not None


def _eval_out(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


@pytest.mark.parametrize("method", ["spectral", "frobenius"])
def test_deepcopy_and_state_dict_round_trip(method):
    model = _tiny("tiny-gpt2").train()
    qn.apply_normalization(model, method, max_gamma=2.0)
    ids = torch.randint(0, 256, (2, 6))
    model(input_ids=ids)  # a training step of the power iteration
    ref = _eval_out(model, ids)
    clone = copy.deepcopy(model)
    torch.testing.assert_close(_eval_out(clone, ids), ref, rtol=0, atol=0)
    # the copy owns its tensors
    for (n, p), (_, q) in zip(model.state_dict().items(), clone.state_dict().items()):
        assert p.data_ptr() != q.data_ptr(), n
    fresh = _tiny("tiny-gpt2")
    with torch.no_grad():  # different weights before loading, so loading must do the work
        for p in fresh.parameters():
            p.add_(0.1)
    qn.apply_normalization(fresh, **qn.normalization_settings(model))
    assert not torch.equal(_eval_out(fresh, ids), ref)
    fresh.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(_eval_out(fresh, ids), ref, rtol=0, atol=0)
    if method == "spectral":  # the power-iteration state travels in the state dict
        assert any(k.endswith("_u") for k in model.state_dict())


def test_save_pretrained_reload_identical(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel

    model = _tiny("tiny-bert").train()
    qn.apply_normalization(model, "spectral", targets="attention")
    ids = torch.randint(5, 200, (2, 6))
    model(input_ids=ids)
    ref = _eval_out(model, ids)
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert any("parametrizations" in k for k in state)
    fresh = AutoModel.from_config(type(model.config).from_pretrained(tmp_path))
    settings = getattr(fresh.config, qn.CONFIG_KEY)
    assert settings["method"] == "spectral"
    qn.apply_normalization(fresh, **settings)
    fresh.load_state_dict(state, strict=False)
    torch.testing.assert_close(_eval_out(fresh, ids), ref, rtol=0, atol=0)


def test_eval_is_deterministic_and_does_not_iterate():
    model = _tiny("tiny-bert")
    qn.apply_normalization(model, "spectral")
    u = model.encoder.layer[0].attention.self.query.parametrizations.weight[0].spectral[0]._u.clone()
    ids = torch.randint(5, 200, (1, 5))
    a, b = _eval_out(model, ids), _eval_out(model, ids)
    assert torch.equal(a, b)
    assert torch.equal(u, model.encoder.layer[0].attention.self.query.parametrizations.weight[0].spectral[0]._u)
    qn.effective_matrices(model.train())  # observing in train mode does not step the iteration either
    assert torch.equal(u, model.encoder.layer[0].attention.self.query.parametrizations.weight[0].spectral[0]._u)


def test_fold_keeps_outputs_and_removes_parametrizations():
    model = _tiny("tiny-gpt2").train()
    qn.apply_normalization(model, "spectral", max_gamma=1.0)
    ids = torch.randint(0, 256, (2, 6))
    model(input_ids=ids)
    ref = _eval_out(model, ids)
    qn.fold_normalization(model)
    assert not any(qn.parametrize.is_parametrized(m) for m in model.modules())
    assert not hasattr(model.config, qn.CONFIG_KEY)
    torch.testing.assert_close(_eval_out(model, ids), ref, rtol=0, atol=0)
    assert classify_model(model)  # plain parameter names again


def test_global_rng_untouched():
    model = _tiny("tiny-bert")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    qn.apply_normalization(model, "spectral")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="spectrall"), "unknown normalisation"),
    (dict(method="spectral", targets="atention"), "unknown target"),
    (dict(method="spectral", layers=[3]), "outside"),
    (dict(method="spectral", layers="0"), "layer 0"),
    (dict(method="frobenius", max_gamma=0.0), "max-gamma"),
])
def test_bad_input_is_one_line(kwargs, match):
    model = _tiny("tiny-bert")
    with pytest.raises(QftInputError, match=match) as err:
        qn.apply_normalization(model, **kwargs)
    assert "\n" not in str(err.value)


def test_already_normalised_and_none():
    model = _tiny("tiny-bert")
    assert qn.apply_normalization(model, "none") == []
    qn.apply_normalization(model, "frobenius")
    with pytest.raises(QftInputError, match="already"):
        qn.apply_normalization(model, "spectral")
    assert qn.variant_name("frobenius", 1.0) == "frobenius_subnormalised"
    assert qn.variant_name(None) == "vanilla"


def _stack(module_factory, container="layer"):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            setattr(self, container, nn.ModuleList([module_factory(), module_factory()]))

    return Model()


def test_dnabert2_gated_ffn_halves_spectral_separately():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Module()
            self.mlp.gated_layers = nn.Linear(8, 2 * 12, bias=False)
            self.mlp.wo = nn.Linear(12, 8)

    torch.manual_seed(0)
    model = _stack(Block)
    raw = model.layer[0].mlp.gated_layers.weight.detach().clone()
    specs = qn.apply_normalization(model, "spectral", targets="ffn", layers=[1])
    assert [s.matrix for s in specs] == ["ffn_gate", "ffn_up", "ffn_down"]
    par = model.layer[0].mlp.gated_layers.parametrizations.weight[0]
    assert len(par.spectral) == 2 and par.spectral[0]._u.shape == (12,)  # one power-iteration state per block
    _converge(model)
    eff = model.layer[0].mlp.gated_layers.weight.detach()
    for rows in (slice(0, 12), slice(12, 24)):
        ref = raw[rows].double()
        torch.testing.assert_close(eff[rows].double(), ref / torch.linalg.matrix_norm(ref, 2), atol=1e-6, rtol=1e-5)


def test_neox_interleaved_qkv_blocks():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.Module()
            self.attention.query_key_value = nn.Linear(8, 24)

    torch.manual_seed(0)
    model = _stack(Attn, container="layers")
    model.config = type("Cfg", (), {"num_attention_heads": 2})()
    raw = model.layers[1].attention.query_key_value.weight.detach().clone()
    qn.apply_normalization(model, "frobenius", targets="attention", layers=[2])
    eff = model.layers[1].attention.query_key_value.weight.detach()
    # rows laid out (heads=2, 3, head_dim=4): q rows are 0-3 and 12-15
    idx = torch.arange(24).view(2, 3, 4)
    for part in range(3):
        rows = idx[:, part, :].reshape(-1)
        ref = raw[rows].double()
        torch.testing.assert_close(eff[rows].double(), ref / torch.linalg.matrix_norm(ref, "fro"))


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("method", ["frobenius", "spectral"])
def test_forward_uses_the_normalised_matrices(name, method):
    """Independent of qft's helpers: the normalised model's eval forward equals that of a plain copy
    whose selected weights were divided by float64 torch.linalg norms of their (row-block) matrices."""
    model = _tiny(name)
    plain = copy.deepcopy(model).double()
    specs = qn.apply_normalization(model, method)
    if method == "spectral":
        _converge(model)
    params = dict(plain.named_parameters())
    with torch.no_grad():
        for spec in specs:  # the GPT-2 Conv1D stores (d_in, d_out): output rows are its columns
            w = params[spec.parameter]
            oriented = w.mT if type(plain.get_submodule(spec.parameter.rsplit(".", 1)[0])).__name__ == "Conv1D" else w
            rows = torch.arange(oriented.shape[0])
            rows = rows if spec.rows is None else rows[spec.row_index(len(rows))]
            block = oriented[rows]
            oriented[rows] = block / torch.linalg.matrix_norm(block, ord="fro" if method == "frobenius" else 2)
    ids = torch.randint(5, 200, (2, 7))
    expected = _eval_out(plain, ids)
    got = _eval_out(model.double(), ids)
    torch.testing.assert_close(got, expected, rtol=1e-3 if method == "spectral" else 1e-6, atol=1e-4)


def test_norm_variants_one_meaning_of_all():
    from qft_cli.system.errors import QftInputError

    assert qn.norm_variants("all") == [("vanilla", None, None), ("spectral", "spectral", None),
                                       ("frobenius", "frobenius", None)]
    assert qn.norm_variants("frobenius,vanilla") == [("vanilla", None, None), ("frobenius", "frobenius", None)]
    assert qn.norm_variants("none") == [("vanilla", None, None)]
    assert qn.norm_variants("frobenius", max_gamma=0.5) == [("frobenius_subnormalised", "frobenius", 0.5)]
    assert qn.norm_variants("all", subnormalised=True) == [
        ("vanilla", None, None), ("spectral", "spectral", None), ("frobenius", "frobenius", None),
        ("spectral_subnormalised", "spectral", 1.0), ("frobenius_subnormalised", "frobenius", 1.0)]
    for bad, kwargs in (("spectal", {}), ("all,vanilla", {}), ("", {}), ("vanilla", {"subnormalised": True}),
                        ("none", {"max_gamma": 1.0})):
        with pytest.raises(QftInputError):
            qn.norm_variants(bad, **kwargs)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
def test_exact_spectral_norms_bound_every_block(name):
    """After the weights moved away from the power iteration (as in training), one exact sigma_max
    per block makes every effective spectral norm 1 to float32 rounding: <= 1 + 1e-6 (fused blocks of
    GPT-2's Conv1D, Llama's gated FFN included); without it the lagging estimate exceeds the bound."""
    model = _tiny(name)
    qn.apply_normalization(model, "spectral")
    with torch.no_grad():
        for _, module, tensor_name, _ in qn._parametrizations(model):
            original = module.parametrizations[tensor_name].original
            original.add_(torch.randn_like(original) * original.std())  # the iteration vectors now lag
    lagging = [_matrix_norm(m.weight, 2) for m in qn.effective_matrices(model)]
    assert max(lagging) > 1 + 1e-3
    assert qn.set_exact_spectral_norms(model) == len(lagging)
    for m in qn.effective_matrices(model):
        assert abs(_matrix_norm(m.weight, 2) - 1.0) <= 1e-6, (m.parameter, m.matrix)
