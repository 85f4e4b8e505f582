"""``qft demo``: the whole pipeline offline on embedded defaults, ending in one HTML report.

Steps (each a normal qft run, written under one demo directory ``<out>/<stamp>-demo/``):

1. ``norms weights`` of ``minilm`` (the embedded all-MiniLM-L6-v2) and the tiny random models;
2. ``norms inputs`` of ``minilm`` on random tokens, N = 1..256;
3. ``train --norm all`` (vanilla, spectral, Frobenius) on a small *synthetic* DNA task generated
   from a seed (:mod:`qft_cli.data.synthetic`), written beside the runs as ``synthetic-dna-seed<seed>/``;
4. ``report`` of those runs -> ``<demo dir>/report.html``.

Sized to finish in well under 5 minutes on 2 CPU cores. A step that fails is recorded (its run
directory says ``failed``) and the demo goes on; the report lists it.

The norms and training libraries are called by the three step functions
``_norms_weights_step``, ``_norms_inputs_step`` (``qft_cli.measure.workflows``) and ``_train_step``
(``qft_cli.train.training``): they are the only places that know those libraries' entry points.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from qft_cli.data.synthetic import (
    SYNTHETIC_DATASET,
    SyntheticSpec,
    write_synthetic_promoters,
)
from qft_cli.runs.files import check_writable
from qft_cli.system.errors import QftInputError
from qft_cli.system.progress import ProgressFn
from qft_cli.system.progress import report as report_progress

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class DemoConfig:
    """Embedded defaults of the demo (validated on creation).

    Attributes:
        out: directory that receives the demo directory (``--out``, default ``runs``).
        seed: seed of the random tokens, the synthetic data and training.
        weights_models: models whose weight norms are measured.
        inputs_model: model whose hidden-state norms are measured on random tokens.
        max_tokens: largest N of the random-token inputs (N = 1..max_tokens).
        synthetic: the synthetic DNA task.
        d_model / num_heads / d_ff / num_layers: the trained transformer (one layer as in the research).
        num_epochs / batch_size / learning_rate / max_length / tokenizer: training settings (a BPE of
            512 tokens learned on the training split picks up the motifs; about 0.8 test accuracy).
    """

    out: Path = Path("runs")
    seed: int = 0
    weights_models: tuple[str, ...] = ("minilm", "tiny-gpt2", "tiny-bert", "tiny-llama")
    inputs_model: str = "minilm"
    max_tokens: int = 256
    synthetic: SyntheticSpec = SyntheticSpec()
    d_model: int = 64
    num_heads: int = 4
    d_ff: int = 128
    num_layers: int = 1
    num_epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 3e-3
    max_length: int = 64
    tokenizer: str = "bpe:512"

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise QftInputError(f"demo max_tokens must be >= 1 (got {self.max_tokens})")
        if self.synthetic.seed != self.seed:
            object.__setattr__(self, "synthetic", SyntheticSpec(**{**self.synthetic.__dict__, "seed": self.seed}))


@dataclass
class DemoStep:
    """One step of the demo.

    Attributes:
        name: what was run (as a qft command line).
        status: ``completed``, ``failed`` or ``interrupted`` (from the run's run.json).
        run_dir: the run directory, when one was created.
        message: the error of a failed step.
        seconds: wall-clock time of the step.
    """

    name: str
    status: str
    run_dir: Optional[Path] = None
    message: str = ""
    seconds: float = 0.0


@dataclass
class DemoResult:
    """What :func:`run_demo` produced: the demo directory, its steps, the data, the report, and the
    headline numbers (:func:`headline_fits`, :func:`headline_accuracy`; None where the step that
    makes them did not complete)."""

    directory: Path
    steps: list[DemoStep] = field(default_factory=list)
    data_dir: Optional[Path] = None
    report: Optional[Path] = None
    report_message: str = ""
    fits: Optional["pd.DataFrame"] = None
    accuracy: Optional["pd.DataFrame"] = None

    @property
    def ok(self) -> bool:
        """True when every step completed and the report was written."""
        return self.report is not None and all(s.status == "completed" for s in self.steps)


# ------------------------------------------------------------------------------------------
# Steps: the only places that call the norms and training libraries.
# ------------------------------------------------------------------------------------------

def _norms_weights_step(config: DemoConfig, out: Path, progress: Optional[ProgressFn]) -> Path:
    """``qft norms weights MODELS --out OUT`` through :mod:`qft_cli.measure.workflows`."""
    from qft_cli.measure.workflows import NormsWeightsArgs, run_norms_weights

    result = run_norms_weights(NormsWeightsArgs(models=list(config.weights_models), device="cpu", dtype=None, out=out), progress)
    return Path(result.run_dir)


def _norms_inputs_step(config: DemoConfig, out: Path, progress: Optional[ProgressFn]) -> Path:
    """``qft norms inputs minilm --dataset random --max-tokens 256 --out OUT``."""
    from qft_cli.measure.workflows import NormsInputsArgs, run_norms_inputs

    result = run_norms_inputs(NormsInputsArgs(models=[config.inputs_model], dataset="random", data_file=None, text_column=None,
                          layers="0,1", max_tokens=config.max_tokens, num_samples=None, batch_size=16,
                          seed=config.seed, device="cpu", dtype="float32", device_map=None,
                          trust_remote_code=False, out=out), progress)
    return Path(result.run_dir)


def train_argv(config: DemoConfig, data_dir: Path, out: Path) -> list[str]:
    """The ``qft train`` command line the demo's training step is equivalent to (re-runnable)."""
    return ["qft", "train", "--dataset", SYNTHETIC_DATASET, "--data-dir", str(data_dir), "--norm", "all",
            "--tokenizer", config.tokenizer, "--max-length", str(config.max_length), "--d-model", str(config.d_model),
            "--num-heads", str(config.num_heads), "--d-ff", str(config.d_ff), "--num-epochs", str(config.num_epochs),
            "--early-stopping", "3", "--warmup-ratio", "0.1", "--learning-rate", str(config.learning_rate),
            "--batch-size", str(config.batch_size), "--seed", str(config.seed), "--device", "cpu", "--out", str(out)]


def _train_step(config: DemoConfig, data_dir: Path, out: Path, progress: Optional[ProgressFn]) -> Path:
    """``qft train --dataset synthetic-dna --data-dir DATA --norm all ...`` (:func:`train_argv`) through
    :mod:`qft_cli.train.training`, as ``qft train`` does; ``run.json`` says ``synthetic: true``."""
    from qft_cli.train.training import (
        ExperimentOptions,
        TrainingConfig,
        open_run,
        run_experiment,
    )

    training = TrainingConfig(learning_rate=config.learning_rate, num_epochs=config.num_epochs, early_stopping=3,
                              warmup_ratio=0.1, batch_size=config.batch_size, seed=config.seed, device="cpu",
                              mixed_precision="no", save_total_limit=1)
    options = ExperimentOptions(dataset=SYNTHETIC_DATASET, data_dir=str(data_dir), tokenizer=config.tokenizer,
                                max_length=config.max_length, norm="all", d_model=config.d_model,
                                num_heads=config.num_heads, d_ff=config.d_ff, num_layers=config.num_layers,
                                training=training)
    options.validate()
    run = open_run(options, out=out, argv=train_argv(config, data_dir, out))
    run.meta = {**run.meta, "synthetic": True,  # run_experiment records the data read in `data` (source synthetic)
                "data_description": f"{config.synthetic.name} (synthetic, generated by qft demo)"}
    with run:
        run_experiment(options, run, progress=progress)
    return Path(run.path)


# ------------------------------------------------------------------------------------------

def headline_fits(run_dir: Path) -> "pd.DataFrame":
    """The fitted exponents of a ``norms inputs`` run: ``fits.parquet`` (or, for a run written
    before it existed, :func:`qft_cli.measure.fits.fit_table` of ``norms_inputs.parquet``), columns
    ``model_alias, dataset, layer, norm, exponent, exponent_ci_low, exponent_ci_high, r_squared,
    num_points``."""
    import pandas as pd

    from qft_cli.measure.fits import fit_table
    from qft_cli.measure.workflows import FIT_GROUPS

    path = Path(run_dir) / "fits.parquet"
    if path.is_file():
        fits = pd.read_parquet(path)
    else:
        fits = fit_table(pd.read_parquet(Path(run_dir) / "norms_inputs.parquet"), FIT_GROUPS, quantity="hidden_states")
    return fits[["model_alias", "dataset", "layer", "norm", "exponent", "exponent_ci_low", "exponent_ci_high",
                 "r_squared", "num_points"]].reset_index(drop=True)


def headline_accuracy(run_dir: Path) -> "pd.DataFrame":
    """Test accuracy and F1 per variant of a ``train`` run (``metrics.parquet``, split ``test``;
    the mean over seeds where there are several), and the differences to vanilla in percentage
    points (NaN for vanilla itself and without a vanilla variant). Columns ``variant, num_seeds,
    accuracy, f1, accuracy_diff_pp, f1_diff_pp``; accuracy and F1 are fractions in [0, 1]."""
    import pandas as pd

    metrics = pd.read_parquet(Path(run_dir) / "metrics.parquet")
    test = metrics[metrics["split"] == "test"]
    order = list(dict.fromkeys(test["variant"]))
    table = (test.groupby("variant", sort=False)
             .agg(num_seeds=("accuracy", "size"), accuracy=("accuracy", "mean"), f1=("f1", "mean"))
             .reindex(order).reset_index())
    vanilla = table[table["variant"] == "vanilla"]
    for metric in ("accuracy", "f1"):
        base = vanilla[metric].iloc[0] if len(vanilla) else float("nan")
        diff = 100 * (table[metric] - base)
        table[f"{metric}_diff_pp"] = diff.where(table["variant"] != "vanilla")
    return table


def _newest_run(out: Path, before: set[Path]) -> Optional[Path]:
    new = [p for p in out.iterdir() if p.is_dir() and p not in before and (p / "run.json").is_file()]
    return max(new, key=lambda p: p.stat().st_mtime) if new else None


def _run_step(result: DemoResult, name: str, fn: Callable[[], Path]) -> None:
    import time

    from qft_cli.runs.rundir import read_run_json

    before = set(result.directory.iterdir())
    start = time.perf_counter()
    step = DemoStep(name=name, status="completed")
    try:
        step.run_dir = fn()
        step.status = read_run_json(step.run_dir).get("status", "completed")
    except KeyboardInterrupt:
        step.status, step.run_dir = "interrupted", _newest_run(result.directory, before)
        step.seconds = time.perf_counter() - start
        result.steps.append(step)
        raise
    except Exception as err:  # noqa: BLE001 - the demo records the failure and goes on
        step.status, step.message = "failed", f"{type(err).__name__}: {err}"
        step.run_dir = _newest_run(result.directory, before)
    step.seconds = time.perf_counter() - start
    result.steps.append(step)


def _headlines(result: DemoResult) -> None:
    """Fill ``result.fits`` / ``result.accuracy`` from the completed norms inputs / train steps."""
    for step in result.steps:
        if step.status != "completed" or step.run_dir is None:
            continue
        if step.name.startswith("qft norms inputs"):
            result.fits = headline_fits(step.run_dir)
        elif step.name.startswith("qft train"):
            result.accuracy = headline_accuracy(step.run_dir)


def run_demo(config: DemoConfig = DemoConfig(), progress: Optional[ProgressFn] = None) -> DemoResult:
    """Run the demo pipeline and write its report.

    Args:
        config: :class:`DemoConfig` (embedded defaults; only ``out`` and ``seed`` are CLI options).
        progress: optional progress callback (see :mod:`qft_cli.system.progress`).

    Returns:
        :class:`DemoResult` with every step's status and run directory, the synthetic data
        directory, the report path (``None`` when no step produced a run) and the headline
        numbers (the fitted exponents of ``norms inputs``, the test accuracy table of ``train``).

    Raises:
        QftInputError: ``out`` is not a writable directory.
        KeyboardInterrupt: passed on after recording the interrupted step.
    """
    from qft_cli.report import write_report

    out = check_writable(Path(config.out))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    directory = out / f"{stamp}-demo"
    i = 1
    while directory.exists():
        i += 1
        directory = out / f"{stamp}-demo-{i}"
    directory.mkdir(parents=True)
    result = DemoResult(directory=directory)
    total = 5
    report_progress(progress, "demo", 0, total)
    names = " ".join(config.weights_models)
    _run_step(result, f"qft norms weights {names}", lambda: _norms_weights_step(config, directory, progress))
    report_progress(progress, "demo", 1, total)
    _run_step(result, f"qft norms inputs {config.inputs_model} --dataset random --max-tokens {config.max_tokens}",
              lambda: _norms_inputs_step(config, directory, progress))
    report_progress(progress, "demo", 2, total)
    result.data_dir = write_synthetic_promoters(directory / "data", config.synthetic)
    report_progress(progress, "demo", 3, total)
    _run_step(result, " ".join(train_argv(config, result.data_dir, directory)),
              lambda: _train_step(config, result.data_dir, directory, progress))
    report_progress(progress, "demo", 4, total)
    _headlines(result)
    run_dirs = [s.run_dir for s in result.steps if s.run_dir is not None]
    if run_dirs:
        written = write_report(run_dirs, directory / "report.html", title="qft demo report")
        result.report = written.path
    else:
        result.report_message = "no step produced a run directory, so there is nothing to report"
    report_progress(progress, "demo", 5, total)
    return result
