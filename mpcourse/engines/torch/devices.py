"""Torch devices: which are here, the one ``device=`` resolves to, syncs, fused optimizers.

Usage::

    from mpcourse.engines.torch.devices import resolve_device, torch_devices

    torch_devices()              # ['cuda', 'cpu'], best first
    resolve_device("auto")       # torch.device('cuda'); MPCOURSE_DEVICE=cpu pins it to the CPU
"""

from __future__ import annotations

import torch

from mpcourse.engines.base import DeviceUnavailableError
from mpcourse.engines.pinning import DEVICE_ENV, pinned_device

__all__ = ["torch_devices", "resolve_device", "sync", "use_fused"]


def torch_devices() -> list[str]:
    """Torch device types usable here, best first (``cuda``, ``mps``, ``cpu``)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found + ["cpu"]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> the best device, or the one ``MPCOURSE_DEVICE`` pins; an explicit one must exist."""
    if device == "auto":
        pinned = pinned_device("torch")
        if pinned is None:
            return torch.device(torch_devices()[0])
        gpus = [d for d in torch_devices() if d != "cpu"]
        if pinned == "gpu" and not gpus:
            raise DeviceUnavailableError(f"{DEVICE_ENV}=gpu pins device='auto' to a GPU, but torch sees none here")
        try:
            return resolve_device(gpus[0] if pinned == "gpu" else pinned)
        except DeviceUnavailableError as err:
            raise DeviceUnavailableError(f"{DEVICE_ENV} pins device='auto' to {pinned!r}: {err}") from err
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from err
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if dev.type not in torch_devices():
        raise DeviceUnavailableError(
            f"device {device!r} was asked for but is not available here "
            f"(available: {', '.join(torch_devices())}); use device='auto' "
            f"to pick the best one"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return dev


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock measures it (a host-device sync)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def use_fused(choice: bool | None, device: torch.device) -> bool:
    """Whether the engine builds a fused optimizer (``TrainConfig.fused``) on ``device``.

    ``None`` (auto) means fused on CUDA, where it removes the host sync of GradScaler's skip
    decision; the CPU keeps the standard optimizer, which plain PyTorch loops use too. ``True``
    on a device without fused kernels is a ValueError.
    """
    if choice is None:
        return device.type == "cuda"
    if choice and device.type not in _fused_devices():
        raise ValueError(
            f"fused=True: torch {torch.__version__} has no fused optimizer kernels for "
            f"device {device.type!r} (it has them for {', '.join(_fused_devices())}); "
            f"use fused=None or False"
        )
    return choice


def _fused_devices() -> list[str]:
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # older torch: fused kernels on CUDA only
        return ["cuda"]
    return list(_get_fused_kernels_supported_devices())
