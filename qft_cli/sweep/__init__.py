"""``qft sweep``: experiment grids (YAML) expanded into cells, each one qft command line, run by a
local process pool, SLURM (submitit) or Ray, skipped when done by content (docs/sweep.md).

Modules: ``grid`` (the file: parsing, validation with file and line, expansion into cells),
``keys`` (a cell's content key: command, resolved options, qft's version, input fingerprints),
``cells`` (running one cell as a ``python -m qft_cli`` subprocess, its ``cell.json``, its state),
``executors`` (local, slurm, ray and the plan that decides what runs), ``presets`` (the shipped
grid files).
"""
