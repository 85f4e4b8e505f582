"""What the CLI prints: fits.parquet of `norms inputs` and its table, per-layer weight norms,
`--format table|csv|markdown`, short model names, no 80-column wrap when piped, plain `--help`,
and the run directory with the resume / re-run command on Ctrl-C."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from qft_cli.cli.app import app
from qft_cli.cli.common import interrupted_lines, print_frame, short_model_name
from qft_cli.measure.fits import fit_table
from qft_cli.models.names import build_tiny_model

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _only_run(out_dir):
    (run,) = [p for p in out_dir.iterdir() if p.is_dir()]
    return run


def _csv_tables(text: str) -> list[tuple[str, pd.DataFrame]]:
    """The ``# title`` + csv blocks of ``--format csv`` output."""
    out = []
    for block in text.strip().split("\n\n"):
        title, _, body = block.strip().partition("\n")
        assert title.startswith("# ")
        out.append((title[2:], pd.read_csv(io.StringIO(body))))
    return out


@pytest.fixture(scope="module")
def inputs_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("inputs")
    result = invoke("norms", "inputs", "tiny-gpt2", "--dataset", "random", "--max-tokens", 24, "--layers", "all",
                    "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return _only_run(out), result


def test_norms_inputs_writes_fits_for_every_layer_and_norm(inputs_run):
    run, _ = inputs_run
    table = pd.read_parquet(run / "norms_inputs.parquet")
    fits = pd.read_parquet(run / "fits.parquet")
    assert list(fits.columns) == ["model", "model_alias", "dataset", "layer", "quantity", "norm", "exponent",
                                  "exponent_ci_low", "exponent_ci_high", "coefficient", "r_squared", "num_points",
                                  "num_tokens_min", "num_tokens_max"]
    assert sorted(zip(fits["layer"], fits["norm"])) == [(l, n) for l in (0, 1, 2) for n in ("frobenius", "spectral")]
    assert (fits["quantity"] == "hidden_states").all() and (fits["model_alias"] == "tiny-gpt2").all()
    expected = fit_table(table, ["model", "model_alias", "dataset", "layer"], quantity="hidden_states")
    pd.testing.assert_frame_equal(fits, expected)
    # and independently of qft: scipy's least squares on (log N, log ||S||) with the Student-t interval
    for _, row in fits.iterrows():
        g = table[table["layer"] == row["layer"]]
        y = g[{"frobenius": "frobenius_norm", "spectral": "spectral_norm"}[row["norm"]]]
        ref = stats.linregress(np.log(g["num_tokens"]), np.log(y))
        half = stats.t.ppf(0.975, len(g) - 2) * ref.stderr
        assert row["exponent"] == pytest.approx(ref.slope, rel=1e-9)
        assert (row["exponent_ci_low"], row["exponent_ci_high"]) == pytest.approx((ref.slope - half, ref.slope + half),
                                                                                  rel=1e-9)
        assert row["num_points"] == 24 and (row["num_tokens_min"], row["num_tokens_max"]) == (1, 24)


def test_norms_inputs_table_shows_the_interval_unwrapped(inputs_run):
    run, result = inputs_run
    fits = pd.read_parquet(run / "fits.parquet")
    lines = result.stdout.splitlines()
    for _, row in fits.iterrows():  # one line per fit: model, layer, norm, b and both ends of its interval
        cells = [f"{row[c]:.4g}" for c in ("exponent", "exponent_ci_low", "exponent_ci_high", "r_squared")]
        assert any(f" {row['norm']} " in line and "tiny-gpt2" in line and all(c in line for c in cells)
                   for line in lines), (row.to_dict(), result.stdout)
    assert max(len(line) for line in lines) > 80  # piped: the table keeps its width, nothing folded
    assert f"results: {run}" in result.stdout


def test_norms_inputs_csv_is_the_fits_at_full_precision(tmp_path):
    result = invoke("norms", "inputs", "tiny-bert", "--dataset", "random", "--max-tokens", 12, "--out", tmp_path,
                    "--quiet", "--format", "csv")
    assert result.exit_code == 0, result.output
    run = _only_run(tmp_path)
    assert "results:" not in result.stdout and str(run) in result.stderr  # stdout: only the table
    ((title, printed),) = _csv_tables(result.stdout)
    assert "95%" in title
    fits = pd.read_parquet(run / "fits.parquet")
    table = pd.read_parquet(run / "norms_inputs.parquet")
    assert list(printed.columns) == ["model", "dataset", "layer", "norm", "samples", "min", "median", "max", "b",
                                     "b 95% low", "b 95% high", "R²"]
    np.testing.assert_allclose(printed["b"], fits["exponent"], rtol=1e-12)
    np.testing.assert_allclose(printed["b 95% low"], fits["exponent_ci_low"], rtol=1e-12)
    np.testing.assert_allclose(printed["b 95% high"], fits["exponent_ci_high"], rtol=1e-12)
    for _, row in printed.iterrows():
        values = table[table["layer"] == row["layer"]][f"{row['norm']}_norm"]
        assert (row["samples"], row["min"], row["median"], row["max"]) == pytest.approx(
            (len(values), values.min(), values.median(), values.max()), rel=1e-12)


def test_norms_weights_prints_per_layer_norms(tmp_path):
    result = invoke("norms", "weights", "tiny-llama", "--out", tmp_path, "-q", "--format", "csv")
    assert result.exit_code == 0, result.output
    (title, per_layer), (_, summary) = _csv_tables(result.stdout)
    assert "per layer" in title and "mean" in summary.columns[3]
    assert list(per_layer.columns) == ["model", "layer", "norm", "q", "k", "v", "o", "ffn_gate", "ffn_up", "ffn_down"]
    assert len(per_layer) == 2 * 2  # 2 blocks x (spectral, frobenius)
    model = build_tiny_model("tiny-llama")  # the same seeded weights, measured independently in float64
    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    params = dict(model.named_parameters())
    for _, row in per_layer.iterrows():
        for matrix, name in names.items():
            w = params[f"layers.{row['layer'] - 1}.{name}.weight"].detach().double()
            ord_ = 2 if row["norm"] == "spectral" else "fro"
            assert row[matrix] == pytest.approx(torch.linalg.matrix_norm(w, ord=ord_).item(), rel=1e-9)


def test_markdown_and_table_formats(tmp_path):
    md = invoke("norms", "weights", "tiny-gpt2", "--out", tmp_path / "a", "-q", "--format", "markdown")
    assert md.exit_code == 0, md.output
    rows = [line for line in md.stdout.splitlines() if line.startswith("|")]
    assert rows[0].split("|")[1].strip() == "model" and set(rows[1]) <= set("|-: ")
    assert any(re.match(r"\| tiny-gpt2 +\| +1 \| spectral", line) for line in rows)
    assert "**weight norms per layer" in md.stdout and "results:" not in md.stdout
    bad = invoke("norms", "weights", "tiny-gpt2", "--out", tmp_path / "b", "--format", "json")
    assert bad.exit_code == 2 and bad.stderr.strip().splitlines() == [
        "error: --format 'json' is not known: use table, csv or markdown"]
    assert not (tmp_path / "b").exists()


def test_local_model_shows_its_last_path_component(tmp_path):
    model_dir = tmp_path / "deep" / "path" / "to" / "my-checkpoint"
    build_tiny_model("tiny-bert").save_pretrained(model_dir)
    result = invoke("norms", "weights", model_dir, "--out", tmp_path / "runs", "-q")
    assert result.exit_code == 0, result.output
    table_lines = [line for line in result.stdout.splitlines() if "my-checkpoint" in line]
    assert table_lines and not any("deep" in line for line in table_lines)
    assert short_model_name(str(model_dir) + "/") == "my-checkpoint"
    assert short_model_name("minilm") == "minilm" and short_model_name("openai-community/gpt2") == "openai-community/gpt2"
    assert short_model_name("./gpt2") == "gpt2"


def test_print_frame_formats(capsys):
    frame = pd.DataFrame({"model": ["/x/y/m"], "n": [3], "value": [1 / 3], "missing": [math.nan]})
    print_frame(frame, "t", "csv")
    out = capsys.readouterr().out
    assert out == f"# t\nmodel,n,value,missing\nm,3,{1 / 3!r},\n\n"
    print_frame(frame, "t", "markdown", formats={"value": ".2f"})
    out = capsys.readouterr().out
    assert "| m       |   3 |    0.33 |" in out
    print_frame(pd.DataFrame({"variant": ["a"], "F1 (%)": ["81.2 ± 1.4"]}), "t", "markdown", align={"F1 (%)": "right"})
    assert "|:----------|-----------:|" in capsys.readouterr().out
    print_frame(frame.iloc[:0], "empty", "table")  # no rows: headers only, no error
    assert "value" in capsys.readouterr().out


@pytest.mark.parametrize("args", [[], ["norms"], ["norms", "inputs"], ["norms", "weights"], ["train"], ["finetune"],
                                  ["report"], ["demo"]])
def test_help_shows_plain_flags_and_argument_names(args):
    result = invoke(*args, "--help")
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage
    if args[:1] == ["norms"] and len(args) == 2:
        assert usage.strip().endswith("[OPTIONS] MODELS...")
        assert "--format" in result.output
    if args == ["finetune"]:
        assert usage.strip().endswith("[OPTIONS] MODEL")
    if args in (["train"], ["finetune"], ["demo"]):
        assert "--format" in result.output


def test_interrupted_lines():
    assert interrupted_lines(None, ["qft", "train"], True) == ["interrupted"]
    lines = interrupted_lines("runs/r 1", ["qft", "finetune", "tiny-bert", "--resume", "old", "--seed", "3"], True)
    assert lines == ["interrupted: run directory runs/r 1",
                     "resume with: qft finetune tiny-bert --seed 3 --resume 'runs/r 1'"]
    lines = interrupted_lines("runs/r", ["qft", "norms", "inputs", "gpt2", "--layers", "0-3"], False)
    assert lines[0].startswith("interrupted: run directory runs/r")
    assert lines[1] == "re-run with: qft norms inputs gpt2 --layers 0-3"


def test_ctrl_c_in_norms_prints_run_dir_and_rerun_command(tmp_path, monkeypatch):
    import qft_cli.measure.inputs as inputs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("qft_cli.measure.workflows.hidden_state_norms", interrupted)
    monkeypatch.setattr("sys.argv", ["qft", "norms", "inputs", "tiny-gpt2", "--dataset", "random", "--out", str(tmp_path)])
    result = invoke("norms", "inputs", "tiny-gpt2", "--dataset", "random", "--out", tmp_path, "-q")
    assert result.exit_code == 130
    run = _only_run(tmp_path)
    assert result.stderr.splitlines() == [
        f"interrupted: run directory {run} (status interrupted; this command has no --resume)",
        f"re-run with: qft norms inputs tiny-gpt2 --dataset random --out {tmp_path}"]
    assert inputs.hidden_state_norms is not interrupted


def test_ctrl_c_in_train_prints_the_resume_command_that_continues_it(tmp_path, monkeypatch):
    """The printed command, run as printed, finishes the interrupted run."""
    import shlex

    from test_cli_train import TINY, _dna_dir

    import qft_cli.train.training as training
    from qft_cli.runs.rundir import read_run_json

    data = _dna_dir(tmp_path, n=32)
    out = tmp_path / "runs"
    argv = ["qft", "train", *TINY, "--data-dir", str(data), "--out", str(out), "--num-epochs", "1",
            "--early-stopping", "0", "--norm", "frobenius"]
    real = training.run_experiment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "run_experiment", interrupted)
    monkeypatch.setattr("sys.argv", argv)
    result = runner.invoke(app, argv[1:])
    assert result.exit_code == 130, result.output
    run = _only_run(out)
    assert read_run_json(run)["status"] == "interrupted"
    first, second = result.stderr.splitlines()
    assert first == f"interrupted: run directory {run}"
    assert second.startswith("resume with: qft train ") and second.endswith(f"--resume {run}")
    monkeypatch.setattr(training, "run_experiment", real)
    again = runner.invoke(app, shlex.split(second.removeprefix("resume with: "))[1:])
    assert again.exit_code == 0, again.output + str(again.exception)
    assert read_run_json(run)["status"] == "completed" and len(list(out.iterdir())) == 1
    assert "frobenius" in again.stdout


def test_train_table_as_csv_keeps_full_precision_and_moves_the_run_dir_to_stderr(capsys):
    import pandas as pd

    from qft_cli.cli.common import print_test_table
    from qft_cli.train import stats

    metrics = pd.DataFrame([{"variant": v, "seed": 0, "split": "test", "step": 9, "epoch": 3.0, "accuracy": acc, "f1": f1}
                            for v, acc, f1 in (("vanilla", 0.8125, 0.75), ("frobenius", 0.8, 0.7))])
    summary = stats.test_summary(metrics, dataset="gue", task="prom_core_notata")
    print_test_table("t", summary, "runs/x", "csv", {"vanilla": 3.0, "frobenius": 2.5})
    out = capsys.readouterr()
    ((title, table),) = _csv_tables(out.out)
    assert title == "t" and "results: runs/x" in out.err
    assert list(table.columns) == stats.SUMMARY_COLUMNS  # csv: the test_summary rows, fractions
    acc = table[table.metric == "accuracy"].set_index("variant")
    assert acc.loc["vanilla", "mean_value"] == 0.8125 and math.isnan(acc.loc["vanilla", "diff_to_vanilla"])
    assert acc.loc["frobenius", "diff_to_vanilla"] == pytest.approx(-0.0125, rel=1e-12)
    print_test_table("t", summary, "runs/x", "markdown", {"vanilla": 3.0, "frobenius": 2.5})
    out = capsys.readouterr().out
    assert "| frobenius |" in out and "80.00" in out and "-1.25" in out and "2.5" in out


def test_ctrl_c_in_finetune_prints_the_command_as_typed_with_resume(tmp_path, monkeypatch):
    import qft_cli.train.finetune

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(qft_cli.train.finetune, "finetune", interrupted)
    argv = ["qft", "finetune", "tiny-bert", "--dataset", "gue", "--norm", "frobenius", "--out", str(tmp_path), "-q"]
    monkeypatch.setattr("sys.argv", argv)
    result = runner.invoke(app, argv[1:])
    assert result.exit_code == 130, result.output
    run = _only_run(tmp_path)
    assert result.stderr.splitlines() == [f"interrupted: run directory {run}",
                                          f"resume with: {' '.join(argv)} --resume {run}"]


def _help_pages():
    import typer

    def walk(command, path):
        yield path
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_every_help_page_has_an_example():
    pages = _help_pages()
    assert ["norms", "attention"] in pages and ["runs", "verify"] in pages and ["train"] in pages
    for path in pages:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert "Example" in result.output and "qft " in result.output.split("Example", 1)[1], path


def test_help_texts_agree_between_commands():
    """Issue 18: norms --help names attention; train is not 'single-layer' and lists synthetic-dna;
    --device lists mps everywhere; --norm has one default and --num-epochs one type in train and finetune."""
    import inspect

    from qft_cli.cli.finetune import finetune_command
    from qft_cli.cli.train import train_command
    from qft_cli.train.finetune import FinetuneSettings
    from qft_cli.train.training import ExperimentOptions

    def text(*args):
        result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        return " ".join(result.output.split())

    assert "attention" in text("norms").split("Commands")[0]
    train = text("train")
    assert "single-layer" not in train and "--num-layers" in train and "synthetic-dna" in train
    assert "synthetic-dna" in text("finetune")
    for page in (("train",), ("finetune",), ("norms", "inputs"), ("norms", "attention"), ("norms", "weights")):
        assert "mps" in text(*page).split("--device", 1)[1][:120], page
    assert "0 (embedding output) to" not in text("norms", "attention")
    train_params, finetune_params = (inspect.signature(f).parameters for f in (train_command, finetune_command))
    assert train_params["norm"].default.default == finetune_params["norm"].default.default == "all"
    assert ExperimentOptions().norm == FinetuneSettings().norm == "all"
    assert train_params["num_epochs"].annotation == finetune_params["num_epochs"].annotation == "float"


def test_empty_seed_entries_are_refused():
    from qft_cli.system.errors import QftInputError
    from qft_cli.train.training import parse_seeds

    for text in ("0,,1", "0,1,", ",0"):
        with pytest.raises(QftInputError, match="empty entry"):
            parse_seeds(text, None)
    assert parse_seeds("0, 1,2", None) == (0, [0, 1, 2])


def test_attention_layer_range_error_says_blocks(tmp_path):
    result = invoke("norms", "attention", "tiny-bert", "--dataset", "random", "--layers", "3", "--out", tmp_path)
    assert result.exit_code == 2
    assert "blocks are 1 to 2 (layer 0, the embedding, has no attention)" in result.stderr
    assert "0 (embedding output)" not in result.stderr


def test_error_output_does_not_start_with_a_blank_line(tmp_path):
    # with the progress bar on (no --quiet): an error before its first step printed an empty bar line
    result = invoke("norms", "inputs", "tiny-bert", "--dataset", "random", "--layers", "9", "--out", tmp_path)
    assert result.exit_code == 2 and result.stderr.startswith("error: "), repr(result.stderr[:80])


def test_position_ids_buffer_is_not_unrecognised():
    from qft_cli.measure.weights import unrecognised_parameters

    shapes = {"embeddings.position_ids": (1, 512), "bert.embeddings.token_type_ids": (1, 512),
              "encoder.layer.0.mystery.weight": (8, 8)}
    assert unrecognised_parameters(shapes, []) == ["encoder.layer.0.mystery.weight"]
