"""What an engine accepts as data, and the checks every batch passes before a step (numpy only).

Usage::

    from mpcourse.engines.batches import ArrayData, BatchStream, read_data

    src = read_data(mpc.data.load("digits"), "train")   # ArrayData: x, y numpy arrays
    src = read_data((x, y), "train")                    # ArrayData, any (n, ...) shape
    src = read_data(loader, "train")                    # BatchStream over a torch DataLoader,
                                                        #   a list of (x, y), or a generator function
    for xb, yb in src.batches(epoch=0, skip=3): ...     # one pass, the first 3 batches skipped

Three kinds of data, and what a restored engine (``load_state_dict``) continues with:

- **Arrays** -- a :class:`~mpcourse.data.Dataset` or an ``(x, y)`` pair: resume is **exact**. The
  engine batches them itself; an epoch's order is a permutation drawn from ``(seed, epoch)``, so
  the saved ``(epoch, batch_in_epoch)`` names the next batch exactly. Every sample is checked
  before the first step.
- **A re-iterable of (x, y) batches** -- a torch ``DataLoader`` (its own batching and shuffling),
  a list of ``(x, y)`` tuples, or any object with ``__iter__`` that starts a new pass each time:
  a restored engine starts a new pass and skips the batches of the current epoch it already
  trained on. Resume is **exact when a pass for a given epoch yields the same batches**: no
  shuffling, or shuffling set per epoch -- before each pass the engine calls
  ``set_epoch(epoch)`` on the data, on its ``sampler`` or on its ``batch_sampler``, where one has
  it (as torch's ``DistributedSampler(ds, num_replicas=1, rank=0, seed=0)`` does). A
  ``DataLoader(shuffle=True)`` draws a new order from its generator on every pass, so a restored
  one trains the right number of batches, but not the same ones. Each batch is checked as it
  arrives, before its step: a bad batch stops ``fit`` with the earlier steps done.
- **A generator function** (called with no arguments, once per pass): as a re-iterable. A
  generator *object* can be read once only, and is refused: pass the function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcourse._validate import int_at_least
from mpcourse.data import Dataset, check_inputs, check_targets

__all__ = [
    "ArrayData",
    "BatchStream",
    "read_data",
    "as_numpy",
    "check_batch_size",
    "check_xy",
    "check_label_fit",
    "check_loss_value",
    "checked_loss",
    "check_for_model",
    "set_epoch",
]


def as_numpy(value: Any) -> np.ndarray:
    """A batch element as numpy: numpy, lists, torch tensors (any device) or mlx arrays."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            value = value.float()
        return np.asarray(value.numpy())
    return np.asarray(value)


def check_batch_size(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1, else a ValueError naming ``name``."""
    return int_at_least(name, value, 1)


def check_xy(x: Any, y: Any, *, what: str, labels: bool, flat_features: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets checked and converted (see :mod:`mpcourse.data`'s ``check_*``).

    ``flat_features``: the zoo's flat models view every sample as that many float features
    (a ValueError if the count differs); None keeps ``x``'s shape and dtype class, for models of
    your own and the token models.
    """
    xa = as_numpy(x)
    x_checked = check_inputs(xa, what=what)
    if flat_features is not None:
        if x_checked.ndim < 2:
            raise ValueError(f"{what}: x must have shape (n, features), got shape {x_checked.shape}")
        x_checked = x_checked.reshape(len(x_checked), -1).astype(np.float32, copy=False)
        if x_checked.shape[1] != flat_features:
            raise ValueError(
                f"{what} has {x_checked.shape[1]} features but the model was built for "
                f"{flat_features}; pass data=<dataset> or num_features= to make_engine"
            )
    return x_checked, check_targets(as_numpy(y), len(x_checked), what=what, labels=labels)


def check_label_fit(y: np.ndarray, out_shape: Sequence[int], *, what: str) -> None:
    """Class labels against the model's outputs: shape ``out_shape[:-1]``, values in ``[0, width)``.

    ``out_shape`` is read from a forward pass, so it is the model's real output width whatever
    sizes it was built with. Raises a ValueError naming the label, the width and the fix.
    """
    out_shape = tuple(int(s) for s in out_shape)
    if len(out_shape) < 2 or tuple(y.shape[1:]) != out_shape[1:-1]:
        raise ValueError(
            f"{what}: labels of shape {tuple(y.shape)} do not fit model outputs of shape {out_shape}: "
            f"the default loss wants outputs (n, ..., classes) and labels (n, ...); reshape one of "
            f"them, or pass a loss_fn of your own to make_engine"
        )
    width, top = out_shape[-1], int(y.max())
    if top >= width:
        raise ValueError(
            f"{what} has label {top} but the model has {width} outputs (the width of its last "
            f"layer, read from a forward pass), so labels must be in [0, {width}): give the model "
            f"at least {top + 1} outputs (one per class of your data), or fix the labels"
        )


def check_loss_value(value: Any) -> None:
    """What ``loss_fn`` returned must be a 0-d framework array; else a ValueError naming loss_fn."""
    if isinstance(value, (int, float, np.number)):
        raise ValueError(
            f"loss_fn returned a Python number ({type(value).__name__} {value!r}), which carries no "
            f"gradient: return a 0-d tensor computed from the outputs, e.g. ((outputs - targets) ** 2).mean()"
        )
    shape = getattr(value, "shape", None)
    if shape is None:
        raise ValueError(f"loss_fn must return a 0-d tensor (a scalar), got {type(value).__name__}")
    if tuple(shape) != ():
        raise ValueError(
            f"loss_fn must return a scalar (a 0-d tensor), but it returned shape {tuple(shape)}: "
            f"reduce it over the batch, e.g. with .mean()"
        )


def check_for_model(engine: Any, x: Any, y: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`Engine.check_batch <mpcourse.engines.base.Engine.check_batch>`: the checks, the probe
    forward pass (``engine.probe_outputs``) on the first call, and the labels against its width."""
    what, labels = f"{split} data", engine.user_loss_fn is None
    x, y = check_xy(x, y, what=what, labels=labels, flat_features=engine.flat_features)
    rows = engine.embedding_rows() if x.dtype.kind == "i" else []
    if rows and (x.min() < 0 or x.max() >= max(rows)):
        bad = int(x.min()) if x.min() < 0 else int(x.max())
        raise ValueError(
            f"{what}: x holds token id {bad} but the model's largest embedding has {max(rows)} rows, "
            f"so ids must be in [0, {max(rows)}): give the embedding more rows, or fix the ids"
        )
    if engine.output_shape is None:
        probe = slice(0, engine.config.batch_size)
        try:
            out = engine.probe_outputs(x[probe])
        except Exception as err:
            raise ValueError(
                f"{what}: the model cannot take inputs of shape {tuple(x[probe].shape)} and dtype "
                f"{x.dtype} ({type(err).__name__}: {err}); pass data shaped as the model expects"
            ) from err
        shape = (len(x[probe]), *(int(s) for s in out.shape[1:]))
        if labels:
            check_label_fit(y[probe], shape, what=what)
        engine.output_shape = shape[1:]
    if labels:
        check_label_fit(y, (len(y), *y.shape[1:], engine.output_shape[-1]), what=what)
    return x, y


def checked_loss(loss_fn: Any, outputs: Any, targets: Any) -> Any:
    """``loss_fn(outputs, targets)``, or a ValueError naming loss_fn: when it raises, or returns
    anything but a 0-d array (:func:`check_loss_value`)."""
    try:
        value = loss_fn(outputs, targets)
    except Exception as err:
        raise ValueError(
            f"loss_fn(outputs of shape {tuple(outputs.shape)}, targets of shape {tuple(targets.shape)}) "
            f"raised {type(err).__name__}: {err}"
        ) from err
    check_loss_value(value)
    return value


def set_epoch(data: Any, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on ``data``, its ``sampler`` and its ``batch_sampler``, where present."""
    for obj in (data, getattr(data, "sampler", None), getattr(data, "batch_sampler", None)):
        fn = getattr(obj, "set_epoch", None)
        if callable(fn):
            fn(epoch)


@dataclass
class ArrayData:
    """In-memory ``x`` and ``y`` (checked); the engine batches them (exact resume)."""

    x: np.ndarray
    y: np.ndarray

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.x) / batch_size)


@dataclass
class BatchStream:
    """A re-iterable of ``(x, y)`` batches, or a function returning one (see the module docstring)."""

    data: Any
    what: str

    def steps_per_epoch(self, batch_size: int) -> int | None:
        """Batches per pass when the data has a ``len`` (a DataLoader, a list), else None."""
        try:
            return len(self.data)
        except TypeError:
            return None

    def batches(self, epoch: int, skip: int = 0) -> Iterator[tuple[Any, Any]]:
        """One pass over the data for ``epoch``, its first ``skip`` batches drawn and dropped."""
        set_epoch(self.data, epoch)
        source = self.data() if callable(self.data) and not isinstance(self.data, Iterable) else self.data
        for i, batch in enumerate(source):
            if i >= skip:
                yield _pair(batch, self.what, i)


_ONE_SHOT = (
    "data is an iterator ({kind}), which can be read only once, but training needs a new pass "
    "each epoch (and after a resume): pass a re-iterable (a list, a DataLoader) or the generator "
    "function itself"
)


def _pair(batch: Any, what: str, index: int) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"{what}: batch {index} is a {type(batch).__name__}, not an (x, y) pair; "
        f"the data must yield (inputs, targets) tuples"
    )


def read_data(data: Any, split: str = "train") -> ArrayData | BatchStream:
    """The kind of ``data`` (arrays or a stream of batches), ready for an engine.

    Arrays are checked here only for their kind; :func:`check_xy` checks their values. A
    Dataset gives its ``split`` ("train" or "test"); other data is used as it is.

    Raises:
        TypeError: data of no known kind, or a one-shot iterator (a generator object).
    """
    if isinstance(data, Dataset):
        x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
        return ArrayData(x, y)
    if isinstance(data, (tuple, list)) and len(data) == 2 and not _is_pair(data[0]):
        return ArrayData(*data)
    if isinstance(data, (np.ndarray, str, bytes, Mapping)):
        raise TypeError(_KINDS.format(kind=type(data).__name__))
    if isinstance(data, Iterator):
        raise TypeError(_ONE_SHOT.format(kind=type(data).__name__))
    if isinstance(data, Iterable) or callable(data):
        return BatchStream(data, f"{split} data")
    raise TypeError(_KINDS.format(kind=type(data).__name__))


_KINDS = (
    "data must be an mpcourse Dataset, an (x, y) pair of arrays, or a re-iterable of (x, y) "
    "batches (a DataLoader, a list of tuples, a generator function), got {kind}"
)


def _is_pair(item: Any) -> bool:
    # A list of batches holds (x, y) tuples; an (x, y) pair's first element is an array.
    return isinstance(item, tuple) and len(item) == 2
