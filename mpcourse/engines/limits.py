"""The shape of a framework's known limits, shared by ``engines/torch/support`` and ``engines/mlx/support``.

Usage::

    from mpcourse.engines.limits import Limit, parse_version

    parse_version("2.8.0+cpu")        # (2, 8, 0)
    Limit("mps", "bf16", True, "bf16 on MPS needs macOS 14 or newer")

A limit is *blocking* when a run would fail, or silently not be what it says (the engine then
refuses it with the message); otherwise it is a note that ``mpcourse doctor`` prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Limit", "parse_version", "dotted"]


@dataclass(frozen=True)
class Limit:
    """One known limit: the device, the precision (or ``"any"``), whether it blocks, and what to do."""

    device: str
    precision: str
    blocking: bool
    message: str


def parse_version(text: str | None) -> tuple[int, ...]:
    """``"2.8.0+cpu"`` -> ``(2, 8, 0)``; ``"14.5"`` -> ``(14, 5)``; None or junk -> ``()``."""
    if not text:
        return ()
    m = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()


def dotted(version: tuple[int, ...]) -> str:
    """``(14, 5)`` -> ``"14.5"``."""
    return ".".join(map(str, version))
