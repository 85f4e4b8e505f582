"""One self-contained HTML page of charts from any set of qft runs.

Data flow: run directories (``run.json`` + parquet tables, schemas in ``docs/results.md``) ->
pandas frames -> plotly figures and HTML tables -> one HTML file. Nothing is recomputed from a
model: the report only reads what the runs wrote, so it is fast.

The page embeds plotly.js once in its ``<head>`` (works offline, no CDN); every figure is a
``<div>`` plus a ``Plotly.newPlot`` call. Every string that comes from a run (model names, paths,
dataset names, command lines, error messages) goes through :func:`html.escape`, in the HTML
tables and in the plotly labels alike (plotly.js decodes the entities back for display).

Sections: inputs (``norms_inputs``), weights (``norms_weights``, ``norm_vectors``), training
(``metrics``, ``norms_during_training``, ``gammas``), a normalisation-factor summary, and the run
metadata (failed and interrupted runs are listed, never silently skipped).

All norms are dimensionless numbers (matrix norms of weights, or of hidden states in the model's
hidden-state units); accuracies and F1 are fractions in [0, 1], differences are in percentage
points.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from qft_cli import __version__
from qft_cli.errors import QftInputError
from qft_cli.norms import fit_power_law
from qft_cli.runs import RUN_JSON

#: Result tables the report reads, with the columns each needs (docs/results.md).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "norms_inputs": ("model", "dataset", "layer", "num_tokens", "frobenius_norm", "spectral_norm"),
    "norms_weights": ("model", "layer", "matrix", "frobenius_norm", "spectral_norm"),
    "norm_vectors": ("model", "layer", "matrix", "kind", "value"),
    "norms_heads": ("model", "layer", "matrix", "head", "spectral_norm", "frobenius_norm"),
    "metrics": ("variant", "epoch", "split", "accuracy", "f1"),
    "norms_during_training": ("variant", "epoch", "layer", "matrix", "spectral_norm", "frobenius_norm"),
    "gammas": ("variant", "epoch", "layer", "matrix", "gamma"),
}

#: Most points drawn per scatter trace; larger traces are thinned evenly in N order (fits use all).
MAX_POINTS_PER_TRACE = 1500
#: Bins of the pre-binned histograms (bin counts are computed here, not in the browser).
HISTOGRAM_BINS = 60
#: Token counts N at which the normalisation-factor summary reports alpha_S.
SUMMARY_TOKEN_COUNTS = (128, 512)

NORM_LABELS = {"frobenius_norm": ("Frobenius", "F"), "spectral_norm": ("spectral", "2")}
VARIANT_ORDER = ("vanilla", "spectral", "frobenius", "spectral_subnormalised", "frobenius_subnormalised")
MATRIX_ORDER = ("q", "k", "v", "o", "cross_q", "cross_k", "cross_v", "cross_o", "ffn_gate", "ffn_up", "ffn_down")
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#393b79", "#ad494a")
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "cross", "star", "triangle-down")


# --------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------

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
        if "stack" in df.columns and "part" not in df.columns:  # runs before qft 0.2 named it `stack`
            df = df.rename(columns={"stack": "part"})
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


# --------------------------------------------------------------------------------------------
# Numbers shown in the tables
# --------------------------------------------------------------------------------------------

def power_law_table(norms_inputs: pd.DataFrame) -> pd.DataFrame:
    """Fitted exponents b of norm ~ c N^b per (model, dataset, layer, norm).

    Args:
        norms_inputs: rows of ``norms_inputs.parquet`` (with ``label`` from :func:`combined_table`,
            or ``model_alias``/``model``); non-finite rows are ignored.

    Returns:
        Columns ``label, dataset, layer, norm`` (``frobenius_norm``/``spectral_norm``),
        ``exponent, exponent_ci_low, exponent_ci_high`` (95% CI), ``coefficient`` (c, in
        hidden-state units), ``r_squared``, ``num_points``, ``min_tokens, max_tokens``. Fits come
        from :func:`qft_cli.norms.fit_power_law` on all points (never the thinned plot data).
    """
    df = _with_label(norms_inputs)
    rows = []
    if df.empty:
        return pd.DataFrame(columns=["label", "dataset", "layer", "norm", "exponent", "exponent_ci_low",
                                     "exponent_ci_high", "coefficient", "r_squared", "num_points",
                                     "min_tokens", "max_tokens"])
    df = _finite(df)
    for (label, dataset, layer), g in df.groupby(["label", "dataset", "layer"], sort=True):
        for norm in NORM_LABELS:
            fit = fit_power_law(g["num_tokens"].to_numpy(), g[norm].to_numpy())
            rows.append({"label": label, "dataset": dataset, "layer": int(layer), "norm": norm,
                         "exponent": fit.exponent, "exponent_ci_low": fit.exponent_ci_low,
                         "exponent_ci_high": fit.exponent_ci_high, "coefficient": fit.coefficient,
                         "r_squared": fit.r_squared, "num_points": fit.num_points,
                         "min_tokens": int(g["num_tokens"].min()), "max_tokens": int(g["num_tokens"].max())})
    return pd.DataFrame(rows)


def input_alpha_summary(norms_inputs: pd.DataFrame,
                        token_counts: Sequence[int] = SUMMARY_TOKEN_COUNTS) -> pd.DataFrame:
    """alpha_S = ||S||_2 and ||S||_F at given token counts N, per (model, dataset, layer).

    Measured where samples with exactly N tokens exist (the median over them); otherwise from the
    power-law fit c N^b (``source`` says ``fit`` and whether N lies outside the measured range,
    i.e. is an extrapolation). Values are in hidden-state units.

    Returns:
        Columns ``label, dataset, layer, num_tokens, spectral_norm, frobenius_norm, source``.
    """
    df = _finite(_with_label(norms_inputs)) if not norms_inputs.empty else norms_inputs
    rows = []
    if df.empty:
        return pd.DataFrame(columns=["label", "dataset", "layer", "num_tokens", "spectral_norm",
                                     "frobenius_norm", "source"])
    for (label, dataset, layer), g in df.groupby(["label", "dataset", "layer"], sort=True):
        for n in token_counts:
            at_n = g[g["num_tokens"] == n]
            row: dict[str, Any] = {"label": label, "dataset": dataset, "layer": int(layer), "num_tokens": n}
            if len(at_n):
                row.update(spectral_norm=float(at_n["spectral_norm"].median()),
                           frobenius_norm=float(at_n["frobenius_norm"].median()),
                           source=f"measured (median of {len(at_n)} sample{'s' if len(at_n) > 1 else ''})")
            else:
                inside = g["num_tokens"].min() <= n <= g["num_tokens"].max()
                for norm in NORM_LABELS:
                    fit = fit_power_law(g["num_tokens"].to_numpy(), g[norm].to_numpy())
                    row[norm] = fit.coefficient * n ** fit.exponent
                row["source"] = "fit c·N^b" + ("" if inside else
                                               f" (extrapolated; measured N ≤ {int(g['num_tokens'].max())})")
            rows.append(row)
    return pd.DataFrame(rows)


def weight_alpha_summary(norms_weights: pd.DataFrame) -> pd.DataFrame:
    """Largest alpha_W over layers per (model, part, matrix type): spectral and Frobenius.

    Returns:
        Columns ``label, part, matrix, max_spectral_norm, max_spectral_layer,
        max_frobenius_norm, max_frobenius_layer, num_layers`` (dimensionless).
    """
    df = _with_label(norms_weights)
    if df.empty:
        return pd.DataFrame()
    df = _finite(df)
    if "part" not in df.columns:
        df["part"] = ""
    rows = []
    for (label, part, matrix), g in df.groupby(["label", df["part"].fillna(""), "matrix"], sort=False):
        i_s = g["spectral_norm"].idxmax()
        i_f = g["frobenius_norm"].idxmax()
        rows.append({"label": label, "part": part, "matrix": matrix,
                     "max_spectral_norm": float(g.loc[i_s, "spectral_norm"]), "max_spectral_layer": int(g.loc[i_s, "layer"]),
                     "max_frobenius_norm": float(g.loc[i_f, "frobenius_norm"]),
                     "max_frobenius_layer": int(g.loc[i_f, "layer"]), "num_layers": int(g["layer"].nunique())})
    out = pd.DataFrame(rows)
    out["_order"] = out["matrix"].map(lambda m: (("embedding",) + MATRIX_ORDER).index(m)
                                      if m in ("embedding",) + MATRIX_ORDER else 99)
    return out.sort_values(["label", "part", "_order"]).drop(columns="_order").reset_index(drop=True)


def final_test_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Final test accuracy and F1 per (run, variant), with the difference to vanilla.

    Takes the last ``test`` row (largest step, else epoch) of each variant. Differences are in
    percentage points (100 x fraction); NaN where the run has no vanilla variant.

    Returns:
        Columns ``run, variant, accuracy, f1, accuracy_diff_pp, f1_diff_pp, epoch``.
    """
    if metrics.empty:
        return pd.DataFrame()
    test = metrics[metrics["split"] == "test"].copy()
    if test.empty:
        return pd.DataFrame()
    order = ["step", "epoch"] if "step" in test.columns else ["epoch"]
    last = test.sort_values(order).groupby(["run", "variant"], sort=False).tail(1)
    rows = []
    for run, g in last.groupby("run", sort=False):
        vanilla = g[g["variant"] == "vanilla"]
        base_acc = float(vanilla["accuracy"].iloc[0]) if len(vanilla) else math.nan
        base_f1 = float(vanilla["f1"].iloc[0]) if len(vanilla) else math.nan
        for _, r in g.iterrows():
            rows.append({"run": run, "variant": r["variant"], "accuracy": float(r["accuracy"]), "f1": float(r["f1"]),
                         "accuracy_diff_pp": 100 * (float(r["accuracy"]) - base_acc),
                         "f1_diff_pp": 100 * (float(r["f1"]) - base_f1), "epoch": float(r["epoch"])})
    out = pd.DataFrame(rows)
    out["_order"] = out["variant"].map(_variant_rank)
    return out.sort_values(["run", "_order"]).drop(columns="_order").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    """Escape a user string for HTML (and for plotly labels, which decode entities)."""
    return html.escape(str(value), quote=True)


def _with_label(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty or "label" in df.columns:
        return df
    df = df.copy()
    df["label"] = df["model_alias"].astype(str) if "model_alias" in df.columns else df["model"].astype(str)
    return df


def _finite(df: pd.DataFrame) -> pd.DataFrame:
    if "finite" in df.columns:
        df = df[df["finite"].fillna(False).astype(bool)]
    return df


def _variant_rank(variant: str) -> int:
    return VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)


def _matrix_rank(matrix: str) -> int:
    return MATRIX_ORDER.index(matrix) if matrix in MATRIX_ORDER else len(MATRIX_ORDER)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1000 else f"{x:.{digits}f}"


def _thin(df: pd.DataFrame, max_points: int) -> tuple[pd.DataFrame, bool]:
    """Keep at most ``max_points`` rows, evenly spaced in N order (deterministic)."""
    if len(df) <= max_points:
        return df, False
    df = df.sort_values("num_tokens", kind="stable")
    idx = np.unique(np.linspace(0, len(df) - 1, max_points).round().astype(int))
    return df.iloc[idx], True


def _log_axis_if_spread(values: np.ndarray, ratio: float = 20.0) -> str:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return "log" if v.size and v.max() / v.min() >= ratio else "linear"


def _log_ticks(values: np.ndarray) -> dict[str, Any]:
    """Axis settings for a log axis with ticks at 1-2-5 x 10^k inside the data range (no clutter)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return {"type": "log"}
    lo, hi = math.floor(math.log10(v.min())), math.ceil(math.log10(v.max()))
    decades = math.log10(v.max() / v.min())
    mantissas = (1, 1.5, 2, 3, 5, 7) if decades < 1.5 else (1, 2, 5) if decades < 4 else (1,)
    ticks = [m * 10.0 ** k for k in range(lo, hi + 1) for m in mantissas if v.min() <= m * 10.0 ** k <= v.max()]
    ticks = sorted(set(ticks) | {min(ticks, default=v.min())})
    return {"type": "log", "tickmode": "array", "tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]}


def _flat_range(values: np.ndarray) -> dict[str, Any]:
    """A y range of +-5% around the values when they are constant up to rounding (relative spread
    < 1e-4), so that float noise such as 1 +- 1e-7 is not blown up to fill the axis; else ``{}``."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return {}
    mid, spread = float(v.mean()), float(v.max() - v.min())
    if spread > 1e-4 * max(abs(mid), 1e-12):
        return {}
    half = 0.05 * abs(mid) if mid else 0.5
    return {"range": [mid - half, mid + half]}


def _short_time(iso: Any) -> str:
    try:
        t = _dt.datetime.fromisoformat(str(iso))
    except (TypeError, ValueError):
        return str(iso) if iso else "–"
    if t.tzinfo is not None:
        t = t.astimezone(_dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def _duration(meta: dict[str, Any]) -> str:
    try:
        start = _dt.datetime.fromisoformat(str(meta["start_time"]))
        end = _dt.datetime.fromisoformat(str(meta["end_time"]))
    except (KeyError, TypeError, ValueError):
        return "–"
    seconds = (end - start).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _is_synthetic(meta: dict[str, Any]) -> bool:
    opts = meta.get("options") or {}
    fields = [meta.get("dataset"), opts.get("dataset"), opts.get("task"), opts.get("data_dir"), meta.get("data")]
    return bool(meta.get("synthetic")) or any("synthetic" in str(f).lower() for f in fields if f)


# --------------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------------

class _Page:
    """Collects sections, tables and figures; numbers the figures; renders one HTML page."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.toc: list[tuple[int, str, str]] = []
        self.num_figures = 0
        self.notes: list[str] = []

    def heading(self, level: int, text: str, anchor: str) -> None:
        self.toc.append((level, anchor, text))
        self.parts.append(f'<h{level} id="{_e(anchor)}">{text}</h{level}>')

    def html(self, fragment: str) -> None:
        self.parts.append(fragment)

    def para(self, text: str, cls: str = "") -> None:
        self.parts.append(f'<p class="{cls}">{text}</p>' if cls else f"<p>{text}</p>")

    def figure(self, fig, caption: str = "", height: int = 460) -> None:
        import plotly.io as pio

        self.num_figures += 1
        fig.update_layout(height=height, template="plotly_white",
                          margin=dict(l=70, r=30, t=fig.layout.margin.t or 70, b=60),
                          font=dict(size=13), title=dict(x=0.01, xanchor="left"))
        div = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"fig{self.num_figures}",
                          config={"displaylogo": False, "responsive": True,
                                  "toImageButtonOptions": {"format": "svg", "filename": f"qft-fig{self.num_figures}"}})
        cap = f'<figcaption>Figure {self.num_figures}. {caption}</figcaption>' if caption else ""
        self.parts.append(f'<figure class="chart">{div}{cap}</figure>')

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> None:
        """Header cells are trusted HTML; body cells are (raw_value, text) or plain values.

        Plain values are escaped; numeric values keep their full value in ``data-value``.
        """
        out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead><tbody>"]
        for row in rows:
            cells = []
            for cell in row:
                if isinstance(cell, _Num):
                    text = "–" if not math.isfinite(cell.value) else format(cell.value, cell.spec)
                    cells.append(f'<td class="num" data-value="{cell.value!r}">{text.replace("-", "−")}</td>')
                elif isinstance(cell, _Raw):
                    cells.append(f"<td>{cell.html}</td>")
                elif isinstance(cell, (float, np.floating, int, np.integer)) and not isinstance(cell, bool):
                    cells.append(f'<td class="num" data-value="{float(cell)!r}">{_fmt(cell)}</td>')
                else:
                    cells.append(f"<td>{_e(cell)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        self.parts.append("".join(out))

    def render(self, title: str, subtitle: str) -> str:
        from plotly.offline import get_plotlyjs

        toc = ['<nav class="toc"><h2>Contents</h2><ul>']
        for level, anchor, text in self.toc:
            toc.append(f'<li class="l{level}"><a href="#{_e(anchor)}">{text}</a></li>')
        toc.append("</ul></nav>")
        return "\n".join([
            "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>", f"<style>{_CSS}</style>",
            f'<script type="text/javascript">{get_plotlyjs()}</script>',
            "</head><body><main>", f"<h1>{_e(title)}</h1>", f'<p class="subtitle">{subtitle}</p>',
            *self.notes, "".join(toc), *self.parts, "</main></body></html>", ""])


@dataclass(frozen=True)
class _Num:
    """A number shown with a format spec (e.g. ``+.2f``), its full value kept in ``data-value``."""

    value: float
    spec: str


@dataclass(frozen=True)
class _Raw:
    """Trusted HTML for a table cell (built here from escaped pieces)."""

    html: str


_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1280px;margin:0 auto;padding:16px 28px 60px;background:#fff}
h1{font-size:1.7em;margin-bottom:4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:42px}
h3{margin-top:30px}.subtitle{color:#555;margin-top:0}
table{border-collapse:collapse;margin:10px 0 18px;font-size:0.88em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafbfc}
figure.chart{margin:12px 0 26px;border:1px solid #eee;padding:4px}
figcaption{font-size:0.86em;color:#444;padding:4px 8px}
nav.toc{background:#f6f8fa;border:1px solid #e3e6ea;padding:6px 18px;margin:14px 0}
nav.toc h2{border:none;margin:6px 0;font-size:1.1em}nav.toc ul{margin:0;padding-left:18px}
nav.toc li.l3{margin-left:18px;font-size:0.92em}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:8px 12px}
.synthetic{background:#eef6ff;border-left:4px solid #3b82f6;padding:8px 12px}
code{font-size:0.86em;word-break:break-all}.muted{color:#666}
"""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _inputs_section(page: _Page, df: pd.DataFrame) -> None:
    import plotly.graph_objects as go

    page.heading(2, "Input norms ‖S‖ against sequence length N", "inputs")
    page.para("S<sub>L</sub> is the N × d hidden-state matrix of one sample at layer L (0 = embedding output, "
              "l = output of block l); only real tokens count. Its norm is the block-encoding normalisation "
              "factor α<sub>S</sub> of the input. Norms are in the model's hidden-state units.")
    finite = _finite(df)
    if len(finite) < len(df):
        page.para(f"{len(df) - len(finite)} sample(s) with non-finite hidden states are left out.", "warn")
    labels = sorted(finite["label"].unique())
    datasets = sorted(finite["dataset"].astype(str).unique(), key=lambda d: ({"random": 0, "mmlu": 1}.get(d, 2), d))
    for dataset in datasets:
        d = finite[finite["dataset"].astype(str) == dataset]
        page.heading(3, f"Dataset: {_e(dataset)}", f"inputs-{_anchor(dataset)}")
        for norm, (norm_name, sub) in NORM_LABELS.items():
            fig = go.Figure()
            thinned_any = False
            for t_i, ((label, layer), g) in enumerate(d.groupby(["label", "layer"], sort=True)):
                g, thinned = _thin(g, MAX_POINTS_PER_TRACE)
                thinned_any |= thinned
                g = g.sort_values("num_tokens")
                fig.add_trace(go.Scatter(
                    x=g["num_tokens"].to_numpy(float), y=g[norm].to_numpy(float), mode="markers",
                    name=f"{_e(label)} · layer {int(layer)}",
                    marker=dict(size=5, color=_color(t_i), symbol=_SYMBOLS[labels.index(label) % len(_SYMBOLS)],
                                opacity=0.75),
                    hovertemplate="N=%{x}<br>‖S‖=%{y:.4g}<extra>%{fullData.name}</extra>"))
            n = d["num_tokens"].to_numpy(float)
            y = d[norm].to_numpy(float)
            ok = (n > 0) & (y > 0)
            if ok.any():
                c0 = float(np.median(y[ok] / np.sqrt(n[ok])))
                grid = np.geomspace(n[ok].min(), n[ok].max(), 60)
                fig.add_trace(go.Scatter(x=grid, y=c0 * np.sqrt(grid), mode="lines", name="reference ∝ √N",
                                         line=dict(color="black", dash="dash", width=1.5), hoverinfo="skip"))
            fig.update_layout(
                title=f"{norm_name.capitalize()} norm ‖S<sub>L</sub>‖<sub>{sub}</sub> vs number of tokens N, "
                      f"dataset {_e(dataset)} (log-log; hidden-state units)",
                xaxis=dict(title="number of tokens N", **_log_ticks(n[ok])),
                yaxis=dict(title=f"‖S<sub>L</sub>‖<sub>{sub}</sub> (hidden-state units)", **_log_ticks(y[ok])),
                legend=dict(title="model · layer"))
            caption = (f"{norm_name.capitalize()} norm of the hidden-state matrix against its number of tokens, one trace per "
                       "model and layer; the dashed line ∝ √N (slope ½) is anchored at the median of ‖S‖/√N.")
            if thinned_any:
                caption += (f" Traces with more than {MAX_POINTS_PER_TRACE} samples are thinned to "
                            f"{MAX_POINTS_PER_TRACE} points evenly spaced in N for display; fits use all samples.")
            page.figure(fig, caption, height=520)
    fits = power_law_table(finite)
    page.heading(3, "Fitted exponents b of ‖S‖ ≈ c·N<sup>b</sup>", "inputs-fits")
    page.para("Ordinary least squares on (log N, log ‖S‖) over all finite samples; 95% confidence interval "
              "of b from Student's t with n − 2 degrees of freedom. b = ½ is the √N growth of the reference "
              "line. Each dataset has its own table.")
    for dataset in datasets:
        f = fits[fits["dataset"].astype(str) == dataset]
        page.html(f"<h4>Dataset: {_e(dataset)}</h4>")
        rows = []
        for _, r in f.iterrows():
            ci = (f"[{_fmt(r['exponent_ci_low'])}, {_fmt(r['exponent_ci_high'])}]"
                  if math.isfinite(r["exponent_ci_low"]) else "–")
            rows.append([r["label"], r["layer"], NORM_LABELS[r["norm"]][0], float(r["exponent"]), _Raw(ci),
                         float(r["coefficient"]), float(r["r_squared"]), int(r["num_points"]),
                         _Raw(f"{int(r['min_tokens'])}–{int(r['max_tokens'])}")])
        page.table(["model", "layer L", "norm", "exponent b", "95% CI of b", "c (hidden-state units)", "R²",
                    "samples", "N range"], rows, cls="fits")


def _anchor(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-").lower() or "x"


def _weights_section(page: _Page, weights: pd.DataFrame, vectors: pd.DataFrame,
                     heads: pd.DataFrame = pd.DataFrame()) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    page.heading(2, "Weight norms", "weights")
    page.para("Each matrix W has shape (d<sub>out</sub>, d<sub>in</sub>), the map x ↦ Wx of nn.Linear; layer l "
              "is transformer block l. ‖W‖<sub>2</sub> is the largest singular value, the block-encoding "
              "normalisation factor α<sub>W</sub>; ‖W‖<sub>F</sub> is an upper bound for it. Norms are "
              "dimensionless (weight units).")
    labels = sorted((set(weights["label"]) if not weights.empty else set())
                    | (set(vectors["label"]) if not vectors.empty else set()))
    for label in labels:
        page.heading(3, f"Model: {_e(label)}", f"weights-{_anchor(label)}")
        w = _finite(weights[weights["label"] == label]) if not weights.empty else pd.DataFrame()
        if len(w):
            blocks = w[w["matrix"] != "embedding"].copy()
            if "part" not in blocks.columns:
                blocks["part"] = ""
            blocks["part"] = blocks["part"].fillna("").astype(str)
            if len(blocks):
                fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                                    subplot_titles=("spectral norm ‖W‖<sub>2</sub>", "Frobenius norm ‖W‖<sub>F</sub>"))
                keys = sorted({(s, m) for s, m in zip(blocks["part"], blocks["matrix"])},
                              key=lambda sm: (sm[0], _matrix_rank(sm[1])))
                for i, (part, matrix) in enumerate(keys):
                    g = blocks[(blocks["part"] == part) & (blocks["matrix"] == matrix)].sort_values("layer")
                    name = f"{part} {matrix}".strip()
                    for col, norm in ((1, "spectral_norm"), (2, "frobenius_norm")):
                        fig.add_trace(go.Scatter(
                            x=g["layer"].to_numpy(int), y=g[norm].to_numpy(float), mode="lines+markers",
                            name=_e(name), legendgroup=name, showlegend=col == 1,
                            line=dict(color=_color(_matrix_rank(matrix)), dash="dot" if part == "decoder" else "solid"),
                            marker=dict(symbol=_SYMBOLS[i % len(_SYMBOLS)], size=7),
                            hovertemplate="layer %{x}<br>%{y:.4g}<extra>%{fullData.name}</extra>"), row=1, col=col)
                layers = sorted(blocks["layer"].unique())
                scales = []
                for col, norm in ((1, "spectral_norm"), (2, "frobenius_norm")):
                    values = blocks[norm].to_numpy(float)
                    scales.append(_log_axis_if_spread(values))
                    fig.update_xaxes(title_text="layer l (transformer block)", row=1, col=col,
                                     tickmode="array" if len(layers) <= 40 else "auto",
                                     tickvals=layers if len(layers) <= 40 else None)
                    fig.update_yaxes(title_text="norm (dimensionless)", row=1, col=col,
                                     **(_log_ticks(values) if scales[-1] == "log" else _flat_range(values)))
                yscale = "log" if "log" in scales else "linear"
                fig.update_layout(title=f"{_e(label)}: norms of attention and FFN matrices per layer (dimensionless)",
                                  legend=dict(title="matrix"))
                page.figure(fig, "Spectral (left) and Frobenius (right) norm of each attention (q, k, v, o) and FFN "
                                 "matrix against its layer" + (" (log scale where values span more than a factor 20)" if yscale == "log"
                                                              else "") + ".")
            emb = w[w["matrix"] == "embedding"]
            if len(emb):
                r = emb.iloc[0]
                shape = (f"{int(r['d_out'])} × {int(r['d_in'])}" if "d_out" in emb.columns and "d_in" in emb.columns
                         else "–")
                page.table(["token embedding E (vocab × d)", "‖E‖<sub>2</sub>", "‖E‖<sub>F</sub>",
                            "mean token l2 norm", "max token l2 norm"],
                           [[_Raw(shape), float(r["spectral_norm"]), float(r["frobenius_norm"]),
                             float(r.get("row_norm_mean", math.nan)), float(r.get("row_norm_max", math.nan))]])
        h = _finite(heads[heads["label"] == label]) if not heads.empty else pd.DataFrame()
        if len(h):
            _heads_figure(page, label, h)
        v = vectors[vectors["label"] == label] if not vectors.empty else pd.DataFrame()
        if len(v):
            _qkv_histogram(page, label, v[(v["kind"] == "column_norm") & v["matrix"].isin(["q", "k", "v"])])
            _embedding_histogram(page, label, v[(v["kind"] == "token_norm")])


def _heads_figure(page: _Page, label: str, h: pd.DataFrame) -> None:
    """Heatmaps (layer x head) of per-head norms of q, k, v, o; a menu switches spectral/Frobenius."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    h = h.dropna(subset=["layer", "head"])
    part = h["part"].fillna("").astype(str) if "part" in h.columns else pd.Series("", index=h.index)
    h = h.assign(row_key=[f"{s} {int(l)}".strip() for s, l in zip(part, h["layer"])],
                 row_order=[(s, int(l)) for s, l in zip(part, h["layer"])])
    matrices = [m for m in MATRIX_ORDER if m in set(h["matrix"])][:8]
    if not matrices:
        return
    rows = [k for _, k in sorted({(o, k) for o, k in zip(h["row_order"], h["row_key"])})]
    fig = make_subplots(rows=1, cols=len(matrices), horizontal_spacing=0.04,
                        subplot_titles=[f"W<sub>{m}</sub>" if "_" not in m else _e(m) for m in matrices])
    z_by_norm: dict[str, list] = {"spectral_norm": [], "frobenius_norm": []}
    for col, m in enumerate(matrices, start=1):
        g = h[h["matrix"] == m]
        heads_axis = sorted(int(x) for x in g["head"].unique())
        for norm in z_by_norm:
            grid = g.pivot_table(index="row_key", columns="head", values=norm, aggfunc="first")
            grid = grid.reindex(index=rows, columns=heads_axis)
            z_by_norm[norm].append(grid.to_numpy(float))
        fig.add_trace(go.Heatmap(z=z_by_norm["spectral_norm"][-1], x=heads_axis, y=rows, coloraxis="coloraxis",
                                 hovertemplate="layer %{y}, head %{x}<br>%{z:.4g}<extra>" + f"{m}</extra>"),
                      row=1, col=col)
        fig.update_xaxes(title_text="head", row=1, col=col, **({"dtick": 1} if len(heads_axis) <= 16 else {}))
    fig.update_yaxes(title_text="layer l", type="category", row=1, col=1)
    for col in range(2, len(matrices) + 1):
        fig.update_yaxes(type="category", showticklabels=False, row=1, col=col)
    title = f"{_e(label)}: per-head norms of the attention matrices (dimensionless)"
    height = max(380, 22 * len(rows) + 220)
    plot_height = height - 140 - 60
    buttons = [dict(label=name, method="update", args=[{"z": z_by_norm[norm]}, {"coloraxis.colorbar.title.text": sym}])
               for name, norm, sym in (("spectral ‖W_h‖₂", "spectral_norm", "‖W<sub>h</sub>‖<sub>2</sub>"),
                                       ("Frobenius ‖W_h‖_F", "frobenius_norm", "‖W<sub>h</sub>‖<sub>F</sub>"))]
    fig.update_layout(title=title, coloraxis=dict(colorscale="Viridis", colorbar=dict(title="‖W<sub>h</sub>‖<sub>2</sub>")),
                      updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right",
                                        y=1 + 30 / plot_height, yanchor="bottom", showactive=True,
                                        pad=dict(r=0, t=0, b=0, l=0))],
                      annotations=list(fig.layout.annotations) + [
                          dict(text="show:", x=1.0, xref="paper", xanchor="right", xshift=-170, y=1.0, yshift=38,
                               yref="paper", yanchor="bottom", showarrow=False)],
                      margin=dict(t=140))
    page.figure(fig, "Norm of each head's block of W<sub>q</sub>, W<sub>k</sub>, W<sub>v</sub> (its rows) and "
                     "W<sub>o</sub> (its columns) per layer, one colour scale for all panels; the menu at the top right "
                     "switches between spectral and Frobenius norms. With grouped-query attention k and v have fewer "
                     "heads.", height=height)


def _bins(values: np.ndarray) -> np.ndarray:
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, HISTOGRAM_BINS + 1)


def _qkv_histogram(page: _Page, label: str, v: pd.DataFrame) -> None:
    import plotly.graph_objects as go

    if v.empty:
        return
    edges = _bins(v["value"].to_numpy(float))
    centers = (edges[:-1] + edges[1:]) / 2
    layers = sorted(v["layer"].unique())
    if "part" in v.columns and v["part"].fillna("").astype(str).nunique() > 1:
        v = v.assign(part_key=v["part"].fillna("").astype(str))
    else:
        v = v.assign(part_key="")
    options = [("all layers pooled", v)] + [(f"{part} layer {int(layer)}".strip(), g) for (part, layer), g in
                                             sorted(v.groupby(["part_key", "layer"]))]
    fig = go.Figure()
    matrices = [m for m in ("q", "k", "v") if m in set(v["matrix"])]
    for i, (name, g) in enumerate(options):
        for j, m in enumerate(matrices):
            counts, _ = np.histogram(g.loc[g["matrix"] == m, "value"].to_numpy(float), bins=edges)
            fig.add_trace(go.Scatter(x=centers, y=counts, mode="lines", line=dict(shape="hvh", color=_color(j), width=2),
                                     fill="tozeroy", fillcolor=_rgba(_color(j), 0.12), name=f"W<sub>{m}</sub>",
                                     visible=i == 0,
                                     hovertemplate="‖column‖=%{x:.3g}<br>%{y} columns<extra>%{fullData.name}</extra>"))
    buttons = []
    for i, (name, _) in enumerate(options):
        visible = [k // len(matrices) == i for k in range(len(options) * len(matrices))]
        buttons.append(dict(label=name, method="update",
                            args=[{"visible": visible},
                                  {"title.text": f"{_e(label)}: column l2 norms of W<sub>q</sub>, W<sub>k</sub>, "
                                                 f"W<sub>v</sub>, {name} (dimensionless)"}]))
    fig.update_layout(
        title=f"{_e(label)}: column l2 norms of W<sub>q</sub>, W<sub>k</sub>, W<sub>v</sub>, all layers pooled "
              "(dimensionless)",
        xaxis=dict(title="column l2 norm ‖W<sub>:,j</sub>‖<sub>2</sub> (dimensionless)"),
        yaxis=dict(title="number of columns"), legend=dict(title="matrix"),
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.01, yanchor="bottom",
                          showactive=True, pad=dict(r=0, t=0, b=0, l=0))],
        annotations=[dict(text="show:", x=1.0, xref="paper", xanchor="right", xshift=-150, y=1.035, yref="paper",
                          yanchor="bottom", showarrow=False)],
        margin=dict(t=110))
    page.figure(fig, f"Histogram (outlines; {HISTOGRAM_BINS} bins shared by all choices) of the l2 norms of the columns of "
                     f"W<sub>q</sub>, W<sub>k</sub> and W<sub>v</sub> (layers {layers[0]}–{layers[-1]}); choose one "
                     "layer or all layers pooled with the menu at the top right.")


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _embedding_histogram(page: _Page, label: str, v: pd.DataFrame) -> None:
    import plotly.graph_objects as go

    if v.empty:
        return
    values = v["value"].to_numpy(float)
    edges = _bins(values)
    counts, _ = np.histogram(values[np.isfinite(values)], bins=edges)
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=float(edges[1] - edges[0]),
                           marker=dict(color=_color(4), line=dict(width=0)), name="tokens",
                           hovertemplate="‖e‖=%{x:.3g}<br>%{y} tokens<extra></extra>"))
    yscale = "log" if counts.max() / max(1, counts[counts > 0].min()) >= 100 else "linear"
    yaxis = dict(title="number of tokens", **(_log_ticks(counts[counts > 0]) if yscale == "log" else {}))
    fig.update_layout(title=f"{_e(label)}: l2 norms of the {len(values):,} token embeddings (dimensionless)",
                      xaxis=dict(title="token embedding l2 norm ‖E<sub>t,:</sub>‖<sub>2</sub> (dimensionless)"),
                      yaxis=yaxis, bargap=0, showlegend=False)
    page.figure(fig, f"Histogram ({HISTOGRAM_BINS} bins) of the l2 norm of every row of the token embedding matrix"
                     + (" (log count axis)." if yscale == "log" else "."), height=380)


def _variant_color(variant: str) -> str:
    return {"vanilla": "#4c4c4c", "spectral": "#1f77b4", "frobenius": "#d62728",
            "spectral_subnormalised": "#17becf", "frobenius_subnormalised": "#ff7f0e"}.get(variant, "#9467bd")


def _training_section(page: _Page, runs: list[RunRecord]) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = combined_table(runs, "metrics")
    during = combined_table(runs, "norms_during_training")
    gammas = combined_table(runs, "gammas")
    page.heading(2, "Training: vanilla vs spectral vs Frobenius", "training")
    page.para("Accuracy and F1 are fractions in [0, 1] (binary F1 for two classes, macro F1 for POS tagging); "
              "differences to vanilla are in percentage points. Effective norms are those of the normalised "
              "matrices the model actually uses.")
    test = final_test_table(metrics) if not metrics.empty else pd.DataFrame()
    by_name = {r.name: r for r in runs}
    run_names = [r.name for r in runs if any(t in r.tables for t in ("metrics", "norms_during_training", "gammas"))]
    for run_name in run_names:
        meta = by_name[run_name].meta
        opts = meta.get("options") or {}
        dataset = opts.get("dataset", meta.get("dataset", "?"))
        task = opts.get("task")
        what = f"{dataset}" + (f" / {task}" if task else "")
        page.heading(3, f"{_e(meta.get('command', 'train'))}: {_e(what)} ({_e(run_name)})",
                     f"training-{_anchor(run_name)}")
        if _is_synthetic(meta):
            page.para("Synthetic data generated by qft from a seed (not a real benchmark).", "synthetic")
        m = metrics[metrics["run"] == run_name] if not metrics.empty else pd.DataFrame()
        val = m[m["split"] == "validation"] if len(m) else m
        if len(val):
            fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                                subplot_titles=("validation accuracy", "validation F1"))
            for variant, g in sorted(val.groupby("variant"), key=lambda vg: _variant_rank(vg[0])):
                g = g.sort_values("epoch")
                for col, metric in ((1, "accuracy"), (2, "f1")):
                    fig.add_trace(go.Scatter(x=g["epoch"].to_numpy(float), y=g[metric].to_numpy(float),
                                             mode="lines+markers", name=_e(variant), legendgroup=str(variant),
                                             showlegend=col == 1, line=dict(color=_variant_color(variant)),
                                             hovertemplate="epoch %{x:.2f}<br>%{y:.4f}<extra>%{fullData.name}</extra>"),
                                  row=1, col=col)
            fig.update_xaxes(title_text="epoch")
            fig.update_yaxes(title_text="accuracy (fraction)", row=1, col=1)
            fig.update_yaxes(title_text="F1 (fraction)", row=1, col=2)
            fig.update_layout(title=f"Validation accuracy and F1 per epoch, {_e(what)} (fractions)",
                              legend=dict(title="variant"))
            page.figure(fig, "Validation accuracy (left) and F1 (right) after each epoch, one line per variant.")
        t = test[test["run"] == run_name] if len(test) else test
        if len(t):
            page.html("<h4>Final test scores</h4>")
            page.table(["variant", "test accuracy", "test F1", "Δ accuracy vs vanilla (pp)", "Δ F1 vs vanilla (pp)",
                        "epoch"],
                       [[r["variant"], _Num(r["accuracy"], ".4f"), _Num(r["f1"], ".4f"),
                         _Num(r["accuracy_diff_pp"], "+.2f"), _Num(r["f1_diff_pp"], "+.2f"), _Num(r["epoch"], "g")]
                        for _, r in t.iterrows()], cls="test")
        nd = during[during["run"] == run_name] if not during.empty else pd.DataFrame()
        if len(nd):
            _effective_norms_figure(page, nd, what)
        ga = gammas[gammas["run"] == run_name] if not gammas.empty else pd.DataFrame()
        if len(ga):
            fig = go.Figure()
            for i, ((variant, layer, matrix), g) in enumerate(
                    sorted(ga.groupby(["variant", "layer", "matrix"]),
                           key=lambda kg: (_variant_rank(kg[0][0]), kg[0][1], _matrix_rank(kg[0][2])))):
                g = g.sort_values("epoch")
                fig.add_trace(go.Scatter(x=g["epoch"].to_numpy(float), y=g["gamma"].to_numpy(float),
                                         mode="lines", name=f"{_e(variant)} · layer {int(layer)} {_e(matrix)}",
                                         line=dict(color=_color(i))))
            fig.update_layout(title=f"Learned scales γ over training, {_e(what)} (dimensionless, ≤ max γ)",
                              xaxis=dict(title="epoch"),
                              yaxis=dict(title="γ (dimensionless)", **_flat_range(ga["gamma"].to_numpy())),
                              legend=dict(title="variant · layer matrix"))
            page.figure(fig, "The learned scale γ = max_γ·sigmoid(g) of each normalised matrix against epoch.")


def _effective_norms_figure(page: _Page, nd: pd.DataFrame, what: str) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    nd = nd.dropna(subset=["layer", "matrix"])
    if nd.empty:
        return
    variants = sorted(nd["variant"].unique(), key=_variant_rank)
    fig = make_subplots(rows=len(variants), cols=2, horizontal_spacing=0.1, vertical_spacing=0.16 / max(1, len(variants)) + 0.04,
                        subplot_titles=[f"variant {_e(v)}: {n}" for v in variants
                                        for n in ("spectral ‖W‖<sub>2</sub>", "Frobenius ‖W‖<sub>F</sub>")])
    keys = sorted({(int(l), m) for l, m in zip(nd["layer"], nd["matrix"])}, key=lambda lm: (lm[0], _matrix_rank(lm[1])))
    for row, variant in enumerate(variants, start=1):
        g_v = nd[nd["variant"] == variant]
        for i, (layer, matrix) in enumerate(keys):
            g = g_v[(g_v["layer"] == layer) & (g_v["matrix"] == matrix)].sort_values("epoch")
            if g.empty:
                continue
            name = f"layer {layer} {matrix}"
            for col, norm in ((1, "spectral_norm"), (2, "frobenius_norm")):
                fig.add_trace(go.Scatter(x=g["epoch"].to_numpy(float), y=g[norm].to_numpy(float), mode="lines+markers",
                                         name=_e(name), legendgroup=name, showlegend=row == 1 and col == 1,
                                         line=dict(color=_color(i)), marker=dict(size=4),
                                         hovertemplate="epoch %{x:.2f}<br>%{y:.4g}<extra>%{fullData.name}</extra>"),
                              row=row, col=col)
        for col, norm in ((1, "spectral_norm"), (2, "frobenius_norm")):
            fig.update_yaxes(title_text="norm (dimensionless)", row=row, col=col, **_flat_range(g_v[norm].to_numpy()))
    fig.update_xaxes(title_text="epoch", row=len(variants))
    fig.update_layout(title=f"Weight norms over training (effective matrices), {_e(what)} (dimensionless)",
                      legend=dict(title="layer matrix"))
    page.figure(fig, "Spectral (left) and Frobenius (right) norm of each weight matrix per epoch (for normalised "
                     "variants the effective matrix the model uses), one row per variant. Spectral normalisation keeps "
                     "‖W‖<sub>2</sub> ≈ 1 (power iteration while training), Frobenius keeps ‖W‖<sub>F</sub> = 1 "
                     "and so ‖W‖<sub>2</sub> ≤ 1. Axes of values constant up to rounding span ±5%.",
                height=280 * len(variants) + 120)


def _factors_section(page: _Page, inputs: pd.DataFrame, weights: pd.DataFrame) -> None:
    page.heading(2, "Normalisation factors α per model", "factors")
    page.para("The numbers a block encoding of a transformer layer pays: α<sub>S</sub> = ‖S‖ of the input at "
              f"N = {', '.join(str(n) for n in SUMMARY_TOKEN_COUNTS)} tokens (measured where samples of exactly N "
              "tokens exist, else from the power-law fit, as the source column says), and the largest "
              "α<sub>W</sub> over layers per matrix type.")
    if not inputs.empty:
        summary = input_alpha_summary(inputs)
        page.html("<h4>Inputs: α<sub>S</sub> (hidden-state units)</h4>")
        page.table(["model", "dataset", "layer L", "N", "‖S‖<sub>2</sub>", "‖S‖<sub>F</sub>", "source"],
                   [[r["label"], r["dataset"], int(r["layer"]), int(r["num_tokens"]), float(r["spectral_norm"]),
                     float(r["frobenius_norm"]), r["source"]] for _, r in summary.iterrows()], cls="alpha-s")
    if not weights.empty:
        summary = weight_alpha_summary(weights)
        page.html("<h4>Weights: largest α<sub>W</sub> over layers (dimensionless)</h4>")
        has_stack = bool((summary["part"].astype(str) != "").any())
        page.table(["model"] + (["part"] if has_stack else []) + ["matrix", "max ‖W‖<sub>2</sub>", "at layer",
                                                                   "max ‖W‖<sub>F</sub>", "at layer", "layers"],
                   [[r["label"]] + ([r["part"]] if has_stack else [])
                    + [r["matrix"], float(r["max_spectral_norm"]), int(r["max_spectral_layer"]),
                       float(r["max_frobenius_norm"]), int(r["max_frobenius_layer"]), int(r["num_layers"])]
                    for _, r in summary.iterrows()], cls="alpha-w")


def _metadata_section(page: _Page, runs: list[RunRecord]) -> None:
    page.heading(2, "Runs", "runs")
    bad = [r for r in runs if r.status != "completed" or not r.meta]
    if bad:
        items = []
        for r in bad:
            reason = r.meta.get("error") or "; ".join(r.problems) or (
                "still running, or killed before it could record its end" if r.status == "running" else "")
            items.append(f"<li><b>{_e(r.status)}</b>: <code>{_e(r.path)}</code>"
                         + (f" — {_e(reason)}" if reason else "") + "</li>")
        page.html(f'<div class="warn"><b>{len(bad)} run(s) did not complete</b> (their tables, if any, are shown '
                  f"above where readable):<ul>{''.join(items)}</ul></div>")
    problems = [(r, p) for r in runs if r.meta for p in r.problems]
    if problems:
        page.html('<div class="warn"><b>Tables that could not be read:</b><ul>' + "".join(
            f"<li><code>{_e(r.name)}</code>: {_e(p)}</li>" for r, p in problems) + "</ul></div>")
    warned = [(r, w) for r in runs if r.meta for w in (r.meta.get("warnings") or [])]
    if warned:
        page.html(f'<div class="warn"><b>Warnings recorded by the runs ({len(warned)}):</b><ul>' + "".join(
            f"<li><code>{_e(r.name)}</code>: {_e(w)}</li>" for r, w in warned[:50]) + "</ul>"
            + (f"<p>… and {len(warned) - 50} more in the runs' run.json.</p>" if len(warned) > 50 else "") + "</div>")
    rows = []
    for r in runs:
        meta, opts = r.meta, r.meta.get("options") or {}
        vers = meta.get("versions") or {}
        device = meta.get("device") or opts.get("device") or "–"
        argv = meta.get("argv")
        cmdline = shlex.join(str(a) for a in argv) if isinstance(argv, list) else str(argv or "–")
        models = meta.get("models") or []
        rows.append([r.name, r.command, ", ".join(str(m) for m in models) if isinstance(models, list) else str(models),
                     str(opts.get("dataset", meta.get("dataset", "–"))) + (" (synthetic)" if _is_synthetic(meta)
                                                                             and "synthetic" not in str(opts.get("dataset", "")) else ""),
                     r.status, _short_time(meta.get("start_time")), _duration(meta), f"{device} / {opts.get('dtype', '–')}",
                     ", ".join(f"{k} {v}" for k, v in vers.items() if k in ("qft", "torch", "transformers", "python")),
                     _Raw(f"<code>{_e(cmdline)}</code>")])
    page.table(["run", "command", "models", "dataset", "status", "start (UTC)", "duration", "device / dtype",
                "versions", "command line"], rows, cls="runs")


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

@dataclass
class ReportResult:
    """What :func:`write_report` produced.

    Attributes:
        path: the HTML file written.
        runs: every run read (including failed/interrupted/unreadable ones).
        num_figures: charts on the page.
        size_bytes: size of the HTML file.
    """

    path: Path
    runs: list[RunRecord]
    num_figures: int
    size_bytes: int


def build_report_html(runs: list[RunRecord], title: str = "qft report") -> tuple[str, int]:
    """Render the report page for ``runs``.

    Returns:
        ``(html, num_figures)``: a complete self-contained HTML document (plotly.js embedded once)
        and the number of charts in it.
    """
    page = _Page()
    kinds = sorted({r.command for r in runs if r.meta})
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (f"{len(runs)} run(s) ({_e(', '.join(kinds))}); generated {now} by qft {__version__} from the runs' "
                "parquet tables.")
    synthetic = [r for r in runs if r.meta and _is_synthetic(r.meta)]
    if synthetic:
        page.notes.append('<p class="synthetic"><b>Synthetic data.</b> Run(s) '
                          + ", ".join(f"<code>{_e(r.name)}</code>" for r in synthetic)
                          + " use a synthetic DNA task generated by qft from a seed (promoter-like motifs planted in "
                            "random background), a smoke test of the pipeline, not a real benchmark.</p>")
    inputs = combined_table(runs, "norms_inputs")
    weights = combined_table(runs, "norms_weights")
    vectors = combined_table(runs, "norm_vectors")
    heads = combined_table(runs, "norms_heads")
    if not inputs.empty:
        _inputs_section(page, inputs)
    if not weights.empty or not vectors.empty:
        _weights_section(page, weights, vectors, heads)
    if any(t in r.tables for r in runs for t in ("metrics", "norms_during_training", "gammas")):
        _training_section(page, runs)
    if not inputs.empty or not weights.empty:
        _factors_section(page, inputs, weights)
    if page.num_figures == 0:
        page.para("None of these runs has a result table to draw (see the run list below).", "warn")
    _metadata_section(page, runs)
    return page.render(title, subtitle), page.num_figures


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(paths: Sequence[Path | str], output: Path | str = "report.html",
                 title: str = "qft report") -> ReportResult:
    """Read every run under ``paths`` and write the report page to ``output`` atomically.

    Args:
        paths: run directories and/or directories of run directories (kinds may be mixed).
        output: the HTML file to write (its directory is created if needed).
        title: page title.

    Returns:
        :class:`ReportResult`.

    Raises:
        QftInputError: no run found, only foreign run.json files, or ``output`` not writable.
    """
    runs = load_runs(paths)
    output = Path(output)
    if output.is_dir():
        raise QftInputError(f"--output {output} is a directory: pass a file name such as {output / 'report.html'}")
    text, num_figures = build_report_html(runs, title=title)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(output, text)
    except OSError as err:
        raise QftInputError(f"cannot write --output {output} ({err.strerror}): pass a writable path") from None
    return ReportResult(path=output, runs=runs, num_figures=num_figures, size_bytes=output.stat().st_size)
