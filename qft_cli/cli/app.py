"""Root ``qft`` app: registers the sub-commands and nothing else."""

from __future__ import annotations

from typing import Optional

import typer

from qft_cli import __version__
from qft_cli.cli.common import EXAMPLES, console, print_frame, quiet_libraries


def _plain_help() -> None:
    """Make ``--help`` read like other command-line tools.

    This typer prints the value type of every option, so a flag read ``--quiet <bool>`` as if it
    took a value: on/off options (``--quiet``, ``--version``, ``--help``) are shown as plain flags,
    options with a value keep their type (``--layers <str>``). Its usage line writes required
    arguments as ``{models}...``: they are written ``MODELS...`` (``MODEL``; optional ``[PATH]``).
    Each patch is skipped where a typer version lacks the method it replaces.
    """
    from typer import core

    original = getattr(core.TyperOption, "display_type_rich", None)
    if original is not None and not getattr(original, "qft_plain", False):
        def display_type_rich(self, ctx):
            if getattr(self, "is_flag", False) and not getattr(self, "count", False) and self.metavar is None:
                return None
            return original(self, ctx)

        display_type_rich.qft_plain = True
        core.TyperOption.display_type_rich = display_type_rich

    usage = getattr(core.TyperArgument, "_usage_display_name", None)
    if usage is not None and not getattr(usage, "qft_plain", False):
        def _usage_display_name(self):
            name = self.metavar if self.metavar is not None else str(self.name).upper()
            if self.nargs != 1 and not name.endswith("..."):
                name += "..."
            return name if self.required else f"[{name}]"

        _usage_display_name.qft_plain = True
        core.TyperArgument._usage_display_name = _usage_display_name


_plain_help()

app = typer.Typer(
    name="qft",
    help="Numerical experiments on quantum-friendly transformers: block-encoding norms of real models "
         "and data, spectral/Frobenius-normalised training, and HTML reports.",
    epilog=EXAMPLES["qft"],
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


@app.command("models", epilog=EXAMPLES["models"])
def models_command() -> None:
    """List the model aliases qft knows and what they resolve to."""
    import pandas as pd

    from qft_cli.models.gguf import SMOLLM2, SMOLLM2_ID
    from qft_cli.models.names import ALIASES, MINILM, TINY_MODELS

    rows = [(MINILM, "sentence-transformers/all-MiniLM-L6-v2 (embedded)", "offline extra"),
            (SMOLLM2, f"{SMOLLM2_ID}, embedded Q4_1 GGUF file (Llama, GQA)", "offline extra")]
    rows += [(name, "random model from a small config, seed 0", "nothing") for name in TINY_MODELS]
    rows += [(alias, hub_id, "Hugging Face Hub or its cache") for alias, hub_id in ALIASES.items()]
    print_frame(pd.DataFrame(rows, columns=["alias", "resolves to", "needs"]), "qft models")
    console.print("Any other Hugging Face id (owner/name), local model directory or .gguf file works too. "
                  "tiny-llama (hyphen) is a random 2-block Llama; tinyllama is the real TinyLlama-1.1B.")
    from qft_cli.models.architectures import ARCHITECTURES

    print_frame(pd.DataFrame([(a.name, a.config_class, a.layout, "yes" if a.attention else "refused")
                              for a in ARCHITECTURES],
                             columns=["architecture", "transformers config", "measured (norms weights)",
                                      "norms attention"]),
                "supported architectures (each checked by tests/test_architectures.py: norms weights, norms inputs, "
                "norms attention)")


def _register() -> None:
    import importlib

    for module_name, attr, name in (
        ("qft_cli.cli.norms", "app", "norms"),
        ("qft_cli.cli.runs", "app", "runs"),
        ("qft_cli.cli.sweep", "app", "sweep"),
    ):
        module = importlib.import_module(module_name)
        app.add_typer(getattr(module, attr), name=name)
    for module_name, attr, name in (
        ("qft_cli.cli.train", "train_command", "train"),
        ("qft_cli.cli.finetune", "finetune_command", "finetune"),
        ("qft_cli.cli.report", "report_command", "report"),
        ("qft_cli.cli.cost", "cost_command", "cost"),
        ("qft_cli.cli.demo", "demo_command", "demo"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue
            raise
        app.command(name, epilog=EXAMPLES[name])(getattr(module, attr))


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
