"""Short training runs for the notebooks and widgets: one call trains a config on a task.

Usage::

    import mpcourse as mpc
    from mpcourse.studies import runs

    task = mpc.data.load("underflow")
    run = runs.train(task, mpc.TrainConfig(precision="fp16", loss_scale="none"), epochs=5)
    run.losses[-1], run.evaluation["accuracy"], run.history.skipped_steps
    both = runs.compare(task, {"fp32": mpc.TrainConfig(), "fp16": mpc.TrainConfig(precision="fp16")})

A task whose ``meta`` has a ``loss_weight`` (the ``"underflow"`` dataset) is trained on
``loss_weight * cross-entropy``; :attr:`Run.losses` divides it back out, so curves read in
nats whatever the weight. Every number comes from the run itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpcourse.config import TrainConfig
from mpcourse.data import Dataset
from mpcourse.engines import make_engine
from mpcourse.history import History

__all__ = ["Run", "train", "compare", "loss_weight_of"]


@dataclass
class Run:
    """One finished training run: its History, its test evaluation and the loss weight used."""

    history: History
    evaluation: dict[str, float]
    loss_weight: float = 1.0
    engine: Any = field(default=None, repr=False)

    @property
    def losses(self) -> np.ndarray:
        """Training loss per step in nats (the trained loss divided by ``loss_weight``)."""
        return self.history.losses / self.loss_weight

    @property
    def test_loss(self) -> float:
        """Test cross-entropy in nats (divided by ``loss_weight``)."""
        return float(self.evaluation["loss"]) / self.loss_weight

    @property
    def accuracy(self) -> float:
        """Test accuracy in [0, 1]."""
        return float(self.evaluation["accuracy"])

    def __repr__(self) -> str:
        return (
            f"Run({len(self.history)} steps, {self.history.meta.get('precision', '?')} "
            f"{self.history.meta.get('scaling', '?')}: test loss {self.test_loss:.3f}, "
            f"accuracy {self.accuracy:.3f}, skipped {self.history.skipped_steps})"
        )


def loss_weight_of(task: Dataset) -> float:
    """The task's ``meta["loss_weight"]``, or 1.0 when it has none."""
    return float(task.meta.get("loss_weight", 1.0))


def train(
    task: Dataset,
    config: TrainConfig,
    *,
    backend: str = "torch",
    model: str = "mlp",
    device: str = "auto",
    epochs: int | None = 5,
    steps: int | None = None,
    verbose: bool = False,
) -> Run:
    """Build an engine for ``config``, train it on ``task`` and evaluate it on the test split.

    Args:
        task: a :class:`~mpcourse.data.Dataset`; its ``meta["loss_weight"]`` (if any) weights
            the cross-entropy.
        config: the :class:`~mpcourse.TrainConfig` to train with.
        backend: ``"torch"`` or ``"mlx"``. Default ``"torch"``.
        model: a zoo name. Default ``"mlp"``.
        device: ``"auto"`` or an explicit device. Default ``"auto"``.
        epochs: epochs to train (ignored when ``steps`` is given). Default 5.
        steps: train exactly this many steps instead. Default None.
        verbose: let ``make_engine`` say which device ``"auto"`` chose. Default False.
    """
    from mpcourse.engines.losses import cross_entropy

    weight = loss_weight_of(task)
    loss_fn = None if weight == 1.0 else cross_entropy(backend, weight)
    eng = make_engine(backend, model, config, device=device, loss_fn=loss_fn, data=task, verbose=verbose)
    hist = eng.fit(task, epochs=epochs, steps=steps, progress=False)
    return Run(hist, eng.evaluate(task), weight, eng)


def compare(task: Dataset, configs: Mapping[str, TrainConfig], **kwargs: Any) -> dict[str, Run]:
    """:func:`train` each named config on the same task; same keyword arguments as :func:`train`."""
    return {name: train(task, cfg, **kwargs) for name, cfg in configs.items()}
