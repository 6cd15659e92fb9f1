"""MLX devices: which are here, and the one ``device=`` resolves to (Metal, CUDA or the CPU).

Usage::

    from mpcourse.engines.mlx.devices import mlx_devices, resolve_device

    mlx_devices()                # ['gpu', 'cpu'] on Apple silicon, ['cpu'] on Linux without CUDA
    resolve_device("auto")       # MLX's default device; MPCOURSE_DEVICE=cpu pins it to the CPU
"""

from __future__ import annotations

import mlx.core as mx

from mpcourse.engines.base import DeviceUnavailableError
from mpcourse.engines.pinning import DEVICE_ENV, pinned_device

__all__ = ["mlx_devices", "gpu_backend", "resolve_device", "device_name"]


def mlx_devices() -> list[str]:
    """MLX devices usable here, best first: ``["gpu", "cpu"]`` with Metal or CUDA, else ``["cpu"]``."""
    return (["gpu"] if mx.is_available(mx.gpu) else []) + ["cpu"]


def gpu_backend() -> str:
    if mx.metal.is_available():
        return "metal"
    cuda = getattr(mx, "cuda", None)
    return "cuda" if cuda is not None and cuda.is_available() else "none"


def resolve_device(device: str) -> mx.Device:
    """``"auto"`` -> MLX's default device, or the one ``MPCOURSE_DEVICE`` pins; ``"cpu"``/``"gpu"``
    (or ``"metal"``/``"cuda"``) must exist."""
    if device == "auto":
        pinned = pinned_device("mlx")
        if pinned is None:
            return mx.default_device()
        try:
            return resolve_device(pinned)
        except DeviceUnavailableError as err:
            raise DeviceUnavailableError(f"{DEVICE_ENV} pins device='auto' to {pinned!r}: {err}") from err
    if device == "cpu":
        return mx.Device(mx.cpu)
    if device not in ("gpu", "metal", "cuda"):
        raise ValueError(
            f"unknown MLX device {device!r}; use 'auto', 'cpu' or 'gpu' "
            f"('metal' and 'cuda' name a specific GPU backend)"
        )
    backend = gpu_backend()
    if backend == "none" or (device != "gpu" and device != backend):
        raise DeviceUnavailableError(
            f"MLX device {device!r} was asked for but this MLX has no {device} backend "
            f"(available: {', '.join(mlx_devices())}); use device='auto', or install mlx on "
            f"Apple silicon (Metal) or 'mlx[cuda]' on Linux with an NVIDIA GPU"
        )
    return mx.Device(mx.gpu)


def device_name(dev: mx.Device) -> str:
    return "gpu" if dev.type == mx.DeviceType.gpu else "cpu"
