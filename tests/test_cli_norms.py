"""The `qft` CLI: help, version, `norms inputs`, `norms weights`, and one-line errors with exit 2."""

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from qft_cli import __version__
from qft_cli.cli.app import app
from qft_cli.models.names import build_tiny_model
from qft_cli.runs.rundir import read_run_json

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("args", [["--help"], ["norms", "--help"], ["norms", "inputs", "--help"],
                                  ["norms", "weights", "--help"], ["norms", "attention", "--help"],
                                  ["models", "--help"]])
def test_help(args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version_and_models():
    assert invoke("--version").stdout.strip() == f"qft {__version__}"
    out = invoke("models").stdout
    assert "llama2-7b" in out and "minilm" in out and "tiny-llama" in out


def _only_run(out_dir):
    runs = [p for p in out_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1
    return runs[0]


def test_norms_weights_writes_run(tmp_path):
    result = invoke("norms", "weights", "tiny-gpt2", "tiny-llama", "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    run = _only_run(tmp_path)
    meta = read_run_json(run)
    assert meta["status"] == "completed" and meta["command"] == "norms weights"
    table = pd.read_parquet(run / "norms_weights.parquet")
    assert set(table["model_alias"]) == {"tiny-gpt2", "tiny-llama"}
    assert table["spectral_norm"].dtype == "float64"
    vectors = pd.read_parquet(run / "norm_vectors.parquet")
    assert set(vectors["kind"]) == {"column_norm", "token_norm"}
    assert "ffn_gate" in result.stdout and str(run) in result.stdout


def test_norms_inputs_random_writes_run(tmp_path):
    result = invoke("norms", "inputs", "tiny-gpt2", "--dataset", "random", "--max-tokens", 20, "--layers", "all",
                    "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(_only_run(tmp_path) / "norms_inputs.parquet")
    assert len(table) == 20 * 3 and sorted(table["num_tokens"].unique()) == list(range(1, 21))
    assert list(table.columns[:4]) == ["model", "model_alias", "model_format", "dataset"]
    assert "b 95% low" in result.stdout and (_only_run(tmp_path) / "fits.parquet").is_file()


def test_norms_inputs_batch_size_invariance_through_cli(tmp_path, shared_data):
    csv = shared_data / "mmlu" / "validation.csv"
    tables = []
    for bs in (1, 7):
        out = tmp_path / str(bs)
        result = invoke("norms", "inputs", "tiny-bert", "--dataset", "mmlu", "--data-file", csv, "--num-samples", 20,
                        "--batch-size", bs, "--out", out, "-q")
        assert result.exit_code == 0, result.output
        tables.append(pd.read_parquet(_only_run(out) / "norms_inputs.parquet"))
    assert tables[0]["dataset"].iloc[0] == "mmlu"
    for col in ("spectral_norm", "frobenius_norm"):
        assert tables[1][col].tolist() == pytest.approx(tables[0][col].tolist(), rel=1e-5)


def _assert_bad(result, *needles, out_dir=None):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.output
    if out_dir is not None:  # nothing written: not even an empty --out directory
        assert not out_dir.exists(), list(out_dir.iterdir())


def test_bad_inputs(tmp_path):
    out = tmp_path / "runs"
    _assert_bad(invoke("norms", "weights", "gtp2", "--out", out), "unknown model 'gtp2'", "gpt2", out_dir=out)
    _assert_bad(invoke("norms", "inputs", "tiny-bert", "--dataset", tmp_path / "missing.csv", "--out", out),
                "does not exist", out_dir=out)
    (tmp_path / "empty.txt").write_text("")
    _assert_bad(invoke("norms", "inputs", "tiny-bert", "--dataset", tmp_path / "empty.txt", "--out", out),
                "is empty", out_dir=out)
    (tmp_path / "nocol.csv").write_text("a,b\n1,2\n")
    _assert_bad(invoke("norms", "inputs", "tiny-bert", "--dataset", tmp_path / "nocol.csv", "--out", out),
                "--text-column", out_dir=out)
    _assert_bad(invoke("norms", "inputs", "tiny-bert", "--dataset", "random", "--max-tokens", 0, "--out", out),
                "--max-tokens", out_dir=out)
    for bs in (0, -2):
        _assert_bad(invoke("norms", "inputs", "tiny-bert", "--dataset", "random", "--batch-size", bs, "--out", out),
                    "--batch-size", out_dir=out)
    _assert_bad(invoke("norms", "inputs", "tiny-bert", "--dataset", "random", "--layers", "0,5", "--out", out),
                "2 blocks", "0 (embedding output) to 2", out_dir=out)
    _assert_bad(invoke("norms", "inputs", "tiny-bert", "--dataset", "random", "--device", "tpu", "--out", out),
                "unknown device", out_dir=out)
    (tmp_path / "afile").write_text("x")
    _assert_bad(invoke("norms", "weights", "tiny-bert", "--out", tmp_path / "afile"), "is a file")


def test_unwritable_out(tmp_path):
    (tmp_path / "afile").write_text("x")  # a path below a file cannot be created, even by root
    _assert_bad(invoke("norms", "weights", "tiny-bert", "--out", tmp_path / "afile" / "sub"), "not writable")


def test_nonfinite_weight_keeps_run_and_exits_2(tmp_path):
    model = build_tiny_model("tiny-bert")
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.weight[1, 1] = float("inf")
    model.save_pretrained(tmp_path / "model")
    result = invoke("norms", "weights", tmp_path / "model", "--out", tmp_path / "runs", "-q")
    assert result.exit_code == 2
    assert "non-finite weight" in result.stderr and "intermediate.dense.weight" in result.stderr
    run = _only_run(tmp_path / "runs")
    table = pd.read_parquet(run / "norms_weights.parquet")
    assert (~table["finite"]).sum() == 1 and read_run_json(run)["status"] == "completed"


def test_hub_model_offline_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _assert_bad(invoke("norms", "weights", "llama2-7b", "--out", tmp_path / "r"),
                "meta-llama/Llama-2-7b-chat-hf", "HF_HUB_OFFLINE", out_dir=tmp_path / "r")
    _assert_bad(invoke("norms", "inputs", "gpt2", "--dataset", "random", "--out", tmp_path / "r"),
                "openai-community/gpt2", out_dir=tmp_path / "r")


def test_minilm_cli_end_to_end(tmp_path, minilm_source):
    result = invoke("norms", "inputs", "minilm", "--dataset", "random", "--max-tokens", 32, "--out", tmp_path, "-q")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(_only_run(tmp_path) / "norms_inputs.parquet")
    assert table["model"].iloc[0] == "sentence-transformers/all-MiniLM-L6-v2" and len(table) == 32 * 7  # layers 0..6 by default


def test_max_tokens_beyond_the_position_table_is_one_line(tmp_path):
    out = tmp_path / "runs"
    _assert_bad(invoke("norms", "inputs", "tiny-gpt2", "--dataset", "random", "--max-tokens", 1025, "--out", out),
                "1025", "1024 positions", "--max-tokens 1024", out_dir=out)


def test_nonfinite_hidden_states_are_one_warning_line(tmp_path):
    model = build_tiny_model("tiny-bert")
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[2] = float("inf")  # [CLS]: every sample, every layer
    model.save_pretrained(tmp_path / "model")
    from qft_cli.models.names import tiny_tokenizer

    tiny_tokenizer(with_bert_specials=True).save_pretrained(tmp_path / "model")
    (tmp_path / "t.txt").write_text("one\ntwo\nthree\nfour\n")
    result = invoke("norms", "inputs", tmp_path / "model", "--dataset", tmp_path / "t.txt", "--out", tmp_path / "runs",
                    "-q")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: 12 non-finite hidden states"), result.stderr  # 4 x layers 0-2
    assert "sample 0, layer 0" in lines[0]
    run = _only_run(tmp_path / "runs")
    meta = read_run_json(run)
    assert meta["status"] == "completed" and len(meta["warnings"]) == 12
    table = pd.read_parquet(run / "norms_inputs.parquet")
    assert len(table) == 12 and not table["finite"].any()


def test_bad_data_file_is_found_before_any_model_is_loaded(tmp_path, monkeypatch):
    import qft_cli.measure.workflows

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the data file was checked")

    monkeypatch.setattr(qft_cli.measure.workflows, "load_model", no_loading)
    out = tmp_path / "runs"
    (tmp_path / "empty.txt").write_text("")
    _assert_bad(invoke("norms", "inputs", "tiny-bert", "--dataset", tmp_path / "empty.txt", "--out", out),
                "is empty", out_dir=out)
    _assert_bad(invoke("norms", "inputs", "tiny-bert", "--dataset", "mmlu2", "--out", out), "unknown dataset", out_dir=out)
    (tmp_path / "nocol.csv").write_text("a,b\n1,2\n")
    _assert_bad(invoke("norms", "inputs", "tiny-bert", "--dataset", "mmlu", "--data-file", tmp_path / "nocol.csv",
                       "--out", out), "no column 'question'", out_dir=out)


def test_local_directory_that_is_not_a_model_is_one_line(tmp_path):
    out = tmp_path / "runs"
    (tmp_path / "notamodel").mkdir()
    _assert_bad(invoke("norms", "inputs", tmp_path / "notamodel", "--dataset", "random", "--out", out),
                "notamodel", out_dir=out)
    build_tiny_model("tiny-bert").config.save_pretrained(tmp_path / "noweights")  # config.json, no weights
    from qft_cli.models.names import tiny_tokenizer

    tiny_tokenizer(with_bert_specials=True).save_pretrained(tmp_path / "noweights")
    _assert_bad(invoke("norms", "inputs", tmp_path / "noweights", "--dataset", "random", "--out", out),
                "noweights", out_dir=out)


def test_layer_beyond_depth_names_the_model_among_several(tmp_path):
    out = tmp_path / "runs"
    _assert_bad(invoke("norms", "inputs", "tiny-gpt2", "tiny-bert", "--dataset", "random", "--layers", "0-3",
                       "--out", out), "tiny-gpt2", "2 blocks", out_dir=out)


def test_ctrl_c_mid_run_leaves_status_interrupted_and_no_table(tmp_path, monkeypatch):
    import qft_cli.measure.workflows

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(qft_cli.measure.workflows, "hidden_state_norms", interrupted)
    result = invoke("norms", "inputs", "tiny-gpt2", "--dataset", "random", "--max-tokens", 4, "--out", tmp_path, "-q")
    run = _only_run(tmp_path)
    assert result.exit_code == 130 and result.stderr.splitlines()[0].startswith(f"interrupted: run directory {run}")
    meta = read_run_json(run)
    assert meta["status"] == "interrupted" and meta["end_time"] and meta["options"]["seed"] == 0
    assert [p.name for p in run.iterdir()] == ["run.json"]


def test_seed_out_of_range_is_one_line(tmp_path):
    out = tmp_path / "runs"
    _assert_bad(invoke("norms", "inputs", "tiny-bert", "--dataset", "random", "--seed", 2 ** 64, "--out", out),
                "--seed", out_dir=out)


def test_tokenizer_pad_id_outside_the_embedding_is_not_used_for_padding(tmp_path):
    # e.g. a '[PAD]' added to the tokenizer without resizing the model's embedding
    from qft_cli.models.names import tiny_tokenizer

    build_tiny_model("tiny-bert").save_pretrained(tmp_path / "model")
    tok = tiny_tokenizer(with_bert_specials=True)
    tok.add_special_tokens({"pad_token": "<pad-added>"})
    assert tok.pad_token_id == 261  # the embedding has rows 0..260
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "t.txt").write_text("a short one\na much longer text than the first one\n")
    tables = []
    for bs in (1, 2):
        out = tmp_path / f"runs{bs}"
        result = invoke("norms", "inputs", tmp_path / "model", "--dataset", tmp_path / "t.txt", "--batch-size", bs,
                        "--out", out, "-q")
        assert result.exit_code == 0, result.output
        tables.append(pd.read_parquet(_only_run(out) / "norms_inputs.parquet"))
    assert tables[1]["spectral_norm"].tolist() == pytest.approx(tables[0]["spectral_norm"].tolist(), rel=1e-5)


def test_huge_max_tokens_for_random_fails_fast(tmp_path):
    import time

    start = time.time()
    result = invoke("norms", "inputs", "tiny-gpt2", "--dataset", "random", "--max-tokens", 100000,
                    "--out", tmp_path / "r")
    _assert_bad(result, "100000 tokens", "1024 positions", "--max-tokens 1024", out_dir=tmp_path / "r")
    assert time.time() - start < 20  # not after drawing 100000 sequences


def test_threads_and_exact_are_recorded_in_run_json(tmp_path):
    before = torch.get_num_threads()
    try:
        result = invoke("norms", "weights", "tiny-llama", "--exact", "--threads", 1, "--out", tmp_path, "--quiet")
        assert result.exit_code == 0, result.output
        meta = read_run_json(_only_run(tmp_path))
        assert meta["threads"] == 1 and meta["threads_source"] == "--threads" and meta["spectral_method"] == "exact"
        table = pd.read_parquet(_only_run(tmp_path) / "norms_weights.parquet")
        assert (table["spectral_norm_error_bound"] == 0.0).all()
        bad = invoke("norms", "weights", "tiny-llama", "--threads", 0, "--out", tmp_path, "--quiet")
        assert bad.exit_code == 2 and "--threads must be at least 1" in bad.output
        bad = invoke("norms", "inputs", "tiny-gpt2", "--threads", 0, "--out", tmp_path, "--quiet")
        assert bad.exit_code == 2 and "--threads must be at least 1" in bad.output
    finally:
        torch.set_num_threads(before)


def test_norms_attention_writes_both_tables(tmp_path):
    from qft_cli.measure.attention import ATTENTION_COLUMNS
    from qft_cli.measure.fits import FIT_COLUMNS

    result = invoke("norms", "attention", "tiny-llama", "tiny-dnabert", "--dataset", "random", "--max-tokens", 12,
                    "--batch-size", 5, "--out", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    run = _only_run(tmp_path)
    table = pd.read_parquet(run / "norms_attention.parquet")
    assert list(table.columns) == ATTENTION_COLUMNS
    assert len(table) == 2 * 12 * 2 * 4  # models x samples x blocks x heads
    assert set(table["layer"]) == {1, 2} and table["finite"].all()
    for col in [c for c in ATTENTION_COLUMNS if c.endswith("_ratio")]:
        assert (table[col].dropna() <= 1 + 1e-9).all(), col
    fits = pd.read_parquet(run / "fits.parquet")
    assert list(fits.columns) == ["model", "model_alias", "dataset", "layer", "quantity"] + FIT_COLUMNS
    assert len(fits) == 2 * 2 * 4 * 2  # models x blocks x quantities x norms
    assert fits["num_points"].eq(12).all() and fits["exponent"].notna().all()
    assert read_run_json(run)["status"] == "completed"
    assert "L:qk" in result.stdout


def test_norms_attention_bad_layers_are_one_line(tmp_path):
    out = tmp_path / "runs"
    _assert_bad(invoke("norms", "attention", "tiny-bert", "--dataset", "random", "--layers", "0,1", "--out", out),
                "layer 0 is the embedding", out_dir=out)
    _assert_bad(invoke("norms", "attention", "tiny-bert", "--dataset", "random", "--layers", "3", "--out", out),
                "does not exist", out_dir=out)


def test_every_norms_command_measures_all_layers_by_default_and_says_which(tmp_path):
    """One rule (issue 18): without --layers, norms inputs measures layers 0..L (it measured 0,1 only),
    norms attention blocks 1..L; each summary names the layers measured."""
    from qft_cli.measure.workflows import NormsAttentionArgs, NormsInputsArgs

    assert NormsInputsArgs(models=["x"]).layers == NormsAttentionArgs(models=["x"]).layers == "all"
    out = tmp_path / "inputs"
    result = invoke("norms", "inputs", "tiny-gpt2", "--dataset", "random", "--max-tokens", 6, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(_only_run(out) / "norms_inputs.parquet")
    assert sorted(table["layer"].unique()) == [0, 1, 2]  # tiny-gpt2 has 2 blocks
    assert "layers (0 = embedding output, l = output of block l) measured: tiny-gpt2 0-2" in result.stdout
    two = invoke("norms", "inputs", "tiny-gpt2", "--dataset", "random", "--max-tokens", 6, "--layers", "0,2",
                 "--out", tmp_path / "two", "--quiet")
    assert "measured: tiny-gpt2 0,2" in two.stdout
    att = invoke("norms", "attention", "tiny-gpt2", "--dataset", "random", "--max-tokens", 6,
                 "--out", tmp_path / "att", "--quiet")
    assert att.exit_code == 0, att.output
    assert "blocks measured: tiny-gpt2 1-2" in att.stdout
    weights = invoke("norms", "weights", "tiny-gpt2", "--out", tmp_path / "w", "--quiet")
    assert "layers (0 = embedding, l = block l) measured: tiny-gpt2 0-2" in weights.stdout


def test_layer_ranges():
    from qft_cli.cli.norms import layer_ranges

    assert layer_ranges([3, 0, 1, 2, 5, 5, 7, 8]) == "0-3,5,7-8" and layer_ranges([4]) == "4"
