"""Teaching only: clipping before unscaling, the classic mixed precision bug, on torch.

Usage::

    from mpcourse.studies.wrong_order import ClipBeforeUnscaleEngine, clip_order_effect

    clip_order_effect(eng, x, y, ClipByNorm(1.0))   # {'norm_correct': ..., 'norm_wrong': ...}
    bad = ClipBeforeUnscaleEngine(model="deep_mlp", config=cfg, device="cpu")

The right order is in :mod:`mpcourse.engines.torch.clip`; this module measures the wrong one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mpcourse.clipping import AutoClip, ClipPolicy
from mpcourse.engines.torch.clip import apply_clip
from mpcourse.engines.torch.engine import TorchEngine
from mpcourse.engines.torch.scaling import GradScalerScaling, total_norm

__all__ = ["clip_order_effect", "ClipBeforeUnscaleEngine"]


def clip_order_effect(
    engine: TorchEngine, x: np.ndarray, y: np.ndarray, policy: ClipPolicy, scale: float | None = None
) -> dict[str, float]:
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
    xt, yt = engine.tensors(*engine.arrays((x, y), "train"))
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
    norm = total_norm(right)
    apply_clip(policy, engine, right, norm)  # unscale, then clip
    wrong = [g.clone() for g in scaled]
    apply_clip(policy, engine, wrong, total_norm(wrong))  # clip, then unscale
    wrong = [g / s for g in wrong]
    a = torch.cat([g.flatten().double() for g in right])
    b = torch.cat([g.flatten().double() for g in wrong])
    na, nb = float(a.norm()), float(b.norm())
    return {
        "scale": s,
        "grad_norm": float(norm),
        "norm_correct": na,
        "norm_wrong": nb,
        "shrink": na / nb if nb > 0 else float("inf"),
        "cosine": float(a @ b) / (na * nb) if na > 0 and nb > 0 else float("nan"),
    }


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
        if not isinstance(self.scaling, GradScalerScaling) or self.config.clip is None:
            raise ValueError(
                "ClipBeforeUnscaleEngine needs precision='fp16', loss_scale='dynamic' "
                "(hysteresis 1, no bounds) and a clip policy"
            )

    def backward_and_step(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        self.scaling.scale_loss(loss).backward()
        scale_t = self.scaling.scale_tensor()
        grads = self.grads()
        scaled_norm = total_norm(grads)
        clipped = False
        if bool(torch.isfinite(scaled_norm)):
            clipped = self._clip_(grads, scaled_norm)  # THE BUG: these gradients are still scaled
        found_t, _ = self.scaling.unscale_(self.optimizer, grads)
        self.scaling.step(self.optimizer, found_t)
        return scale_t, found_t, scaled_norm / scale_t.reshape(()), clipped
