"""One environment variable, ``MPCOURSE_DEVICE``, pins the device ``device="auto"`` picks.

Usage::

    MPCOURSE_DEVICE=cpu python -m pytest notebooks --nbval ...   # every engine on the CPU
    MPCOURSE_DEVICE=gpu jupyter lab                               # torch: cuda or mps; mlx: gpu

    from mpcourse.engines.pinning import pinned_device
    pinned_device("torch")   # None when unset (auto picks the best device), else e.g. "cpu"

Only ``device="auto"`` reads it: an explicit ``device="cuda"`` in code is obeyed as written.
Both engines' ``resolve_device`` consult it, so a notebook, a widget, the benchmarks and the
production trainer all follow one setting for the whole run. A pinned device that is not
present is an error (naming the variable), never a silent fallback.

Values (case-insensitive): ``cpu``; ``gpu`` (torch: cuda, else mps; mlx: its GPU); ``cuda`` or
``cuda:N`` (mlx: its CUDA backend); ``mps`` / ``metal`` (Apple's GPU, for either framework).
Empty or ``auto`` means not pinned.
"""

from __future__ import annotations

import os
import re

__all__ = ["DEVICE_ENV", "PIN_VALUES", "pinned_device"]

DEVICE_ENV = "MPCOURSE_DEVICE"
PIN_VALUES: tuple[str, ...] = ("auto", "cpu", "gpu", "cuda", "cuda:N", "mps", "metal")

# What each pinned value means to each framework (torch names its Apple GPU "mps", MLX "metal").
_TORCH = {"cpu": "cpu", "gpu": "gpu", "cuda": "cuda", "mps": "mps", "metal": "mps"}
_MLX = {"cpu": "cpu", "gpu": "gpu", "cuda": "cuda", "mps": "metal", "metal": "metal"}


def pinned_device(backend: str, environ: dict[str, str] | None = None) -> str | None:
    """The device ``MPCOURSE_DEVICE`` pins for ``backend`` (``"torch"`` or ``"mlx"``), or None.

    Args:
        backend: ``"torch"`` or ``"mlx"``.
        environ: the environment to read. Default ``os.environ``.

    Returns:
        None when the variable is unset, empty or ``auto``; else the device name in that
        framework's words (torch: ``cpu``, ``gpu``, ``cuda``, ``cuda:N``, ``mps``; mlx: ``cpu``,
        ``gpu``, ``cuda``, ``metal``). ``gpu`` for torch means its best GPU.

    Raises:
        ValueError: the variable holds something else, or ``backend`` is unknown.
    """
    if backend not in ("torch", "mlx"):
        raise ValueError(f"unknown backend {backend!r}; use 'torch' or 'mlx'")
    raw = (os.environ if environ is None else environ).get(DEVICE_ENV, "")
    value = raw.strip().lower()
    if value in ("", "auto"):
        return None
    if re.fullmatch(r"cuda:\d+", value):
        return value if backend == "torch" else "cuda"
    table = _TORCH if backend == "torch" else _MLX
    if value not in table:
        raise ValueError(f"{DEVICE_ENV}={raw!r} is not a device; use one of {', '.join(PIN_VALUES)} (or unset it)")
    return table[value]
