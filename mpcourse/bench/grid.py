"""What a benchmark measures: the grid of backend x device x precision x model x batch.

Usage::

    from mpcourse import bench

    grid = bench.BenchGrid(backends=("torch",), precisions=("fp32", "bf16"), models=("mlp",),
                           batches=(128,), steps=5)
    cases, skipped = bench.plan(grid)     # the configurations that can run here, and why not the rest
    bench.BenchGrid(**bench.PRESETS["gpu"])

"tf32" is fp32 storage with tf32 tensor-core matmuls (CUDA only); "fp32" is pinned to true
fp32, so every "speedup vs fp32" is against true fp32. "fp8" (asked for by name; not in the
default grid) trains with ``TrainConfig(precision="fp8")``: timed as FP8 only where
``torch._scaled_mm`` runs natively (CUDA, compute capability >= 8.9); everywhere else the row
is marked ``"timing": "emulated"`` and gets no speedup and no TFLOP/s, since the time measured
is that of the emulation, not of FP8 hardware.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from mpcourse._validate import check_choice
from mpcourse.engines import BACKENDS, SIZES, ZOO, missing_reason

__all__ = ["backend_tools", "PRECISIONS", "DEFAULT_PRECISIONS", "SCHEMA", "PRESETS", "Case", "BenchGrid", "plan"]


PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16", "fp8")
DEFAULT_PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16")  # fp8 is asked for by name


SCHEMA = 1


#: Named grids. "default" finishes in under 2 minutes on a 2-core CPU; "gpu" is the grid the
#: course's recorded GPU results come from (the large MLP at batch >= 512 and the transformers),
#: on CUDA: an error before anything runs where there is none (``--devices mps`` on a Mac).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"models": ("mlp", "transformer"), "batches": (128,), "steps": 10, "warmup": 2, "max_case_seconds": 4.0},
    "gpu": {
        "backends": ("torch",),
        "devices": ("cuda",),
        "models": ("mlp:large", "transformer", "transformer:large", "mlp"),
        "batches": (512, 1024),
        "steps": 50,
        "warmup": 10,
        "max_case_seconds": 20.0,
    },
    "tiny": {
        "models": ("mlp",),
        "batches": (32,),
        "steps": 3,
        "warmup": 1,
        "max_case_seconds": 2.0,
        "num_features": 64,
        "matmul_peak": False,
    },
}


@dataclass(frozen=True)
class Case:
    """One configuration of the grid."""

    backend: str
    device: str
    precision: str
    model: str
    size: str
    batch: int
    width: int | None = None

    @property
    def label(self) -> str:
        model = self.model if self.size == "small" else f"{self.model}:{self.size}"
        if self.width is not None:
            model += f"@{self.width}"
        return f"{self.backend}:{self.device} {model} b{self.batch} {self.precision}"


def _tuple(name: str, value: Any, kind: type) -> tuple[Any, ...]:
    if isinstance(value, (str, int)):
        value = (value,)
    value = tuple(value)
    for v in value:
        if isinstance(v, bool) or not isinstance(v, kind):
            raise TypeError(f"{name} must hold {kind.__name__}s, got {v!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class BenchGrid:
    """What to measure. Every value is checked here, before anything runs.

    Args:
        backends: ``"torch"``/``"mlx"``, or None for every installed backend (the others are
            skipped with a printed reason). A backend named here must be installed. Default None.
        devices: ``"auto"`` (each backend's best device) or explicit devices (torch: cpu,
            cuda, cuda:N, mps; mlx: cpu, gpu); an explicit device must exist. Default ("auto",).
        precisions: from fp32, tf32, fp16, bf16, fp8. tf32 runs only where CUDA has it; fp8 is
            timed as FP8 only where ``_scaled_mm`` is native (else marked emulated). Default
            all but fp8.
        models: zoo names, ``name:size`` for size "large". Default ("mlp", "transformer").
        batches: batch sizes. Default (128,).
        widths: hidden widths for mlp/deep_mlp (same depth as the zoo's); empty: the zoo's own.
            Default ().
        steps: timed steps per configuration, >= 3. Default 10.
        warmup: untimed steps first. Default 2.
        max_case_seconds: stop timing a configuration after this long (>= 3 steps). Default 4.0.
        num_features, num_classes: input width (a square for cnn/transformer/lstm) and classes.
            Default 784 (28 x 28) and 10.
        matmul_peak: also measure each device's matmul peak (for achieved/peak). Default True.
        threads: CPU threads for torch during the run (None: torch's default, one per core).
            Recorded with the results. Default None.
    """

    backends: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ("auto",)
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    models: tuple[str, ...] = ("mlp", "transformer")
    batches: tuple[int, ...] = (128,)
    widths: tuple[int, ...] = ()
    steps: int = 10
    warmup: int = 2
    max_case_seconds: float = 4.0
    num_features: int = 784
    num_classes: int = 10
    matmul_peak: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backends is not None:
            object.__setattr__(self, "backends", _tuple("backends", self.backends, str))
            _allowed("backend", self.backends, BACKENDS)
        for name, kind in (("devices", str), ("precisions", str), ("models", str), ("batches", int), ("widths", int)):
            object.__setattr__(self, name, _tuple(name, getattr(self, name), kind))
            if not getattr(self, name) and name != "widths":
                raise ValueError(f"{name} must not be empty")
        _allowed("precision", self.precisions, PRECISIONS)
        for m in self.models:
            name, _, size = m.partition(":")
            _allowed("model", (name,), ZOO)
            if size:
                _allowed(f"size (in {m!r})", (size,), SIZES)
        for name in ("batches", "widths"):
            bad = [v for v in getattr(self, name) if v < 1]
            if bad:
                raise ValueError(f"{name} must be >= 1, got {bad[0]!r}")
        for name, low in (("steps", 3), ("warmup", 0), ("num_features", 1), ("num_classes", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads must be None or an int >= 1, got {self.threads!r}")
        if not isinstance(self.max_case_seconds, (int, float)) or not self.max_case_seconds > 0:
            raise ValueError(f"max_case_seconds must be > 0, got {self.max_case_seconds!r}")
        for m in self.models:
            if (
                m.split(":")[0] in ("cnn", "transformer", "lstm")
                and int(self.num_features**0.5) ** 2 != self.num_features
            ):
                raise ValueError(f"model {m!r} needs num_features to be a square (e.g. 784), got {self.num_features}")


def _allowed(what: str, values: Iterable[str], allowed: Sequence[str]) -> None:
    for v in values:
        check_choice(what, v, allowed)


def backend_tools(backend: str) -> ModuleType:
    return importlib.import_module(f"mpcourse.engines.{backend}.bench")


def plan(grid: BenchGrid) -> tuple[list[Case], list[tuple[str, str]]]:
    """The cases to run and the ``(what, why)`` of those skipped; bad input raises here.

    Raises:
        ValueError: a named backend that is not installed, or a device that is absent (the
            engines' DeviceUnavailableError is a ValueError).
    """
    skipped: list[tuple[str, str]] = []
    backends = grid.backends
    if backends is None:
        backends = tuple(b for b in BACKENDS if not missing_reason(b))
        skipped += [(b, missing_reason(b) or "") for b in BACKENDS if missing_reason(b)]
        if not backends:
            raise ValueError("no backend can run here: " + "; ".join(r for _, r in skipped))
    cases: list[Case] = []
    for backend in backends:
        why = missing_reason(backend)
        if why:
            raise ValueError(f"backend {backend!r} was asked for but {why}")
        tools = backend_tools(backend)
        for device in dict.fromkeys(tools.check_device(d) for d in grid.devices):
            for precision in grid.precisions:
                reason = tools.precision_unsupported(device, precision)
                if reason:
                    skipped.append((f"{backend}:{device} {precision}", reason))
                    continue
                for m in grid.models:
                    name, _, size = m.partition(":")
                    widths: tuple[int | None, ...] = (
                        grid.widths if grid.widths and name in ("mlp", "deep_mlp") else (None,)
                    )
                    for width in widths:
                        for batch in grid.batches:
                            cases.append(Case(backend, device, precision, name, size or "small", batch, width))
    return cases, skipped
