"""Gradient clipping for the MLX engine: the policies of :mod:`mpcourse.clipping` on MLX trees.

Usage::

    import mpcourse as mpc
    from mpcourse.clipping import AGC

    cfg = mpc.TrainConfig(precision="fp16", clip=AGC(clipping=0.01))
    eng = mpc.make_engine("mlx", "cnn", cfg)      # the engine calls apply_clip() each finite step
    hist = eng.fit(mpc.data.load("digits"), epochs=1)

    clip_order_effect(eng, x, y, mpc.clipping.ClipByNorm(1.0))

The MLX engine computes the fp32 gradients, unscales them, reduces them to one norm and reads
``found_inf`` on the host; only a finite step reaches :func:`apply_clip`, and the optimizer
applies what it returns. AGC measures ``||W||`` on the fp32 master weights
(``engine.master_params``), the weights the optimizer updates.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map, tree_map_with_path

from mpcourse.clipping import AGC, NORM_EPS, AutoClip, ClipByNorm, ClipByValue, ClipPolicy

__all__ = ["apply_clip", "unitwise_norm", "total_norm"]


def unitwise_norm(x: mx.array) -> mx.array:
    """AGC's per-unit L2 norm in fp32: per slice along axis 0 (an output row / filter: MLX kernels
    are ``(out, ..., in)``), or of a whole vector. Mirrors :func:`mpcourse.clipping.unitwise_norm`."""
    x = x.astype(mx.float32)
    if x.ndim <= 1:
        return mx.sqrt(mx.sum(x * x))
    return mx.sqrt(mx.sum(x * x, axis=tuple(range(1, x.ndim)), keepdims=True))


def total_norm(grads: Any, norm_type: float = 2.0) -> mx.array:
    """The global p-norm of a gradient tree (fp32), as :func:`mpcourse.clipping.total_norm`."""
    leaves = [g.astype(mx.float32).reshape(-1) for _, g in tree_flatten(grads)]
    if not leaves:
        return mx.array(0.0)
    flat = mx.abs(mx.concatenate(leaves))
    if math.isinf(norm_type):
        return mx.max(flat)
    return mx.power(mx.sum(mx.power(flat, norm_type)), 1.0 / norm_type)


def _clip_norm(grads: Any, max_norm: float, norm: mx.array) -> tuple[Any, bool]:
    # The rule of torch's clip_grad_norm_ and mlx.optimizers.clip_grad_norm:
    # g *= min(1, max_norm / (norm + 1e-6)).
    coef = mx.minimum(max_norm / (norm.astype(mx.float32) + NORM_EPS), 1.0)
    return tree_map(lambda g: g * coef.astype(g.dtype), grads), bool((norm > max_norm).item())


def apply_clip(policy: ClipPolicy, engine: Any, grads: Any, grad_norm: mx.array) -> tuple[Any, bool]:
    """Clip an unscaled, finite gradient tree with ``policy``; return (new grads, whether it acted).

    Args:
        policy: a policy from :mod:`mpcourse.clipping`.
        engine: the :class:`~mpcourse.engines.mlx.engine.MLXEngine` (``master_params`` gives AGC
            the weights; ``clip_state`` holds AutoClip's history).
        grads: the gradient tree, shaped like ``engine.master_params``, already unscaled.
        grad_norm: their global L2 norm (a scalar array), as the engine recorded it.

    Reading whether the policy acted evaluates the clipped graph's decision (one sync).
    """
    if isinstance(policy, ClipByNorm):
        norm = grad_norm if policy.norm_type == 2.0 else total_norm(grads, policy.norm_type)
        return _clip_norm(grads, policy.max_norm, norm)
    if isinstance(policy, ClipByValue):
        v = policy.clip_value
        leaves = [mx.max(mx.abs(g)) for _, g in tree_flatten(grads)]
        acted = bool((mx.max(mx.stack(leaves)) > v).item()) if leaves else False
        return tree_map(lambda g: mx.clip(g, -v, v), grads), acted
    if isinstance(policy, AGC):
        weights = dict(tree_flatten(engine.master_params))
        triggers: list[mx.array] = []

        def clip_unit(name: str, g: mx.array) -> mx.array:
            if policy.excluded(name):
                return g
            if name not in weights:
                raise ValueError(f"AGC found no master weight for the gradient {name!r}")
            max_norm = policy.clipping * mx.maximum(unitwise_norm(weights[name]), policy.eps)
            g_norm = unitwise_norm(g)
            trigger = g_norm > max_norm
            triggers.append(mx.any(trigger))
            factor = mx.where(trigger, max_norm / mx.maximum(g_norm, NORM_EPS), 1.0)
            return g * factor.astype(g.dtype)

        out = tree_map_with_path(clip_unit, grads)
        acted = bool(mx.any(mx.stack(triggers)).item()) if triggers else False
        return out, acted
    if isinstance(policy, AutoClip):
        threshold = engine.clip_state.observe(float(grad_norm.item()))
        return _clip_norm(grads, threshold, grad_norm)
    raise TypeError(f"no MLX implementation for clipping policy {policy!r}")
