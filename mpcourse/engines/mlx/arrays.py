"""MLX arrays to and from numpy, bit for bit (bf16 through ml_dtypes), and batches as MLX arrays.

Usage::

    from mpcourse.engines.mlx.arrays import array_to_numpy, to_numpy, from_numpy

    array_to_numpy(mx.array([1.0], dtype=mx.bfloat16))   # ml_dtypes.bfloat16 values, not float32
    from_numpy(to_numpy(tree), like=tree, what="weights") # the same tree, checked key by key
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

__all__ = ["all_finite", "mx_array", "array_to_numpy", "to_numpy", "from_numpy"]


def all_finite(tree: Any) -> bool:
    """True when no leaf of ``tree`` holds inf or nan (one fp32 sum, one host sync)."""
    sums = [p.astype(mx.float32).sum() for _, p in tree_flatten(tree)]
    return bool(mx.isfinite(mx.stack(sums).sum()).item()) if sums else True


def mx_array(a: np.ndarray) -> mx.array:
    """A checked numpy batch as an mlx array: integers as int32 (labels, token ids), floats as float32."""
    if a.dtype.kind in "iu":
        fits = a.size == 0 or (a.min() >= -(2**31) and a.max() < 2**31)
        return mx.array(a.astype(np.int32) if fits else a)
    return mx.array(a.astype(np.float32, copy=False))


def array_to_numpy(a: mx.array) -> np.ndarray:
    """A numpy copy of an mlx array; bfloat16 becomes ``ml_dtypes.bfloat16`` (bit for bit)."""
    if a.dtype == mx.bfloat16:  # numpy has no bfloat16: copy the bits into ml_dtypes' type
        import ml_dtypes

        return np.array(a.view(mx.uint16), copy=True).view(ml_dtypes.bfloat16)
    return np.array(a, copy=True)


def to_numpy(tree: Any) -> dict[str, np.ndarray]:
    return {k: array_to_numpy(v) for k, v in tree_flatten(tree)}


def from_numpy(flat: dict[str, Any], like: Any, what: str) -> Any:
    """The tree ``like`` with every leaf replaced by ``flat[key]``, checked for keys and shapes."""
    mine = dict(tree_flatten(like))
    if not isinstance(flat, dict) or set(flat) != set(mine):
        got = set(flat) if isinstance(flat, dict) else set()
        diff = sorted(got ^ set(mine))[:3]
        raise ValueError(f"state_dict {what} do not match this model (differing keys: {diff})")
    out = []
    for k, ref in mine.items():
        v = np.asarray(flat[k])
        if v.shape != tuple(ref.shape):
            raise ValueError(f"state_dict {what}: {k!r} has shape {v.shape}, expected {tuple(ref.shape)}")
        if ref.dtype == mx.bfloat16:
            arr = mx.array(v.astype(np.float32)).astype(mx.bfloat16)  # exact: bf16 values in fp32
        else:
            arr = mx.array(v).astype(ref.dtype)
        out.append((k, arr))
    return tree_unflatten(out)
