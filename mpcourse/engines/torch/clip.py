"""Gradient clipping for the PyTorch engine: the policies of :mod:`mpcourse.clipping` on torch tensors.

Usage::

    import mpcourse as mpc
    from mpcourse.clipping import ClipByNorm

    cfg = mpc.TrainConfig(precision="fp16", clip=ClipByNorm(1.0))
    eng = mpc.make_engine("torch", "lstm", cfg)     # the engine calls apply_clip() each finite step
    hist = eng.fit(mpc.data.load("digits"), epochs=1)
    hist.column("clipped").mean()                   # share of steps the policy acted on

Where the engine calls it (``TorchEngine._clip_``)::

    scaler.scale(loss).backward()
    scaler.unscale_(opt)            # 1. divide by the loss scale, look for inf/nan
    if finite:
        apply_clip(policy, ...)     # 2. clip the UNSCALED gradients
    scaler.step(opt)                # 3. the optimizer step (skipped when non-finite)

``engines/torch/wrong_order.py`` swaps steps 1 and 2, the bug this course warns about.
"""

from __future__ import annotations

from typing import Any

import torch

from mpcourse.clipping import AGC, NORM_EPS, AutoClip, ClipByNorm, ClipByValue, ClipPolicy

__all__ = ["apply_clip", "unitwise_norm"]


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
    torch.nn.utils.clip_grads_with_norm_([_Holder(g) for g in grads], max_norm, norm)  # type: ignore[misc]
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


def apply_clip(policy: ClipPolicy, engine: Any, grads: list[torch.Tensor], grad_norm: torch.Tensor) -> bool:
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
        norm = grad_norm if policy.norm_type == 2.0 else torch.nn.utils.get_total_norm(grads, policy.norm_type)
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
