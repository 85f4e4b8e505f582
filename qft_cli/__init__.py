"""qft: numerical experiments on quantum-friendly transformers.

Library modules hold the maths and the data flow (load -> compute -> parquet -> report);
``qft_cli.cli`` is a thin Typer layer over them.
"""

__version__ = "0.1.0"
