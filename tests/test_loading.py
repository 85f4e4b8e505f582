"""Faithful loading (issue 8): the one strict-key check and its listed exceptions, for every
command; incomplete blocks and unrecognised tensors in ``norms weights``; all-zero hidden states;
an unreachable hub; remote code needing a missing package."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import typer
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from qft_cli.cli.app import app
from qft_cli.cli.finetune import finetune_command
from qft_cli.models.loading import (
    LOADING_EXCEPTIONS,
    check_keys,
    key_status,
    load_model,
    load_report,
)
from qft_cli.models.names import ModelSource, build_tiny_model, tiny_tokenizer
from qft_cli.runs.rundir import read_run_json
from qft_cli.system.errors import QftInputError

runner = CliRunner()
RENAMED = "bert.encoder.layer.0.attention.self.qeury.weight"
ft_app = typer.Typer()
ft_app.command("finetune")(finetune_command)


@ft_app.command("version")
def _version() -> None:  # keeps `finetune` a sub-command
    pass


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _save_tiny_bert(directory: Path, edit=None) -> Path:
    """A tiny BERT saved as BertForMaskedLM (keys ``bert.*`` + ``cls.*``) with its tokenizer;
    ``edit(state_dict)`` changes the safetensors file."""
    from transformers import AutoModelForMaskedLM

    model = build_tiny_model("tiny-bert", AutoModelForMaskedLM)
    model.save_pretrained(directory)
    tiny_tokenizer(with_bert_specials=True).save_pretrained(directory)
    if edit is not None:
        state = load_file(directory / "model.safetensors")
        edit(state)
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def _rename(state):
    state[RENAMED] = state.pop("bert.encoder.layer.0.attention.self.query.weight")


@pytest.fixture(scope="module")
def renamed_dir(tmp_path_factory):
    return _save_tiny_bert(tmp_path_factory.mktemp("renamed"), _rename)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    return _save_tiny_bert(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("dna")
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 16), ("dev", 8), ("test", 8)):
        seqs = ["".join("ACGT"[i] for i in torch.randint(0, 4, (20,), generator=gen)) for _ in range(n)]
        pd.DataFrame({"sequence": seqs, "label": [i % 2 for i in range(n)]}).to_csv(directory / f"{split}.csv",
                                                                                  index=False)
    return directory


FT_FAST = ["--num-epochs", "1", "--max-steps", "1", "--batch-size", "4", "--eval-batch-size", "8",
           "--warmup-ratio", "0", "-q"]


def _assert_one_line_nothing_written(result, out: Path, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())


# ----------------------------------------------------------------------------- the rule itself

def test_every_listed_exception_and_an_error():
    from transformers import (
        AutoModel,
        AutoModelForSequenceClassification,
        BertConfig,
        GPT2Config,
        GPT2LMHeadModel,
    )

    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    bare, task = AutoModel.from_config(config), AutoModelForSequenceClassification.from_config(config)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=30, n_embd=8, n_layer=1, n_head=2))
    assert set(LOADING_EXCEPTIONS) == {"tied", "buffer", "unused", "new"}
    assert key_status(lm, "lm_head.weight", "missing") == "tied"
    assert key_status(bare, "embeddings.position_ids", "unexpected") == "buffer"
    assert key_status(task, "bert.embeddings.position_ids", "unexpected") == "buffer"
    assert key_status(bare, "cls.predictions.bias", "unexpected") == "unused"
    assert key_status(task, "cls.predictions.transform.dense.weight", "unexpected") == "unused"
    assert key_status(task, "classifier.weight", "missing") == "new"
    assert key_status(task, "bert.pooler.dense.weight", "missing") == "new"
    assert key_status(bare, "pooler.dense.weight", "missing") == "new"
    assert key_status(task, "classifier.weight", "mismatched") == "new"
    for model, key in ((bare, RENAMED), (bare, "encoder.layer.0.attention.self.qeury.weight"), (task, RENAMED)):
        assert key_status(model, key, "unexpected") == "error"
    assert key_status(task, "bert.encoder.layer.0.attention.self.query.weight", "missing") == "error"
    assert key_status(bare, "encoder.layer.0.attention.self.query.weight", "mismatched") == "error"
    assert key_status(task, "classifier.extra.weight", "unexpected") == "error"

    report = check_keys(task, missing=["classifier.weight", "classifier.bias"], unexpected=["cls.predictions.bias"],
                        name="m")
    assert report.new == ["classifier.bias", "classifier.weight"] and report.unused == ["cls.predictions.bias"]
    with pytest.raises(QftInputError, match="missing from the checkpoint: 1 \\(classifier.weight\\)"):
        check_keys(task, missing=["classifier.weight"], unexpected=[], name="m", allow_new=False)
    many = [f"bert.encoder.layer.0.x{i}.weight" for i in range(9)]
    with pytest.raises(QftInputError) as err:
        check_keys(task, missing=[], unexpected=many, name="m")
    assert "unexpected in the checkpoint: 9 (" in str(err.value) and ", ...)" in str(err.value)
    assert "\n" not in str(err.value)


def test_load_model_reports_new_head_and_unused_mlm_head(good_dir):
    from transformers import AutoModelForSequenceClassification

    source = ModelSource(str(good_dir), "local", str(good_dir))
    model = load_model(source, auto_class=AutoModelForSequenceClassification, num_labels=3, seed=1)
    report = load_report(model)
    assert report.new == ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias", "classifier.weight"]
    assert report.unused and all(k.startswith("cls.") for k in report.unused)
    again = load_model(source, auto_class=AutoModelForSequenceClassification, num_labels=3, seed=1)
    other = load_model(source, auto_class=AutoModelForSequenceClassification, num_labels=3, seed=2)
    assert torch.equal(model.classifier.weight, again.classifier.weight)
    assert not torch.equal(model.classifier.weight, other.classifier.weight)
    raw = load_file(good_dir / "model.safetensors")
    torch.testing.assert_close(model.bert.encoder.layer[1].output.dense.weight,
                               raw["bert.encoder.layer.1.output.dense.weight"], rtol=0, atol=0)


# ----------------------------------------------------------------------------- the renamed key, per command

def test_renamed_key_norms_inputs(renamed_dir, tmp_path):
    result = invoke("norms", "inputs", renamed_dir, "--dataset", "random", "--max-tokens", 8, "--out", tmp_path / "o",
                    "--quiet")
    _assert_one_line_nothing_written(result, tmp_path / "o", RENAMED, "query.weight")


def test_renamed_key_norms_weights(renamed_dir, tmp_path):
    result = invoke("norms", "weights", renamed_dir, "--out", tmp_path / "o", "--quiet")
    _assert_one_line_nothing_written(result, tmp_path / "o", "block 1 has no q", RENAMED)


def test_renamed_key_finetune(renamed_dir, tiny_csv, tmp_path):
    result = runner.invoke(ft_app, ["finetune", str(renamed_dir), "--data-dir", str(tiny_csv), "--out",
                                    str(tmp_path / "o"), *FT_FAST])
    _assert_one_line_nothing_written(result, tmp_path / "o", RENAMED)


def test_finetune_reports_the_new_head(good_dir, tiny_csv, tmp_path):
    result = runner.invoke(ft_app, ["finetune", str(good_dir), "--data-dir", str(tiny_csv), "--out",
                                    str(tmp_path / "o"), "--seed", "3", *FT_FAST])
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "o").iterdir())
    meta = read_run_json(run)
    assert meta["new_parameters"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
                                      "classifier.weight"]
    assert "new: 4 parameters not in the checkpoint" in result.stderr and "seed 3" in result.stderr


# ----------------------------------------------------------------------------- norms weights: blocks and extras

def test_missing_matrix_is_an_error(tmp_path):
    directory = _save_tiny_bert(tmp_path / "m", lambda s: s.pop("bert.encoder.layer.1.attention.self.key.weight"))
    result = invoke("norms", "weights", directory, "--out", tmp_path / "o", "--quiet")
    _assert_one_line_nothing_written(result, tmp_path / "o", "block 2 has no k")


def test_unrecognised_tensor_is_listed_and_warned(tmp_path):
    extra = "bert.embeddings.extra_projection.weight"  # outside the blocks: no block number changes

    def add(state):
        state[extra] = torch.ones(4, 16)

    directory = _save_tiny_bert(tmp_path / "m", add)
    result = invoke("norms", "weights", directory, "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 0, result.output  # a notice: no number changes
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "unrecognised 2-D tensors" in warnings[0] and extra in warnings[0]
    meta = read_run_json(next((tmp_path / "o").iterdir()))
    assert meta["unrecognised_parameters"] == {str(directory): [extra]}
    # the same checkpoint is refused where a model is built from it
    result = invoke("norms", "inputs", directory, "--dataset", "random", "--max-tokens", 4, "--out", tmp_path / "i",
                    "--quiet")
    _assert_one_line_nothing_written(result, tmp_path / "i", extra)


def test_unrecognised_tensor_inside_a_block_is_an_error(tmp_path):
    # inside a block it could be a matrix of the attention or FFN that would go unmeasured
    extra = "bert.encoder.layer.0.attention.self.relative_bias.weight"

    def add(state):
        state[extra] = torch.ones(4, 16)

    directory = _save_tiny_bert(tmp_path / "m", add)
    result = invoke("norms", "weights", directory, "--out", tmp_path / "o", "--quiet")
    _assert_one_line_nothing_written(result, tmp_path / "o", extra, "not known to qft")


def test_known_extras_are_not_unrecognised(good_dir, tmp_path):
    result = invoke("norms", "weights", good_dir, "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output
    assert read_run_json(next((tmp_path / "o").iterdir()))["unrecognised_parameters"] == {}


# ----------------------------------------------------------------------------- degenerate hidden states

def test_all_zero_hidden_state_is_flagged(tmp_path):
    def zero(state):
        for key in ("bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias"):
            state[key] = torch.zeros_like(state[key])

    directory = _save_tiny_bert(tmp_path / "z", zero)
    result = invoke("norms", "inputs", directory, "--dataset", "random", "--max-tokens", 3, "--layers", "0,1",
                    "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 2, result.output  # as for non-finite hidden states
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    # zero embedding output; tiny BERT's biases are zero, so every block's output is zero too
    assert len(warnings) == 1 and "6 all-zero hidden states" in warnings[0] and "sample 0, layer 0" in warnings[0]
    table = pd.read_parquet(next((tmp_path / "o").iterdir()) / "norms_inputs.parquet")
    assert table["all_zero"].all() and table["finite"].all() and (table["frobenius_norm"] == 0).all()
    meta = read_run_json(next((tmp_path / "o").iterdir()))
    assert sum("all-zero hidden state" in w for w in meta["warnings"]) == 6


def test_no_all_zero_flag_on_a_working_model(good_dir, tmp_path):
    result = invoke("norms", "inputs", good_dir, "--dataset", "random", "--max-tokens", 3, "--layers", "0,1",
                    "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output
    table = pd.read_parquet(next((tmp_path / "o").iterdir()) / "norms_inputs.parquet")
    assert not table["all_zero"].any() and (table["frobenius_norm"] > 0).all()


def test_masked_norms_all_zero_only_for_zero_real_rows():
    from qft_cli.measure.inputs import masked_norms

    hidden = torch.zeros(3, 4, 5)
    hidden[1, 0, 0] = 1.0
    hidden[2, 3, :] = 7.0  # padding row only
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    out = masked_norms(hidden, mask)
    assert out["all_zero"].tolist() == [True, False, True]
    hidden[0, 0, 0] = float("nan")
    assert masked_norms(hidden, mask)["all_zero"].tolist() == [False, False, True]


def test_pooled_output_is_never_a_layer():
    from qft_cli.measure.inputs import hidden_state_norms

    model = build_tiny_model("tiny-dnabert")
    ids = [[5, 6, 7, 8], [9, 10, 11]]
    table = hidden_state_norms(model, ids, [0, 1, 2]).table
    assert sorted(table.layer.unique()) == [0, 1, 2]
    with torch.no_grad():
        last = model(input_ids=torch.tensor([ids[0]])).last_hidden_state[0].double()
    expected = torch.linalg.matrix_norm(last, ord="fro").item()
    got = table[(table.sample_index == 0) & (table.layer == 2)].frobenius_norm.item()
    assert got == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- hub errors

@pytest.fixture
def blocked_hub(monkeypatch, tmp_path):
    """No network: every TCP connection fails at once; HF_HUB_OFFLINE unset; an empty HF cache."""
    import huggingface_hub.constants as hf_constants

    import qft_cli.models.names as models

    def refuse(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known (blocked by the test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(models, "_HUB_STATE", {})
    try:
        import datasets.config

        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "ds-cache")
    except ImportError:
        pass
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    return tmp_path


def _one_line_fast(result, started: float, *needles):
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unreachable_hub_norms_inputs_one_line(blocked_hub):
    started = time.monotonic()
    result = invoke("norms", "inputs", "nobody-qft/no-such-model", "--dataset", "random", "--max-tokens", 8,
                    "--out", blocked_hub / "o", "--quiet")
    _one_line_fast(result, started, "not reachable", "not cached")


def test_unreachable_hub_mmlu_one_line(blocked_hub):
    started = time.monotonic()
    result = invoke("norms", "inputs", "tiny-bert", "--max-tokens", 8, "--out", blocked_hub / "o", "--quiet")
    _one_line_fast(result, started, "MMLU", "--data-file")


def test_unreachable_hub_finetune_one_line(blocked_hub):
    started = time.monotonic()
    result = runner.invoke(ft_app, ["finetune", "tiny-dnabert", "--dataset", "genomic-bench", "--tokenizer", "char",
                                    "--out", str(blocked_hub / "o"), *FT_FAST])
    _one_line_fast(result, started, "Genomic", "--data-dir")
    started = time.monotonic()
    result = runner.invoke(ft_app, ["finetune", "nobody-qft/no-such-model", "--dataset", "genomic-bench",
                                    "--out", str(blocked_hub / "o"), *FT_FAST])
    _one_line_fast(result, started)


def test_missing_triton_for_remote_code_is_one_line(monkeypatch):
    from transformers import AutoModel

    import qft_cli.models.names as models

    def needs_triton(*args, **kwargs):
        raise ImportError("This modeling file requires the following packages that were not found in your "
                          "environment: triton. Run `pip install triton`")

    monkeypatch.setattr(AutoModel, "from_pretrained", needs_triton)
    monkeypatch.setattr(models, "_HUB_STATE", {"unreachable": False})
    with pytest.raises(QftInputError) as err:
        load_model(models.resolve_model("dnabert"), trust_remote_code=True)
    message = str(err.value)
    assert "\n" not in message and "triton" in message and "drop --trust-remote-code" in message


# ----------------------------------------------------------------------------- a sharded checkpoint with a shard missing (issue 21, item 12)

def test_index_naming_a_missing_shard_is_one_line(tmp_path):
    """An index whose weight_map names a shard that is not there: one line naming the shard, for
    ``norms weights`` and ``norms inputs`` (not a model with that shard's tensors silently missing)."""
    from qft_cli.runs.files import checkpoint_files

    from transformers import AutoModel

    directory = tmp_path / "sharded"
    build_tiny_model("tiny-bert", AutoModel).save_pretrained(directory, max_shard_size="100KB")
    tiny_tokenizer(with_bert_specials=True).save_pretrained(directory)
    shards = sorted(directory.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (directory / "model.safetensors.index.json").is_file()
    assert checkpoint_files(directory) == shards
    shards[-1].unlink()
    with pytest.raises(QftInputError, match=shards[-1].name):
        checkpoint_files(directory)
    result = invoke("norms", "weights", directory, "--out", tmp_path / "o", "--quiet")
    _assert_one_line_nothing_written(result, tmp_path / "o", shards[-1].name, "missing")
    result = invoke("norms", "inputs", directory, "--dataset", "random", "--max-tokens", 8, "--out", tmp_path / "o",
                    "--quiet")
    _assert_one_line_nothing_written(result, tmp_path / "o", shards[-1].name, "missing")


# ----------------------------------------------------------------------------- damaged and hostile files (issue 21, item 2)

class _Payload:
    """A pickled object that would run code (touch ``marker``) when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (self.marker.touch, ())


def _damage(directory: Path, how: str, marker: Path) -> str:
    """Damage a saved tiny BERT in place; returns the file name the error must name (``marker``: the
    file the hostile payload would create)."""
    if how == "truncated safetensors":
        path = directory / "model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path.name
    if how == "truncated config.json":
        path = directory / "config.json"
        path.write_text(path.read_text()[:150])
        return path.name
    (directory / "model.safetensors").unlink()
    torch.save([_Payload(marker), {"not": "tensors"}], directory / "pytorch_model.bin")
    return "pytorch_model.bin"


@pytest.mark.parametrize("how", ["truncated safetensors", "truncated config.json", "bin payload not a state dict"])
@pytest.mark.parametrize("command", ["norms inputs", "norms weights", "finetune"])
def test_damaged_or_hostile_files_are_one_line_and_leave_no_run(how, command, tiny_csv, tmp_path):
    directory = _save_tiny_bert(tmp_path / "model")
    marker = tmp_path / "payload-ran"
    name = _damage(directory, how, marker)
    out = tmp_path / "o"
    if command == "finetune":
        result = runner.invoke(ft_app, ["finetune", str(directory), "--data-dir", str(tiny_csv), "--out", str(out),
                                        *FT_FAST])
    elif command == "norms inputs":
        result = invoke("norms", "inputs", directory, "--dataset", "random", "--max-tokens", 8, "--out", out, "--quiet")
    else:
        result = invoke("norms", "weights", directory, "--out", out, "--quiet")
    _assert_one_line_nothing_written(result, out, name)
    assert not marker.exists()  # weights_only held: the payload never ran
    if how == "bin payload not a state dict":
        assert "not a state dict" in result.stderr and "nothing ran" in result.stderr
