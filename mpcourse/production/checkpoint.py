"""Crash-safe checkpoints: atomic writes, a checksum, and a clear refusal of bad files.

Usage::

    from mpcourse.production.checkpoint import save_checkpoint, load_checkpoint, CheckpointManager

    save_checkpoint("run/ckpt.mpck", eng)          # model, optimizer, scaler, step, data
                                                   #   position, RNG, precision and config
    ck = load_checkpoint("run/ckpt.mpck", eng2)    # eng2 continues exactly where eng stood
    ck.meta["step"], ck.meta["precision"]

    mgr = CheckpointManager("run", every=50, keep=3)
    mgr.maybe_save(eng)                            # every 50 steps, oldest pruned
    mgr.latest()                                   # newest file that passes every check

The file (no pickle: nothing in it can run code when read)::

    b"MPCKPT\\x00\\x01"            8 bytes, the magic and format version
    header_len, payload_len       two little-endian uint64
    sha256(header + payload)      32 bytes
    header                        UTF-8 JSON: meta, the state tree with arrays replaced by
                                  references, and an array table (dtype, shape, offset)
    payload                       the arrays' raw little-endian bytes, one after the other

Writing goes to a temporary file in the same directory, which is flushed, fsync'd and then
``os.replace``'d over the target (atomic on POSIX and Windows), and the directory is fsync'd.
A crash at any moment leaves either the old checkpoint or the new one, never half of one.
Reading checks the magic, the length (a truncated file), the checksum (a corrupt one) and,
when loading into an engine, that backend, model and config match.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpcourse.engines.portable import FrameworkArray, export_state, import_state

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "write_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointManager",
    "MAGIC",
    "state_differences",
]

MAGIC = b"MPCKPT\x00\x01"
_PREFIX = struct.Struct("<8sQQ32s")
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
    header = json.dumps({"meta": meta, "tree": tree, "arrays": table}).encode("utf-8")
    digest = hashlib.sha256(header)
    for blob in blobs:
        digest.update(blob)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_PREFIX.pack(MAGIC, len(header), offset, digest.digest()))
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


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint file.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: not a checkpoint, truncated, or corrupt; the message says which.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < _PREFIX.size or raw[:8] != MAGIC:
        if raw[:6] == MAGIC[:6]:
            raise CheckpointError(
                f"{path}: checkpoint format version {raw[6:8]!r} is not supported (this mpcourse reads {MAGIC[6:8]!r})"
            )
        raise CheckpointError(f"{path} is not an mpcourse checkpoint (no {MAGIC!r} header); it is {len(raw)} bytes")
    _, header_len, payload_len, digest = _PREFIX.unpack_from(raw)
    expected = _PREFIX.size + header_len + payload_len
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise CheckpointError(
            f"{path} is {what}: expected {expected} bytes, found {len(raw)} "
            f"(an interrupted copy?); use an earlier checkpoint"
        )
    body = raw[_PREFIX.size :]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(
            f"{path} is corrupt: its sha256 checksum does not match the content; use an earlier checkpoint"
        )
    head = json.loads(body[:header_len].decode("utf-8"))
    payload = memoryview(body)[header_len:]
    arrays = []
    for entry in head["arrays"]:
        dtype = _dtype_from(entry["dtype"])
        chunk = payload[entry["offset"] : entry["offset"] + entry["nbytes"]]
        arrays.append(np.frombuffer(chunk, dtype=dtype).reshape(tuple(entry["shape"])).copy())
    return Checkpoint(path=path, meta=head["meta"], state=_decode(head["tree"], arrays))


def state_differences(a: Any, b: Any) -> list[str]:
    """Paths of the arrays that differ between two state trees, bit for bit (``[]``: identical).

    Dtype, shape and every byte count; a path present in only one tree counts as a difference.
    """
    from mpcourse.engines.portable import array_leaves

    la, lb = array_leaves(a), array_leaves(b)
    return sorted(
        k
        for k in set(la) | set(lb)
        if k not in la
        or k not in lb
        or la[k].dtype != lb[k].dtype
        or la[k].shape != lb[k].shape
        or la[k].tobytes() != lb[k].tobytes()
    )


def save_checkpoint(path: str | os.PathLike[str], engine: Any, *, meta: dict[str, Any] | None = None) -> Path:
    """Save everything ``engine`` needs to continue exactly, atomically.

    Args:
        path: the file to write (its directory is created).
        engine: a built engine (torch or mlx).
        meta: extra JSON-friendly values to store (e.g. a trainer's events). Default None.
    """
    from mpcourse import __version__

    state = export_state(engine)
    info = {
        "backend": engine.backend,
        "model": engine.model_name,
        "device": engine.device,
        "precision": engine.config.precision,
        "config": engine.config.to_dict(),
        "step": engine.step,
        "epoch": engine.epoch,
        "batch_in_epoch": engine.batch_in_epoch,
        "mpcourse": __version__,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    return write_checkpoint(path, state, {**info, **(meta or {})})


def load_checkpoint(path: str | os.PathLike[str], engine: Any) -> Checkpoint:
    """Verify a checkpoint and load it into ``engine``, which then continues exactly.

    Raises:
        CheckpointError: a bad file (see :func:`read_checkpoint`), or one written by another
            backend, model or config; the engine is left untouched then.
    """
    ck = read_checkpoint(path)
    check_compatible(ck, engine)
    try:
        import_state(engine, ck.state)
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{ck.path} does not fit this engine: {err}") from err
    return ck


def check_compatible(ck: Checkpoint, engine: Any) -> None:
    """Refuse a checkpoint from another backend, model or config, naming every difference."""
    diffs = [
        f"{k}: {ck.meta.get(k)!r} in the checkpoint, {mine!r} in the engine"
        for k, mine in (("backend", engine.backend), ("model", engine.model_name))
        if ck.meta.get(k) != mine
    ]
    saved, mine = ck.meta.get("config", {}), engine.config.to_dict()
    diffs += [
        f"config.{k}: {saved.get(k)!r} in the checkpoint, {mine.get(k)!r} in the engine"
        for k in sorted(set(saved) | set(mine))
        if saved.get(k) != mine.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"{ck.path} was written by a different run: "
            + "; ".join(diffs)
            + ". Build the engine with the checkpoint's backend, model and config "
            "(Checkpoint.meta) to resume it"
        )


class CheckpointManager:
    """Numbered checkpoints in one directory: save every N steps, keep the last K, find the newest good one.

    Usage::

        mgr = CheckpointManager("run", every=50, keep=3)
        eng.fit(ds, epochs=5, callback=lambda e, r: mgr.maybe_save(e) and False)
        mgr.latest()          # Path of the newest checkpoint that verifies, or None

    Args:
        directory: where the files go (created).
        every: save when ``engine.step`` is a multiple of this, >= 1. Default 100.
        keep: how many of the newest files to keep, >= 1. Default 3.
        prefix: file name prefix. Default ``"ckpt"``.
    """

    def __init__(
        self, directory: str | os.PathLike[str], every: int = 100, keep: int = 3, prefix: str = "ckpt"
    ) -> None:
        for name, v in (("every", every), ("keep", keep)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.directory = Path(directory)
        self.every, self.keep, self.prefix = every, keep, prefix

    def path_for(self, step: int) -> Path:
        return self.directory / f"{self.prefix}_{step:08d}.mpck"

    def paths(self) -> list[Path]:
        """Checkpoint files here, oldest first (by step number in the name)."""
        return sorted(self.directory.glob(f"{self.prefix}_*.mpck"))

    def save(self, engine: Any, meta: dict[str, Any] | None = None) -> Path:
        """Save now, then prune all but the newest ``keep`` files."""
        path = save_checkpoint(self.path_for(engine.step), engine, meta=meta)
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def maybe_save(self, engine: Any, meta: dict[str, Any] | None = None) -> Path | None:
        """Save if ``engine.step`` is a multiple of ``every``; the path written, or None."""
        return self.save(engine, meta) if engine.step > 0 and engine.step % self.every == 0 else None

    def latest(self) -> Path | None:
        """The newest file that verifies; bad ones are skipped with a warning naming them."""
        for path in reversed(self.paths()):
            try:
                read_checkpoint(path)
            except CheckpointError as err:
                warnings.warn(f"skipping a bad checkpoint: {err}", stacklevel=2)
                continue
            return path
        return None
