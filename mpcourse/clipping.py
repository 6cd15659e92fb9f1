"""Gradient clipping policies (norm, value, adaptive) and their framework-neutral rules.

Usage::

    import mpcourse as mpc

    cfg = mpc.TrainConfig(precision="fp16", clip=mpc.clipping.ClipByNorm(max_norm=1.0))
"""

from __future__ import annotations

__all__ = ["ClipPolicy"]


class ClipPolicy:
    """Base class of every clipping policy that ``TrainConfig(clip=...)`` accepts."""
