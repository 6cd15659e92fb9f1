"""Teaching only: what clipping before unscaling does, on either backend.

Usage::

    from mpcourse.studies.wrong_order import ClipBeforeUnscaleEngine, clip_order_effect

    eff = clip_order_effect(eng, ds.x_train[:64], ds.y_train[:64], ClipByNorm(1.0))
    eff["norm_correct"], eff["norm_wrong"]          # the bug leaves norm max_norm / scale, whatever ||g|| was
    bad = ClipBeforeUnscaleEngine(model="deep_mlp", config=cfg, device="cpu")   # torch only

The framework code lives in ``engines/torch/wrong_order.py`` and ``engines/mlx/wrong_order.py``;
this module picks the one that matches the engine, so notebooks stay framework-neutral. It is
kept apart from :mod:`mpcourse.clipping` because it is deliberately wrong.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from mpcourse.clipping import ClipPolicy

__all__ = ["clip_order_effect", "ClipBeforeUnscaleEngine"]  # noqa: F822 (the engine loads lazily)


def clip_order_effect(
    engine: Any, x: np.ndarray, y: np.ndarray, policy: ClipPolicy, scale: float | None = None
) -> dict[str, float]:
    """The right order against the wrong one on one batch; see the backend's twin for the keys.

    The model, the optimizer and the scaler are not changed.
    """
    impl = importlib.import_module(f"mpcourse.engines.{engine.backend}.wrong_order")
    result: dict[str, float] = impl.clip_order_effect(engine, x, y, policy, scale)
    return result


def __getattr__(name: str) -> Any:
    if name == "ClipBeforeUnscaleEngine":  # torch is imported only when it is asked for
        from mpcourse.engines.torch.wrong_order import ClipBeforeUnscaleEngine

        return ClipBeforeUnscaleEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
