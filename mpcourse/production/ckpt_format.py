"""The checkpoint file format: a numpy tree and JSON meta, every byte after the magic checksummed.

Usage::

    from mpcourse.production.ckpt_format import write_checkpoint, read_checkpoint, CheckpointError

    write_checkpoint("run/a.mpck", {"w": np.zeros(3)}, {"step": 7})   # atomic
    ck = read_checkpoint("run/a.mpck")       # Checkpoint(path, meta, state), or a CheckpointError
    ck.meta["step"], ck.state["w"]           #   naming the file and what is wrong with it

The file (no pickle: nothing in it can run code when read)::

    offset  size
       0      8   b"MPCKPT\\x00\\x02"     the magic and the format version
       8      8   header_len            little-endian uint64
      16      8   payload_len           little-endian uint64
      24     32   head_sha256           sha256(bytes 8..24 + header): the lengths and the header
      56     32   file_sha256           sha256(bytes 8..56 + header + payload): everything else
      88          header                UTF-8 JSON: meta, the state tree with arrays replaced by
                                        references, and an array table (dtype, shape, offset)
                  payload               the arrays' raw little-endian bytes, one after the other

Every byte after the magic is covered by ``file_sha256``; a damaged byte anywhere, a wrong
length field or a cut-short file is a :class:`CheckpointError` that names the file and the
damage, before any JSON is parsed. The second digest (lengths and header only) tells a file cut
short, whose header still verifies, from one whose length fields are damaged.

Why not safetensors for the payload: safetensors 0.8 (PyPI, no torch needed) lays out tensors
well, but it carries no checksum -- a flipped payload byte loads silently (measured with its
numpy API, 0.8.0: a ``1.0`` came back as ``-4.0``, no error) -- and it stores flat name ->
tensor maps, while an engine state is a nested tree of dicts, tuples, numpy scalars and JSON
values. The checksum and the tree would both have to be added around it; the raw layout here
is the same idea in a few lines, with no extra dependency.

Writing goes to a temporary file (``.NAME.XXXX.tmp``) in the same directory, which is flushed,
fsync'd and ``os.replace``'d over the target (atomic on POSIX and Windows); then the directory
is fsync'd. A crash at any moment leaves the old file or the new one, never half of one; a kill
can leave the temporary file, which :class:`~mpcourse.production.checkpoint.CheckpointManager`
removes on the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpcourse.engines.portable import FrameworkArray

__all__ = ["CheckpointError", "Checkpoint", "write_checkpoint", "read_checkpoint", "MAGIC", "PREFIX_SIZE"]

MAGIC = b"MPCKPT\x00\x02"
_PREFIX = struct.Struct("<8sQQ32s32s")
PREFIX_SIZE = _PREFIX.size  # 88 bytes
_MARK = "__mpc_"


class CheckpointError(ValueError):
    """A checkpoint file that is truncated, corrupt, not a checkpoint, or for another run."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds: ``meta`` (JSON values) and ``state`` (a numpy tree)."""

    path: Path
    meta: dict[str, Any]
    state: dict[str, Any] = field(repr=False)


# --- encoding ----------------------------------------------------------------------------------
def _dtype_name(arr: np.ndarray) -> str:
    if arr.dtype.kind in "OUSVM" and arr.dtype.name != "bfloat16":
        raise TypeError(f"cannot store an array of dtype {arr.dtype} in a checkpoint (numbers and booleans only)")
    return arr.dtype.name


def _dtype_from(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _encode(obj: Any, arrays: list[np.ndarray], path: str) -> Any:
    if isinstance(obj, FrameworkArray):
        return {f"{_MARK}array__": _add(obj.array, arrays), "framework": obj.framework}
    if isinstance(obj, np.ndarray):
        return {f"{_MARK}array__": _add(obj, arrays)}
    if isinstance(obj, np.generic):  # a numpy scalar: kept as one, with its dtype
        return {f"{_MARK}array__": _add(np.asarray(obj), arrays), "scalar": True}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith(_MARK) for k in obj):
            return {k: _encode(v, arrays, f"{path}/{k}") for k, v in obj.items()}
        return {
            f"{_MARK}dict__": [[_encode(k, arrays, path), _encode(v, arrays, f"{path}/{k}")] for k, v in obj.items()]
        }
    if isinstance(obj, tuple):
        return {f"{_MARK}tuple__": [_encode(v, arrays, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{path}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"cannot store {type(obj).__name__} at {path or '/'} in a checkpoint; allowed: "
        f"dict, list, tuple, str, int, float, bool, None, numpy arrays"
    )


def _add(arr: np.ndarray, arrays: list[np.ndarray]) -> int:
    _dtype_name(arr)
    arrays.append(arr)
    return len(arrays) - 1


def _decode(obj: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if f"{_MARK}array__" in obj:
        arr = arrays[obj[f"{_MARK}array__"]]
        if "framework" in obj:
            return FrameworkArray(obj["framework"], arr)
        return arr[()] if obj.get("scalar") else arr
    if f"{_MARK}tuple__" in obj:
        return tuple(_decode(v, arrays) for v in obj[f"{_MARK}tuple__"])
    if f"{_MARK}dict__" in obj:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in obj[f"{_MARK}dict__"]}
    return {k: _decode(v, arrays) for k, v in obj.items()}


# --- files -------------------------------------------------------------------------------------
def write_checkpoint(path: str | os.PathLike[str], state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Atomically write a numpy ``state`` tree and JSON ``meta`` to ``path``.

    Raises:
        TypeError: a value that cannot be stored (nothing is written then).
        OSError: the disk refused; the previous file at ``path``, if any, is untouched.
    """
    path = Path(path)
    arrays: list[np.ndarray] = []
    tree = _encode(state, arrays, "")
    table, offset, blobs = [], 0, []
    for arr in arrays:
        data = np.array(arr, order="C", copy=True)  # (not ascontiguousarray: it makes 0-d arrays 1-d)
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("<"))
        blob = data.tobytes()
        table.append({"dtype": _dtype_name(data), "shape": list(data.shape), "offset": offset, "nbytes": len(blob)})
        blobs.append(blob)
        offset += len(blob)
    header = json.dumps({"meta": meta, "tree": tree, "arrays": table}, allow_nan=True).encode("utf-8")
    lengths = struct.pack("<QQ", len(header), offset)
    head_digest = hashlib.sha256(lengths + header).digest()
    file_digest = hashlib.sha256(lengths + head_digest)
    file_digest.update(header)
    for blob in blobs:
        file_digest.update(blob)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + lengths + head_digest + file_digest.digest())
            f.write(header)
            for blob in blobs:
                f.write(blob)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable (POSIX); Windows cannot open directories, and needs not.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_bytes(path: Path, raw: bytes) -> tuple[int, int]:
    """The header and payload lengths of a file whose every byte verifies, or a CheckpointError."""
    n = len(raw)
    if n < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
        if n == 0:
            raise CheckpointError(f"{path} is empty (0 bytes): truncated, or never written; use an earlier checkpoint")
        if n < len(MAGIC) and MAGIC.startswith(raw):
            raise CheckpointError(
                f"{path} is truncated: {n} bytes, shorter than the {PREFIX_SIZE}-byte prefix; use an earlier checkpoint"
            )
        if n >= len(MAGIC) and raw[:6] == MAGIC[:6]:
            raise CheckpointError(
                f"{path}: checkpoint format version {raw[6:8]!r} is not supported (this mpcourse reads "
                f"{MAGIC[6:8]!r}; version b'\\x00\\x01' files, whose prefix had no checksum, cannot be verified)"
            )
        raise CheckpointError(f"{path} is not an mpcourse checkpoint (no {MAGIC!r} header); it is {n} bytes")
    if n < PREFIX_SIZE:
        raise CheckpointError(
            f"{path} is truncated: {n} bytes, shorter than the {PREFIX_SIZE}-byte prefix; use an earlier checkpoint"
        )
    _, header_len, payload_len, head_digest, file_digest = _PREFIX.unpack_from(raw)
    expected = PREFIX_SIZE + header_len + payload_len
    head_ok = hashlib.sha256(raw[8:24] + raw[PREFIX_SIZE : PREFIX_SIZE + header_len]).digest() == head_digest
    if n != expected:
        if head_ok:  # the lengths are right: the file itself was cut short or extended
            what = "truncated" if n < expected else "has trailing bytes"
            raise CheckpointError(
                f"{path} is {what}: expected {expected} bytes, found {n} "
                f"(an interrupted copy?); use an earlier checkpoint"
            )
        raise CheckpointError(
            f"{path} is truncated or its prefix is damaged: its length fields say {expected} bytes, found {n}, "
            f"and the length fields and header fail their sha256 checksum; use an earlier checkpoint"
        )
    if not head_ok:
        raise CheckpointError(
            f"{path} is corrupt: its length fields or header fail their sha256 checksum; use an earlier checkpoint"
        )
    if hashlib.sha256(raw[8 : PREFIX_SIZE - 32] + raw[PREFIX_SIZE:]).digest() != file_digest:
        raise CheckpointError(
            f"{path} is corrupt: its sha256 checksum does not match the content; use an earlier checkpoint"
        )
    return header_len, payload_len


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint file.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: not a checkpoint, truncated, or corrupt; the message names the file and says which.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    header_len, payload_len = _check_bytes(path, raw)
    try:  # the bytes verify, so only a file forged with matching digests reaches an error here
        head = json.loads(raw[PREFIX_SIZE : PREFIX_SIZE + header_len].decode("utf-8"))
        payload = memoryview(raw)[PREFIX_SIZE + header_len :]
        arrays = []
        for entry in head["arrays"]:
            start, nbytes = int(entry["offset"]), int(entry["nbytes"])
            if start < 0 or nbytes < 0 or start + nbytes > payload_len:
                raise ValueError(f"array bytes {start}..{start + nbytes} lie outside the {payload_len}-byte payload")
            dtype = _dtype_from(entry["dtype"])
            chunk = payload[start : start + nbytes]
            arrays.append(np.frombuffer(chunk, dtype=dtype).reshape(tuple(entry["shape"])).copy())
        meta, state = head["meta"], _decode(head["tree"], arrays)
        if not isinstance(meta, dict) or not isinstance(state, dict):
            raise ValueError("meta and state must be JSON objects")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{path} verifies but its header is not one mpcourse writes: {err}") from err
    return Checkpoint(path=path, meta=meta, state=state)
