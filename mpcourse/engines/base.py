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

import importlib.util
import math
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from mpcourse._validate import check_choice
from mpcourse.config import TrainConfig
from mpcourse.data import Dataset, validate_xy
from mpcourse.history import History, StepRecord

__all__ = [
    "Engine",
    "BackendUnavailableError",
    "DeviceUnavailableError",
    "BACKENDS",
    "INSTALL_HINT",
    "installed",
    "missing_reason",
    "require_backend",
    "nonfinite_update_risk",
]

BACKENDS: tuple[str, ...] = ("torch", "mlx")

INSTALL_HINT = {
    "torch": "pip install torch  (on Linux without a GPU: pip install torch==2.13.0 for the CPU build)",
    "mlx": "pip install 'mlx[cpu]' on Linux, or pip install mlx on macOS (Apple silicon)",
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or half-installed package
        return False


def missing_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here (with the install command), or None when it can.

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
    """
    check_choice("backend", backend, BACKENDS)
    if not installed(backend):
        return f"backend {backend!r} is not installed: {INSTALL_HINT[backend]}"
    return None


def require_backend(backend: str) -> None:
    """Raise :class:`BackendUnavailableError` (saying how to install it) unless ``backend`` is here."""
    reason = missing_reason(backend)
    if reason is not None:
        raise BackendUnavailableError(reason)


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


def _progress_default() -> bool:
    return os.environ.get("MPCOURSE_PROGRESS", "1").lower() not in ("0", "false", "no", "off")


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
    loss_fn: Any  # the loss the engine computes: user_loss_fn or the default cross-entropy
    model_name: str
    num_features: int
    num_classes: int
    framework_keys: tuple[str, ...] = ("scaler",)  # what _framework_state returns; checked on load

    def __init__(self) -> None:
        self.step = 0  # optimizer steps attempted so far (skipped ones included)
        self.epoch = 0  # current epoch
        self.batch_in_epoch = 0  # next batch index within the current epoch

    # --- framework hooks -------------------------------------------------------------------
    @abstractmethod
    def _train_step(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """One step on a numpy batch; returns loss, scale, grad_norm, found_inf, skipped,
        seconds (device-synchronised), clipped and, under precision="fp8", the fp8 stats."""

    @abstractmethod
    def _predict(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """Summed loss and number of correct predictions on a numpy batch, without training."""

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
        if isinstance(data, Dataset):
            x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            x, y = data
        else:
            raise TypeError(f"data must be an mpcourse Dataset or an (x, y) pair, got {type(data).__name__}")
        x, y = validate_xy(x, y, what=f"{split} data")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{split} data has {x.shape[1]} features but the model was built for "
                f"{self.num_features}; pass data=<dataset> or num_features= to make_engine"
            )
        if y.max() >= self.num_classes:
            raise ValueError(
                f"{split} data has label {int(y.max())} but the model has "
                f"{self.num_classes} classes (labels must be in [0, {self.num_classes}))"
            )
        return x, y

    def _order(self, epoch: int, n: int) -> np.ndarray:
        # The order of an epoch depends only on (seed, epoch): resuming mid-run needs no RNG state.
        return np.random.default_rng([self.config.seed, epoch]).permutation(n)

    def steps_per_epoch(self, n: int) -> int:
        """Batches in one epoch of ``n`` samples (the last one may be smaller)."""
        return math.ceil(n / self.config.batch_size)

    def train_step(self, x: Any, y: Any) -> StepRecord:
        """One optimizer step on one batch, outside of any epoch bookkeeping."""
        xb, yb = self.arrays((x, y), "train")
        rec = self._record(self._train_step(xb, yb), len(xb))
        self.step += 1
        return rec

    def _record(self, out: dict[str, Any], samples: int) -> StepRecord:
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
        data: Dataset | Sequence[Any],
        epochs: int | None = 1,
        *,
        steps: int | None = None,
        progress: bool | None = None,
        callback: Any = None,
    ) -> History:
        """Train on the train split and return the History of these steps.

        Args:
            data: a :class:`~mpcourse.data.Dataset` or an ``(x, y)`` pair.
            epochs: how many epochs' worth of steps to run from where the engine stands. Default 1.
            steps: run exactly this many steps instead (may stop mid-epoch; a later call, or a
                restored engine, continues with the next batch).
            progress: show a progress bar (notebook-aware). Default: on, unless the environment
                variable ``MPCOURSE_PROGRESS=0``.
            callback: called as ``callback(engine, record)`` after each step; returning True stops.

        Raises:
            ValueError: NaN/inf features, mismatched lengths, bad labels or a bad count, before
                any step, so the model is untouched.
        """
        x, y = self.arrays(data, "train")
        per_epoch = self.steps_per_epoch(len(x))
        if steps is None:
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
                raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
            total = epochs * per_epoch
        else:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ValueError(f"steps must be an int >= 1, got {steps!r}")
            total = steps
        hist = History(meta=self.describe())
        bar = _make_bar(
            total,
            f"{self.backend}:{self.device} {self.config.precision}",
            _progress_default() if progress is None else progress,
        )
        bs = self.config.batch_size
        order_epoch, order = -1, np.empty(0, dtype=np.int64)
        try:
            for _ in range(total):
                if self.batch_in_epoch >= per_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                if order_epoch != self.epoch:
                    order_epoch, order = self.epoch, self._order(self.epoch, len(x))
                idx = order[self.batch_in_epoch * bs : (self.batch_in_epoch + 1) * bs]
                rec = self._record(self._train_step(x[idx], y[idx]), len(idx))
                hist.records.append(rec)
                self.step += 1
                self.batch_in_epoch += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec.loss:.4f}", scale=f"{rec.scale:g}", refresh=False)
                if callback is not None and callback(self, rec):
                    break
        finally:
            if bar is not None:
                bar.close()
        return hist

    def evaluate(self, data: Dataset | Sequence[Any], batch_size: int = 1024) -> dict[str, float]:
        """Mean loss and accuracy on the test split (or on an ``(x, y)`` pair)."""
        x, y = self.arrays(data, "test")
        total_loss, correct = 0.0, 0
        for i in range(0, len(x), batch_size):
            loss_sum, ok = self._predict(x[i : i + batch_size], y[i : i + batch_size])
            total_loss += loss_sum
            correct += ok
        return {"loss": total_loss / len(x), "accuracy": correct / len(x)}

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
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"engine state_dict: {key!r} must be an int >= 0, got {v!r}")
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


def _make_bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm  # the notebook widget in Jupyter, text elsewhere

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)
