"""Reading run directories for the report: discovery, ``run.json`` and the parquet tables."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from qft_cli.runs.rundir import RUN_JSON
from qft_cli.system.errors import QftInputError

#: Columns renamed since earlier runs were written (table -> old name -> new name): `stack` became
#: `part` in qft 0.2; `head`, `kv_head`, `sample`, `mean` and `index` (names of DataFrame attributes)
#: became `head_index`, `kv_head_index`, `sample_index`, `mean_value` and `vector_index`.
RENAMED_COLUMNS: dict[str, dict[str, str]] = {
    "norms_weights": {"stack": "part"},
    "norms_heads": {"stack": "part", "head": "head_index"},
    "norm_vectors": {"stack": "part", "index": "vector_index"},
    "norms_attention": {"sample": "sample_index", "head": "head_index", "kv_head": "kv_head_index"},
    "predictions": {"sample": "sample_index"},
    "test_summary": {"mean": "mean_value"},
}
#: Result tables the report reads, with the columns each needs (docs/results.md).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "norms_inputs": ("model", "dataset", "layer", "num_tokens", "frobenius_norm", "spectral_norm"),
    "norms_weights": ("model", "layer", "matrix", "frobenius_norm", "spectral_norm"),
    "norm_vectors": ("model", "layer", "matrix", "kind", "value"),
    "norms_heads": ("model", "layer", "matrix", "head_index", "spectral_norm", "frobenius_norm"),
    "metrics": ("variant", "epoch", "split", "accuracy", "f1"),
    "norms_during_training": ("variant", "epoch", "layer", "matrix", "spectral_norm", "frobenius_norm"),
    "gammas": ("variant", "epoch", "layer", "matrix", "gamma"),
    "fits": ("dataset", "layer", "norm", "exponent", "exponent_ci_low", "exponent_ci_high", "coefficient"),
    "norms_attention": ("model", "dataset", "sample_index", "layer", "head_index", "num_tokens", "q_spectral_norm",
                        "k_spectral_norm", "v_spectral_norm", "logits_unmasked_spectral_norm"),
    "test_summary": ("variant", "metric", "mean_value", "ci_low", "ci_high", "diff_to_vanilla", "diff_ci_low",
                     "diff_ci_high"),
    "predictions": ("variant", "sample_index", "label", "prediction"),
    "cost": ("model_alias", "dataset", "layer", "norm", "num_tokens", "ratio", "ratio_low", "ratio_high", "extrapolated"),
    "crossover": ("model_alias", "dataset", "norm", "layer", "crossover_length", "worst_layer"),
    "trained_cost": ("run_id", "variant", "cost_reduction_spectral", "cost_reduction_frobenius", "mean_value"),
}


@dataclass
class RunRecord:
    """One run directory as the report sees it.

    Attributes:
        path: the run directory.
        meta: the parsed ``run.json`` (empty when unreadable).
        tables: result tables found and readable, by name (``norms_inputs``, ...).
        problems: one line per thing that could not be read (shown in the report).
    """

    path: Path
    meta: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Directory name of the run (unique within a report in practice)."""
        return self.path.name

    @property
    def command(self) -> str:
        """``norms inputs``, ``norms weights``, ``train``, ``finetune`` or ``demo``."""
        return str(self.meta.get("command", "?"))

    @property
    def status(self) -> str:
        """``completed``, ``failed``, ``interrupted``, ``running`` or ``unreadable``."""
        return str(self.meta.get("status", "unreadable"))


def _is_qft_meta(meta: Any) -> bool:
    return isinstance(meta, dict) and "command" in meta and "status" in meta


def dataset_and_task(meta: dict[str, Any]) -> tuple[str, str]:
    """``(dataset, task)`` a run says it read: run.json ``data`` (the data actually read), else its
    options (older runs); ``""`` where unknown. The task of a run that recorded ``data`` is the one
    recorded there (none for genomic-bench and CoNLL)."""
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    opts = meta.get("options") or {}
    dataset = data.get("dataset") or opts.get("dataset") or meta.get("dataset")
    task = data.get("task") or (opts.get("task") if not data else None)
    return str(dataset or ""), str(task or "")


def find_run_dirs(paths: Sequence[Path | str]) -> list[Path]:
    """Run directories named by ``paths``.

    Args:
        paths: each a run directory (it holds ``run.json``), its ``run.json``, or a directory of
            run directories (searched two levels deep; hidden directories are skipped).

    Returns:
        The run directories, each once, in the order given (children sorted by name).

    Raises:
        QftInputError: no path given, a path does not exist, or a path holds no run directory.
    """
    if not paths:
        raise QftInputError("no PATH given: pass a run directory or a directory of run directories")
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise QftInputError(f"{path} does not exist: pass a run directory or a directory of run directories")
        if path.is_file():
            if path.name != RUN_JSON:
                raise QftInputError(f"{path} is a file, not a run directory: pass the directory that holds run.json")
            path = path.parent
        here: list[Path] = []
        if (path / RUN_JSON).is_file():
            here.append(path)
        else:
            for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if (child / RUN_JSON).is_file():
                    here.append(child)
                    continue
                here.extend(sorted(g for g in child.iterdir()
                                   if g.is_dir() and not g.name.startswith(".") and (g / RUN_JSON).is_file()))
        if not here:
            raise QftInputError(f"no qft run directories in {path} (a run directory holds run.json): "
                                "pass a directory written by qft norms, train, finetune or demo")
        for run_dir in here:
            if run_dir.resolve() not in {f.resolve() for f in found}:
                found.append(run_dir)
    return found


def load_run(run_dir: Path | str) -> RunRecord:
    """Read ``run.json`` and every known parquet table of one run directory.

    Never raises for a damaged run: what cannot be read is recorded in ``problems``.
    Tables missing a needed column are dropped with a problem line.
    """
    run_dir = Path(run_dir)
    record = RunRecord(path=run_dir, meta={})
    try:
        meta = json.loads((run_dir / RUN_JSON).read_text())
    except (OSError, ValueError) as err:
        record.problems.append(f"run.json unreadable: {err}")
        return record
    if not _is_qft_meta(meta):
        record.problems.append("run.json has no 'command'/'status': not written by qft")
        return record
    record.meta = meta
    for name, needed in TABLE_COLUMNS.items():
        file = run_dir / f"{name}.parquet"
        if not file.is_file():
            continue
        try:
            df = pd.read_parquet(file)
        except Exception as err:  # noqa: BLE001 - any parquet/arrow failure is a damaged file
            record.problems.append(f"{file.name} unreadable: {type(err).__name__}: {err}")
            continue
        df = df.rename(columns={old: new for old, new in RENAMED_COLUMNS.get(name, {}).items()
                                if old in df.columns and new not in df.columns})
        missing = [c for c in needed if c not in df.columns]
        if missing:
            record.problems.append(f"{file.name} lacks column(s) {', '.join(missing)}: table skipped")
            continue
        record.tables[name] = df
    return record


def load_runs(paths: Sequence[Path | str]) -> list[RunRecord]:
    """Find (:func:`find_run_dirs`) and read (:func:`load_run`) every run under ``paths``.

    Raises:
        QftInputError: as :func:`find_run_dirs`, or when none of the run.json files was written by
            qft (a foreign directory).
    """
    runs = [load_run(p) for p in find_run_dirs(paths)]
    if not any(r.meta for r in runs):
        where = ", ".join(str(p) for p in paths)
        raise QftInputError(f"no readable qft run.json in {where}: {runs[0].problems[0]}")
    return runs


def combined_table(runs: Iterable[RunRecord], name: str) -> pd.DataFrame:
    """Concatenate table ``name`` of all runs, with a ``run`` column (the run's directory name).

    Returns an empty frame when no run has the table. Adds ``model_alias`` (= ``model``) where
    absent and a ``label`` column naming the model (suffixed with the run where the same model
    appears in several runs of this table).
    """
    frames = []
    for r in runs:
        if name in r.tables:
            df = r.tables[name].copy()
            df.insert(0, "run", r.name)
            frames.append(df)
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    if "model" in df.columns:
        if "model_alias" not in df.columns:
            df["model_alias"] = df["model"]
        df["model_alias"] = df["model_alias"].fillna(df["model"]).astype(str)
        df.loc[df["model_alias"] == "", "model_alias"] = df["model"].astype(str)
        runs_per_model = df.groupby("model_alias")["run"].nunique()
        shared = set(runs_per_model[runs_per_model > 1].index)
        df["label"] = [f"{m} [{r}]" if m in shared else m for m, r in zip(df["model_alias"], df["run"])]
    return df


def run_fits(runs: Iterable[RunRecord], measured: str, quantities: Sequence[str],
             fit: Callable[[pd.DataFrame], pd.DataFrame], combined: pd.DataFrame | None = None) -> pd.DataFrame:
    """Power-law fits (``fits.parquet`` schema, :mod:`qft_cli.measure.fits`) of every run that has table ``measured``.

    A run's own ``fits.parquet`` rows of the given ``quantities`` are used where present (the
    numbers the run printed); runs written before that file existed are fitted here with ``fit``
    (which must call :func:`qft_cli.measure.fits.fit_table`) on the run's ``measured`` table. ``combined``:
    :func:`combined_table` of ``measured`` when the caller has it already (its labels are used).

    Returns:
        The fits of all runs with ``run`` first, ``model_alias`` filled from ``model`` where absent,
        ``fit_source`` (``fits.parquet`` or ``fitted by qft report``) and ``label`` as
        :func:`combined_table` labels the ``measured`` table. Empty when no run has ``measured``.
    """
    runs = list(runs)
    frames = []
    for r in runs:
        if measured not in r.tables:
            continue
        f = r.tables.get("fits")
        if f is not None:
            f = f[f["quantity"].isin(list(quantities))] if "quantity" in f.columns else (
                f if list(quantities) == ["hidden_states"] else None)  # fits before `quantity`: norms inputs only
        source = "fits.parquet"
        if f is None or f.empty:
            f, source = fit(r.tables[measured]), "fitted by qft report"
        f = f.copy()
        f.insert(0, "run", r.name)
        f["fit_source"] = source
        frames.append(f)
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    if "model_alias" not in df.columns:
        df["model_alias"] = df["model"]
    df["model_alias"] = df["model_alias"].fillna(df["model"]).astype(str)
    reference = combined if combined is not None else combined_table(runs, measured)
    labels = {(run, alias): label for run, alias, label in
              zip(reference["run"], reference["model_alias"], reference["label"])} if len(reference) else {}
    df["label"] = [labels.get((run, alias), alias) for run, alias in zip(df["run"], df["model_alias"])]
    return df
