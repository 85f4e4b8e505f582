"""The architecture zoo: every entry of qft_cli.models.architectures.ARCHITECTURES, built tiny and random
from transformers' config class and saved with save_pretrained, measured by `norms weights` (against
float64 torch.linalg on the stored tensors), `norms inputs --layers all` (against the model's own
hidden states) and `norms attention` (a decoder-only, an encoder-only, an encoder-decoder and an MoE model).

The references here never use qft_cli.models.layout: whole tensors are taken from the safetensors file,
fused ones are sliced by hand from the modules' own view/chunk code, latent attention is composed by hand
and checked against the module's forward pass.
"""

import re

import pytest
import torch
from safetensors.torch import load_file

from qft_cli.measure.attention import attention_norms
from qft_cli.measure.inputs import hidden_state_norms
from qft_cli.measure.weights import weight_norms, weights_by_layer
from qft_cli.models import layout
from qft_cli.models.architectures import ARCHITECTURES, architecture
from qft_cli.models.names import ModelSource
from qft_cli.system.errors import QftInputError

NAMES = [a.name for a in ARCHITECTURES]
BLOCK_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|albert_layer_groups)\.\d+\.")


def _build(arch):
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(arch.config()).eval()
    with torch.no_grad():  # gains away from 1, so that a composite forgetting them fails
        for name, p in model.named_parameters():
            if p.dim() == 1 and "layernorm" in name.lower() and "a_layernorm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name -> (model, saved directory, stored tensors, weight_norms result, or the exception it
    raised: re-raised by the tests of that architecture only); built once per module."""
    out = {}
    for arch in ARCHITECTURES:
        model = _build(arch)
        directory = tmp_path_factory.mktemp(arch.name)
        model.save_pretrained(directory)
        stored = load_file(directory / "model.safetensors")
        try:
            result = weight_norms(ModelSource(arch.name, "local", str(directory)), exact=True)
        except Exception as err:  # noqa: BLE001 (kept for the architecture's own test)
            result = err
        out[arch.name] = (model, directory, stored, result)
    return out


def _result(zoo, name):
    result = zoo[name][3]
    if isinstance(result, Exception):
        raise result
    return result


def _norms(w):
    w = w.double()
    return torch.linalg.matrix_norm(w, ord=2).item(), torch.linalg.matrix_norm(w, ord="fro").item()


def _hand_splits(name, stored, config):
    """parameter -> {matrix: oriented (d_out, d_in) block} for the fused tensors, sliced by hand."""
    out = {}
    for key, t in stored.items():
        t = t.double()
        if key.endswith("attn.c_attn.weight"):  # Conv1D (d, 3d): x @ W, then split(d, dim=-1)
            d = t.shape[0]
            out[key] = {m: t[:, i * d:(i + 1) * d].T for i, m in enumerate("qkv")}
        elif key.endswith("query_key_value.weight") and name == "falcon":
            heads, kv = config.num_attention_heads, config.num_kv_heads
            hd = config.hidden_size // heads
            g = t.view(kv, heads // kv + 2, hd, -1)  # FalconAttention._split_heads, new_decoder_architecture
            out[key] = {"q": g[:, :-2].reshape(-1, t.shape[1]), "k": g[:, -2].reshape(-1, t.shape[1]),
                        "v": g[:, -1].reshape(-1, t.shape[1])}
        elif key.endswith("query_key_value.weight"):  # NeoX and BLOOM: view(heads, 3, head_dim)
            heads = config.num_attention_heads if name == "gpt_neox" else config.n_head
            g = t.view(heads, 3, -1, t.shape[1])
            out[key] = {m: g[:, i].reshape(-1, t.shape[1]) for i, m in enumerate("qkv")}
        elif key.endswith("qkv_proj.weight"):  # Phi-3: q (H hd), k (H_kv hd), v (H_kv hd)
            hd = config.hidden_size // config.num_attention_heads
            q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
            out[key] = {"q": t[:q], "k": t[q:q + kv], "v": t[q + kv:]}
        elif key.endswith("gate_up_proj.weight"):  # Phi-3: gate, up = chunk(2, dim=-1)
            half = t.shape[0] // 2
            out[key] = {"ffn_gate": t[:half], "ffn_up": t[half:]}
    return out


def _latent(stored, prefix, config):
    """DeepSeek latent attention: effective W_q, W_k, W_v of one block composed by hand."""
    g = {n: stored[f"{prefix}.{n}"].double() for n in ("q_a_proj.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight",
                                                     "kv_b_proj.weight", "q_a_layernorm.weight", "kv_a_layernorm.weight")}
    nope, dv, r = config.qk_nope_head_dim, config.v_head_dim, config.kv_lora_rank
    heads = config.num_attention_heads
    wq = g["q_b_proj.weight"] @ torch.diag(g["q_a_layernorm.weight"]) @ g["q_a_proj.weight"]
    kv = g["kv_b_proj.weight"] @ torch.diag(g["kv_a_layernorm.weight"]) @ g["kv_a_proj_with_mqa.weight"][:r]
    kv = kv.view(heads, nope + dv, -1)
    rot = g["kv_a_proj_with_mqa.weight"][r:]
    wk = torch.cat([torch.cat([kv[h, :nope], rot]) for h in range(heads)])
    wv = torch.cat([kv[h, nope:] for h in range(heads)])
    return {"q": wq, "k": wk, "v": wv}


@pytest.mark.parametrize("name", NAMES)
def test_norms_weights_complete_and_exact(zoo, name):
    model, _, stored, _ = zoo[name]
    result = _result(zoo, name)
    table = result.table
    config = model.config
    assert table["finite"].all() and not result.unrecognised
    assert set(table["expert"].unique()) <= {"", "shared"} | {str(i) for i in range(8)}
    # completeness: every stored tensor of 2+ dimensions inside a block is measured, or is T5's bias table
    measured = set(table["parameter"]) | {p for v in table["parameter"] for p in v.split(" @ ")}
    for key, t in stored.items():
        if t.dim() >= 2 and BLOCK_RE.search(key) and "relative_attention_bias" not in key:
            assert key in measured, f"{name}: {key} not measured"
    splits = _hand_splits(name, stored, config)
    for parameter, rows in table.groupby("parameter", sort=False):
        if " @ " in parameter:  # latent attention composite, by hand
            prefix = parameter.split(" @ ")[-1].rsplit(".", 2)[0]
            ref = _latent(stored, prefix, config)
            for row in rows.itertuples():
                spec, frob = _norms(ref[row.matrix])
                assert (row.d_out, row.d_in) == tuple(ref[row.matrix].shape)
                assert row.spectral_norm == pytest.approx(spec, rel=1e-12)
                assert row.frobenius_norm == pytest.approx(frob, rel=1e-12)
            continue
        raw = stored[parameter].double()
        total = torch.linalg.matrix_norm(raw, ord="fro").item() ** 2
        assert (rows["frobenius_norm"] ** 2).sum() == pytest.approx(total, rel=1e-12), parameter
        if len(rows) == 1:  # a whole tensor
            spec, frob = _norms(raw)
            row = rows.iloc[0]
            assert row.spectral_norm == pytest.approx(spec, rel=1e-12), parameter
            assert row.frobenius_norm == pytest.approx(frob, rel=1e-12), parameter
            continue
        for row in rows.itertuples():  # a fused tensor: its blocks against slices formed by hand
            w = splits[parameter][row.matrix]
            spec, frob = _norms(w)
            assert (row.d_out, row.d_in) == tuple(w.shape)
            assert row.spectral_norm == pytest.approx(spec, rel=1e-12), (parameter, row.matrix)
            assert row.frobenius_norm == pytest.approx(frob, rel=1e-12), (parameter, row.matrix)
    # every block has its attention and FFN; the per-layer table holds one row per block and norm
    by_layer = weights_by_layer(table.assign(model_alias=name))
    for column in ("q", "k", "v", "o"):
        assert by_layer[column].notna().all(), (name, column)
    ffn = [c for c in by_layer.columns if c.startswith("ffn_down")]
    assert by_layer[ffn].notna().any(axis=1).all()


def test_moe_rows_per_expert_router_and_shared(zoo):
    for name, routed_key, shared in (("mixtral", "experts.{e}.w2.weight", False),
                                     ("qwen2_moe", "experts.{e}.down_proj.weight", True),
                                     ("deepseek_v3", "experts.{e}.down_proj.weight", True)):
        model, _, stored, _ = zoo[name]
        t = _result(zoo, name).table
        layer = 2
        rows = t[(t.layer == layer) & (t.matrix == "ffn_down") & (t.expert.str.isdigit())]
        assert sorted(rows.expert, key=int) == [str(e) for e in range(4)]
        for row in rows.itertuples():
            assert row.parameter.endswith(routed_key.format(e=row.expert))
        router = t[(t.layer == layer) & (t.matrix == "router") & (t.expert == "")]
        assert len(router) == 1 and tuple(router[["d_out", "d_in"]].iloc[0]) == (4, 32)
        assert (t[(t.layer == layer) & (t.expert == "shared")].shape[0] > 0) == shared
        by_layer = weights_by_layer(t.assign(model_alias=name)).query(f"layer == {layer} and norm == 'spectral'")
        values = rows.spectral_norm
        assert by_layer["ffn_down max/expert"].item() == pytest.approx(values.max(), rel=1e-15)
        assert by_layer["ffn_down median/expert"].item() == pytest.approx(values.median(), rel=1e-15)


def test_experts_stored_as_3d_tensors_split_per_expert():
    # transformers >= 5 keeps experts in memory as [num_experts, 2 * inter, d] gate_up_proj and
    # [num_experts, d, inter] down_proj (a GGUF stores them 3-D too); save_pretrained writes them per expert
    model = _build(architecture("mixtral"))
    params = dict(model.named_parameters())
    specs = [s for s in layout.classify_model(model) if s.expert and s.expert.isdigit() and s.layer == 1]
    assert len(specs) == 12 and {s.index for s in specs} == {0, 1, 2, 3}
    x = torch.randn(3, 32)
    experts = model.layers[0].mlp.experts
    for s in specs:
        w = s.extract(params[s.parameter].detach())
        e = s.index
        if s.matrix in ("ffn_gate", "ffn_up"):  # gate, up = linear(x, gate_up_proj[e]).chunk(2, dim=-1)
            gate, up = torch.nn.functional.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
            torch.testing.assert_close(x @ w.T, gate if s.matrix == "ffn_gate" else up)
        else:
            h = torch.randn(3, w.shape[1])
            torch.testing.assert_close(h @ w.T, torch.nn.functional.linear(h, experts.down_proj[e]))


def test_latent_attention_effective_matrices_match_the_module():
    # the effective W_q, W_k, W_v reproduce DeepseekV3Attention's queries, keys and values before rotary
    # embeddings, up to the per-token RMSNorm scalar of the latent
    arch = architecture("deepseek_v3")
    model = _build(arch)
    config = model.config
    attn = model.layers[0].self_attn
    stored = {k: v.detach() for k, v in model.state_dict().items()}
    ref = _latent(stored, "layers.0.self_attn", config)
    x = torch.randn(5, 32, dtype=torch.float64)
    attn = attn.double()
    with torch.no_grad():
        qa = attn.q_a_proj(x)
        q = attn.q_b_proj(attn.q_a_layernorm(qa))
        rms_q = torch.rsqrt(qa.pow(2).mean(-1, keepdim=True) + attn.q_a_layernorm.variance_epsilon)
        torch.testing.assert_close(q, (x @ ref["q"].T) * rms_q)
        ckv = attn.kv_a_proj_with_mqa(x)
        latent, k_rot = ckv[:, :config.kv_lora_rank], ckv[:, config.kv_lora_rank:]
        kv = attn.kv_b_proj(attn.kv_a_layernorm(latent)).view(5, config.num_attention_heads, -1)
        rms = torch.rsqrt(latent.pow(2).mean(-1, keepdim=True) + attn.kv_a_layernorm.variance_epsilon)
        nope = config.qk_nope_head_dim
        k_eff = (x @ ref["k"].T).view(5, config.num_attention_heads, -1)
        v_eff = (x @ ref["v"].T).view(5, config.num_attention_heads, -1)
        torch.testing.assert_close(kv[..., :nope], k_eff[..., :nope] * rms[:, None])
        torch.testing.assert_close(k_rot[:, None].expand(-1, config.num_attention_heads, -1), k_eff[..., nope:])
        torch.testing.assert_close(kv[..., nope:], v_eff * rms[:, None])
    # and the spec layout.classify gives is the one the table measured
    specs = {(s.layer, s.matrix): s for s in layout.classify_model(model)}
    tensors = {n: stored[n] for n in specs[(1, "k")].factors}
    torch.testing.assert_close(layout.latent_effective(specs[(1, "k")], tensors, config.to_dict()), ref["k"])


def test_albert_shared_layer_measured_once(zoo):
    result = _result(zoo, "albert")
    t = result.table
    assert sorted(t.layer.unique()) == [0, 1] and (t[t.layer == 1].shared_by_blocks == "1-2").all()
    assert result.shared_layers == {"encoder.albert_layer_groups.0": [1, 2]}
    assert set(t[t.layer == 0].matrix) == {"embedding", "embedding_projection"}
    by_layer = weights_by_layer(t.assign(model_alias="albert"))
    assert list(by_layer["blocks"]) == ["1-2", "1-2"]


def test_missing_expert_matrix_is_an_error(zoo, tmp_path):
    from safetensors.torch import save_file

    _, directory, stored, _ = zoo["mixtral"]
    gone = "layers.1.block_sparse_moe.experts.2.w3.weight"
    assert gone in stored
    broken = {k: v for k, v in stored.items() if k != gone}
    target = tmp_path / "m"
    target.mkdir()
    (target / "config.json").write_text((directory / "config.json").read_text())
    save_file(broken, str(target / "model.safetensors"))
    with pytest.raises(QftInputError, match="block 2 expert 2 has no ffn_up"):
        weight_norms(ModelSource("m", "local", str(target)))


def _tokens():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 120, (n,), generator=g).tolist() for n in (5, 8)]


def _reference_hidden(model, ids):
    """Per layer 0..L the (tokens, d) hidden states of one sample, from output_hidden_states, the last
    block's output from a hook of this test (the model's own last entry is after the final norm)."""
    encoder = model.get_encoder() if model.config.is_encoder_decoder else model
    blocks = None
    for _, module in encoder.named_modules():
        if isinstance(module, torch.nn.ModuleList) and module and "albert" not in type(module[0]).__name__.lower():
            blocks = module
            break
    if type(model).__name__ == "AlbertModel":
        blocks = model.encoder.albert_layer_groups
    last = []
    handle = blocks[-1].register_forward_hook(lambda _m, _a, out: last.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            out = encoder(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          output_hidden_states=True)
    finally:
        handle.remove()
    hidden = [h[0] for h in out.hidden_states]
    depth = len(hidden) - 1
    return hidden[:depth] + [last[-1][0]]


@pytest.mark.parametrize("name", NAMES)
def test_norms_inputs_equal_hidden_states(zoo, name):
    model = zoo[name][0]
    samples = _tokens()
    depth = len(_reference_hidden(model, samples[0])) - 1
    result = hidden_state_norms(model, samples, list(range(depth + 1)), batch_size=1)
    table = result.table
    assert len(table) == len(samples) * (depth + 1)
    for i, ids in enumerate(samples):
        for layer, h in enumerate(_reference_hidden(model, ids)):
            row = table[(table.sample_index == i) & (table.layer == layer)].iloc[0]
            spec, frob = _norms(h)
            assert row.spectral_norm == pytest.approx(spec, rel=1e-6), (name, layer)
            assert row.frobenius_norm == pytest.approx(frob, rel=1e-6), (name, layer)


@pytest.mark.parametrize("name", NAMES)
def test_norms_attention_runs_or_refuses_in_one_line(zoo, name):
    # runs on decoder-only (llama, ...), encoder-only (bert, ...), encoder-decoder (bart) and MoE
    # (mixtral, qwen2_moe) models; the others are refused with a QftInputError, never a traceback
    model = zoo[name][0]
    if not architecture(name).attention:
        with pytest.raises(QftInputError, match="not supported"):
            attention_norms(model, _tokens(), [1, 2], batch_size=2)
        return
    result = attention_norms(model, _tokens(), [1, 2], batch_size=2)
    t = result.table
    assert len(t) == 2 * 2 * 4 and t["finite"].all()
    assert t["v_bound_ratio"].notna().all() and t["logits_unmasked_qk_bound_ratio"].notna().all()
    for ratio in ("q_bound_ratio", "k_bound_ratio", "v_bound_ratio", "logits_unmasked_qk_bound_ratio"):
        # NaN only where the bound does not apply (q/k normalised per head: Gemma 3, OLMo 2, Qwen3)
        assert (t[ratio].isna() | (t[ratio] <= 1 + 1e-9)).all(), (name, ratio)


def test_norms_attention_covers_every_kind_of_model():
    supported = {a.name for a in ARCHITECTURES if a.attention}
    assert {"llama", "bert", "bart", "mixtral", "qwen2_moe", "opt", "falcon", "phi3"} <= supported


def test_norms_attention_refuses_shared_layers_in_one_line(zoo):
    with pytest.raises(QftInputError, match="shares one layer among its blocks"):
        attention_norms(zoo["albert"][0], _tokens(), [1], batch_size=1)


def test_norms_inputs_shared_layer_stops_after_the_deepest_block(zoo):
    # ALBERT runs its one layer twice: layer 1 is its first call, and the second call never runs
    model = zoo["albert"][0]
    calls = []
    handle = model.encoder.albert_layer_groups[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        result = hidden_state_norms(model, _tokens()[:1], [0, 1], batch_size=1)
    finally:
        handle.remove()
    ref = _reference_hidden(model, _tokens()[0])
    assert result.table.spectral_norm.iloc[1] == pytest.approx(_norms(ref[1])[0], rel=1e-6)
    assert len(calls) == 1


def test_cli_table_run_json_and_report_show_experts_and_shared_layers(zoo, tmp_path):
    from typer.testing import CliRunner

    from qft_cli.cli.app import app
    from qft_cli.report.weights import expert_series
    from qft_cli.runs.rundir import read_run_json

    runner = CliRunner()
    dirs = {n: zoo[n][1] for n in ("mixtral", "albert")}
    result = runner.invoke(app, ["norms", "weights", str(dirs["mixtral"]), str(dirs["albert"]), "--out",
                                 str(tmp_path / "o"), "--quiet", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert "ffn_down max/expert" in result.stdout and "ffn_down median/expert" in result.stdout
    assert ",blocks," in result.stdout and "1-2" in result.stdout
    run = next((tmp_path / "o").iterdir())
    meta = read_run_json(run)
    assert meta["shared_layers"] == {str(dirs["albert"]): {"encoder.albert_layer_groups.0": [1, 2]}}
    import pandas as pd

    table = pd.read_parquet(run / "norms_weights.parquet")
    assert set(table.loc[table.model_alias == str(dirs["mixtral"]), "expert"]) == {"", "0", "1", "2", "3"}
    series = expert_series(table[(table.model_alias == str(dirs["mixtral"])) & (table.layer >= 1)].assign(part=""))
    up = table[(table.model_alias == str(dirs["mixtral"])) & (table.layer == 1) & (table.matrix == "ffn_up")]
    row = series[(series.layer == 1) & (series.matrix == "ffn_up median/expert")]
    assert row.spectral_norm.item() == pytest.approx(up.spectral_norm.median(), rel=1e-15)
    report = runner.invoke(app, ["report", str(run), "--output", str(tmp_path / "r.html"), "--quiet"])
    assert report.exit_code == 0, report.output
    html = (tmp_path / "r.html").read_text().replace("\\u002f", "/")  # plotly's JSON escapes "/"
    assert "ffn_up max/expert" in html and "ffn_up median/expert" in html


def test_qft_models_lists_the_zoo():
    from typer.testing import CliRunner

    from qft_cli.cli.app import app

    out = CliRunner().invoke(app, ["models"], terminal_width=400).stdout
    for arch in ARCHITECTURES:
        assert arch.name in out
