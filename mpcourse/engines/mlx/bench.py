"""What the benchmark needs from MLX: devices, memory probes, matmul peak (same names as engines/torch/bench.py).

Usage::

    from mpcourse.engines.mlx import bench as mb

    mb.devices()                                   # ['gpu', 'cpu'] on Apple silicon, ['cpu'] on Linux
    probe = mb.MemoryProbe("cpu"); probe.start(); probe.peak()   # mx.get_peak_memory()
    mb.matmul_peak_tflops("cpu", "fp32")

MLX is lazy: nothing runs until ``mx.eval``. The MLX engine evaluates model and optimizer
state at the end of each step, so its per-step seconds are device-synchronised already; the
matmul timing here calls ``mx.eval`` itself.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator
from typing import Any

import mlx.core as mx

from mpcourse.engines.mlx.engine import DTYPES, mlx_devices, resolve_device
from mpcourse.hardware import cpu_model

__all__ = [
    "set_threads",
    "devices",
    "check_device",
    "precision_unsupported",
    "precision_context",
    "fp8_matmul",
    "MemoryProbe",
    "matmul_peak_tflops",
    "device_info",
    "versions",
]


def set_threads(n: int | None) -> int | None:
    """MLX has no thread-count switch; returns None and changes nothing."""
    return None


def devices() -> list[str]:
    """MLX devices usable here, best first (``gpu`` on Metal or CUDA builds, then ``cpu``)."""
    return mlx_devices()


def check_device(device: str) -> str:
    """The concrete device (``"gpu"``/``"cpu"``) for ``device``; the MLX engine's errors otherwise."""
    return "gpu" if resolve_device(device).type == mx.DeviceType.gpu else "cpu"


def precision_unsupported(device: str, precision: str) -> str | None:
    """Why ``precision`` cannot run on ``device`` here, or None when it can."""
    if precision == "tf32":
        return "tf32 is a CUDA matmul mode of PyTorch; MLX has no tf32 switch"
    return None


def fp8_matmul(device: str) -> str:
    """Always ``"emulated"``: MLX 0.32 has fp8 conversions but no FP8 matmul."""
    return "emulated"


@contextlib.contextmanager
def precision_context(device: str, precision: str) -> Iterator[None]:
    """Run on ``device`` (MLX has no fp32-matmul precision switch to set)."""
    old = mx.default_device()
    mx.set_default_device(mx.gpu if device == "gpu" else mx.cpu)
    try:
        yield
    finally:
        mx.set_default_device(old)


class MemoryProbe:
    """Peak memory of MLX's allocator (``mx.get_peak_memory``), reset at :meth:`start`."""

    kind = "mlx_peak_memory"

    def __init__(self, device: str) -> None:
        self.device = device
        self.baseline = 0

    def start(self) -> None:
        """Forget earlier peaks and note the baseline."""
        mx.synchronize()
        mx.reset_peak_memory()
        self.baseline = int(mx.get_active_memory())

    def sample(self) -> None:
        """Nothing to do: MLX keeps the peak itself."""

    def peak(self) -> int:
        """Peak bytes since :meth:`start`."""
        mx.synchronize()
        return int(mx.get_peak_memory())


def matmul_peak_tflops(device: str, precision: str, n: int | None = None, repeats: int = 5) -> float:
    """Measured TFLOP/s of an ``n x n`` matmul (best of repeats: a ceiling); n: 4096 on a GPU, 512 on a CPU."""
    n = n or (4096 if device == "gpu" else 512)
    dtype = DTYPES[precision]
    with precision_context(device, precision):
        a = mx.random.normal((n, n)).astype(dtype)
        b = mx.random.normal((n, n)).astype(dtype)
        mx.eval(a @ b)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            mx.eval(a @ b)
            times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / min(times) / 1e12


def device_info(device: str) -> dict[str, Any]:
    """Names the hardware a result was measured on."""
    info: dict[str, Any] = {"device_type": device}
    if device == "gpu" and mx.metal.is_available():
        dev = mx.metal.device_info() if hasattr(mx.metal, "device_info") else {}
        info.update(name=str(dev.get("device_name", "Apple GPU (Metal)")), macos=platform.mac_ver()[0])
    else:
        info["name"] = cpu_model()
    return info


def versions() -> dict[str, str]:
    """Framework versions a result was measured with."""
    return {"mlx": mx.__version__}
