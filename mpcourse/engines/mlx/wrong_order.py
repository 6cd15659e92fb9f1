"""Teaching only: clipping before unscaling, the classic mixed precision bug, on MLX.

Usage::

    from mpcourse.studies.wrong_order import clip_order_effect

    clip_order_effect(mlx_engine, x, y, ClipByNorm(1.0))   # the same keys as the torch twin
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlx.utils import tree_flatten, tree_map

from mpcourse.clipping import AutoClip, ClipPolicy
from mpcourse.engines.mlx.clip import apply_clip, total_norm

__all__ = ["clip_order_effect"]


def clip_order_effect(
    engine: Any, x: np.ndarray, y: np.ndarray, policy: ClipPolicy, scale: float | None = None
) -> dict[str, float]:
    """Measure, on one batch, what clipping before unscaling does compared with the right order.

    The MLX twin of :func:`mpcourse.engines.torch.wrong_order.clip_order_effect` (same arguments and
    keys). The master weights, the optimizer and the scaler are not changed.
    """
    if isinstance(policy, AutoClip):
        raise ValueError("clip_order_effect takes a stateless policy (ClipByNorm, ClipByValue, AGC)")
    s = float(engine.scale if scale is None else scale)
    xb, yb = engine.arrays((x, y), "train")
    _, scaled, _, found = engine.batch_gradients(xb, yb, scale=s, unscale=False)
    if bool(found.item()):
        raise ValueError(f"the gradients overflowed at scale {s:g}; pass a smaller scale")
    right = tree_map(lambda g: g / s, scaled)
    right, _ = apply_clip(policy, engine, right, total_norm(right))  # unscale, then clip
    wrong, _ = apply_clip(policy, engine, scaled, total_norm(scaled))  # clip, then unscale
    wrong = tree_map(lambda g: g / s, wrong)
    a = np.concatenate([np.asarray(g, dtype=np.float64).ravel() for _, g in tree_flatten(right)])
    b = np.concatenate([np.asarray(g, dtype=np.float64).ravel() for _, g in tree_flatten(wrong)])
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return {
        "scale": s,
        "grad_norm": float(total_norm(tree_map(lambda g: g / s, scaled)).item()),
        "norm_correct": na,
        "norm_wrong": nb,
        "shrink": na / nb if nb > 0 else float("inf"),
        "cosine": float(a @ b) / (na * nb) if na > 0 and nb > 0 else float("nan"),
    }
