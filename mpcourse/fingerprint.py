"""A fingerprint of a model's parameters: one SHA-256 over their names and float32 values (numpy only).

Usage::

    from mpcourse.fingerprint import sha256_arrays

    sha256_arrays({"head.weight": w, "head.bias": b})   # '3f1c...': equal digests, equal parameters

Two ranks of a distributed run that print the same digest hold bit-identical parameters; the
names are part of it, so a renamed or missing tensor changes the digest too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

__all__ = ["sha256_arrays"]


def sha256_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over each array's name and float32 bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name], dtype=np.float32).tobytes())
    return h.hexdigest()
