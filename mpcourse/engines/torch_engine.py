"""The PyTorch engine: autocast compute, fp32 master weights, torch.amp.GradScaler or mpcourse's scaler.

Usage::

    import mpcourse as mpc

    cfg = mpc.TrainConfig(precision="fp16", loss_scale="dynamic")
    eng = mpc.make_engine("torch", model="mlp", config=cfg, device="auto")  # cuda > mps > cpu
    hist = eng.fit(mpc.data.load("digits"), epochs=3)

One step, as the engine runs it (the recipe of ``torch.amp``)::

    with torch.autocast(device_type, dtype=torch.float16):   # matmuls in fp16, params stay fp32
        out = model(x)
    loss = loss_fn(out.float(), y)                           # the loss in fp32
    scaler.scale(loss).backward()                            # scaled fp32 master gradients
    scaler.unscale_(opt)                                     # divide by the scale, look for inf/nan
    grad_norm = total_norm(grads)                            # of the unscaled gradients
    scaler.step(opt)                                         # skipped when inf/nan was found
    scaler.update()                                          # the dynamic-scale state machine

Which scaler runs:

- ``loss_scale="dynamic"`` with ``hysteresis=1`` and no min/max: ``torch.amp.GradScaler``
  (its trajectory equals :class:`mpcourse.DynamicLossScaler`'s; the tests check it).
- a static number, or dynamic with hysteresis or bounds (which GradScaler lacks):
  mpcourse's scaler, with the same fused unscale-and-check kernel GradScaler uses.
- ``"none"``: no scaling and no skipping; a non-finite step is applied, as in a plain loop.

The fast path (``TrainConfig(fused=True)``; the default on CUDA): a fused optimizer, to which
GradScaler hands its inf/nan flag as a device tensor, so neither the skip decision nor the
update waits for the host. The step then syncs once, at its end, to read its record.
``fused=False`` keeps the standard optimizer, to compare.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mpcourse.config import TrainConfig
from mpcourse.engines.base import DeviceUnavailableError, Engine
from mpcourse.engines.torch_models import build_model

__all__ = ["TorchEngine", "torch_devices", "resolve_device", "DeviceUnavailableError", "DTYPES",
           "sync", "use_fused"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_devices() -> list[str]:
    """Torch device types usable here, best first (``cuda``, ``mps``, ``cpu``)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found + ["cpu"]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> the best device; an explicit one must exist (no silent fallback)."""
    if device == "auto":
        return torch.device(torch_devices()[0])
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from err
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if dev.type not in torch_devices():
        raise DeviceUnavailableError(f"device {device!r} was asked for but is not available here "
                                     f"(available: {', '.join(torch_devices())}); use device='auto' "
                                     f"to pick the best one")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(f"device {device!r} does not exist: this machine has "
                                     f"{torch.cuda.device_count()} CUDA device(s)")
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
        raise ValueError(f"fused=True: torch {torch.__version__} has no fused optimizer kernels for "
                         f"device {device.type!r} (it has them for {', '.join(_fused_devices())}); "
                         f"use fused=None or False")
    return choice


def _fused_devices() -> list[str]:
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # older torch: fused kernels on CUDA only
        return ["cuda"]
    return list(_get_fused_kernels_supported_devices())


def _default_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.float(), labels)


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)  # one fused kernel per dtype/device group
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


class TorchEngine(Engine):
    """Training on cuda, mps or cpu; build it with :func:`mpcourse.make_engine`."""

    backend = "torch"

    def __init__(self, model: Any, config: TrainConfig, device: str = "auto",
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 num_features: int = 64, num_classes: int = 10, size: str = "small") -> None:
        super().__init__()
        self.config = config
        self._device = resolve_device(device)
        self.device = self._device.type if self._device.index is None else str(self._device)
        if isinstance(model, str):
            self.model_name = model if size == "small" else f"{model}:{size}"
            model = build_model(model, size, num_features, num_classes, seed=config.seed)
        elif isinstance(model, nn.Module):
            self.model_name = type(model).__name__
        else:
            raise TypeError(f"model must be a zoo name or a torch.nn.Module, got {type(model).__name__}")
        self.num_features, self.num_classes = num_features, num_classes
        self.loss_fn = loss_fn or _default_loss
        if not callable(self.loss_fn):
            raise TypeError(f"loss_fn must be callable(outputs, labels), got {loss_fn!r}")
        self.dtype = DTYPES[config.precision]
        self.pure_half = not config.master_weights and config.precision != "fp32"
        self.model = model.to(self._device, dtype=self.dtype if self.pure_half else None)
        self.model.train()
        self.optimizer = self._make_optimizer()
        mode = config.scaling_mode
        self.grad_scaler: torch.amp.GradScaler | None = None
        self.scaler = None  # mpcourse scaler, when GradScaler cannot express the config
        if mode == "dynamic" and config.hysteresis == 1 and config.min_scale is None \
                and config.max_scale is None and not self.pure_half:
            self.grad_scaler = torch.amp.GradScaler(
                self._device.type, init_scale=config.init_scale, growth_factor=config.growth_factor,
                backoff_factor=config.backoff_factor, growth_interval=config.growth_interval)
        else:
            self.scaler = config.make_scaler()

    # --- construction -----------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        c, params = self.config, self.model.parameters()
        self.fused = use_fused(c.fused, self._device)
        # fused=None (not False) keeps torch's own default (foreach) on the standard path.
        kw: dict[str, Any] = {"fused": True} if self.fused else {}
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay or 0.0, **kw)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=0.01 if c.weight_decay is None else c.weight_decay,
                                     **kw)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay or 0.0, **kw)

    @property
    def scale(self) -> float:
        if self.grad_scaler is not None:
            return float(self.grad_scaler.get_scale())
        return self.scaler.scale if self.scaler is not None else 1.0

    def autocast(self) -> Any:
        """The autocast context this engine computes in (a no-op for fp32 and pure half)."""
        enabled = self.config.precision != "fp32" and not self.pure_half
        return torch.autocast(self._device.type, dtype=self.dtype, enabled=enabled)

    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.from_numpy(x).to(self._device, non_blocking=True)
        if self.pure_half:
            xt = xt.to(self.dtype)
        return xt, torch.from_numpy(y).to(self._device, non_blocking=True)

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The unscaled loss of a batch, computed as the training step computes it."""
        with self.autocast():
            out = self.model(x)
        return self.loss_fn(out.float(), y)

    # --- one step ---------------------------------------------------------------------------
    def _grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.model.parameters() if p.grad is not None]

    def _clip_(self, grads: list[torch.Tensor], grad_norm: torch.Tensor) -> bool:
        """Clip the unscaled gradients in place with ``config.clip``; True if it acted."""
        if self.config.clip is None:
            return False
        from mpcourse.engines.torch_clip import apply_clip

        return apply_clip(self.config.clip, self, grads, grad_norm)

    def _train_step(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        xt, yt = self._tensors(x, y)
        sync(self._device)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward_loss(xt, yt)
        if self.grad_scaler is not None:
            scale_t, found_t, norm_t, clipped = self._step_grad_scaler(loss)
        else:
            scale_t, found_t, norm_t, clipped = self._step_own_scaler(loss)
        # One device->host transfer for everything the record needs.
        loss_v, scale_v, found_v, norm_v = torch.stack(
            [t.detach().reshape(()).float() for t in (loss, scale_t, found_t, norm_t)]).tolist()
        found = bool(found_v)
        skipped = found and self.config.scaling_mode != "none"
        if self.scaler is not None:
            self.scaler.update(found)
        sync(self._device)
        return {"loss": loss_v, "scale": scale_v, "grad_norm": norm_v, "found_inf": found,
                "skipped": skipped, "seconds": time.perf_counter() - t0, "clipped": clipped}

    def _step_grad_scaler(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        gs = self.grad_scaler
        assert gs is not None
        gs.scale(loss).backward()
        scale_t = gs._scale.detach().clone()  # the scale this step used, without a host sync
        gs.unscale_(self.optimizer)
        found_t = sum(gs._per_optimizer_states[id(self.optimizer)]["found_inf_per_device"].values())
        grads = self._grads()
        norm_t = _total_norm(grads)
        clipped = False
        # Clipping needs the verdict on the host (never clip a step that will be skipped); without
        # it the step asks nothing of the device until the record is read.
        if self.config.clip is not None and not bool(found_t):
            clipped = self._clip_(grads, norm_t)
        # Standard optimizer: GradScaler reads found_inf on the host (.item(), a sync) and skips
        # optimizer.step(). Fused optimizer: GradScaler hands it found_inf as a device tensor and
        # the kernel itself leaves the parameters (and the step count) alone -- no sync.
        gs.step(self.optimizer)
        gs.update()
        return scale_t, found_t, norm_t, clipped

    def _step_own_scaler(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        scale = self.scaler.scale if self.scaler is not None else 1.0
        (loss * scale if scale != 1.0 else loss).backward()
        grads = self._grads()
        found_t = torch.zeros(1, device=self._device)
        if self.scaler is not None:
            # GradScaler's own unscale: inv_scale is the float32 reciprocal of the float32 scale.
            inv = torch.full((1,), scale, dtype=torch.float64, device=self._device).reciprocal().float()
            for dtype in {g.dtype for g in grads}:
                torch._amp_foreach_non_finite_check_and_unscale_(
                    [g for g in grads if g.dtype == dtype], found_t, inv)
        norm_t = _total_norm(grads)
        if self.scaler is None:
            found_t = (~torch.isfinite(norm_t)).float().reshape(1)
        found = bool(found_t.item())
        clipped = False if found else self._clip_(grads, norm_t)
        if not found or self.scaler is None:
            self.optimizer.step()  # "none": like a plain loop, even a non-finite step is applied
        return torch.tensor(scale, device=self._device), found_t, norm_t, clipped

    @torch.no_grad()
    def _predict(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        xt, yt = self._tensors(x, y)
        self.model.eval()
        try:
            with self.autocast():
                out = self.model(xt)
            loss = self.loss_fn(out.float(), yt)
            return float(loss) * len(x), int((out.argmax(dim=1) == yt).sum())
        finally:
            self.model.train()

    # --- state ------------------------------------------------------------------------------
    def _framework_state(self) -> dict[str, Any]:
        # Clones on the CPU: the returned dict is a snapshot that later steps do not change.
        model = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        optim = copy.deepcopy(_to_cpu(self.optimizer.state_dict()))
        if self.grad_scaler is not None:
            scaler: dict[str, Any] = {"kind": "grad_scaler", **self.grad_scaler.state_dict()}
        elif self.scaler is not None:
            scaler = self.scaler.state_dict()
        else:
            scaler = {"kind": "none"}
        return {"model": model, "optimizer": optim, "scaler": scaler}

    def _load_framework_state(self, state: dict[str, Any]) -> None:
        scaler = dict(state["scaler"])
        kind = scaler.pop("kind", None)
        mine = "grad_scaler" if self.grad_scaler is not None else (
            self.scaler.kind if self.scaler is not None else "none")
        if kind != mine:
            raise ValueError(f"state_dict has a {kind!r} loss scaler but this engine uses {mine!r}; "
                             f"build the engine with the same TrainConfig")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.grad_scaler is not None:
            self.grad_scaler.load_state_dict(scaler)
        elif self.scaler is not None:
            self.scaler.load_state_dict({"kind": kind, **scaler})


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
