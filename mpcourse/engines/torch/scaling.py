"""How the torch engine scales, unscales and steps: one object per scaling choice, one step path.

Usage (what :class:`~mpcourse.engines.torch.engine.TorchEngine` does each step)::

    scaling = make_scaling(config, device, pure_half=False)   # GradScalerScaling or OwnScaling
    scaling.scale_loss(loss).backward()
    scale_t = scaling.scale_tensor()              # the scale this step used, still on the device
    found_t, norm_t = scaling.unscale_(optimizer, grads)   # inf/nan flag and the unscaled norm
    scaling.step(optimizer, found_t)              # skipped when non-finite (unless no-op)
    scaling.update(found)                         # the state machine, from the host verdict

Which one runs:

- :class:`GradScalerScaling`: ``torch.amp.GradScaler``, for plain dynamic scaling (hysteresis 1,
  no bounds) with fp32 master weights. It is what a learner's own loop will use, and mpcourse's
  :class:`~mpcourse.DynamicLossScaler` follows it step for step (the tests check it).
- :class:`OwnScaling`: an mpcourse scaler from :meth:`TrainConfig.make_scaler` -- static,
  dynamic with hysteresis or bounds (which GradScaler lacks), pure half, or
  :class:`~mpcourse.scaler.NoOpLossScaler` for fp32, bf16 and ``loss_scale="none"``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from mpcourse._validate import positive_finite
from mpcourse.config import TrainConfig
from mpcourse.engines.torch.support import grad_scaler_works
from mpcourse.scaler import LossScaler, state_int, state_scale

__all__ = ["TorchScaling", "GradScalerScaling", "OwnScaling", "make_scaling", "total_norm", "check_grad_scaler_state"]


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of ``grads`` as a 0-d float32 tensor (on the gradients' device)."""
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)  # one fused kernel per dtype/device group
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


class TorchScaling(Protocol):
    """The scaling steps the engine calls, in this order, once per optimizer step."""

    kind: str
    skips_nonfinite: bool

    @property
    def scale(self) -> float: ...

    def scale_tensor(self) -> torch.Tensor: ...

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor: ...

    def unscale_(
        self, optimizer: torch.optim.Optimizer, grads: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def step(self, optimizer: torch.optim.Optimizer, found_t: torch.Tensor) -> None: ...

    def update(self, found_inf: bool) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class GradScalerScaling:
    """``torch.amp.GradScaler`` behind the engine's scaling steps.

    ``scale_tensor`` and the inf/nan flag read GradScaler's own tensors (``_scale`` and the
    per-device flags ``unscale_`` writes). GradScaler has no public accessor for either that
    avoids a host sync (``get_scale()`` calls ``.item()``), and this class is the one place in
    mpcourse that reads them.
    """

    kind = "grad_scaler"
    skips_nonfinite = True

    def __init__(self, device_type: str, config: TrainConfig) -> None:
        self.grad_scaler = torch.amp.GradScaler(
            device_type,
            init_scale=config.init_scale,
            growth_factor=config.growth_factor,
            backoff_factor=config.backoff_factor,
            growth_interval=config.growth_interval,
        )

    @property
    def scale(self) -> float:
        return float(self.grad_scaler.get_scale())

    def scale_tensor(self) -> torch.Tensor:
        scale = self.grad_scaler._scale  # no host sync (see the class docstring)
        assert scale is not None, "GradScaler makes its scale tensor on the first scale() call"
        return scale.detach().clone()

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self.grad_scaler.scale(loss)

    def unscale_(
        self, optimizer: torch.optim.Optimizer, grads: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.grad_scaler.unscale_(optimizer)
        flags = self.grad_scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]
        return sum(flags.values()), total_norm(grads)

    def step(self, optimizer: torch.optim.Optimizer, found_t: torch.Tensor) -> None:
        # Standard optimizer: GradScaler reads found_inf on the host (.item(), a sync) and skips
        # optimizer.step(). Fused optimizer: GradScaler hands it found_inf as a device tensor and
        # the kernel itself leaves the parameters (and the step count) alone -- no sync.
        self.grad_scaler.step(optimizer)

    def update(self, found_inf: bool) -> None:
        self.grad_scaler.update()  # GradScaler reads its own device flag; found_inf is the same

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.grad_scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load GradScaler's state, checked first as mpcourse's scalers check theirs.

        GradScaler itself accepts any number (a NaN, 0 or inf scale skips every step for good; a
        negative one trains with a negative scale); a refused state leaves the scaler as it was.
        """
        if not self.grad_scaler.is_enabled():  # torch disabled it on this device: its state is empty
            if not isinstance(state, dict) or set(state) - {"kind"}:
                raise ValueError(f"this GradScaler is disabled and keeps no state; got {state!r}")
            return
        check_grad_scaler_state(state)
        self.grad_scaler.load_state_dict({k: v for k, v in state.items() if k != "kind"})


_GRAD_SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


def check_grad_scaler_state(state: Any) -> None:
    """A ValueError/TypeError naming the bad key of a GradScaler state dict (``kind`` optional)."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
    if state.get("kind", GradScalerScaling.kind) != GradScalerScaling.kind:
        raise ValueError(f"this state_dict is for a {state.get('kind')!r} scaler, not a 'grad_scaler' one")
    missing = sorted(set(_GRAD_SCALER_KEYS) - set(state))
    if missing:
        raise ValueError(f"scaler state_dict is missing keys {missing}")
    unknown = sorted(map(str, set(state) - set(_GRAD_SCALER_KEYS) - {"kind"}))
    if unknown:
        raise ValueError(f"scaler state_dict has unknown keys {unknown} (GradScaler has {sorted(_GRAD_SCALER_KEYS)})")
    state_scale("scale", state["scale"])
    if positive_finite("growth_factor", state["growth_factor"]) <= 1.0:
        raise ValueError(f"growth_factor must be > 1, got {state['growth_factor']!r}")
    if positive_finite("backoff_factor", state["backoff_factor"]) >= 1.0:
        raise ValueError(f"backoff_factor must be in (0, 1), got {state['backoff_factor']!r}")
    interval = state_int("growth_interval", state["growth_interval"], 1)
    state_int("_growth_tracker", state["_growth_tracker"], 0, interval - 1)


class OwnScaling:
    """An mpcourse scaler (:mod:`mpcourse.scaler`) behind the engine's scaling steps.

    The unscale is GradScaler's own fused kernel with the float32 reciprocal of the float32
    scale, so a static or hysteresis run unscales exactly as GradScaler would. With the no-op
    scaler nothing is unscaled and the verdict comes from the gradient norm.
    """

    def __init__(self, scaler: LossScaler, device: torch.device) -> None:
        self.scaler = scaler
        self.kind = scaler.kind
        self.skips_nonfinite = scaler.skips_nonfinite
        self._device = device

    @property
    def scale(self) -> float:
        return self.scaler.scale

    def scale_tensor(self) -> torch.Tensor:
        return torch.tensor(self.scaler.scale, device=self._device)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        s = self.scaler.scale
        return loss * s if s != 1.0 else loss

    def unscale_(
        self, optimizer: torch.optim.Optimizer, grads: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.skips_nonfinite:
            norm_t = total_norm(grads)
            return (~torch.isfinite(norm_t)).float().reshape(1), norm_t
        found_t = torch.zeros(1, device=self._device)
        inv = torch.full((1,), self.scaler.scale, dtype=torch.float64, device=self._device).reciprocal().float()
        for dtype in {g.dtype for g in grads}:
            torch._amp_foreach_non_finite_check_and_unscale_([g for g in grads if g.dtype == dtype], found_t, inv)
        return found_t, total_norm(grads)

    def step(self, optimizer: torch.optim.Optimizer, found_t: torch.Tensor) -> None:
        # "none": like a plain loop, even a non-finite step is applied.
        if not self.skips_nonfinite or not bool(found_t.item()):
            optimizer.step()

    def update(self, found_inf: bool) -> None:
        self.scaler.update(found_inf)

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state)


def make_scaling(config: TrainConfig, device: torch.device, pure_half: bool) -> TorchScaling:
    """GradScaler where it can express ``config``, else mpcourse's scaler (see the module docstring)."""
    if (
        config.scaling_mode == "dynamic"
        and config.hysteresis == 1
        and config.min_scale is None
        and config.max_scale is None
        and not pure_half
        and grad_scaler_works(device.type)  # GradScaler("mps") fails before torch 2.8
    ):
        return GradScalerScaling(device.type, config)
    return OwnScaling(config.make_scaler(), device)
