"""What the installed MLX can and cannot do for mixed precision on each device, by version.

Usage::

    from mpcourse.engines.mlx.support import limits, precision_problem

    precision_problem("gpu", "bf16")             # None, or a sentence saying why it will not work
    limits("gpu", mlx_version="0.32.4", macos="13.6", gpu_backend="metal")   # any versions

The facts (from MLX's install documentation and its maintainers' measurements):

- MLX on the Apple GPU (Metal) needs Apple silicon, a native (arm64) Python and macOS 14 or
  newer for current wheels (MLX's "Build and Install" page; older releases accepted 13.5).
- fp16 and bf16 both run on Metal and on the CPU: MLX brings its own bf16 type to its Metal
  kernels (``mlx/backend/metal/kernels/bf16.h``), so bf16 works on every Apple GPU; on GPUs
  without native bf16 it is emulated and slower than fp16 (measured by MLX's maintainers on an
  M2 Ultra, macOS 14: ml-explore/mlx-examples#186). Not blocking: a speed note.
- MLX's CUDA backend needs an NVIDIA GPU of compute capability 7.5 or newer (``mlx[cuda12]``).
- MLX has no autocast and no loss scaler: the engine writes the recipe out (fp32 masters, a half
  compute copy, mpcourse's scaler), so fp16 scaling works wherever fp16 runs.
"""

from __future__ import annotations

import platform

from mpcourse.engines.limits import Limit, dotted, parse_version

__all__ = ["Limit", "limits", "precision_problem", "installed_versions"]


def installed_versions() -> tuple[str | None, str | None, str]:
    """(MLX's version, macOS's version or None, the GPU backend: ``metal``/``cuda``/``none``)."""
    try:
        import mlx.core as mx
    except ImportError:
        return None, platform.mac_ver()[0] or None, "none"
    cuda = getattr(mx, "cuda", None)
    backend = "metal" if mx.metal.is_available() else "cuda" if cuda is not None and cuda.is_available() else "none"
    return str(getattr(mx, "__version__", "")) or None, platform.mac_ver()[0] or None, backend


def limits(
    device: str, *, mlx_version: str | None = None, macos: str | None = None, gpu_backend: str | None = None
) -> list[Limit]:
    """Every known limit of mixed precision on MLX's ``device`` (``cpu`` or ``gpu``).

    Args:
        device: ``"cpu"`` or ``"gpu"`` (``"metal"``/``"cuda"`` name a GPU backend).
        mlx_version: the MLX version to judge; default the installed one.
        macos: the macOS version; default this machine's (None off a Mac).
        gpu_backend: ``"metal"``, ``"cuda"`` or ``"none"``; default what this MLX has.
    """
    if mlx_version is None and macos is None and gpu_backend is None:
        mlx_version, macos, gpu_backend = installed_versions()
    backend = gpu_backend or ("metal" if macos else "none")
    if device in ("metal", "cuda"):
        backend = device
    mac = parse_version(macos)
    found: list[Limit] = []
    if device == "cpu":
        return found
    if backend == "metal":
        if mac and mac < (14,):
            found.append(
                Limit(
                    "gpu",
                    "any",
                    True,
                    f"MLX on the Apple GPU needs macOS 14 or newer for current "
                    f"releases (this is macOS {dotted(mac)}; MLX's install docs); upgrade macOS",
                )
            )
        found.append(
            Limit(
                "gpu",
                "bf16",
                False,
                "bf16 runs on every Apple GPU through MLX's own bf16 type; "
                "without native GPU bf16 it is emulated and slower than fp16 (MLX's maintainers "
                "measured it on an M2 Ultra: ml-explore/mlx-examples#186); measure both",
            )
        )
    elif backend == "cuda":
        found.append(
            Limit(
                "gpu",
                "any",
                False,
                "MLX's CUDA backend needs compute capability 7.5 or newer (mlx[cuda12]); fp16 and bf16 both run there",
            )
        )
    else:
        found.append(
            Limit(
                "gpu",
                "any",
                True,
                f"this MLX ({mlx_version or 'not installed'}) has no GPU backend: "
                "install mlx on Apple silicon (Metal) or mlx[cuda12] on Linux with an NVIDIA GPU",
            )
        )
    return found


def precision_problem(
    device: str,
    precision: str,
    *,
    mlx_version: str | None = None,
    macos: str | None = None,
    gpu_backend: str | None = None,
) -> str | None:
    """Why ``precision`` will not work on MLX's ``device`` with these versions, or None when it will."""
    for lim in limits(device, mlx_version=mlx_version, macos=macos, gpu_backend=gpu_backend):
        if lim.blocking and lim.precision in (precision, "any"):
            return lim.message
    return None
