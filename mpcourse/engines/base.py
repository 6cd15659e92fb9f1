"""What every engine shares: StepRecord, History, the training loop, and make_engine().

Usage::

    import mpcourse as mpc

    eng = mpc.make_engine("torch", model="mlp", config=mpc.TrainConfig(precision="bf16"))
    hist = eng.fit(mpc.data.load("digits"), epochs=2)   # one StepRecord per step
    hist.losses[-1], hist.skipped_steps, eng.evaluate(mpc.data.load("digits"))
    mpc.available_backends()                            # e.g. ['torch:cpu', 'mlx:cpu']

A framework engine subclasses :class:`Engine` and implements only the framework steps
(``_train_step``, ``_predict``, ``_framework_state`` ...). The loop, the data order, the input
checks, the progress bar and the History live here, once, for every backend.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from mpcourse._validate import check_choice
from mpcourse.config import TrainConfig
from mpcourse.data import Dataset, validate_xy

__all__ = ["StepRecord", "History", "Engine", "make_engine", "available_backends", "BACKENDS",
           "ZOO", "SIZES", "BackendUnavailableError", "DeviceUnavailableError"]

BACKENDS: tuple[str, ...] = ("torch", "mlx")
ZOO: tuple[str, ...] = ("mlp", "deep_mlp", "cnn", "transformer", "lstm")
SIZES: tuple[str, ...] = ("small", "large")

_INSTALL_HINT = {
    "torch": "pip install torch  (on Linux without a GPU: pip install torch==2.13.0 for the CPU build)",
    "mlx": "pip install 'mlx[cpu]' on Linux, or pip install mlx on macOS (Apple silicon)",
}


class BackendUnavailableError(ImportError):
    """A backend was asked for that is not installed (the message says how to install it)."""


class DeviceUnavailableError(ValueError):
    """An explicitly requested device is not present on this machine (never a silent fallback).

    Both engines raise this one class, so ``except DeviceUnavailableError`` covers torch and MLX.
    """


@dataclass(frozen=True)
class StepRecord:
    """What one optimizer step did.

    Attributes:
        step: 0-based global step index.
        loss: the unscaled loss of the batch (float; nan/inf when the forward overflowed).
        scale: the loss scale this step used (1.0 without scaling).
        grad_norm: L2 norm of the unscaled gradients before clipping (inf/nan when non-finite).
        found_inf: the gradients held inf or nan.
        skipped: the optimizer step was not applied.
        seconds: wall time of the step, with the device synchronised before reading the clock.
        samples: samples in the batch.
        clipped: a clipping policy changed the gradients this step.
        epoch: the epoch this step belongs to (0-based).
    """

    step: int
    loss: float
    scale: float
    grad_norm: float
    found_inf: bool
    skipped: bool
    seconds: float
    samples: int
    clipped: bool = False
    epoch: int = 0


@dataclass
class History:
    """The per-step record of a training run, plus what it was run with.

    ``meta`` names backend, device, model, precision and config; ``events`` holds things that
    happened at a step (e.g. a precision fallback), each a dict with at least ``step`` and
    ``kind``; ``evals`` holds evaluation results by epoch.
    """

    records: list[StepRecord] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> StepRecord:
        return self.records[i]

    def column(self, name: str) -> np.ndarray:
        """One StepRecord field over all steps, as a numpy array."""
        if name not in {f.name for f in dataclasses.fields(StepRecord)}:
            raise ValueError(f"unknown StepRecord field {name!r}")
        return np.array([getattr(r, name) for r in self.records])

    @property
    def losses(self) -> np.ndarray:
        return self.column("loss").astype(float)

    @property
    def scales(self) -> np.ndarray:
        return self.column("scale").astype(float)

    @property
    def grad_norms(self) -> np.ndarray:
        return self.column("grad_norm").astype(float)

    @property
    def skipped_steps(self) -> int:
        return int(sum(r.skipped for r in self.records))

    @property
    def overflow_rate(self) -> float:
        """Share of steps whose gradients were non-finite."""
        return float(np.mean([r.found_inf for r in self.records])) if self.records else 0.0

    @property
    def total_seconds(self) -> float:
        return float(sum(r.seconds for r in self.records))

    @property
    def samples_per_second(self) -> float:
        t = self.total_seconds
        return float(sum(r.samples for r in self.records) / t) if t > 0 else float("nan")

    def epoch_summary(self) -> list[dict[str, Any]]:
        """Per epoch: mean finite loss, seconds, steps and skipped steps."""
        out: list[dict[str, Any]] = []
        for ep in sorted({r.epoch for r in self.records}):
            rs = [r for r in self.records if r.epoch == ep]
            finite = [r.loss for r in rs if math.isfinite(r.loss)]
            out.append({"epoch": ep, "loss": float(np.mean(finite)) if finite else float("nan"),
                        "seconds": float(sum(r.seconds for r in rs)), "steps": len(rs),
                        "skipped": int(sum(r.skipped for r in rs))})
        return out

    def extend(self, other: "History") -> None:
        """Append another History's records, events and evals (meta of the first is kept)."""
        self.records.extend(other.records)
        self.events.extend(other.events)
        self.evals.extend(other.evals)

    def to_dict(self) -> dict[str, Any]:
        return {"records": [dataclasses.asdict(r) for r in self.records], "meta": self.meta,
                "events": self.events, "evals": self.evals}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "History":
        return cls([StepRecord(**r) for r in d["records"]], dict(d.get("meta", {})),
                   list(d.get("events", [])), list(d.get("evals", [])))

    def to_json(self) -> str:
        # inf/nan are written as JSON's non-standard Infinity/NaN, which json.loads reads back.
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "History":
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        if not self.records:
            return f"History(0 steps, {self.meta.get('precision', '?')})"
        return (f"History({len(self.records)} steps, {self.meta.get('backend', '?')}:"
                f"{self.meta.get('device', '?')} {self.meta.get('precision', '?')}, final loss "
                f"{self.records[-1].loss:.4g}, skipped {self.skipped_steps}, final scale "
                f"{self.records[-1].scale:g})")


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
    model_name: str
    num_features: int
    num_classes: int

    def __init__(self) -> None:
        self.step = 0            # optimizer steps attempted so far (skipped ones included)
        self.epoch = 0           # current epoch
        self.batch_in_epoch = 0  # next batch index within the current epoch

    # --- framework hooks -------------------------------------------------------------------
    @abstractmethod
    def _train_step(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """One step on a numpy batch; returns loss, scale, grad_norm, found_inf, skipped,
        seconds (device-synchronised) and clipped."""

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
        return {"backend": self.backend, "device": self.device, "model": self.model_name,
                "precision": self.config.precision, "scaling": self.config.scaling_mode,
                "config": self.config.to_dict()}

    def _xy(self, data: Dataset | Sequence[Any], split: str) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(data, Dataset):
            x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            x, y = data
        else:
            raise TypeError(f"data must be an mpcourse Dataset or an (x, y) pair, got {type(data).__name__}")
        x, y = validate_xy(x, y, what=f"{split} data")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{split} data has {x.shape[1]} features but the model was built for "
                             f"{self.num_features}; pass data=<dataset> or num_features= to make_engine")
        if y.max() >= self.num_classes:
            raise ValueError(f"{split} data has label {int(y.max())} but the model has "
                             f"{self.num_classes} classes (labels must be in [0, {self.num_classes}))")
        return x, y

    def _order(self, epoch: int, n: int) -> np.ndarray:
        # The order of an epoch depends only on (seed, epoch): resuming mid-run needs no RNG state.
        return np.random.default_rng([self.config.seed, epoch]).permutation(n)

    def steps_per_epoch(self, n: int) -> int:
        """Batches in one epoch of ``n`` samples (the last one may be smaller)."""
        return math.ceil(n / self.config.batch_size)

    def train_step(self, x: Any, y: Any) -> StepRecord:
        """One optimizer step on one batch, outside of any epoch bookkeeping."""
        xb, yb = self._xy((x, y), "train")
        rec = self._record(self._train_step(xb, yb), len(xb))
        self.step += 1
        return rec

    def _record(self, out: dict[str, Any], samples: int) -> StepRecord:
        return StepRecord(step=self.step, loss=float(out["loss"]), scale=float(out["scale"]),
                          grad_norm=float(out["grad_norm"]), found_inf=bool(out["found_inf"]),
                          skipped=bool(out["skipped"]), seconds=float(out["seconds"]),
                          samples=samples, clipped=bool(out.get("clipped", False)), epoch=self.epoch)

    def fit(self, data: Dataset | Sequence[Any], epochs: int | None = 1, *, steps: int | None = None,
            progress: bool | None = None, callback: Any = None) -> History:
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
        x, y = self._xy(data, "train")
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
        bar = _make_bar(total, f"{self.backend}:{self.device} {self.config.precision}",
                        _progress_default() if progress is None else progress)
        bs = self.config.batch_size
        order_epoch, order = -1, np.empty(0, dtype=np.int64)
        try:
            for _ in range(total):
                if self.batch_in_epoch >= per_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                if order_epoch != self.epoch:
                    order_epoch, order = self.epoch, self._order(self.epoch, len(x))
                idx = order[self.batch_in_epoch * bs:(self.batch_in_epoch + 1) * bs]
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
        x, y = self._xy(data, "test")
        total_loss, correct = 0.0, 0
        for i in range(0, len(x), batch_size):
            loss_sum, ok = self._predict(x[i:i + batch_size], y[i:i + batch_size])
            total_loss += loss_sum
            correct += ok
        return {"loss": total_loss / len(x), "accuracy": correct / len(x)}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: framework state plus the data position."""
        return {"backend": self.backend, "model": self.model_name, "precision": self.config.precision,
                "config": self.config.to_dict(), "step": self.step, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "framework": self._framework_state(),
                "clip": None if self.clip_state is None else self.clip_state.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; a state from another backend or model is refused."""
        if not isinstance(state, dict) or "framework" not in state:
            raise ValueError("not an mpcourse engine state_dict (no 'framework' entry)")
        for key, mine in (("backend", self.backend), ("model", self.model_name)):
            if state.get(key) != mine:
                raise ValueError(f"state_dict was saved from {key}={state.get(key)!r}, "
                                 f"this engine has {key}={mine!r}")
        self._load_framework_state(state["framework"])
        if self.clip_state is not None:
            self._clip_state = self.config.clip.new_state()  # a state without one starts afresh
            if state.get("clip") is not None:
                self._clip_state.load_state_dict(state["clip"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={self.model_name!r}, device={self.device!r}, "
                f"precision={self.config.precision!r}, scaling={self.config.scaling_mode!r}, "
                f"step={self.step})")


def _make_bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm  # the notebook widget in Jupyter, text elsewhere

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or half-installed package
        return False


def make_engine(backend: str = "torch", model: Any = "mlp", config: TrainConfig | None = None,
                device: str = "auto", loss_fn: Any = None, *, data: Dataset | None = None,
                num_features: int | None = None, num_classes: int | None = None,
                size: str = "small", verbose: bool = True) -> Engine:
    """Build a training engine.

    Args:
        backend: ``"torch"`` or ``"mlx"``. Default ``"torch"``.
        model: a zoo name (``mlp``, ``deep_mlp``, ``cnn``, ``transformer``, ``lstm``) or your own
            framework model (``torch.nn.Module`` / ``mlx.nn.Module``). Default ``"mlp"``.
        config: a :class:`TrainConfig`. Default ``TrainConfig()`` (fp32).
        device: ``"auto"`` (torch: cuda, then mps, then cpu; mlx: its default device), or an
            explicit device; an explicit device that is absent is an error.
        loss_fn: ``loss_fn(outputs, labels) -> scalar``; default cross-entropy, computed in fp32.
        data: a Dataset whose feature and class counts size the zoo model.
        num_features, num_classes: size the zoo model without a dataset (default 64 and 10:
            the digits task).
        size: ``"small"`` or ``"large"`` for zoo models. Default ``"small"``.
        verbose: print which device ``"auto"`` chose. Default True.
    """
    check_choice("backend", backend, BACKENDS)
    if config is None:
        config = TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be an mpcourse.TrainConfig, got {type(config).__name__}")
    if isinstance(model, str):
        check_choice("model", model, ZOO)
    check_choice("size", size, SIZES)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu', 'cuda', got {device!r}")
    feats = num_features if num_features is not None else (data.num_features if data is not None else 64)
    classes = num_classes if num_classes is not None else (data.num_classes if data is not None else 10)
    for name, v in (("num_features", feats), ("num_classes", classes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not _installed(backend):
        raise BackendUnavailableError(f"backend {backend!r} is not installed: {_INSTALL_HINT[backend]}")
    if backend == "torch":
        from mpcourse.engines.torch_engine import TorchEngine as cls
    else:
        from mpcourse.engines.mlx_engine import MLXEngine as cls  # type: ignore[no-redef]
    eng = cls(model=model, config=config, device=device, loss_fn=loss_fn, num_features=feats,
              num_classes=classes, size=size)
    if verbose and device == "auto":
        print(f"mpcourse: {backend} engine on {eng.device} (device='auto')", file=sys.stderr)
    return eng


def available_backends() -> list[str]:
    """The backend:device pairs that can run here, best first, e.g. ``['torch:cuda', 'mlx:cpu']``."""
    found: list[str] = []
    if _installed("torch"):
        from mpcourse.engines.torch_engine import torch_devices

        found += [f"torch:{d}" for d in torch_devices()]
    if _installed("mlx"):
        try:
            from mpcourse.engines.mlx_engine import mlx_devices
        except ImportError:  # the MLX engine is optional; the package can still be imported
            pass
        else:
            found += [f"mlx:{d}" for d in mlx_devices()]
    return found
