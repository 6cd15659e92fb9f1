"""The progress bar of a training run: notebook-aware, off with MPCOURSE_PROGRESS=0.

Usage::

    bar = make_bar(total=100, desc="torch:cpu fp16", enabled=progress_default())
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["make_bar", "progress_default"]


def progress_default() -> bool:
    """False when the environment variable MPCOURSE_PROGRESS is 0, false, no or off."""
    return os.environ.get("MPCOURSE_PROGRESS", "1").lower() not in ("0", "false", "no", "off")


def make_bar(total: int | None, desc: str, enabled: bool) -> Any:
    """A tqdm bar (the notebook widget in Jupyter, text elsewhere), or None when not enabled."""
    if not enabled:
        return None
    from tqdm.auto import tqdm  # the notebook widget in Jupyter, text elsewhere

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)
