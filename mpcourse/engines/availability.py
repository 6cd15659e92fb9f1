"""Which backends can run here, without importing them; the one availability check.

Usage::

    from mpcourse.engines import installed, missing_reason

    installed("mlx")            # can it be imported? (find_spec: nothing is imported)
    missing_reason("mlx")       # None, or why not with the install command
"""

from __future__ import annotations

import importlib.util

from mpcourse._validate import check_choice
from mpcourse.engines.base import BackendUnavailableError

__all__ = ["BACKENDS", "INSTALL_HINT", "installed", "missing_reason", "require_backend"]


BACKENDS: tuple[str, ...] = ("torch", "mlx")

INSTALL_HINT = {
    "torch": "pip install torch  (on Linux without a GPU: pip install torch==2.13.0 for the CPU build)",
    "mlx": "pip install 'mlx[cpu]' on Linux, or pip install mlx on macOS (Apple silicon)",
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or half-installed package
        return False


def missing_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here (with the install command), or None when it can.

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
    """
    check_choice("backend", backend, BACKENDS)
    if not installed(backend):
        return f"backend {backend!r} is not installed: {INSTALL_HINT[backend]}"
    return None


def require_backend(backend: str) -> None:
    """Raise :class:`BackendUnavailableError` (saying how to install it) unless ``backend`` is here."""
    reason = missing_reason(backend)
    if reason is not None:
        raise BackendUnavailableError(reason)
