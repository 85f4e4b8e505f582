"""Root ``qft`` app: registers the sub-commands and nothing else."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from qft_cli import __version__
from qft_cli.cli.common import console, quiet_libraries

app = typer.Typer(
    name="qft",
    help="Numerical experiments on quantum-friendly transformers: block-encoding norms of real models "
         "and data, spectral/Frobenius-normalised training, and HTML reports.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"qft {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")) -> None:
    """qft: norms, normalised training and reports for quantum-friendly transformers."""
    quiet_libraries()


@app.command("models")
def models_command() -> None:
    """List the model aliases qft knows and what they resolve to."""
    from qft_cli.models import ALIASES, MINILM, TINY_MODELS

    table = Table(title="qft models")
    table.add_column("alias")
    table.add_column("resolves to")
    table.add_column("needs")
    table.add_row(MINILM, "sentence-transformers/all-MiniLM-L6-v2 (embedded)", "offline extra")
    for name in TINY_MODELS:
        table.add_row(name, "random model from a small config, seed 0", "nothing")
    for alias, hub_id in ALIASES.items():
        table.add_row(alias, hub_id, "Hugging Face Hub or its cache")
    console.print(table)
    console.print("Any other Hugging Face id (owner/name) or local model directory works too.")


def _register() -> None:
    import importlib

    for module_name, attr, name in (
        ("qft_cli.cli.norms", "app", "norms"),
        ("qft_cli.cli.runs", "app", "runs"),
    ):
        module = importlib.import_module(module_name)
        app.add_typer(getattr(module, attr), name=name)
    for module_name, attr, name in (
        ("qft_cli.cli.train", "train_command", "train"),
        ("qft_cli.cli.finetune", "finetune_command", "finetune"),
        ("qft_cli.cli.report", "report_command", "report"),
        ("qft_cli.cli.demo", "demo_command", "demo"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue
            raise
        app.command(name)(getattr(module, attr))


_register()


def main() -> None:
    """Console-script entry point (also ``python -m qft_cli``)."""
    import signal
    import sys

    def _terminate(signum, frame):  # SIGTERM (timeout, batch schedulers): end like Ctrl-C, so that
        raise KeyboardInterrupt    # run.json records status "interrupted" and no table is half-written

    signal.signal(signal.SIGTERM, _terminate)
    sys.argv[0] = "qft"
    app(prog_name="qft")
