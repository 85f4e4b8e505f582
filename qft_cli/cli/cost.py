"""``qft cost RUN_DIR...``: quantum query count against classical operations (Theorem 5.1 of arXiv 2502.01146)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from qft_cli.cli.common import (
    FORMAT_OPTION,
    OUT_OPTION,
    QUIET_OPTION,
    check_format,
    cli_errors,
    err_console,
    print_frame,
    print_run_dir,
    progress_bar,
)


@cli_errors
def cost_command(
    run_dirs: List[Path] = typer.Argument(..., metavar="RUN_DIR...",
                                          help="`norms inputs` and `norms weights` runs (paired by weight hashes), "
                                               "optionally `norms attention`, `train` and `finetune` runs."),
    epsilon: float = typer.Option(1e-2, "--epsilon", help="Accuracy epsilon of the output state (log^2(1/epsilon) factor)."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help="Sequence lengths l: comma list of token counts and/or "
                                                                   "'measured', 'pow2' (default: measured,pow2 = the measured "
                                                                   "lengths plus 1, 2, 4, ..., 2^20)."),
    constant: float = typer.Option(1.0, "--constant", help="Hidden constant of the O~ in the quantum count (default 1)."),
    max_length: int = typer.Option(2 ** 20, "--max-length", help="Largest length of the default grid and of the l* search "
                                                                  "(a power of two; default 2^20 = 1048576)."),
    out: Path = OUT_OPTION,
    fmt: str = FORMAT_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Quantum query count d N^2 alpha_s alpha_w log^2(1/eps) (Theorem 5.1, arXiv 2502.01146) against the
    classical l d + d^2 per model, block, norm and length; the crossover length l* (cost.parquet, crossover.parquet)."""
    from qft_cli.measure.cost import check_cost_inputs, format_crossover, run_cost

    check_format(fmt)
    check_cost_inputs(run_dirs, epsilon=epsilon, constant=constant, lengths=lengths, max_length=max_length)
    with progress_bar(quiet) as progress:
        result = run_cost(run_dirs, epsilon=epsilon, constant=constant, lengths=lengths, out=out, progress=progress,
                          max_length=max_length)
    note = (f"constant of the O~ = {constant:g}, epsilon = {epsilon:g}; quantum = constant d N^2 alpha_s alpha_w "
            f"ln^2(1/eps), N = ceil(log2 l); classical = l d + d^2")
    cross = result.crossover
    if len(cross):
        worst = cross[cross["worst_layer"]].copy()
        def span(r) -> str:
            low, high = (format_crossover(v, max_length) for v in (r.crossover_length_low, r.crossover_length_high))
            return low if low == high else f"{low} to {high}"

        frame = worst.assign(l_star=worst["crossover_length"].map(lambda v: format_crossover(v, max_length)),
                             l_star_95=worst.apply(span, axis=1))
        frame = frame[["model_alias", "dataset", "norm", "hidden_size", "num_layers", "layer", "alpha_w",
                       "alpha_w_over_sqrt_d", "alpha_s_exponent", "alpha_s_exponent_ci_low", "alpha_s_exponent_ci_high",
                       "l_star", "l_star_95", "ratio_at_512", "ratio_at_4096", "ratio_at_32768"]]
        print_frame(frame.rename(columns={
            "model_alias": "model", "hidden_size": "d", "num_layers": "layers", "layer": "worst block",
            "alpha_w_over_sqrt_d": "alpha_w/sqrt(d)", "alpha_s_exponent": "b of alpha_s", "alpha_s_exponent_ci_low": "b low",
            "alpha_s_exponent_ci_high": "b high", "l_star": "l*", "l_star_95": "l* 95%",
            "ratio_at_512": "Q/C @512", "ratio_at_4096": "Q/C @4096", "ratio_at_32768": "Q/C @32768"}),
            f"crossover length l* (quantum queries <= classical operations from l* on; the worst block decides); "
            f"b = fitted exponent of alpha_s ~ c l^b (worst case 0.5); {note}", fmt,
            formats={"l* 95%": "s"}, align={"l*": "right", "l* 95%": "right"})
    if len(result.trained):
        print_frame(result.trained[["variant", "num_seeds", "alpha_w_spectral", "cost_reduction_spectral",
                                    "alpha_w_frobenius", "cost_reduction_frobenius", "mean_value", "ci_low", "ci_high"]]
                    .rename(columns={"num_seeds": "seeds", "mean_value": "accuracy", "ci_low": "acc 95% low",
                                     "ci_high": "acc 95% high"}),
                    f"trained variants: accuracy against the cost reduction alpha_w(vanilla)/alpha_w(variant) at "
                    f"equal alpha_s; {note}", fmt)
    print_run_dir(result.run_dir, fmt)
    for line in result.notices:
        err_console.print(f"note: {line}", markup=False)
