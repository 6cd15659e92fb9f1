"""Loss functions for ``make_engine(loss_fn=...)``, one per backend, built by name.

Usage::

    import mpcourse as mpc
    from mpcourse.engines.losses import cross_entropy

    task = mpc.data.load("underflow")
    loss_fn = cross_entropy("torch", weight=task.meta["loss_weight"])   # or "mlx"
    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(precision="fp16"), loss_fn=loss_fn,
                          data=task)

The framework is imported only when the function is built, so framework-neutral code (the
widgets, the notebooks' helpers) can ask for a loss by backend name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mpcourse._validate import positive_finite

__all__ = ["cross_entropy"]


def cross_entropy(backend: str, weight: float = 1.0) -> Callable[[Any, Any], Any]:
    """Mean cross-entropy times ``weight``, computed in fp32, for ``backend``'s engine.

    Args:
        backend: ``"torch"`` or ``"mlx"``.
        weight: a finite number > 0 multiplying the loss (and so every gradient). Default 1.0.

    Returns:
        ``loss_fn(outputs, labels) -> scalar`` for ``make_engine(backend, ..., loss_fn=...)``.

    Raises:
        ValueError: an unknown backend or a weight that is not a finite number > 0.
    """
    w = positive_finite("weight", weight)
    if backend == "torch":
        import torch.nn.functional as F

        def torch_loss(outputs: Any, labels: Any) -> Any:
            return F.cross_entropy(outputs.float(), labels) * w

        return torch_loss
    if backend == "mlx":
        import mlx.core as mx
        import mlx.nn as nn

        def mlx_loss(outputs: Any, labels: Any) -> Any:
            return mx.mean(nn.losses.cross_entropy(outputs.astype(mx.float32), labels)) * w

        return mlx_loss
    raise ValueError(f"unknown backend {backend!r}; allowed: 'torch', 'mlx'")
