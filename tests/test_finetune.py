"""``qft finetune``: selection of normalised matrices, bounded gammas, export round trip, learning
on real GUE data offline, and bad input (one line, exit 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from conftest import recording_factory
from typer.testing import CliRunner

from qft_cli.cli.finetune import finetune_command
from qft_cli.system.errors import QftInputError
from qft_cli.train.finetune import FinetuneSettings, find_best_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_export import _stock_logits  # noqa: E402

app = typer.Typer()
app.command("finetune")(finetune_command)


@app.command("version")
def _version() -> None:  # a second command keeps `finetune` a sub-command, as in the root app
    pass


runner = CliRunner()
FAST = ["--dataset", "gue", "--num-epochs", "1", "--batch-size", "16", "--eval-batch-size", "64", "--warmup-ratio", "0", "-q"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory, shared_data) -> Path:
    """200/64/64 real GUE sequences as a --data-dir (fast runs)."""
    directory = tmp_path_factory.mktemp("gue-small")
    source = shared_data / "gue" / "prom_core_notata"
    for split, n in (("train", 200), ("dev", 64), ("test", 64)):
        pd.read_csv(source / f"{split}.csv").head(n).to_csv(directory / f"{split}.csv", index=False)
    return directory


def _run(args: list[str]):
    result = runner.invoke(app, ["finetune", *args])
    return result


def _run_dir(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def test_layers_1_ffn_touches_exactly_those_matrices(tmp_path, small_csv):
    out = tmp_path / "runs"
    result = _run(["tiny-dnabert", "--data-dir", str(small_csv), "--norm", "frobenius", "--layers", "1",
                   "--targets", "ffn", "--max-steps", "2", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    run = _run_dir(out)
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "completed"
    assert meta["results"]["frobenius"]["normalised"] == [
        "bert.encoder.layer.0.mlp.gated_layers.weight:ffn_gate", "bert.encoder.layer.0.mlp.gated_layers.weight:ffn_up",
        "bert.encoder.layer.0.mlp.wo.weight:ffn_down"]
    norms = pd.read_parquet(run / "norms_during_training.parquet")
    assert set(zip(norms.layer, norms.matrix)) == {(1, "ffn_gate"), (1, "ffn_up"), (1, "ffn_down")}
    np.testing.assert_allclose(norms.frobenius_norm, 1.0, rtol=1e-5)
    # the saved best model is folded: plain weights, those of layer 1's FFN normalised (||W||_F = 1
    # for the gate and up halves of gated_layers and for wo), the checkpoints parametrised
    from safetensors import safe_open

    with safe_open(str(run / "best" / "frobenius" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        gated, wo = (f.get_tensor(f"bert.encoder.layer.{i}.mlp.{n}.weight").double()
                     for i, n in ((0, "gated_layers"), (0, "wo")))
        other = f.get_tensor("bert.encoder.layer.1.mlp.wo.weight").double()
    assert not any(".parametrizations." in k for k in keys)
    half = gated.shape[0] // 2
    for w in (gated[:half], gated[half:], wo):
        assert torch.linalg.matrix_norm(w, "fro").item() == pytest.approx(1.0, rel=1e-5)
    assert torch.linalg.matrix_norm(other, "fro").item() != pytest.approx(1.0, rel=1e-3)
    (checkpoint,) = (run / "checkpoints" / "frobenius").iterdir()
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        parametrized = sorted({k.split(".parametrizations.")[0] for k in f.keys() if ".parametrizations." in k})
    assert parametrized == ["bert.encoder.layer.0.mlp.gated_layers", "bert.encoder.layer.0.mlp.wo"]


def test_gammas_stay_below_max_gamma_and_set_the_norm(tmp_path, small_csv):
    out = tmp_path / "runs"
    result = _run(["tiny-bert", "--dataset", "gue", "--data-dir", str(small_csv), "--norm", "frobenius", "--max-gamma", "0.5",
                   "--learning-rate", "0.05", "--num-epochs", "2", "--batch-size", "16", "--warmup-ratio", "0",
                   "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    run = _run_dir(out)
    gammas = pd.read_parquet(run / "gammas.parquet")
    assert list(gammas.columns) == ["variant", "seed", "epoch", "step", "parameter", "layer", "matrix", "gamma"]
    assert set(gammas.variant) == {"frobenius_subnormalised"}
    assert sorted(gammas.epoch.unique()) == [0.0, 1.0, 2.0]
    assert len(gammas[gammas.epoch == 0]) == 2 * 6  # q,k,v,o,ffn_up,ffn_down in 2 layers
    assert (gammas.gamma > 0).all() and (gammas.gamma <= 0.5).all()
    assert gammas[gammas.epoch == 2].gamma.sub(0.25).abs().max() > 1e-3  # they did learn
    norms = pd.read_parquet(run / "norms_during_training.parquet")
    merged = norms.merge(gammas, on=["variant", "epoch", "step", "parameter", "layer", "matrix"])
    assert len(merged) == len(gammas)
    # effective ||W||_F == gamma (computed independently from the effective matrix), spectral <= Frobenius
    np.testing.assert_allclose(merged.frobenius_norm, merged.gamma, rtol=1e-5)
    assert (merged.spectral_norm <= merged.frobenius_norm + 1e-9).all()
    metrics = pd.read_parquet(run / "metrics.parquet")
    assert {"train", "validation", "test"} <= set(metrics.split)


def test_export_round_trip_through_the_cli(tmp_path, small_csv):
    from qft_cli.models.names import ModelSource
    from qft_cli.train.finetune import load_classifier

    out, export = tmp_path / "runs", tmp_path / "export"
    result = _run(["tiny-dnabert", "--data-dir", str(small_csv), "--norm", "frobenius", "--max-gamma", "1",
                   "--max-steps", "3", "--export", str(export), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    best = _run_dir(out) / "best" / "frobenius_subnormalised"
    # the normalised best checkpoint, rebuilt and folded in process
    model = load_classifier(ModelSource(str(best), "local", str(best)), 2)
    ids = torch.randint(5, 261, (3, 10))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    with torch.no_grad():
        expected = model.eval()(input_ids=ids, attention_mask=mask).logits
    logits, cls_name = _stock_logits(export, ids, mask, tmp_path)
    assert cls_name == "DnaBert2ForSequenceClassification"
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)
    assert (export / "tokenizer.json").is_file()
    assert "qft_normalization" not in json.loads((export / "config.json").read_text())


def _assert_one_line_exit_2(result):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output


def test_bad_inputs_one_line_exit_2(tmp_path, small_csv):
    out = tmp_path / "runs"
    common = ["--data-dir", str(small_csv), "--out", str(out), *FAST]
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    result = _run([str(vit), "--tokenizer", "tiny-bert", *common])
    _assert_one_line_exit_2(result)
    assert "no sequence-classification architecture" in result.output
    result = _run(["tiny-bert", "--norm", "frobenius", "--layers", "3", *common])
    _assert_one_line_exit_2(result)
    assert "layer 3" in result.output
    for gamma in ("0", "-1"):
        _assert_one_line_exit_2(_run(["tiny-bert", "--norm", "frobenius", "--max-gamma", gamma, *common]))
    run_dir = tmp_path / "train-run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"command": "train", "status": "failed"}))
    result = _run([str(run_dir), *common])
    _assert_one_line_exit_2(result)
    assert "no best checkpoint" in result.output
    assert not out.exists() or not any(out.iterdir())  # bad input leaves no run directory


def test_train_run_directory_loads_its_best_checkpoint(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from qft_cli.models.names import build_tiny_model
    from qft_cli.train.finetune import load_classifier, resolve_finetune_model

    run_dir = tmp_path / "run"  # the layout of qft_cli.train.training: best/<variant>/
    (run_dir / "best").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"command": "train"}))
    trained = build_tiny_model("tiny-bert", AutoModelForSequenceClassification, num_labels=2)
    trained.save_pretrained(run_dir / "best" / "vanilla")
    source = resolve_finetune_model(str(run_dir))
    assert Path(source.location) == (run_dir / "best" / "vanilla").resolve()
    model = load_classifier(source, 2)
    assert torch.equal(model.bert.encoder.layer[1].output.dense.weight, trained.bert.encoder.layer[1].output.dense.weight)
    trained.save_pretrained(run_dir / "best" / "frobenius")
    assert find_best_checkpoint(run_dir) == run_dir / "best" / "vanilla"


def test_settings_defaults_and_variants():
    s = FinetuneSettings()
    assert (s.learning_rate, s.num_epochs, s.early_stopping, s.weight_decay, s.lr_scheduler_type, s.warmup_ratio,
            s.batch_size, s.eval_batch_size) == (2e-4, 200, 25, 0.01, "cosine", 0.1, 128, 256)
    # one meaning of --norm all (as qft train); the sub-normalised variants by their own flag
    assert FinetuneSettings(norm="all").variants() == [("vanilla", None, None), ("spectral", "spectral", None),
                                                       ("frobenius", "frobenius", None)]
    assert FinetuneSettings(norm="vanilla,frobenius", subnormalised=True).variants() == [
        ("vanilla", None, None), ("frobenius", "frobenius", None), ("frobenius_subnormalised", "frobenius", 1.0)]
    assert FinetuneSettings(norm="all", subnormalised=True, max_gamma=0.5).variants()[-2:] == [
        ("spectral_subnormalised", "spectral", 0.5), ("frobenius_subnormalised", "frobenius", 0.5)]
    assert FinetuneSettings(seeds=[3, 1]).seed == 3
    assert FinetuneSettings(norm="spectral", max_gamma=2.0).variants() == [("spectral_subnormalised", "spectral", 2.0)]
    with pytest.raises(QftInputError):
        FinetuneSettings(norm="frobenius", max_gamma=0.0)
    with pytest.raises(QftInputError):
        FinetuneSettings(norm="spectrall")
    with pytest.raises(QftInputError):
        FinetuneSettings(norm="none", subnormalised=True)
    with pytest.raises(QftInputError):
        FinetuneSettings(seeds=[1, 1])


def test_pos_tagging_runs_with_a_token_classification_head(tmp_path, shared_data):
    out = tmp_path / "runs"
    result = _run(["tiny-bert", "--dataset", "conll2003", "--data-dir", str(shared_data / "conll2003"),
                   "--norm", "spectral", "--targets", "attention", "--max-train-samples", "64",
                   "--max-eval-samples", "32", "--max-steps", "2", "--num-epochs", "1", "--batch-size", "16",
                   "--warmup-ratio", "0", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    run = _run_dir(out)
    meta = json.loads((run / "run.json").read_text())
    assert meta["task_kind"] == "token_classification" and meta["num_labels"] > 40
    config = json.loads((run / "best" / "spectral" / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    norms = pd.read_parquet(run / "norms_during_training.parquet")
    assert set(norms.matrix) == {"q", "k", "v", "o"}
    np.testing.assert_allclose(norms.spectral_norm, 1.0, atol=1e-3)


def test_resume_skips_finished_variants_and_continues_the_interrupted_one(tmp_path, small_csv):
    """A multi-seed run: every (variant, seed) finished before the interruption is kept as is, the
    interrupted one (frobenius, seed 1) continues from its checkpoint."""
    out = tmp_path / "runs"
    args = ["tiny-bert", "--data-dir", str(small_csv), "--norm", "vanilla,frobenius", "--seeds", "0,1",
            "--num-epochs", "2", "--out", str(out), *[a for a in FAST if a not in ("--num-epochs", "1")]]
    assert _run(args).exit_code == 0
    run = _run_dir(out)
    before = pd.read_parquet(run / "metrics.parquet")
    assert set(zip(before.variant, before.seed)) == {("vanilla", 0), ("frobenius", 0), ("vanilla", 1), ("frobenius", 1),
                                                     ("baseline_kmer", 0)}  # the baseline: once per split seed
    # simulate an interruption of the last (variant, seed) after its first epoch
    last, seed = "frobenius", 1
    checkpoints = sorted((run / "checkpoints" / last / f"seed-{seed}").glob("checkpoint-*"),
                         key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) == 2
    import shutil

    shutil.rmtree(checkpoints[-1])
    shutil.rmtree(run / "best" / last / f"seed-{seed}")
    step = int(checkpoints[0].name.split("-")[1])
    mine = (before.variant == last) & (before.seed == seed)
    kept = before[~(mine & (before.step > step))]
    from qft_cli.runs.files import write_parquet_atomic

    write_parquet_atomic(kept, run / "metrics.parquet")
    (run / "test_summary.parquet").unlink()
    result = _run([*args, "--resume", str(run)])
    assert result.exit_code == 0, result.output
    after = pd.read_parquet(run / "metrics.parquet")
    for variant, s in (("vanilla", 0), ("frobenius", 0), ("vanilla", 1), ("baseline_kmer", 0)):  # untouched
        pick = lambda df: df[(df.variant == variant) & (df.seed == s)].reset_index(drop=True)  # noqa: E731
        pd.testing.assert_frame_equal(pick(after), pick(before))
    resumed = after[(after.variant == last) & (after.seed == seed)]
    assert sorted(resumed[resumed.split == "validation"].epoch) == [1.0, 2.0]
    assert (resumed.split == "test").sum() == 1
    assert (run / "best" / last / f"seed-{seed}" / "config.json").is_file()
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    predictions = pd.read_parquet(run / "predictions.parquet")
    assert not predictions.duplicated(["variant", "seed", "sample_index"]).any()
    assert predictions.groupby(["variant", "seed"]).size().nunique() == 1  # every pair scored on the same test set
    summary = pd.read_parquet(run / "test_summary.parquet")
    trained = summary[summary.variant != "baseline_kmer"]
    assert set(trained.num_seeds) == {2} and set(trained.interval) == {"t over seeds"}
    assert "vanilla" in result.stdout and "t over seeds" in result.stdout
    assert "epochs" in result.stdout and "2.0" in result.stdout  # the epochs column is filled


def test_published_style_dnabert2_directory_fine_tunes_every_matrix(tmp_path, small_csv, shared_data):
    from qft_cli.models.dnabert2 import TINY_DNABERT, save_published_style_checkpoint

    checkpoint = save_published_style_checkpoint(tmp_path / "dnabert2", seed=5, **TINY_DNABERT,
                                                 config_json=shared_data / "dnabert2" / "config.json")
    out, export = tmp_path / "runs", tmp_path / "export"
    result = _run([str(checkpoint), "--tokenizer", "tiny-bert", "--data-dir", str(small_csv), "--norm", "frobenius",
                   "--max-steps", "2", "--export", str(export), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    meta = json.loads((_run_dir(out) / "run.json").read_text())
    normalised = meta["results"]["frobenius"]["normalised"]
    assert sorted(m.split(":")[1] for m in normalised) == sorted(["q", "k", "v", "o", "ffn_gate", "ffn_up",
                                                                  "ffn_down"] * 2)
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "qft_dnabert2" and "auto_map" in config
    # provenance (issue 12): the weight files of the directory and the data files, hashlib's SHA-256
    import hashlib

    (model,) = meta["model_files"]
    assert model["model"] == str(checkpoint) and model["kind"] == "local" and model["files"]
    for f in model["files"] + meta["data_files"]:
        assert f["sha256"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()
    assert sorted(Path(f["path"]).name for f in model["files"]) == sorted(
        p.name for p in Path(checkpoint).iterdir() if p.suffix in (".safetensors", ".bin"))
    assert sorted(f["path"] for f in meta["data_files"]) == sorted(str(small_csv.resolve() / f"{s}.csv")
                                                                   for s in ("dev", "test", "train"))
    assert meta["data"]["task"] == small_csv.name  # no --task: the folder's own name, never the default
    assert small_csv.name in result.output and "prom_300_notata" not in result.output


def test_vanilla_qft_train_checkpoint_loads(tmp_path):
    """A vanilla `qft train` model saves "qft_normalization": null in its config: a plain checkpoint."""
    from qft_cli.train.finetune import load_classifier, resolve_finetune_model
    from qft_cli.train.modeling_qft import QftConfig, build_model

    run_dir = tmp_path / "run"
    (run_dir / "run.json").parent.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"command": "train"}))
    trained = build_model(QftConfig(vocab_size=30, d_model=16, num_heads=2, d_ff=16, num_labels=2), seed=3)
    trained.save_pretrained(run_dir / "best" / "vanilla")
    assert json.loads((run_dir / "best" / "vanilla" / "config.json").read_text())["qft_normalization"] is None
    model = load_classifier(resolve_finetune_model(str(run_dir)), 2)
    for (k, a), b in zip(trained.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_export_to_a_file_is_refused_before_any_training(tmp_path, small_csv, monkeypatch):
    import qft_cli.train.training

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking --export")

    monkeypatch.setattr(qft_cli.train.training, "train_variant", no_training)
    target = tmp_path / "export.txt"
    target.write_text("not a directory")
    out = tmp_path / "runs"
    result = _run(["tiny-bert", "--data-dir", str(small_csv), "--norm", "frobenius", "--export", str(target),
                   "--out", str(out), *FAST])
    _assert_one_line_exit_2(result)
    assert "is a file" in result.output
    assert not out.exists() or not any(out.iterdir())


def test_targets_matching_nothing_refused_before_vanilla_trains(tmp_path, small_csv, monkeypatch):
    import qft_cli.train.training

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking --targets")

    monkeypatch.setattr(qft_cli.train.training, "train_variant", no_training)
    out = tmp_path / "runs"
    result = _run(["tiny-bert", "--data-dir", str(small_csv), "--norm", "all", "--targets", "ffn_gate",
                   "--out", str(out), *FAST])  # BERT has no gated FFN
    _assert_one_line_exit_2(result)
    assert "ffn_gate" in result.output


@pytest.mark.parametrize("content", ['{"command": "train", "options": {}}', '{not json'])
def test_resume_of_a_run_dir_that_is_not_a_finetune_run(tmp_path, small_csv, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(content)
    result = _run(["tiny-bert", "--data-dir", str(small_csv), "--resume", str(run_dir), *FAST])
    _assert_one_line_exit_2(result)
    assert "qft finetune" in result.output
    assert (run_dir / "run.json").read_text() == content and sorted(run_dir.iterdir()) == [run_dir / "run.json"]


def test_max_length_beyond_the_model_positions_is_one_line(tmp_path, small_csv, monkeypatch):
    import qft_cli.train.training

    def no_training(*args, **kwargs):
        raise AssertionError("trained with more tokens than position embeddings")

    monkeypatch.setattr(qft_cli.train.training, "train_variant", no_training)
    out = tmp_path / "runs"
    result = _run(["tiny-bert", "--data-dir", str(small_csv), "--max-length", "2000", "--out", str(out), *FAST])
    _assert_one_line_exit_2(result)  # tiny-bert has 1024 positions: a RuntimeError mid-training before
    assert "--max-length 2000" in result.output and "1024" in result.output
    assert not out.exists() or not any(out.iterdir())


def test_norm_all_variants_start_from_the_same_weights_and_see_the_same_batches(tmp_path, small_csv, monkeypatch):
    import qft_cli.train.finetune as ft

    seen, initial = [], []
    monkeypatch.setattr(ft, "load_classifier", recording_factory(ft.load_classifier, seen, initial))
    out = tmp_path / "runs"
    result = _run(["tiny-bert", "--data-dir", str(small_csv), "--norm", "all", "--max-train-samples", "48",
                   "--max-eval-samples", "16", "--num-epochs", "2", "--batch-size", "16", "--warmup-ratio", "0",
                   "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert len(seen) == 3 and len(seen[0]) == 6  # 48 / 16 = 3 steps per epoch, 2 epochs
    for batches, weights in zip(seen[1:], initial[1:]):
        assert len(batches) == len(seen[0]) and all(torch.equal(a, b) for a, b in zip(seen[0], batches))
        assert weights.keys() == initial[0].keys()
        assert all(torch.equal(weights[k], initial[0][k]) for k in weights)  # new classifier head included


def test_help_documents_norm_all_seeds_and_subnormalised():
    result = runner.invoke(app, ["finetune", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for words in ("--seeds", "--subnormalised", "vanilla,spectral,frobenius"):
        assert words in result.stdout, words
    assert "--all-method" not in result.stdout


@pytest.mark.parametrize("args, match", [
    (["--seed", "1", "--seeds", "1,2"], "exclusive"),
    (["--norm", "none", "--subnormalised"], "--subnormalised"),
    (["--norm", "frobenius,frobenius"], "twice"),
])
def test_seed_and_norm_options_one_line_exit_2(tmp_path, small_csv, args, match):
    result = _run(["tiny-bert", "--data-dir", str(small_csv), "--out", str(tmp_path / "runs"), *args, *FAST])
    _assert_one_line_exit_2(result)
    assert match in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("norm", ["spectral", "frobenius"])
def test_best_folder_loads_in_stock_transformers_as_that_model(norm, tmp_path, small_csv):
    """Issue 21, item 8: best/<variant>/ of a normalised tiny BERT loads with the stock Auto class,
    no weight re-initialised, and gives the normalised model's eval logits (the model rebuilt from
    the Trainer's parametrised checkpoint); --resume of the finished run still works."""
    import transformers

    from qft_cli.models.names import ModelSource
    from qft_cli.train.finetune import load_classifier

    out = tmp_path / "runs"
    args = ["tiny-bert", "--data-dir", str(small_csv), "--norm", norm, "--max-steps", "2",
            "--early-stopping", "0", "--out", str(out), *FAST]
    result = _run(args)
    assert result.exit_code == 0, result.output
    run = _run_dir(out)
    best = run / "best" / norm
    stock, info = transformers.AutoModelForSequenceClassification.from_pretrained(best, output_loading_info=True)
    assert type(stock).__name__ == "BertForSequenceClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    (checkpoint,) = (run / "checkpoints" / norm).iterdir()
    normalised = load_classifier(ModelSource(str(checkpoint), "local", str(checkpoint)), 2)  # rebuilt, parametrised
    ids = torch.randint(5, 261, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        expected = normalised.eval()(input_ids=ids, attention_mask=mask).logits
        got = stock.eval()(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    again = _run([*args, "--resume", str(run)])
    assert again.exit_code == 0, again.output
