"""Datasets as numpy arrays; engines convert them to framework tensors.

Usage::

    import mpcourse as mpc

    ds = mpc.data.load("digits", seed=0)      # scikit-learn's bundled 8x8 digits, no download
    ds.x_train.shape, ds.num_classes           # ((1437, 64), 10)
    ds = mpc.data.load("synthetic", seed=0)   # 784 inputs, 10 classes, Gaussian class clusters
    ds = mpc.data.load("underflow")           # digits with a loss in small units: fp16 needs scaling
    ds.meta["loss_weight"]                     # 2**-20: train on loss_weight * cross-entropy
    ds = mpc.data.load("text")                # the standard library's own source, as characters:
    ds.x_train.shape, ds.num_classes           #   ((n, 64) int64 ids, 96); y = x shifted by one
    mpc.data.decode(ds.x_train[0])             # back to text
    mpc.data.available()                       # the names load() accepts
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpcourse._validate import int_at_least, positive_finite

__all__ = [
    "Dataset",
    "TEXT_FILES",
    "TEXT_VOCAB",
    "encode",
    "decode",
    "load",
    "available",
    "register",
    "validate_xy",
    "check_inputs",
    "check_targets",
    "underflow_batch_threshold",
]


@dataclass(frozen=True)
class Dataset:
    """A task as numpy arrays, split into train and test.

    Classification tasks: float32 ``x_*`` of shape ``(n, features)`` (image-like models reshape
    it themselves) and int64 labels ``(n,)``. The text task: int64 character ids ``(n, T)`` and
    next-character targets ``(n, T)``; ``num_classes`` is then the vocabulary.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        """Features per sample (the model's input width)."""
        return int(self.x_train.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}: train {self.x_train.shape}, test {self.x_test.shape}, {self.num_classes} classes)"
        )


def validate_xy(x: Any, y: Any, *, what: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """Check features and labels before any training step touches a model.

    Returns float32 ``x`` of shape ``(n, features)`` and int64 ``y`` of shape ``(n,)`` (the zoo's
    flat classification models take these; :func:`check_inputs` and :func:`check_targets` keep
    any shape, for models of your own).

    Raises:
        ValueError: mismatched lengths, empty data, NaN/inf or complex features, or labels that
            are not non-negative integers (uint64 labels past int64's range included). The
            message names what was found.
    """
    y = np.asarray(y)
    if np.asarray(x).ndim < 2:
        raise ValueError(f"{what}: x must have shape (n, features), got shape {np.asarray(x).shape}")
    if y.ndim != 1:
        raise ValueError(f"{what}: y must have shape (n,), got shape {y.shape}")
    x = check_inputs(x, what=what)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    x = x.reshape(len(x), -1)
    return x, check_targets(y, len(x), what=what, labels=True)


def check_inputs(x: Any, *, what: str = "data") -> np.ndarray:
    """``x`` as a numpy array of any shape ``(n, ...)``: floats as float32, integers as int64.

    Raises:
        ValueError: no samples, a non-numeric or complex dtype, NaN/inf values (also values past
            float32's range, which become inf), or integers outside int64's range.
    """
    x = np.asarray(x)
    if x.ndim < 1 or len(x) == 0:
        raise ValueError(f"{what}: no samples (x has shape {x.shape}; it must be (n, ...) with n >= 1)")
    if np.iscomplexobj(x):
        raise ValueError(
            f"{what}: x is complex ({x.dtype}); the engines train on real numbers: pass x.real, "
            f"np.abs(x), or the real and imaginary parts as separate features"
        )
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{what}: x must be numeric (float or integer), got dtype {x.dtype}; convert it with .astype")
    if np.issubdtype(x.dtype, np.integer):
        return _as_int64(x, what, "x")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))[0])
        raise ValueError(
            f"{what}: x contains {int(bad.sum())} NaN/inf values (first in sample "
            f"{first}); clean or drop them before training (float32 holds magnitudes up to 3.4e38)"
        )
    return x


def check_targets(y: Any, n: int, *, what: str = "data", labels: bool = True) -> np.ndarray:
    """The targets ``y`` of ``n`` samples, checked.

    ``labels=True`` (the default loss): non-negative integer class labels as int64, shape
    ``(n, ...)`` (integral floats are accepted). ``labels=False`` (your own ``loss_fn``): any
    real array of shape ``(n, ...)``, floats as float32 and integers as int64.

    Raises:
        ValueError: a length other than ``n``, a complex or non-numeric dtype, NaN/inf, and for
            labels: negative or fractional values, or uint64 values past int64's range.
    """
    y = np.asarray(y)
    if y.ndim < 1 or len(y) != n:
        got = "a scalar" if y.ndim < 1 else f"{len(y)}"
        raise ValueError(f"{what}: x has {n} samples but y has {got}; they must match")
    if np.iscomplexobj(y) or y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{what}: y must be real numbers (integer labels or float targets), got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.integer):
        y = _as_int64(y, what, "y")
    elif labels:
        if not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise ValueError(
                f"{what}: y must hold integer class labels for the default loss, got dtype {y.dtype}; "
                f"for regression targets pass your own loss_fn to make_engine"
            )
        y = y.astype(np.int64)
    else:
        with np.errstate(over="ignore"):
            y = y.astype(np.float32, copy=False)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{what}: y contains NaN/inf values; clean or drop them before training")
    if labels and y.min() < 0:
        raise ValueError(f"{what}: y must be >= 0, found {int(y.min())}")
    return y


def _as_int64(a: np.ndarray, what: str, name: str) -> np.ndarray:
    # uint64 values past 2**63 - 1 would wrap to negative numbers in int64: refuse them.
    if a.dtype.kind == "u" and a.dtype.itemsize >= 8 and a.max() > np.iinfo(np.int64).max:
        raise ValueError(
            f"{what}: {name} holds {int(a.max())} (dtype {a.dtype}), past int64's range "
            f"(at most {np.iinfo(np.int64).max}); labels and token ids must be small non-negative integers"
        )
    return a.astype(np.int64, copy=False)


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()  # bundled with scikit-learn: no network access
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return Dataset(
        "digits",
        x_tr,
        y_tr,
        x_te,
        y_te,
        10,
        "scikit-learn's 8x8 handwritten digits, pixels scaled to [0, 1], 80/20 split",
    )


def _synthetic(
    seed: int,
    n_train: int = 4096,
    n_test: int = 1024,
    features: int = 784,
    classes: int = 10,
    clusters: int = 3,
    noise: float = 4.0,
) -> Dataset:
    # Each class is a mixture of `clusters` random centres in feature space; samples are a centre
    # plus Gaussian noise `noise` times the centres' spread. A learnable rule, not noise: the
    # classes are separable by a network, yet no single template per class describes them.
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, clusters, features)).astype(np.float32)
    y = rng.integers(0, classes, n_train + n_test)
    which = rng.integers(0, clusters, n_train + n_test)
    x = centres[y, which] + noise * rng.standard_normal((n_train + n_test, features)).astype(np.float32)
    x /= x.std()
    return Dataset(
        "synthetic",
        x[:n_train],
        y[:n_train],
        x[n_train:],
        y[n_train:],
        classes,
        f"{features} inputs, {classes} classes, each a mixture of {clusters} Gaussian clusters",
    )


def _underflow(seed: int, loss_weight: float = 2.0**-20, n_train: int = 1408) -> Dataset:
    # The digits, trained on loss_weight * cross-entropy. The per-element gradient of a mean
    # cross-entropy is (p - onehot) / batch, at most 1 / batch in size; times 2**-20 it is at
    # most 2**-26 for batches of 64, below 2**-25, half of fp16's smallest subnormal, so every
    # logit gradient rounds to zero in fp16 -- while fp32 (and Adam, which divides the
    # gradient's scale away) trains as usual. Real networks reach this regime through depth and
    # losses averaged over many elements; a small unit makes it total and deterministic.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    w = positive_finite("loss_weight", loss_weight)
    bunch = load_digits()
    if isinstance(n_train, bool) or not isinstance(n_train, int) or not 10 <= n_train <= len(bunch.target) - 10:
        raise ValueError(f"n_train must be an int in [10, {len(bunch.target) - 10}], got {n_train!r}")
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    # 1408 = 22 * 64 training samples: every batch of 64 (or 32, 128) is full, so no short
    # last batch carries gradients large enough to survive fp16.
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, train_size=n_train, random_state=seed, stratify=y)
    return Dataset(
        "underflow",
        x_tr,
        y_tr,
        x_te,
        y_te,
        10,
        f"digits trained on {w:g} x cross-entropy: its gradients flush to zero in fp16",
        {"loss_weight": w, "flush_batch_size": underflow_batch_threshold(w)},
    )


def underflow_batch_threshold(loss_weight: float) -> int:
    """The smallest batch size whose logit gradients all flush to zero in fp16 without scaling.

    A mean cross-entropy over ``B`` samples times ``loss_weight`` has per-element gradients of
    at most ``loss_weight / B``; fp16 rounds everything up to ``2**-25`` (half its smallest
    subnormal, ties to even) to zero. ``underflow_batch_threshold(2**-20)`` -> 32.
    """
    return int(np.ceil(float(loss_weight) / 2.0**-25))


# The text task: a fixed list of the standard library's own sources, read from this interpreter.
TEXT_FILES: tuple[str, ...] = (
    "abc.py",
    "bisect.py",
    "copy.py",
    "heapq.py",
    "operator.py",
    "string.py",
    "textwrap.py",
    "contextlib.py",
    "fractions.py",
    "random.py",
    "functools.py",
    "statistics.py",
    "dataclasses.py",
)
# 96 characters: newline and printable ASCII. Anything else (a tab, a non-ASCII letter) reads as "?".
TEXT_VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))


def encode(text: str) -> np.ndarray:
    """Character ids (int64) in :data:`TEXT_VOCAB`; characters outside it become ``"?"``."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.full(max(int(codes.max(initial=0)) + 1, 128), TEXT_VOCAB.index("?"), dtype=np.uint8)
    table[[ord(c) for c in TEXT_VOCAB]] = np.arange(len(TEXT_VOCAB))
    return table[codes].astype(np.int64)


def decode(ids: Any) -> str:
    """The text of character ids in :data:`TEXT_VOCAB` (the inverse of :func:`encode`)."""
    return "".join(TEXT_VOCAB[int(i)] for i in np.asarray(ids).reshape(-1))


def _text(seed: int, block: int = 64, test_fraction: float = 0.1) -> Dataset:
    # Non-overlapping windows of `block` characters; the target is the window shifted by one.
    # The first 90% of the concatenated files train, the last 10% test (no window crosses).
    # seed shifts every window by seed % block characters.
    import sysconfig

    int_at_least("block", block, 2)
    root = sysconfig.get_paths()["stdlib"]
    parts = []
    for name in TEXT_FILES:
        try:
            with open(os.path.join(root, name), encoding="utf-8") as f:
                parts.append(f.read())
        except OSError as err:
            raise ValueError(f"text dataset: {name} is not in this Python's standard library ({root})") from err
    ids = encode("".join(parts))
    cut = int(len(ids) * (1 - test_fraction))

    def windows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = a[seed % block :]
        n = (len(a) - 1) // block
        return a[: n * block].reshape(n, block), a[1 : n * block + 1].reshape(n, block)

    (x_tr, y_tr), (x_te, y_te) = windows(ids[:cut]), windows(ids[cut:])
    return Dataset(
        "text",
        x_tr,
        y_tr,
        x_te,
        y_te,
        len(TEXT_VOCAB),
        f"characters of {len(TEXT_FILES)} Python {sys.version_info[0]}.{sys.version_info[1]} standard-library "
        f"sources, windows of {block}, next-character targets",
        {"vocab": TEXT_VOCAB, "files": TEXT_FILES, "root": root, "chars": len(ids), "block": block},
    )


_LOADERS: dict[str, Callable[..., Dataset]] = {}


def register(name: str, loader: Callable[..., Dataset], *, replace: bool = False) -> None:
    """Make ``load(name, seed=..., **options)`` call ``loader(seed, **options)``.

    Usage::

        mpc.data.register("mine", lambda seed, **o: mpc.data.Dataset("mine", x, y, xt, yt, num_classes=3))
        mpc.data.load("mine")

    The built-in datasets are registered this way too. A name already taken is refused unless
    ``replace=True``, so a typo cannot silently shadow ``"digits"``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"dataset name must be a non-empty string, got {name!r}")
    if not callable(loader):
        raise TypeError(f"loader must be callable(seed, **options) -> Dataset, got {loader!r}")
    if name in _LOADERS and not replace:
        raise ValueError(f"dataset {name!r} is already registered; pass replace=True to replace it")
    _LOADERS[name] = loader


for _name, _loader in (("digits", _digits), ("synthetic", _synthetic), ("underflow", _underflow), ("text", _text)):
    register(_name, _loader)


def available() -> list[str]:
    """The dataset names :func:`load` accepts."""
    return sorted(_LOADERS)


def load(name: str = "digits", seed: int = 0, **options: Any) -> Dataset:
    """Load a dataset by name, deterministically for a given seed.

    Args:
        name: one of :func:`available` (``"digits"``, ``"synthetic"``, ``"underflow"``, ``"text"``).
            Default ``"digits"``. ``"underflow"`` is the digits task meant to be trained on
            ``meta["loss_weight"] * cross-entropy`` (see :func:`mpcourse.engines.losses.cross_entropy`).
        seed: the split (digits), the generated data (synthetic), or the windows' offset
            (text: ``seed % block`` characters). Default 0.
        **options: loader-specific, e.g. ``n_train=...`` for synthetic, ``block=64`` (the
            window length) for text. ``"text"`` reads :data:`TEXT_FILES` from the running
            interpreter's standard library: no download, the same on every machine with that
            Python version.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    int_at_least("seed", seed, 0)
    return _LOADERS[name](seed, **options)
