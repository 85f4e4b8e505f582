"""Progress reporting contract between library and CLI.

Library functions never print. Long loops accept ``progress: ProgressFn | None`` and call
``progress(description, completed, total)``; the CLI turns those calls into a rich progress bar.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressFn = Callable[[str, int, int], None]


def report(progress: Optional[ProgressFn], description: str, completed: int, total: int) -> None:
    """Call ``progress`` if given."""
    if progress is not None:
        progress(description, completed, total)
