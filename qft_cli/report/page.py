"""Shared page and figure helpers of the report: the HTML page (:class:`_Page`), table cells,
escaping, number formatting, axis helpers, colours and the orderings of variants and matrices."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

#: Most points drawn per scatter trace; larger traces are thinned evenly in N order (fits use all).
MAX_POINTS_PER_TRACE = 1500


#: Bins of the pre-binned histograms (bin counts are computed here, not in the browser).
HISTOGRAM_BINS = 60


NORM_LABELS = {"frobenius_norm": ("Frobenius", "F"), "spectral_norm": ("spectral", "2")}
#: ``norm`` values of ``fits.parquet`` -> their display names.
FIT_NORM_NAMES = {"frobenius": "Frobenius", "spectral": "spectral"}


VARIANT_ORDER = ("vanilla", "spectral", "frobenius", "spectral_subnormalised", "frobenius_subnormalised")


MATRIX_ORDER = ("q", "k", "v", "o", "cross_q", "cross_k", "cross_v", "cross_o", "ffn_gate", "ffn_up", "ffn_down")


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#393b79", "#ad494a")


_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "cross", "star", "triangle-down")


def _e(value: Any) -> str:
    """Escape a user string for HTML (and for plotly labels, which decode entities)."""
    return html.escape(str(value), quote=True)


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs`` (English plural by appending ``s``)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


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


def _epoch_axis(epochs: Any) -> dict[str, Any]:
    """x-axis settings with ticks at whole epochs only (never 0.5): step 1 up to 12 epochs, else a
    whole step giving about 10 ticks."""
    e = np.asarray(pd.to_numeric(pd.Series(epochs), errors="coerce"), dtype=float)
    e = e[np.isfinite(e)]
    top = math.ceil(e.max()) if e.size else 1
    return {"tickmode": "linear", "tick0": 0, "dtick": max(1, math.ceil(top / 10)), "tickformat": "d"}


def _layer_ticks(layers: Any) -> dict[str, Any]:
    """Axis (or colour bar) settings with ticks at whole layers only (never 1.5): every layer up to
    12 layers, else a whole step giving about 10 ticks, from the first layer."""
    v = np.asarray(pd.to_numeric(pd.Series(list(layers)), errors="coerce"), dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = (int(v.min()), int(v.max())) if v.size else (0, 1)
    return {"tickmode": "linear", "tick0": lo, "dtick": max(1, math.ceil((hi - lo) / 10)) if hi - lo > 12 else 1,
            "tickformat": "d"}


def _flat_range(values: np.ndarray) -> dict[str, Any]:
    """A y range of +-5% around the values when they are constant up to rounding (relative spread
    < 1e-4), so that float noise such as 1 +- 1e-7 is not blown up to fill the axis, with three
    ticks (low, middle, high) labelled to 3 significant digits; else ``{}``."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return {}
    mid, spread = float(v.mean()), float(v.max() - v.min())
    if spread > 1e-4 * max(abs(mid), 1e-12):
        return {}
    half = 0.05 * abs(mid) if mid else 0.5
    ticks = [mid - half, mid, mid + half]
    return {"range": [mid - 1.2 * half, mid + 1.2 * half], "tickmode": "array", "tickvals": ticks,
            "ticktext": [f"{t:.3g}" for t in ticks]}


def _is_synthetic(meta: dict[str, Any]) -> bool:
    opts = meta.get("options") or {}
    fields = [meta.get("dataset"), opts.get("dataset"), opts.get("task"), opts.get("data_dir"), meta.get("data")]
    return bool(meta.get("synthetic")) or any("synthetic" in str(f).lower() for f in fields if f)


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
        out = [f'<div class="table-wrap"><table class="{cls}"><thead><tr>' + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead><tbody>"]
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
        out.append("</tbody></table></div>")
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
div.table-wrap{max-width:100%;overflow-x:auto}table{border-collapse:collapse;margin:10px 0 18px;font-size:0.88em}
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
span.hash{white-space:nowrap;cursor:help}details{margin:8px 0 18px}
"""


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _anchor(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-").lower() or "x"


def _bins(values: np.ndarray) -> np.ndarray:
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, HISTOGRAM_BINS + 1)


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _variant_color(variant: str) -> str:
    return {"vanilla": "#4c4c4c", "spectral": "#1f77b4", "frobenius": "#d62728",
            "spectral_subnormalised": "#17becf", "frobenius_subnormalised": "#ff7f0e"}.get(variant, "#9467bd")
