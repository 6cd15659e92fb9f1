"""Gradient clipping for the PyTorch engine: the policies of :mod:`mpcourse.clipping` on torch tensors.

Usage::

    import mpcourse as mpc
    from mpcourse.clipping import ClipByNorm

    cfg = mpc.TrainConfig(precision="fp16", clip=ClipByNorm(1.0))
    eng = mpc.make_engine("torch", "lstm", cfg)     # the engine calls apply_clip() each finite step
    hist = eng.fit(mpc.data.load("digits"), epochs=1)
    hist.column("clipped").mean()                   # share of steps the policy acted on

    # Teaching only: what the classic bug does, measured on one batch.
    from mpcourse.engines.torch_clip import clip_order_effect
    clip_order_effect(eng, x, y, ClipByNorm(1.0))   # {'norm_correct': ..., 'norm_wrong': ...}

Where the engine calls it (``TorchEngine._clip_``)::

    scaler.scale(loss).backward()
    scaler.unscale_(opt)            # 1. divide by the loss scale, look for inf/nan
    if finite:
        apply_clip(policy, ...)     # 2. clip the UNSCALED gradients
    scaler.step(opt)                # 3. the optimizer step (skipped when non-finite)

:class:`ClipBeforeUnscaleEngine` swaps steps 1 and 2, the bug this course warns about.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mpcourse.clipping import AGC, AutoClip, ClipByNorm, ClipByValue, ClipPolicy, NORM_EPS
from mpcourse.engines.torch_engine import TorchEngine, _total_norm

__all__ = ["apply_clip", "unitwise_norm", "clip_order_effect", "ClipBeforeUnscaleEngine"]


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """AGC's per-unit L2 norm in fp32: per slice along dim 0 (an output row / filter), or of a whole
    vector. Mirrors :func:`mpcourse.clipping.unitwise_norm`."""
    x = x.float()
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def _clip_norm_(grads: list[torch.Tensor], max_norm: float, norm: torch.Tensor) -> bool:
    # torch's own rule (the same as clip_grad_norm_, without computing the norm again):
    # g *= min(1, max_norm / (norm + 1e-6)).
    torch.nn.utils.clip_grads_with_norm_([_Holder(g) for g in grads], max_norm, norm)
    return float(norm) > max_norm  # one host sync


class _Holder:
    """Presents a bare gradient tensor as something with a ``.grad`` (what torch.nn.utils takes)."""

    __slots__ = ("grad",)

    def __init__(self, grad: torch.Tensor) -> None:
        self.grad = grad


@torch.no_grad()
def _agc_(policy: AGC, named: list[tuple[str, torch.Tensor]], grads: list[torch.Tensor]) -> bool:
    acted = torch.zeros((), dtype=torch.bool, device=grads[0].device if grads else "cpu")
    for (name, w), g in zip(named, grads):
        if policy.excluded(name):
            continue
        max_norm = policy.clipping * unitwise_norm(w).clamp_min(policy.eps)
        g_norm = unitwise_norm(g)
        trigger = g_norm > max_norm
        factor = torch.where(trigger, max_norm / g_norm.clamp_min(NORM_EPS), torch.ones_like(g_norm))
        g.mul_(factor.to(g.dtype))
        acted |= trigger.any()
    return bool(acted)  # one host sync


def apply_clip(policy: ClipPolicy, engine: Any, grads: list[torch.Tensor],
               grad_norm: torch.Tensor) -> bool:
    """Clip the unscaled gradients in place with ``policy``; return whether it changed them.

    Args:
        policy: a policy from :mod:`mpcourse.clipping`.
        engine: the :class:`TorchEngine` (its model gives AGC the weights; its ``clip_state``
            holds AutoClip's history).
        grads: the gradients of ``engine.model``'s parameters that have one, in parameter order,
            already divided by the loss scale and known to be finite.
        grad_norm: their global L2 norm (a 0-d fp32 tensor), as the engine recorded it.

    Reading whether the policy acted costs one host-device sync.
    """
    if not grads:
        return False
    if isinstance(policy, ClipByNorm):
        norm = grad_norm if policy.norm_type == 2.0 else \
            torch.nn.utils.get_total_norm(grads, policy.norm_type)
        return _clip_norm_(grads, policy.max_norm, norm)
    if isinstance(policy, ClipByValue):
        v = policy.clip_value
        acted = max(float(n) for n in torch._foreach_norm(grads, float("inf"))) > v
        for g in grads:
            g.clamp_(-v, v)  # what clip_grad_value_ does
        return acted
    if isinstance(policy, AGC):
        named = [(n, p) for n, p in engine.model.named_parameters() if p.grad is not None]
        if len(named) != len(grads):
            raise ValueError(f"AGC got {len(grads)} gradients for {len(named)} parameters with one")
        return _agc_(policy, named, grads)
    if isinstance(policy, AutoClip):
        threshold = engine.clip_state.observe(float(grad_norm))
        return _clip_norm_(grads, threshold, grad_norm)
    raise TypeError(f"no torch implementation for clipping policy {policy!r}")


def clip_order_effect(engine: TorchEngine, x: np.ndarray, y: np.ndarray, policy: ClipPolicy,
                      scale: float | None = None) -> dict[str, float]:
    """Measure, on one batch, what clipping before unscaling does compared with the right order.

    Usage::

        clip_order_effect(eng, ds.x_train[:64], ds.y_train[:64], ClipByNorm(1.0))

    Computes the scaled gradients once, then (a) unscales and clips, the right order, and
    (b) clips the still-scaled gradients and unscales them afterwards, the bug. The model, the
    optimizer and the scaler are not changed.

    Args:
        engine: a torch engine (its precision and autocast are used for the forward pass).
        x, y: one batch.
        policy: a stateless policy (ClipByNorm, ClipByValue or AGC).
        scale: the loss scale; default the engine's current scale (65536 for fresh fp16).

    Returns:
        ``scale``; ``grad_norm`` (unscaled, before clipping); ``norm_correct`` and ``norm_wrong``
        (L2 norm of the final gradient each way); ``shrink`` (``norm_correct / norm_wrong``) and
        ``cosine`` (between the two final gradients).
    """
    if isinstance(policy, AutoClip):
        raise ValueError("clip_order_effect takes a stateless policy (ClipByNorm, ClipByValue, AGC)")
    s = float(engine.scale if scale is None else scale)
    xt, yt = engine._tensors(*engine._xy((x, y), "train"))
    params = [p for p in engine.model.parameters() if p.requires_grad]
    saved = [None if p.grad is None else p.grad.clone() for p in params]
    try:
        engine.model.zero_grad(set_to_none=True)
        (engine.forward_loss(xt, yt) * s).backward()
        scaled = [p.grad.detach().clone() for p in params if p.grad is not None]
    finally:
        for p, g in zip(params, saved):
            p.grad = g
    if not all(bool(torch.isfinite(g).all()) for g in scaled):
        raise ValueError(f"the gradients overflowed at scale {s:g}; pass a smaller scale")
    right = [g / s for g in scaled]
    norm = _total_norm(right)
    apply_clip(policy, engine, right, norm)                        # unscale, then clip
    wrong = [g.clone() for g in scaled]
    apply_clip(policy, engine, wrong, _total_norm(wrong))          # clip, then unscale
    wrong = [g / s for g in wrong]
    a = torch.cat([g.flatten().double() for g in right])
    b = torch.cat([g.flatten().double() for g in wrong])
    na, nb = float(a.norm()), float(b.norm())
    return {"scale": s, "grad_norm": float(norm), "norm_correct": na, "norm_wrong": nb,
            "shrink": na / nb if nb > 0 else float("inf"),
            "cosine": float(a @ b) / (na * nb) if na > 0 and nb > 0 else float("nan")}


class ClipBeforeUnscaleEngine(TorchEngine):
    """A deliberately wrong engine, for teaching: it clips the gradients while they still carry
    the loss scale, then unscales them.

    Usage::

        cfg = mpc.TrainConfig(precision="fp16", clip=ClipByNorm(1.0), optimizer="sgd", lr=0.05)
        bad = ClipBeforeUnscaleEngine(model="deep_mlp", config=cfg, device="cpu")
        hist = bad.fit(ds, epochs=1)       # compare with make_engine("torch", "deep_mlp", cfg)

    Needs fp16 with dynamic loss scaling (torch.amp.GradScaler). ``grad_norm`` is still recorded
    unscaled and before clipping, so its History compares with a correct engine's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.grad_scaler is None or self.config.clip is None:
            raise ValueError("ClipBeforeUnscaleEngine needs precision='fp16', loss_scale='dynamic' "
                             "(hysteresis 1, no bounds) and a clip policy")

    def _step_grad_scaler(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        gs = self.grad_scaler
        assert gs is not None
        gs.scale(loss).backward()
        scale_t = gs._scale.detach().clone()
        grads = self._grads()
        scaled_norm = _total_norm(grads)
        clipped = False
        if bool(torch.isfinite(scaled_norm)):
            clipped = self._clip_(grads, scaled_norm)  # THE BUG: these gradients are still scaled
        gs.unscale_(self.optimizer)
        found_t = sum(gs._per_optimizer_states[id(self.optimizer)]["found_inf_per_device"].values())
        gs.step(self.optimizer)
        gs.update()
        return scale_t, found_t, scaled_norm / scale_t.reshape(()), clipped
