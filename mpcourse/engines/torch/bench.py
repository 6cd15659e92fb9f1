"""What the benchmark needs from PyTorch: devices, tf32, memory probes, FLOP counts, matmul peak.

Usage::

    from mpcourse.engines.torch import bench as tb

    tb.check_device("cuda")                         # DeviceUnavailableError if there is none
    tb.precision_unsupported("cpu", "tf32")         # 'tf32 is a CUDA (Ampere+) matmul mode; ...'
    with tb.precision_context("cuda", "tf32"):      # fp32 tensors, tf32 tensor-core matmuls
        ...
    probe = tb.MemoryProbe("cpu"); probe.start(); probe.sample(); probe.peak()
    tb.count_flops("mlp", "small", 784, 10, batch=256)          # forward + backward, on "meta"
    tb.matmul_peak_tflops("cpu", "fp32")            # measured n x n matmul TFLOP/s

The benchmark runner (:mod:`mpcourse.bench`) is framework-neutral; everything that must know
torch (device syncs, allocator statistics, the tf32 switch) lives here. ``engines/mlx/bench.py`` has
the same functions for MLX.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from mpcourse.engines.torch.engine import DTYPES, resolve_device, sync, torch_devices
from mpcourse.engines.torch.models import build_model
from mpcourse.hardware import cpu_model

__all__ = [
    "set_threads",
    "devices",
    "check_device",
    "precision_unsupported",
    "precision_context",
    "MemoryProbe",
    "count_flops",
    "matmul_tflops",
    "matmul_peak_tflops",
    "elementwise_gbps",
    "device_info",
    "versions",
    "saved_tensor_bytes",
    "param_count",
    "fp8_matmul",
]


def set_threads(n: int | None) -> int:
    """Set torch's intra-op CPU threads (None: leave them); returns the previous count.

    On a CPU shared with other busy processes, fewer threads than cores avoids OpenMP threads
    waiting for each other at every barrier, which can slow small steps down a hundredfold.
    """
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    return old


def devices() -> list[str]:
    """Device types usable here, best first (``cuda``, ``mps``, ``cpu``)."""
    return torch_devices()


def check_device(device: str) -> str:
    """The concrete device for ``device`` (``"auto"`` resolved), or DeviceUnavailableError."""
    dev = resolve_device(device)
    return dev.type if dev.index is None else str(dev)


def precision_unsupported(device: str, precision: str) -> str | None:
    """Why ``precision`` cannot run on ``device`` here, or None when it can."""
    dev = torch.device(device)
    if precision == "tf32":
        if dev.type != "cuda":
            return "tf32 is a CUDA (Ampere or newer) matmul mode; this device has no tf32"
        if torch.cuda.get_device_capability(dev)[0] < 8:
            return f"tf32 needs compute capability >= 8.0; {torch.cuda.get_device_name(dev)} has less"
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(dev)} has no bf16 support"
    return None


def fp8_matmul(device: str) -> str:
    """``"native"`` where ``torch._scaled_mm`` is an FP8 tensor-core GEMM (CUDA, sm_89+), else ``"emulated"``."""
    from mpcourse.engines.torch.fp8 import scaled_mm_native

    return "native" if scaled_mm_native(torch.device(device)) else "emulated"


@contextlib.contextmanager
def precision_context(device: str, precision: str) -> Iterator[None]:
    """fp32 matmuls in true fp32 (``"fp32"``) or on tf32 tensor cores (``"tf32"``), then restore.

    fp16/bf16 do not depend on the switch (autocast decides), but it is pinned to true fp32
    for them too, so "speedup vs fp32" always means against true fp32.
    """
    old = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision == "tf32"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32  # convolutions
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[1], old[2]


class MemoryProbe:
    """Peak memory of a run, measured the way each device allows.

    - cuda: ``torch.cuda.max_memory_allocated`` (tensors only; reset at :meth:`start`);
    - mps: ``torch.mps.current_allocated_memory``, sampled after each step (no peak counter);
    - cpu: the process's resident set size (psutil), sampled after each step. It includes
      Python, torch and everything else in the process; :attr:`baseline` is the RSS at start.
    """

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.kind = {"cuda": "cuda_max_allocated", "mps": "mps_allocated_sampled"}.get(
            self.device.type, "process_rss_sampled"
        )
        self.baseline = 0
        self._peak = 0

    def _now(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.device.type == "mps":
            return int(torch.mps.current_allocated_memory())
        import psutil

        return int(psutil.Process().memory_info().rss)

    def start(self) -> None:
        """Forget earlier peaks and note the baseline."""
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = int(torch.cuda.memory_allocated(self.device))
        else:
            _release_freed_memory()
            self.baseline = self._now()
        self._peak = self.baseline

    def sample(self) -> None:
        """Read the memory now (call after a step)."""
        self._peak = max(self._peak, self._now())

    def peak(self) -> int:
        """Peak bytes since :meth:`start`."""
        self.sample()
        return self._peak


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS starts from the live set."""
    import ctypes
    import gc

    gc.collect()
    if platform.system() == "Linux":
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): RSS may include freed pages
            pass


def count_flops(model: str, size: str, num_features: int, num_classes: int, batch: int, **overrides: Any) -> int | None:
    """FLOPs of one training step (forward + backward) of a zoo model, counted without running it.

    The model is built on torch's ``meta`` device (shapes only) and
    ``torch.utils.flop_counter.FlopCounterMode`` adds up its matmuls, convolutions and
    attention; elementwise work is not counted. The optimizer update is not counted either.
    Returns None when the counter cannot trace the model.
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"):
            net = build_model(model, size, num_features, num_classes, seed=None, **overrides)
            x = torch.empty(batch, num_features)
            y = torch.zeros(batch, dtype=torch.long)
        counter = FlopCounterMode(display=False)
        with counter:
            F.cross_entropy(net(x), y).backward()
        return int(counter.get_total_flops()) or None
    except (RuntimeError, NotImplementedError):  # an op the meta device or the counter lacks
        return None


def matmul_tflops(device: str, precision: str, m: int, n: int, k: int, repeats: int = 5) -> float:
    """Measured TFLOP/s of one ``(m x k) @ (k x n)`` matmul in ``precision`` (best of ``repeats``).

    The second operand is stored as ``nn.Linear`` stores its weight (``n x k``, used
    transposed), the layout training multiplies with: on CPUs without native fp16/bf16 the
    other layout can fall back to a kernel ten times slower. The best run, not the median, is
    reported: this is a ceiling.
    """
    dev = torch.device(device)
    if precision == "fp8":
        return _scaled_mm_tflops(dev, m, n, k, repeats)
    dtype = DTYPES["fp32" if precision == "tf32" else precision]
    with precision_context(device, precision):
        a = torch.randn(m, k, device=dev).to(dtype)
        w = torch.randn(n, k, device=dev).to(dtype)
        a @ w.t()  # warm-up: kernel selection, allocator
        sync(dev)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ w.t()
            sync(dev)
            times.append(time.perf_counter() - t0)
    return 2.0 * m * n * k / min(times) / 1e12


def _scaled_mm_tflops(dev: torch.device, m: int, n: int, k: int, repeats: int) -> float:
    """TFLOP/s of ``torch._scaled_mm`` on e4m3 operands with per-tensor scales, bf16 out (best of repeats)."""
    a = torch.randn(m, k, device=dev).to(torch.float8_e4m3fn)
    w = torch.randn(n, k, device=dev).to(torch.float8_e4m3fn)
    one = torch.tensor(1.0, device=dev)
    mm = lambda: torch._scaled_mm(a, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
    mm()
    sync(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return 2.0 * m * n * k / min(times) / 1e12


def matmul_peak_tflops(device: str, precision: str, n: int | None = None, repeats: int = 5) -> float:
    """Measured TFLOP/s of an ``n x n`` matmul in ``precision`` on ``device`` (best of repeats).

    This is the ceiling the training step is compared against ("achieved / peak"), measured
    here rather than taken from a datasheet. ``n`` defaults to 8192 on CUDA, 4096 on MPS and
    512 on the CPU (whose fp16 matmul can be very slow). A training step's kernels can still
    beat it where they are shaped better for the hardware than a square matmul.
    """
    n = n or {"cuda": 8192, "mps": 4096}.get(torch.device(device).type, 512)
    return matmul_tflops(device, precision, n, n, n, repeats)


def elementwise_gbps(device: str, precision: str, numel: int = 2**22, repeats: int = 5) -> float:
    """Measured GB/s of ``a + b`` on ``numel`` elements: a memory-bound op (2 reads, 1 write each)."""
    dev = torch.device(device)
    dtype = DTYPES["fp32" if precision == "tf32" else precision]
    a = torch.randn(numel, device=dev).to(dtype)
    b = torch.randn(numel, device=dev).to(dtype)
    out = torch.empty_like(a)
    torch.add(a, b, out=out)
    sync(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.add(a, b, out=out)
        sync(dev)
        times.append(time.perf_counter() - t0)
    return 3 * numel * a.element_size() / statistics.median(times) / 1e9


def device_info(device: str) -> dict[str, Any]:
    """Names the hardware a result was measured on."""
    dev = torch.device(device)
    info: dict[str, Any] = {
        "device_type": dev.type,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_bytes=int(props.total_memory),
            cuda=torch.version.cuda,
        )
    elif dev.type == "mps":
        info.update(name=f"Apple GPU (MPS) on {platform.machine()}", macos=platform.mac_ver()[0])
    else:
        info.update(name=cpu_model())
    return info


def versions() -> dict[str, str]:
    """Framework versions a result was measured with."""
    return {"torch": torch.__version__}


def param_count(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def saved_tensor_bytes(engine: Any, x: Any, y: Any) -> dict[str, int]:
    """Bytes autograd keeps for the backward pass of one batch: activations and weight copies.

    Measured with ``torch.autograd.graph.saved_tensors_hooks`` during a real forward pass of
    ``engine`` (its autocast, its dtypes). Parameters themselves are model state and are not
    counted. A saved tensor shaped like a parameter (or its transpose) is counted as a
    **weight copy**: autocast's fp16/bf16 cast of that weight, made afresh every step. The
    rest are **activations**. Each storage is counted once.

    Returns:
        ``{"activations": bytes, "weight copies": bytes}``.
    """
    xt, yt = engine.tensors(x, y)
    params = list(engine.model.parameters())
    ptrs = {p.untyped_storage().data_ptr() for p in params}
    shapes = {tuple(p.shape) for p in params} | {tuple(p.shape)[::-1] for p in params if p.dim() == 2}
    seen: dict[int, tuple[str, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in ptrs:
            kind = "weight copies" if tuple(t.shape) in shapes and t.dtype != torch.float32 else "activations"
            seen[ptr] = (kind, max(seen.get(ptr, (kind, 0))[1], t.untyped_storage().nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = engine.forward_loss(xt, yt)
    del loss
    out = {"activations": 0, "weight copies": 0}
    for kind, nbytes in seen.values():
        out[kind] += nbytes
    return out
