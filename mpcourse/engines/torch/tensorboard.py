"""A TensorBoard ``SummaryWriter`` where one is installed, else None (TensorBoard is optional).

Usage::

    from mpcourse.engines.torch.tensorboard import summary_writer

    w = summary_writer("runs/exp1")      # tensorboardX, or torch.utils.tensorboard; None if neither
    if w is not None:
        w.add_scalar("loss", 0.5, global_step=0); w.close()

It lives in ``engines/torch/`` because its second choice is torch's writer.
"""

from __future__ import annotations

from typing import Any

from mpcourse.engines.availability import installed

__all__ = ["summary_writer", "tensorboard_available"]


def tensorboard_available() -> bool:
    """True when :func:`summary_writer` can return a writer here."""
    return installed("tensorboardX") or (installed("tensorboard") and installed("torch"))


def summary_writer(logdir: str) -> Any | None:
    """A SummaryWriter logging to ``logdir``, or None when no TensorBoard writer is installed."""
    if installed("tensorboardX"):
        from tensorboardX import SummaryWriter

        return SummaryWriter(logdir)
    if tensorboard_available():
        from torch.utils.tensorboard import SummaryWriter as TorchWriter

        return TorchWriter(logdir)
    return None
