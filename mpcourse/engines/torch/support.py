"""What the installed torch can and cannot do for mixed precision on each device, by version.

Usage::

    from mpcourse.engines.torch.support import limits, precision_problem

    precision_problem("mps", "bf16")          # None, or a sentence saying why it will not work
    for lim in limits("mps"):                  # every known limit of this torch + macOS on MPS
        print(lim.blocking, lim.message)
    limits("mps", torch_version="2.4.1", macos="13.6")   # any versions, for tests and planning

The facts, each from PyTorch's own tracker (the version is the first release with the change):

- fp16 autocast on MPS: torch 2.5 (pytorch/pytorch#99272). Before it, ``torch.autocast("mps")``
  warns and disables itself: the "fp16" run is really fp32.
- bf16 on MPS needs macOS 14 (Sonoma), where MPSGraph gained bfloat16 (pytorch/pytorch#119641);
  bf16 autocast on MPS: torch 2.6 (pytorch/pytorch#139390).
- ``torch.amp.GradScaler("mps")``: torch 2.8 (pytorch/pytorch#150255, fixing #142397: its
  ``unscale_`` cast the scale to float64, which MPS does not have). Before it the engine uses
  mpcourse's own scaler on MPS, which needs no float64.
- Silent gradient errors on MPS, open or recent, in every version: wrong gradients of large
  linear layers (pytorch/pytorch#153957), of backward passes over more than 32K elements
  (#177116), of ``layer_norm`` when its input needs no grad (#183825). Not blocking; check a
  run against the CPU (``tests/test_devices.py`` does, for the course's models).
- bf16 on CUDA needs compute capability 8.0 (Ampere) for native kernels
  (``torch.cuda.is_bf16_supported()``); older GPUs emulate it slowly.

A limit is *blocking* when the run would fail or silently not be what it says (then the engine
refuses, with this message); otherwise it is a warning that ``mpcourse doctor`` prints.
"""

from __future__ import annotations

import platform

from mpcourse.engines.limits import Limit, dotted, parse_version

__all__ = ["Limit", "limits", "precision_problem", "grad_scaler_works", "parse_version", "installed_versions"]


def installed_versions() -> tuple[str | None, str | None]:
    """(torch's version, macOS's version) here; None where absent (torch not installed, not a Mac)."""
    try:
        import torch
    except ImportError:
        torch_version = None
    else:
        torch_version = str(torch.__version__)
    mac = platform.mac_ver()[0] or None
    return torch_version, mac


def _versions(torch_version: str | None, macos: str | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if torch_version is None and macos is None:
        torch_version, macos = installed_versions()
    return parse_version(torch_version), parse_version(macos)


def grad_scaler_works(device_type: str, torch_version: str | None = None) -> bool:
    """Whether ``torch.amp.GradScaler(device_type)`` works with this torch (MPS: from 2.8)."""
    if device_type != "mps":
        return True
    tv = parse_version(torch_version if torch_version is not None else installed_versions()[0])
    return not tv or tv >= (2, 8)


def limits(device: str, *, torch_version: str | None = None, macos: str | None = None) -> list[Limit]:
    """Every known limit of mixed precision on ``device`` (``cpu``, ``cuda[:N]``, ``mps``).

    Args:
        device: a torch device name.
        torch_version: the torch version to judge; default the installed one.
        macos: the macOS version (``"14.5"``); default this machine's (None off a Mac).
    """
    kind = device.split(":")[0]
    tv, mac = _versions(torch_version, macos)
    found: list[Limit] = []
    if kind == "mps":
        if tv and tv < (2, 5):
            found.append(
                Limit(
                    "mps",
                    "fp16",
                    True,
                    f"torch {dotted(tv)} has no fp16 autocast on MPS "
                    "(from torch 2.5, pytorch/pytorch#99272): autocast would silently run fp32; "
                    "upgrade torch",
                )
            )
        if mac and mac < (14,):
            found.append(
                Limit(
                    "mps",
                    "bf16",
                    True,
                    f"bf16 on MPS needs macOS 14 or newer (this is macOS "
                    f"{dotted(mac)}; pytorch/pytorch#119641); use fp16",
                )
            )
        elif tv and tv < (2, 6):
            found.append(
                Limit(
                    "mps",
                    "bf16",
                    True,
                    f"torch {dotted(tv)} has no bf16 autocast on MPS "
                    "(from torch 2.6, pytorch/pytorch#139390); upgrade torch or use fp16",
                )
            )
        if tv and tv < (2, 8):
            found.append(
                Limit(
                    "mps",
                    "fp16",
                    False,
                    "torch.amp.GradScaler('mps') fails before torch 2.8 "
                    "(pytorch/pytorch#142397); the engine uses mpcourse's own loss scaler on MPS",
                )
            )
        found.append(
            Limit(
                "mps",
                "any",
                False,
                "MPS has open reports of silently wrong gradients for large "
                "layers (pytorch/pytorch#153957, #177116) and layer_norm (#183825): compare a "
                "run with the CPU before trusting it (python -m pytest tests/test_devices.py)",
            )
        )
    return found


def precision_problem(
    device: str, precision: str, *, torch_version: str | None = None, macos: str | None = None
) -> str | None:
    """Why ``precision`` will not work on ``device`` with these versions, or None when it will.

    CUDA's bf16 is judged by the GPU itself (``torch.cuda.is_bf16_supported``), only when torch
    is installed and the device is a CUDA one; the version rules are those of :func:`limits`.
    """
    for lim in limits(device, torch_version=torch_version, macos=macos):
        if lim.blocking and lim.precision in (precision, "any"):
            return lim.message
    if precision == "bf16" and device.startswith("cuda") and torch_version is None:
        import torch

        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return f"{torch.cuda.get_device_name()} has no bf16 support (compute capability 8.0 or newer needed)"
    return None
