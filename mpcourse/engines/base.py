"""The Engine every framework subclasses, and the errors engines raise.

Usage::

    import mpcourse as mpc

    eng = mpc.make_engine("torch", model="mlp", config=mpc.TrainConfig(precision="bf16"))
    hist = eng.fit(mpc.data.load("digits"), epochs=2)   # one StepRecord per step
    hist.losses[-1], hist.skipped_steps, eng.evaluate(mpc.data.load("digits"))

A framework engine subclasses :class:`Engine` and implements only the framework steps
(``_train_step``, ``_predict``, ``_framework_state`` ...). The loop, the data order, the input
checks, the progress bar and the History live here, once, for every backend. The factory
(:func:`mpcourse.make_engine`) lives in :mod:`mpcourse.engines`, so this module imports no
engine and no engine imports the factory.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from mpcourse._validate import int_at_least
from mpcourse.config import TrainConfig, compute_precision
from mpcourse.data import Dataset
from mpcourse.engines.batches import ArrayData, check_batch_size, check_for_model, checked_loss, read_data
from mpcourse.engines.progress import make_bar, progress_default
from mpcourse.history import History, StepRecord

__all__ = [
    "Engine",
    "BackendUnavailableError",
    "DeviceUnavailableError",
    "nonfinite_update_risk",
]


class BackendUnavailableError(ImportError):
    """A backend was asked for that is not installed (the message says how to install it)."""


class DeviceUnavailableError(ValueError):
    """An explicitly requested device is not present on this machine (never a silent fallback).

    Both engines raise this one class, so ``except DeviceUnavailableError`` covers torch and MLX.
    """


def nonfinite_update_risk(config: TrainConfig) -> str | None:
    """Why ``config``'s optimizer step itself puts NaN into the weights, or None.

    Pure fp16 (``master_weights=False``) with Adam or AdamW: the moments live in fp16, where
    Adam's ``eps=1e-8`` rounds to 0 and a small squared gradient underflows to 0, so the update
    ``m / (sqrt(v) + eps)`` is 0/0 = NaN for every weight whose gradient is zero or tiny. The
    gradients are finite, so no loss scaler sees it; the engines warn when they are built and
    report such a step as non-finite (``found_inf=True``, not skipped: the NaN is applied).
    bf16 has fp32's range (``1e-8`` is representable) and SGD divides by nothing.
    """
    if config.master_weights or config.precision != "fp16" or config.optimizer not in ("adam", "adamw"):
        return None
    return (
        f"pure fp16 with {config.optimizer} (master_weights=False): eps=1e-8 rounds to 0 in fp16 and small "
        f"squared gradients underflow to 0, so the update is 0/0 = NaN and the weights turn NaN on the first "
        f"step; such steps are reported as non-finite (found_inf=True). To train, keep master_weights=True, "
        f"use bf16, or optimizer='sgd'"
    )


class Engine(ABC):
    """One training engine: a model, an optimizer, a loss scaler and the data order.

    Subclasses set ``backend``, ``device``, ``model``, ``config``, ``input_shape`` and
    ``num_classes`` and implement the abstract framework methods. Everything else, including
    exact resumption of the data order, lives here.
    """

    backend: str
    device: str
    model: Any
    config: TrainConfig
    user_loss_fn: Any  # the loss_fn given to make_engine, or None for the engine's default
    loss_fn: Any  # the loss the engine calls: user_loss_fn or the framework's default
    model_name: str
    num_features: int | None  # what sized a zoo model; None for a model of your own
    num_classes: int | None
    flat_features: int | None  # zoo models that view each sample as this many features; else None
    framework_keys: tuple[str, ...] = ("scaler",)  # what _framework_state returns; checked on load

    def __init__(self) -> None:
        self.step = 0  # optimizer steps attempted so far (skipped ones included)
        self.epoch = 0  # current epoch
        self.batch_in_epoch = 0  # next batch index within the current epoch
        self.output_shape: tuple[int, ...] | None = None  # per sample, read from the first forward pass
        self.loss_checked = False  # loss_fn has returned a scalar on a training step

    def _set_precision(self, config: TrainConfig) -> str:
        """Set ``pure_half`` and ``check_weights`` from ``config``; return the compute precision.

        Warns (at the code that made the engine) when ``config``'s own optimizer step turns the
        weights NaN (:func:`nonfinite_update_risk`); such steps are then reported as non-finite.
        """
        self.pure_half = not config.master_weights and config.precision != "fp32"
        risk = nonfinite_update_risk(config)
        if risk is not None:
            warnings.warn(risk, UserWarning, stacklevel=4)  # this, the engine's __init__, its caller
        self.check_weights = risk is not None
        return compute_precision(config.precision)  # fp8: the rest in bf16

    # --- framework hooks -------------------------------------------------------------------
    @abstractmethod
    def _train_step(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """One step on a numpy batch; returns loss, scale, grad_norm, found_inf, skipped,
        seconds (device-synchronised), clipped and, under precision="fp8", the fp8 stats."""

    @abstractmethod
    def _predict(self, x: np.ndarray, y: np.ndarray, labels: bool) -> tuple[float, int]:
        """Summed loss (mean loss times samples) and, when ``labels``, the correct argmax
        predictions (else 0) on a numpy batch, without training."""

    @abstractmethod
    def probe_outputs(self, x: np.ndarray) -> Any:
        """The model's outputs for ``x`` (a framework array), with nothing changed: no grad, eval mode."""

    @abstractmethod
    def embedding_rows(self) -> list[int]:
        """The row counts of the model's embedding tables (empty without one)."""

    @abstractmethod
    def _framework_state(self) -> dict[str, Any]:
        """Model, optimizer and scaler state, as the framework saves it."""

    @abstractmethod
    def _load_framework_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`_framework_state`."""

    @property
    @abstractmethod
    def scale(self) -> float:
        """The loss scale the next step will use (1.0 without scaling)."""

    @property
    def clip_state(self) -> Any:
        """The clipping policy's running state (AutoClip's norm history), or None.

        Made on first use from ``config.clip.new_state()``; saved in :meth:`state_dict`.
        """
        if getattr(self, "_clip_state", None) is None and self.config.clip is not None:
            self._clip_state = self.config.clip.new_state()
        return getattr(self, "_clip_state", None)

    # --- shared behaviour -------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Backend, device, model and precision, as written into each History's meta."""
        return {
            "backend": self.backend,
            "device": self.device,
            "model": self.model_name,
            "precision": self.config.precision,
            "scaling": self.config.scaling_mode,
            "config": self.config.to_dict(),
        }

    def arrays(self, data: Dataset | Sequence[Any], split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """The ``(x, y)`` numpy arrays of ``data``'s split, checked against this model (or a ValueError)."""
        src = read_data(data, split)
        if not isinstance(src, ArrayData):
            raise TypeError(f"data must be an mpcourse Dataset or an (x, y) pair, got {type(data).__name__}")
        return self.check_batch(src.x, src.y, split)

    def check_batch(self, x: Any, y: Any, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """One batch (or all the arrays) checked before any step touches the model.

        Inputs: any ``(n, ...)`` shape the model takes (zoo models: their documented shapes);
        targets: class labels for the default loss, any real array with your own ``loss_fn``.
        The first call runs the model forward once (no gradient, eval mode) to read its real
        output width; labels are checked against that width on every call, so no engine
        indexes out of bounds. (Your ``loss_fn`` is checked on the first step, before the
        backward pass: :meth:`call_loss`.)
        """
        return check_for_model(self, x, y, split)

    def call_loss(self, outputs: Any, targets: Any, *, check: bool) -> Any:
        """``loss_fn(outputs, targets)``; with ``check`` (the first step, before its backward pass,
        and every evaluation), :func:`~mpcourse.engines.batches.checked_loss`."""
        return checked_loss(self.loss_fn, outputs, targets) if check else self.loss_fn(outputs, targets)

    def is_labels(self, y: np.ndarray) -> bool:
        """Whether targets ``y`` are class labels for the model's outputs (then accuracy is defined)."""
        out = self.output_shape
        return y.dtype.kind == "i" and out is not None and tuple(y.shape[1:]) == tuple(out[:-1])

    def _order(self, epoch: int, n: int) -> np.ndarray:
        # The order of an epoch depends only on (seed, epoch): resuming mid-run needs no RNG state.
        return np.random.default_rng([self.config.seed, epoch]).permutation(n)

    def steps_per_epoch(self, n: int) -> int:
        """Batches in one epoch of ``n`` samples (the last one may be smaller)."""
        return math.ceil(n / self.config.batch_size)

    def train_step(self, x: Any, y: Any) -> StepRecord:
        """One optimizer step on one batch, outside of any epoch bookkeeping."""
        xb, yb = self.check_batch(x, y, "train")
        rec = self._record(self._train_step(xb, yb), len(xb))
        self.step += 1
        return rec

    def _record(self, out: dict[str, Any], samples: int) -> StepRecord:
        self.loss_checked = True
        return StepRecord(
            step=self.step,
            loss=float(out["loss"]),
            scale=float(out["scale"]),
            grad_norm=float(out["grad_norm"]),
            found_inf=bool(out["found_inf"]),
            skipped=bool(out["skipped"]),
            seconds=float(out["seconds"]),
            samples=samples,
            clipped=bool(out.get("clipped", False)),
            epoch=self.epoch,
            fp8=out.get("fp8"),
        )

    def fit(
        self,
        data: Any,
        epochs: int | None = 1,
        *,
        steps: int | None = None,
        progress: bool | None = None,
        callback: Any = None,
    ) -> History:
        """Train on the train split and return the History of these steps.

        Args:
            data: a :class:`~mpcourse.data.Dataset`, an ``(x, y)`` pair of arrays of any shape
                the model takes, or a re-iterable of ``(x, y)`` batches (a torch ``DataLoader``,
                a list of tuples, a generator function). What a restored engine continues with,
                for each kind: :mod:`mpcourse.engines.batches` (arrays: exactly).
            epochs: how many epochs' worth of steps to run from where the engine stands (for
                batches without a ``len``: until that many passes end). Default 1.
            steps: run exactly this many steps instead (may stop mid-epoch; a later call, or a
                restored engine, continues with the next batch).
            progress: show a progress bar (notebook-aware). Default: on, unless the environment
                variable ``MPCOURSE_PROGRESS=0``.
            callback: called as ``callback(engine, record)`` after each step; returning True stops.

        Raises:
            ValueError: NaN/inf or complex inputs, mismatched lengths, labels the model cannot
                output, a loss_fn that returns no scalar, or a bad count: arrays before any step;
                a stream of batches before the step of the bad batch.
        """
        src = read_data(data, "train")
        if steps is None:
            check_batch_size("epochs", epochs)
        else:
            check_batch_size("steps", steps)
        if isinstance(src, ArrayData):
            x, y = self.check_batch(src.x, src.y, "train")
            per_epoch: int | None = self.steps_per_epoch(len(x))
        else:
            per_epoch = src.steps_per_epoch(self.config.batch_size)
        total = steps if steps is not None else (None if per_epoch is None else int(epochs or 1) * per_epoch)
        hist = History(meta=self.describe())
        enabled = progress_default() if progress is None else progress
        bar = make_bar(total, f"{self.backend}:{self.device} {self.config.precision}", enabled)

        def after(rec: StepRecord) -> bool:  # True: stop
            hist.records.append(rec)
            self.step += 1
            self.batch_in_epoch += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec.loss:.4f}", scale=f"{rec.scale:g}", refresh=False)
            return bool(callback is not None and callback(self, rec)) or len(hist.records) == total

        try:
            if isinstance(src, ArrayData):
                self._fit_arrays(x, y, after)
            else:
                self._fit_stream(src, after, passes=None if total is not None else int(epochs or 1))
        finally:
            if bar is not None:
                bar.close()
        return hist

    def _fit_arrays(self, x: np.ndarray, y: np.ndarray, after: Any) -> None:
        bs, per_epoch = self.config.batch_size, self.steps_per_epoch(len(x))
        order_epoch, order = -1, np.empty(0, dtype=np.int64)
        while True:
            if self.batch_in_epoch >= per_epoch:
                self.epoch += 1
                self.batch_in_epoch = 0
            if order_epoch != self.epoch:
                order_epoch, order = self.epoch, self._order(self.epoch, len(x))
            idx = order[self.batch_in_epoch * bs : (self.batch_in_epoch + 1) * bs]
            if after(self._record(self._train_step(x[idx], y[idx]), len(idx))):
                return

    def _fit_stream(self, src: Any, after: Any, passes: int | None) -> None:
        # A new pass each epoch; a pass started mid-epoch skips the batches already trained on.
        while True:
            started = self.batch_in_epoch
            for xb, yb in src.batches(self.epoch, skip=started):
                xb, yb = self.check_batch(xb, yb, "train")
                if after(self._record(self._train_step(xb, yb), len(xb))):
                    return
            if started == 0 and self.batch_in_epoch == 0:
                raise ValueError("train data yielded no batches; a re-iterable must yield (x, y) batches on every pass")
            self.epoch += 1
            self.batch_in_epoch = 0
            if passes is not None:
                passes -= 1
                if passes == 0:
                    return

    def evaluate(self, data: Any, batch_size: int = 1024) -> dict[str, float]:
        """Mean loss, and accuracy where the targets are class labels, on the test split.

        Args:
            data: a Dataset (its test split), an ``(x, y)`` pair, or a re-iterable of batches
                (one pass, in its own batches), as for :meth:`fit`.
            batch_size: samples per forward pass for arrays, an int >= 1. Default 1024.

        The loss is the engine's ``loss_fn`` (the one given to ``make_engine``); ``"accuracy"``
        (argmax over the last axis) is reported only when every target is a class label for
        the model's outputs (integers shaped like the outputs without their last axis).
        """
        batch_size = check_batch_size("batch_size", batch_size)
        src = read_data(data, "test")
        if isinstance(src, ArrayData):
            x, y = self.check_batch(src.x, src.y, "test")
            pairs: Any = ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size))
        else:
            pairs = (self.check_batch(xb, yb, "test") for xb, yb in src.batches(0))
        total_loss, correct, samples, counted, labels = 0.0, 0, 0, 0, True
        for xb, yb in pairs:
            labels = labels and self.is_labels(yb)
            loss_sum, ok = self._predict(xb, yb, labels)
            total_loss, correct, samples, counted = (
                total_loss + loss_sum,
                correct + ok,
                samples + len(xb),
                counted + yb.size,
            )
        if samples == 0:
            raise ValueError("test data yielded no batches")
        result = {"loss": total_loss / samples}
        if labels:
            result["accuracy"] = correct / counted
        return result

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: framework state plus the data position."""
        return {
            "backend": self.backend,
            "model": self.model_name,
            "precision": self.config.precision,
            "config": self.config.to_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "framework": self._framework_state(),
            "clip": None if self.clip_state is None else self.clip_state.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; a refused state leaves the engine exactly as it was.

        The keys, the step counters, the backend and the model are checked before anything
        changes; if the framework then refuses a part (a shape, a scaler field), the engine is
        put back to the state it had.

        Raises:
            ValueError / TypeError: naming the missing or bad key.
        """
        self._check_state(state)
        before = self.state_dict()
        try:
            self._apply_state(state)
        except Exception:
            self._apply_state(before)
            raise

    def _check_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "framework" not in state:
            raise ValueError("not an mpcourse engine state_dict (no 'framework' entry)")
        missing = [k for k in ("backend", "model", "step", "epoch", "batch_in_epoch") if k not in state]
        if missing:
            raise ValueError(f"engine state_dict is missing keys {missing}")
        for key, mine in (("backend", self.backend), ("model", self.model_name)):
            if state.get(key) != mine:
                raise ValueError(f"state_dict was saved from {key}={state.get(key)!r}, this engine has {key}={mine!r}")
        for key in ("step", "epoch", "batch_in_epoch"):
            v = state[key]
            int_at_least(f"engine state_dict: {key!r}", v, 0)
        fw = state["framework"]
        if not isinstance(fw, dict):
            raise TypeError(f"engine state_dict: 'framework' must be a dict, got {type(fw).__name__}")
        missing = [k for k in self.framework_keys if k not in fw]
        if missing:
            raise ValueError(
                f"engine state_dict: 'framework' is missing keys {missing} (a {self.backend} engine saves "
                f"{list(self.framework_keys)})"
            )
        scaler = fw.get("scaler")
        if not isinstance(scaler, dict):
            raise TypeError(f"engine state_dict: 'framework.scaler' must be a dict, got {type(scaler).__name__}")

    def _apply_state(self, state: dict[str, Any]) -> None:
        self._load_framework_state(state["framework"])
        if self.clip_state is not None:
            self._clip_state = self.config.clip.new_state()  # a state without one starts afresh
            if state.get("clip") is not None:
                self._clip_state.load_state_dict(state["clip"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model_name!r}, device={self.device!r}, "
            f"precision={self.config.precision!r}, scaling={self.config.scaling_mode!r}, "
            f"step={self.step})"
        )
