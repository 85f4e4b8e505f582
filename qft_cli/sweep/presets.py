"""The grid files shipped with qft (``qft_cli/sweep/presets/*.yaml``, package data):
``qft sweep presets`` lists them, ``qft sweep run --preset NAME`` runs one."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from qft_cli.system.errors import QftInputError


def preset_names() -> list[str]:
    """Names of the shipped presets (file names without ``.yaml``), sorted."""
    folder = resources.files("qft_cli.sweep") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """The file of preset ``name``.

    Raises:
        QftInputError: no such preset (the names are listed).
    """
    if name not in preset_names():
        raise QftInputError(f"no preset {name!r}: use one of {', '.join(preset_names())} (qft sweep presets)")
    return Path(str(resources.files("qft_cli.sweep") / "presets" / f"{name}.yaml"))


def preset_summary(name: str) -> str:
    """The first comment paragraph of a preset (what it measures, what it needs, how long it takes)."""
    lines = []
    for line in preset_path(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    return text.split(": ", 1)[1] if text.startswith(f"{name}: ") else text
