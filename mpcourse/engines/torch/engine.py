"""The PyTorch engine: autocast compute, fp32 master weights, torch.amp.GradScaler or mpcourse's scaler.

Usage::

    import mpcourse as mpc

    cfg = mpc.TrainConfig(precision="fp16", loss_scale="dynamic")
    eng = mpc.make_engine("torch", model="mlp", config=cfg, device="auto")  # cuda > mps > cpu
    hist = eng.fit(mpc.data.load("digits"), epochs=3)

One step, as the engine runs it (the recipe of ``torch.amp``; the scaling steps are the
objects of :mod:`mpcourse.engines.torch.scaling`, one per scaling choice)::

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
- ``"none"`` (and fp32, bf16): :class:`~mpcourse.scaler.NoOpLossScaler`, no scaling and no
  skipping; a non-finite step is applied, as in a plain loop.

The fast path (``TrainConfig(fused=True)``; the default on CUDA): a fused optimizer, to which
GradScaler hands its inf/nan flag as a device tensor, so neither the skip decision nor the
update waits for the host. The step then syncs once, at its end, to read its record.
``fused=False`` keeps the standard optimizer, to compare.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mpcourse.config import TrainConfig
from mpcourse.engines.base import DeviceUnavailableError, Engine
from mpcourse.engines.torch.devices import resolve_device, sync, torch_devices, use_fused
from mpcourse.engines.torch.fp8 import fp8_for_engine
from mpcourse.engines.torch.models import build_model
from mpcourse.engines.torch.scaling import TorchScaling, make_scaling, total_norm
from mpcourse.engines.torch.support import precision_problem
from mpcourse.engines.zoo import flat_features

__all__ = [
    "TorchEngine",
    "torch_devices",
    "resolve_device",
    "DeviceUnavailableError",
    "DTYPES",
    "sync",
    "use_fused",
    "total_norm",
    "default_loss",
]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of class labels, computed in fp32 (the engines' default ``loss_fn``).

    Outputs ``(n, ..., classes)`` and labels ``(n, ...)``: the classes are the last axis, as for
    MLX (``(n, T, vocab)`` logits and ``(n, T)`` next tokens for a language model).
    """
    return F.cross_entropy(outputs.float().reshape(-1, outputs.shape[-1]), labels.reshape(-1))


class TorchEngine(Engine):
    """Training on cuda, mps or cpu; build it with :func:`mpcourse.make_engine`."""

    backend = "torch"
    framework_keys = ("model", "optimizer", "scaler")

    def __init__(
        self,
        model: Any,
        config: TrainConfig,
        device: str = "auto",
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        num_features: int = 64,
        num_classes: int = 10,
        size: str = "small",
    ) -> None:
        super().__init__()
        self.config = config
        self.torch_device = resolve_device(device)
        self.device = self.torch_device.type if self.torch_device.index is None else str(self.torch_device)
        problem = precision_problem(self.device, config.precision)  # what this torch cannot do there
        if problem:
            raise DeviceUnavailableError(f"{config.precision} on {self.device}: {problem}")
        if isinstance(model, str):
            self.model_name = model if size == "small" else f"{model}:{size}"
            self.num_features, self.num_classes = num_features, num_classes
            self.flat_features = flat_features(model, num_features)
            model = build_model(model, size, num_features, num_classes, seed=config.seed)
        elif isinstance(model, nn.Module):
            # A model of your own needs no sizes: its output width is read from a forward pass.
            self.model_name = type(model).__name__
            self.num_features = self.num_classes = self.flat_features = None
        else:
            raise TypeError(f"model must be a zoo name or a torch.nn.Module, got {type(model).__name__}")
        self.user_loss_fn = loss_fn  # None: the default below
        self.loss_fn = loss_fn or default_loss
        if not callable(self.loss_fn):
            raise TypeError(f"loss_fn must be callable(outputs, labels), got {loss_fn!r}")
        self.dtype = DTYPES[self._set_precision(config)]  # also sets pure_half and check_weights
        self.model = model.to(self.torch_device, dtype=self.dtype if self.pure_half else None)
        self.fp8 = fp8_for_engine(self.model, config)  # None unless precision="fp8"
        self.model.train()
        self.optimizer = self._make_optimizer()
        # One scaling object in every precision (a no-op one for fp32/bf16/"none"): one step path.
        self.scaling: TorchScaling = make_scaling(config, self.torch_device, self.pure_half)

    # --- construction -----------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        c, params = self.config, self.model.parameters()
        self.fused = use_fused(c.fused, self.torch_device)
        # fused=None (not False) keeps torch's own default (foreach) on the standard path.
        kw: dict[str, Any] = {"fused": True} if self.fused else {}
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay or 0.0, **kw)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(
                params, lr=c.lr, weight_decay=0.01 if c.weight_decay is None else c.weight_decay, **kw
            )
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay or 0.0, **kw)

    @property
    def scale(self) -> float:
        return self.scaling.scale

    def autocast(self) -> Any:
        """The autocast context this engine computes in (a no-op for fp32 and pure half)."""
        enabled = self.config.precision != "fp32" and not self.pure_half
        return torch.autocast(self.torch_device.type, dtype=self.dtype, enabled=enabled)

    def tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A numpy batch as tensors on the engine's device (float inputs in half for pure half)."""
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(self.torch_device, non_blocking=True)
        if self.pure_half and xt.is_floating_point():
            xt = xt.to(self.dtype)
        return xt, torch.from_numpy(y).to(self.torch_device, non_blocking=True)

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The unscaled loss of a batch, computed as the training step computes it."""
        with self.autocast():
            out = self.model(x)
        return self.call_loss(out.float(), y, check=not self.loss_checked)

    # --- one step ---------------------------------------------------------------------------
    def grads(self) -> list[torch.Tensor]:
        """The model's current gradients (parameters without one are left out)."""
        return [p.grad for p in self.model.parameters() if p.grad is not None]

    def _clip_(self, grads: list[torch.Tensor], grad_norm: torch.Tensor) -> bool:
        """Clip the unscaled gradients in place with ``config.clip``; True if it acted."""
        if self.config.clip is None:
            return False
        from mpcourse.engines.torch.clip import apply_clip

        return apply_clip(self.config.clip, self, grads, grad_norm)

    def _train_step(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        xt, yt = self.tensors(x, y)
        sync(self.torch_device)
        t0 = time.perf_counter()
        if self.fp8 is not None:
            self.fp8.begin_step()  # this step's casts feed the fp8 recipe (a probe's do not)
        # Until loss_fn has passed its check, keep the buffers (BatchNorm's running statistics,
        # which a training forward updates) to put back if the check refuses the step.
        kept = None if self.loss_checked else [b.detach().clone() for b in self.model.buffers()]
        try:
            loss = self.forward_loss(xt, yt)
        except ValueError:
            if kept is not None:
                with torch.no_grad():
                    for b, k in zip(self.model.buffers(), kept):
                        b.copy_(k)
            raise
        self.optimizer.zero_grad(set_to_none=True)
        scale_t, found_t, norm_t, clipped = self.backward_and_step(loss)
        # One device->host transfer for everything the record needs.
        loss_v, scale_v, found_v, norm_v = torch.stack(
            [t.detach().reshape(()).float() for t in (loss, scale_t, found_t, norm_t)]
        ).tolist()
        found = bool(found_v)
        self.scaling.update(found)
        # Pure fp16 Adam: finite gradients, NaN weights (see nonfinite_update_risk); one sum says so.
        weights_bad = self.check_weights and not bool(
            torch.stack([p.float().sum() for p in self.model.parameters()]).sum().isfinite()
        )
        sync(self.torch_device)
        return {
            **({} if self.fp8 is None else {"fp8": self.fp8.end_step()}),  # per-tensor amax, scale, counts
            "loss": loss_v,
            "scale": scale_v,
            "grad_norm": norm_v,
            "found_inf": found or weights_bad,
            "skipped": found and self.scaling.skips_nonfinite,
            "seconds": time.perf_counter() - t0,
            "clipped": clipped,
        }

    def backward_and_step(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Scaled backward, unscale, clip, optimizer step; returns (scale, found_inf, norm, clipped).

        The first three stay on the device; nothing here waits for the host unless a clipping
        policy needs the verdict (never clip a step that will be skipped).
        """
        self.scaling.scale_loss(loss).backward()
        self._after_backward()
        scale_t = self.scaling.scale_tensor()
        grads = self.grads()
        found_t, norm_t = self.scaling.unscale_(self.optimizer, grads)
        norm_t = self._global_norm(norm_t)
        clipped = False
        if self.config.clip is not None and not bool(found_t):
            clipped = self._clip_(grads, norm_t)
        self.scaling.step(self.optimizer, found_t)
        return scale_t, found_t, norm_t, clipped

    def _after_backward(self) -> None:
        """Hook between the backward pass and the unscale (the distributed engine plants a drill's inf here)."""

    def _global_norm(self, norm_t: torch.Tensor) -> torch.Tensor:
        """The gradient norm over the whole model (the sharded engine sums its shards' norms here)."""
        return norm_t

    @torch.no_grad()
    def _predict(self, x: np.ndarray, y: np.ndarray, labels: bool) -> tuple[float, int]:
        xt, yt = self.tensors(x, y)
        was = self.model.training
        self.model.eval()
        try:
            with self.autocast():
                out = self.model(xt)
            loss = self.call_loss(out.float(), yt, check=True)
            return float(loss) * len(x), int((out.argmax(dim=-1) == yt).sum()) if labels else 0
        finally:
            self.model.train(was)

    @torch.no_grad()
    def probe_outputs(self, x: np.ndarray) -> torch.Tensor:
        was = self.model.training
        self.model.eval()  # eval mode: BatchNorm's running statistics stay as they are
        try:
            with self.autocast():
                return self.model(self.tensors(x, np.zeros(0, np.int64))[0])
        finally:
            self.model.train(was)

    def embedding_rows(self) -> list[int]:
        return [m.num_embeddings for m in self.model.modules() if isinstance(m, nn.Embedding)]

    # --- state ------------------------------------------------------------------------------
    def _framework_state(self) -> dict[str, Any]:
        # Clones on the CPU: the returned dict is a snapshot that later steps do not change.
        model = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        optim = copy.deepcopy(_to_cpu(self.optimizer.state_dict()))
        out = {"model": model, "optimizer": optim, "scaler": self.scaling.state_dict()}
        return out if self.fp8 is None else {**out, "fp8": self.fp8.recipe.state_dict()}

    def _load_framework_state(self, state: dict[str, Any]) -> None:
        scaler = dict(state["scaler"])
        kind, mine = scaler.get("kind"), self.scaling.kind
        if kind != mine:
            raise ValueError(
                f"state_dict has a {kind!r} loss scaler but this engine uses {mine!r}; "
                f"build the engine with the same TrainConfig"
            )
        # A state without fp8 recipe state (saved in another precision: a precision switch)
        # starts the recipe afresh; an fp8 one is checked before anything changes.
        fp8_state = state.get("fp8") if self.fp8 is not None else None
        if self.fp8 is not None and fp8_state is not None:
            self.fp8.recipe.clone().load_state_dict(fp8_state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaling.load_state_dict(scaler)
        if self.fp8 is not None:
            self.fp8.recipe = self.fp8.recipe.clone()  # fresh, then the saved state where there is one
            if fp8_state is not None:
                self.fp8.recipe.load_state_dict(fp8_state)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
