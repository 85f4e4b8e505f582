"""``--export``: normalisation folded into plain weights, reloaded by stock transformers in a
separate Python process where qft cannot be imported, with identical logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.nn.utils import parametrize

from qft_cli.models.dnabert2 import build_tiny_dnabert
from qft_cli.models.names import build_tiny_model
from qft_cli.system.errors import QftInputError
from qft_cli.train.export import export_model, fold_parametrizations, needs_remote_code


class _ScaledFrobenius(nn.Module):
    """Test-local parametrization W -> gamma W / ||W||_F (independent of qft's library)."""

    def __init__(self, gamma: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.tensor(gamma))

    def forward(self, weight):
        return self.gamma * weight / weight.norm()


def _normalise_every_linear(model: nn.Module) -> int:
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and "classifier" not in name:
            if count % 2:
                torch.nn.utils.parametrizations.spectral_norm(module)
            else:
                parametrize.register_parametrization(module, "weight", _ScaledFrobenius(0.7))
            count += 1
    return count


_RELOAD = r"""
import sys


class HideQft:  # qft may be installed (pip install -e .): make it unimportable in this process
    def find_spec(self, name, path=None, target=None):
        if name == "qft_cli" or name.startswith("qft_cli."):
            raise ImportError("qft is hidden: the export must load with stock transformers alone")


sys.meta_path.insert(0, HideQft())
import json, torch, transformers
directory, ids_path, out_path, remote = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
model = transformers.AutoModelForSequenceClassification.from_pretrained(directory, trust_remote_code=remote).eval()
data = torch.load(ids_path, weights_only=True)
with torch.no_grad():
    logits = model(input_ids=data["ids"], attention_mask=data["mask"]).logits
torch.save({"logits": logits, "cls": type(model).__name__}, out_path)
"""


def _stock_logits(directory, ids, mask, tmp_path):
    torch.save({"ids": ids, "mask": mask}, tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"), TOKENIZERS_PARALLELISM="false")
    remote = "1" if needs_remote_code(directory) else "0"
    subprocess.run([sys.executable, "-c", _RELOAD, str(directory), str(tmp_path / "ids.pt"),
                    str(tmp_path / "out.pt"), remote], cwd=tmp_path, env=env, check=True, timeout=120)
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    return out["logits"], out["cls"]


@pytest.mark.parametrize("family", ["tiny-bert", "tiny-dnabert"])
def test_export_round_trip_with_stock_transformers(family, tmp_path):
    from transformers import AutoModelForSequenceClassification

    if family == "tiny-bert":
        model = build_tiny_model("tiny-bert", AutoModelForSequenceClassification, num_labels=2)
    else:
        model = build_tiny_dnabert("sequence", num_labels=2)
    assert _normalise_every_linear(model) > 4
    model.train()
    x = torch.randint(5, 261, (4, 12))
    mask = torch.ones_like(x)
    mask[1, 7:] = 0
    model(input_ids=x, attention_mask=mask)  # one training step of power iteration
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=x, attention_mask=mask).logits
    out = export_model(model, tmp_path / "export")
    assert any(parametrize.is_parametrized(m) for m in model.modules())  # the input model is untouched
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("parametrizations" in k or "gamma" in k for k in keys)
    config = json.loads((out / "config.json").read_text())
    assert needs_remote_code(out) == (family == "tiny-dnabert")
    if family == "tiny-dnabert":
        assert "bert.encoder.layer.0.attention.self.Wqkv.weight" in keys
        assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_qft_dnabert2.")
    logits, cls_name = _stock_logits(out, x, mask, tmp_path)
    assert cls_name.endswith("ForSequenceClassification")
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)


def test_fold_computes_the_effective_weight():
    layer = nn.Linear(5, 3)
    parametrize.register_parametrization(layer, "weight", _ScaledFrobenius(0.5))
    folded = fold_parametrizations(nn.Sequential(layer))[0]
    raw = layer.parametrizations.weight.original
    torch.testing.assert_close(folded.weight, 0.5 * raw / raw.norm())
    assert torch.linalg.matrix_norm(folded.weight, "fro").item() == pytest.approx(0.5, rel=1e-6)


def test_export_refuses_a_file(tmp_path):
    model = build_tiny_dnabert("sequence", num_labels=2)
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(QftInputError, match="is a file"):
        export_model(model, target)


def test_export_of_qft_train_model_folds_and_reloads(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from qft_cli.train.modeling_qft import QftConfig, build_model
    from qft_cli.train.normalization import apply_normalization

    config = QftConfig(vocab_size=32, d_model=16, num_heads=2, d_ff=32, num_layers=1, num_labels=2,
                       task="sequence_classification")
    model = build_model(config, seed=0)
    apply_normalization(model, "frobenius", max_gamma=1.0)
    model.eval()
    x = torch.randint(0, 32, (2, 7))
    with torch.no_grad():
        expected = model(input_ids=x).logits
    out = export_model(model, tmp_path / "qft")
    assert "qft_normalization" not in json.loads((out / "config.json").read_text())
    again = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert not any(parametrize.is_parametrized(m) for m in again.modules())
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=x).logits, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("how", ["fold", "export"])
@pytest.mark.parametrize("method", ["spectral", "frobenius"])
def test_fold_and_export_leave_the_input_model_working(how, method, tmp_path):
    """fold_parametrizations / export_model work on a copy (issue 21, item 7): afterwards the input
    model still has its parametrizations, its state dict and its forward pass, in train and eval."""
    from transformers import AutoModelForSequenceClassification

    from qft_cli.train.normalization import apply_normalization

    model = build_tiny_model("tiny-bert", AutoModelForSequenceClassification, num_labels=2)
    apply_normalization(model, method)
    assert _normalise_every_linear(model.bert.pooler) == 1  # a torch parametrization beside qft's
    x = torch.randint(5, 261, (2, 9))
    model.eval()
    with torch.no_grad():
        before = model(input_ids=x).logits
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if how == "fold":
        folded = fold_parametrizations(model)
        assert not any(parametrize.is_parametrized(m) for m in folded.modules())
    else:
        export_model(model, tmp_path / "export")
    assert sum(parametrize.is_parametrized(m) for m in model.modules()) > 4
    assert model.state_dict().keys() == state.keys()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, before, rtol=0, atol=0)
    model.train()
    model(input_ids=x).logits.sum().backward()  # still trainable
