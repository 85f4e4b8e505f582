"""Native DNABERT-2: checkpoint names, ALiBi, padding, layout, and a forward pass against an
independent re-implementation from the raw state dict."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from qft_cli.models.dnabert2 import (
    HUB_ID,
    TINY_DNABERT,
    alibi_bias,
    alibi_head_slopes,
    build_tiny_dnabert,
    is_dnabert2_source,
    save_published_style_checkpoint,
)
from qft_cli.models.layout import classify_model
from qft_cli.models.loading import load_dnabert2, load_model
from qft_cli.models.names import ModelSource
from qft_cli.system.errors import QftInputError


def read_checkpoint(directory) -> dict:
    """The checkpoint's tensors read independently of qft's reader: safetensors' ``load_file`` or
    ``torch.load(weights_only=True)`` on every weight file in ``directory``."""
    from pathlib import Path

    from safetensors.torch import load_file

    out = {}
    for path in sorted(Path(directory).iterdir()):
        if path.suffix == ".safetensors":
            out.update(load_file(str(path)))
        elif path.suffix == ".bin":
            out.update(torch.load(path, map_location="cpu", weights_only=True))
    assert out, f"no weight files in {directory}"
    return out


@pytest.fixture(scope="module")
def published_config(shared_data):
    """The published ``config.json`` of zhihan1996/DNABERT-2-117M (no model_type, architectures or
    pad_token_id)."""
    path = shared_data / "dnabert2" / "config.json"
    raw = json.loads(path.read_text())
    assert not {"model_type", "architectures", "pad_token_id"} & set(raw)
    return path


@pytest.fixture(scope="module")
def published_dir(tmp_path_factory, published_config):
    """The published config with tiny sizes (every other key as published) and random weights."""
    return save_published_style_checkpoint(tmp_path_factory.mktemp("dnabert2-hub"), seed=3,
                                           config_json=published_config, **TINY_DNABERT)


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


def test_safetensors_checkpoint_and_base_model(tmp_path, published_config):
    directory = save_published_style_checkpoint(tmp_path, seed=1, safetensors=True, config_json=published_config,
                                                **TINY_DNABERT)
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
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

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
    from transformers import AutoModelForSequenceClassification

    import qft_cli.models.names as models

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


# ----------------------------------------------------------------------------- issue 8: as published

def test_unk_row_gets_a_gradient():
    """The published embedding has no padding index: id 0 ([UNK]) is trained like any other id."""
    model = build_tiny_dnabert("sequence", num_labels=2).train()
    assert model.bert.embeddings.word_embeddings.padding_idx is None
    ids = torch.tensor([[1, 0, 7, 0, 2]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([1]))
    out.loss.backward()
    grad = model.bert.embeddings.word_embeddings.weight.grad
    assert grad[0].abs().sum() > 0 and grad[5].abs().sum() == 0  # [UNK] used, id 5 not


def test_finetune_seed_seeds_the_new_head(published_dir):
    from qft_cli.train.finetune import load_classifier

    source = ModelSource(str(published_dir), "local", str(published_dir))
    a, b, c = (load_classifier(source, 2, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert torch.equal(a.bert.pooler.dense.weight, b.bert.pooler.dense.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    assert torch.equal(a.bert.encoder.layer[0].mlp.wo.weight, c.bert.encoder.layer[0].mlp.wo.weight)  # loaded


def _with_tokenizer(directory, shared_data):
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(shared_data / "dnabert2" / name, directory / name)
    return directory


VARIANTS = [pytest.param((False, "masked_lm"), id="bin-MaskedLM"),
            pytest.param((True, "sequence"), id="safetensors-SeqCls")]


@pytest.fixture(scope="module", params=VARIANTS)
def published_with_tokenizer(request, tmp_path_factory, published_config, shared_data):
    """The published layout (config.json with tiny sizes and the published vocabulary of 4096, its
    tokenizer files, weights as .bin/MaskedLM or safetensors/SequenceClassification)."""
    safetensors, head = request.param
    directory = save_published_style_checkpoint(tmp_path_factory.mktemp("dnabert2-pub"), seed=4, safetensors=safetensors,
                                                head=head, config_json=published_config,
                                                **{**TINY_DNABERT, "vocab_size": 4096})
    return _with_tokenizer(directory, shared_data)


def _cli(*args):
    from typer.testing import CliRunner

    from qft_cli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_published_layout_norms_inputs(published_with_tokenizer, tmp_path):
    import pandas as pd

    result = _cli("norms", "inputs", published_with_tokenizer, "--dataset", "random", "--max-tokens", 6,
                  "--layers", "all", "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(next(tmp_path.iterdir()) / "norms_inputs.parquet")
    assert sorted(table.layer.unique()) == [0, 1, 2] and table.finite.all() and not table.all_zero.any()
    from qft_cli.models.names import load_tokenizer

    tok = load_tokenizer(ModelSource("d", "local", str(published_with_tokenizer)))
    assert len(tok) == 4096 and tok.convert_ids_to_tokens(0) == "[UNK]"


def test_published_layout_norms_weights(published_with_tokenizer, tmp_path):
    import pandas as pd

    result = _cli("norms", "weights", published_with_tokenizer, "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(next(tmp_path.iterdir()) / "norms_weights.parquet")
    raw = read_checkpoint(published_with_tokenizer)
    wo = raw["bert.encoder.layer.1.mlp.wo.weight"].double()
    got = table[(table.layer == 2) & (table.matrix == "ffn_down")].spectral_norm.item()
    assert got == pytest.approx(torch.linalg.matrix_norm(wo, ord=2).item(), rel=1e-9)
    assert sorted(table[table.layer == 1].matrix) == sorted(["q", "k", "v", "o", "ffn_gate", "ffn_up", "ffn_down"])


def test_published_layout_finetune(published_with_tokenizer, tmp_path, shared_data):
    import pandas as pd
    import typer
    from typer.testing import CliRunner

    from qft_cli.cli.finetune import finetune_command

    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 16), ("dev", 8), ("test", 8)):
        pd.read_csv(shared_data / "gue" / "prom_core_notata" / f"{split}.csv").head(n).to_csv(data / f"{split}.csv",
                                                                                            index=False)
    ft = typer.Typer()
    ft.command("finetune")(finetune_command)
    ft.command("version")(lambda: None)
    result = CliRunner().invoke(ft, ["finetune", str(published_with_tokenizer), "--data-dir", str(data), "--out",
                                     str(tmp_path / "o"), "--max-steps", "1", "--batch-size", "4",
                                     "--eval-batch-size", "8", "--warmup-ratio", "0", "-q"])
    assert result.exit_code == 0, result.output
    meta = json.loads((next((tmp_path / "o").iterdir()) / "run.json").read_text())
    expected_new = [] if "classifier.weight" in read_checkpoint(published_with_tokenizer) else [
        "bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias", "classifier.weight"]
    assert meta.get("new_parameters", []) == expected_new


@pytest.mark.slow
def test_published_config_as_is_full_size(tmp_path_factory, published_config, shared_data, tmp_path):
    """The published config.json byte for byte (117M parameters, random weights): the model is
    built from it and ``norms inputs`` runs (``norms weights`` reads the same keys: the tiny-size
    tests above cover it)."""
    directory = save_published_style_checkpoint(tmp_path_factory.mktemp("dnabert2-full"), seed=0,
                                                config_json=published_config)
    assert (directory / "config.json").read_bytes() == published_config.read_bytes()
    _with_tokenizer(directory, shared_data)
    result = _cli("norms", "inputs", directory, "--dataset", "random", "--max-tokens", 3, "--layers", "0,1",
                  "--out", tmp_path / "i", "--quiet")
    assert result.exit_code == 0, result.output


def test_dnabert2_tokenizer_offline_from_shared_data(monkeypatch, shared_data):
    from qft_cli.data.tasks import build_tokenizer, validate_tokenizer_spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("QFT_SHARED_DATA", str(shared_data))
    import qft_cli.models.names as models

    def not_cached(*args, **kwargs):
        raise QftInputError("model dnabert is not in the local Hugging Face cache")

    monkeypatch.setattr(models, "load_tokenizer", not_cached)
    data = type("D", (), {"kind": "sequence_classification", "dataset": "gue", "splits": {}})()
    tok = build_tokenizer("dnabert2", data)
    assert len(tok) == 4096 and tok.pad_token == "[PAD]" and tok.pad_token_id == 3 and tok.unk_token_id == 0
    ids = tok("ACGTACGTAC")["input_ids"]
    assert ids[0] == tok.cls_token_id == 1 and ids[-1] == tok.sep_token_id == 2
    # --tokenizer PATH: a tokenizer.json or its directory give the same ids
    path = shared_data / "dnabert2" / "tokenizer.json"
    validate_tokenizer_spec("gue", str(path), None)
    assert build_tokenizer(str(path), data)("ACGTACGTAC")["input_ids"] == ids
    assert build_tokenizer(str(path.parent), data)("ACGTACGTAC")["input_ids"] == ids
    with pytest.raises(QftInputError, match="does not exist"):
        validate_tokenizer_spec("gue", str(shared_data / "nope" / "tokenizer.json"), None)
    monkeypatch.setenv("QFT_SHARED_DATA", str(shared_data / "nope"))
    with pytest.raises(QftInputError, match="--tokenizer PATH"):
        build_tokenizer("dnabert2", data)


@pytest.mark.parametrize("overrides", [{}, {"hidden_size": 48, "num_attention_heads": 12},
                                       {"alibi_starting_size": 8}])
def test_left_padding_pools_the_first_real_token(overrides, tmp_path):
    """Issue 21: under left padding the classifier pools the first real token ([CLS]), so a
    left-padded sequence gets the logits it gets alone (4 and 12 heads, and sequences longer than
    alibi_starting_size), for a checkpoint saved as pytorch_model.bin and read back."""
    from qft_cli.models.dnabert2 import save_published_style_checkpoint
    from qft_cli.models.loading import load_dnabert2

    directory = save_published_style_checkpoint(tmp_path / "ckpt", seed=3, head="sequence", **overrides)
    assert (directory / "pytorch_model.bin").is_file()
    model = load_dnabert2(directory, num_labels=2, hidden_dropout_prob=0.0)
    short = [2, 40, 41, 42, 43, 3]
    long = [2] + list(range(50, 70)) + [3]
    batch = torch.zeros(2, len(long), dtype=torch.long)
    mask = torch.zeros_like(batch)
    batch[0, -len(short):], mask[0, -len(short):] = torch.tensor(short), 1
    batch[1], mask[1] = torch.tensor(long), 1
    with torch.no_grad():
        alone = model(torch.tensor([short])).logits[0]
        left = model(batch, attention_mask=mask).logits
        hidden = model.bert(batch, attention_mask=mask).last_hidden_state
        hidden_alone = model.bert(torch.tensor([short])).last_hidden_state[0]
    torch.testing.assert_close(hidden[0, -len(short):], hidden_alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(left[0], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(left[1], model(torch.tensor([long])).logits[0].detach(), rtol=1e-5, atol=1e-6)
