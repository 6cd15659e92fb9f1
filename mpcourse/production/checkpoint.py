"""Crash-safe checkpoints of an engine, and a directory of them that a run can rely on.

Usage::

    from mpcourse.production.checkpoint import save_checkpoint, load_checkpoint, CheckpointManager

    save_checkpoint("run/ckpt.mpck", eng, data=ds)   # model, optimizer, scaler, step, data
                                                     #   position, RNG, precision, config, dataset
    ck = load_checkpoint("run/ckpt.mpck", eng2, data=ds)   # eng2 continues exactly where eng stood
    ck.meta["step"], ck.meta["precision"]

    mgr = CheckpointManager("run", every=50, keep=3)
    mgr.maybe_save(eng)                            # every 50 steps; older ones of this run pruned
    mgr.latest()                                   # the newest checkpoint of this run that verifies
    mgr.scan().skipped                             # [(path, why)] for every file it passed over

The file format (every byte after the magic checksummed; why not safetensors) is in
:mod:`mpcourse.production.ckpt_format`. Loading checks the file, then that backend, model,
config and -- when ``data`` is given -- the dataset (name, shapes, a sha256 of its arrays) match
the engine's; a refused load leaves the engine untouched.

The directory rules (:class:`CheckpointManager`), which the tests check one by one:

1. **A save never removes the file it wrote.** If the name it would take holds a damaged file
   or another run's checkpoint, it writes ``PREFIX_STEP.RUNID.mpck`` beside it instead of
   overwriting.
2. **Pruning keeps the newest ``keep`` valid checkpoints of this run** and nothing else goes:
   newest means most recently written (``meta["written_ns"]``), not highest step, so stale
   higher-numbered files cannot push out the new ones. Damaged files and other runs' files are
   never pruned (they are not this run's to delete) and never count towards ``keep``.
3. **A run is identified** by ``meta["run"]``: backend, model, config and dataset record, and
   a sha256 ``id`` of them. A manager is bound to one run, by :meth:`CheckpointManager.bind`
   (the :class:`~mpcourse.production.trainer.Trainer` does that) or by its first save.
4. **Resume uses the newest valid checkpoint of this run** and reports every file it skipped,
   with why (damaged: the :class:`CheckpointError` text; another run: the differing fields).
5. **With none valid, resume refuses** (``Trainer.resume`` raises :class:`CheckpointError`;
   ``python -m mpcourse.production train --resume`` exits 2) unless ``--allow-fresh-start``.
6. **Stale ``.tmp`` files** left by a kill during a write are removed on the next start:
   :meth:`CheckpointManager.remove_stale_tmp`, called by the first save and by the CLI. One run
   writes to a directory at a time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpcourse._validate import int_at_least
from mpcourse.engines.portable import export_state, import_state
from mpcourse.production.ckpt_format import (
    MAGIC,
    Checkpoint,
    CheckpointError,
    read_checkpoint,
    write_checkpoint,
)

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "write_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "check_compatible",
    "dataset_record",
    "run_identity",
    "CheckpointManager",
    "Scan",
    "MAGIC",
    "state_differences",
]


# --- what identifies the data and the run --------------------------------------------------------
def dataset_record(data: Any) -> dict[str, Any]:
    """Name, shapes, classes and a sha256 of every array of a Dataset (or an ``(x, y)`` pair).

    Two datasets with the same record hold the same bytes; the record goes into checkpoints so a
    resume on other data is refused.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2:
        name, parts, classes = None, {"x_train": data[0], "y_train": data[1]}, None
    elif hasattr(data, "x_train"):
        name, classes = data.name, int(data.num_classes)
        parts = {k: getattr(data, k) for k in ("x_train", "y_train", "x_test", "y_test")}
    else:
        raise TypeError(f"data must be an mpcourse Dataset or an (x, y) pair, got {type(data).__name__}")
    digest = hashlib.sha256()
    shapes = {}
    for key, arr in parts.items():
        a = np.ascontiguousarray(arr)
        shapes[key] = list(a.shape)
        digest.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        digest.update(a.tobytes())
    return {"name": name, "shapes": shapes, "num_classes": classes, "sha256": digest.hexdigest()}


def run_identity(backend: str, model: str, config: dict[str, Any], dataset: dict[str, Any] | None) -> dict[str, Any]:
    """What makes two checkpoints the same run, plus an ``id`` (a sha256 prefix of it)."""
    ident = {"backend": backend, "model": model, "config": config, "dataset": dataset}
    ident["id"] = hashlib.sha256(json.dumps(ident, sort_keys=True, default=repr).encode()).hexdigest()[:16]
    return ident


def _differences(saved: Any, mine: Any, prefix: str, here: str = "here") -> list[str]:
    if isinstance(saved, dict) and isinstance(mine, dict):
        out: list[str] = []
        for k in sorted(set(saved) | set(mine), key=str):
            if k != "id":
                out += _differences(saved.get(k), mine.get(k), f"{prefix}.{k}" if prefix else str(k), here)
        return out
    return [] if saved == mine else [f"{prefix}: {saved!r} in the checkpoint, {mine!r} {here}"]


# --- one engine, one file ---------------------------------------------------------------------------
def save_checkpoint(
    path: str | os.PathLike[str], engine: Any, *, meta: dict[str, Any] | None = None, data: Any = None
) -> Path:
    """Save everything ``engine`` needs to continue exactly, atomically.

    Args:
        path: the file to write (its directory is created).
        engine: a built engine (torch or mlx).
        meta: extra JSON-friendly values to store (e.g. a trainer's events). Default None.
        data: the Dataset it trains on, recorded so that a resume on other data is refused. Default None.
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
        "written_ns": time.time_ns(),
    }
    if data is not None:
        info["dataset"] = dataset_record(data)
    return write_checkpoint(path, state, {**info, **(meta or {})})


def load_checkpoint(path: str | os.PathLike[str], engine: Any, *, data: Any = None) -> Checkpoint:
    """Verify a checkpoint and load it into ``engine``, which then continues exactly.

    Raises:
        CheckpointError: a bad file (see :func:`read_checkpoint`), or one written by another
            backend, model, config or (with ``data``) dataset; the engine is left untouched then.
    """
    ck = read_checkpoint(path)
    check_compatible(ck, engine, data=data)
    try:
        import_state(engine, ck.state)
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(f"{ck.path} does not fit this engine: {err}") from err
    return ck


def check_compatible(ck: Checkpoint, engine: Any, *, data: Any = None) -> None:
    """Refuse a checkpoint from another backend, model, config or dataset, naming every difference."""
    saved = {k: ck.meta.get(k) for k in ("backend", "model", "config")}
    mine = {"backend": engine.backend, "model": engine.model_name, "config": engine.config.to_dict()}
    diffs = _differences(saved, mine, "", "in the engine")
    if data is not None:
        if not isinstance(ck.meta.get("dataset"), dict):
            diffs.append("dataset: the checkpoint records none (saved without data=), so it cannot be checked")
        else:
            diffs += _differences(ck.meta["dataset"], dataset_record(data), "dataset", "in the data given")
    if diffs:
        raise CheckpointError(
            f"{ck.path} was written by a different run: "
            + "; ".join(diffs)
            + ". Build the engine with the checkpoint's backend, model, config and data "
            "(Checkpoint.meta) to resume it"
        )


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


# --- a directory of them ------------------------------------------------------------------------------
@dataclass
class Scan:
    """What :meth:`CheckpointManager.scan` found: this run's valid files (newest first) and the rest."""

    valid: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def newest(self) -> Path | None:
        return self.valid[0][0] if self.valid else None


def _positive(name: str, v: Any) -> int:
    return int_at_least(name, v, 1)


class CheckpointManager:
    """Numbered checkpoints of one run in one directory (the rules are in the module docstring).

    Usage::

        mgr = CheckpointManager("run", every=50, keep=3)
        eng.fit(ds, epochs=5, callback=lambda e, r: mgr.maybe_save(e) and False)
        mgr.latest()          # Path of the newest checkpoint of this run that verifies, or None

    Args:
        directory: where the files go (created by the first save).
        every: save when ``engine.step`` is a multiple of this, >= 1. Default 100.
        keep: how many of this run's newest valid files to keep, >= 1. Default 3.
        prefix: file name prefix. Default ``"ckpt"``.
        run: the run's :func:`run_identity`, or None to take the first saved engine's. Default None.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        every: int = 100,
        keep: int = 3,
        prefix: str = "ckpt",
        *,
        run: dict[str, Any] | None = None,
    ) -> None:
        self.every, self.keep = _positive("every", every), _positive("keep", keep)
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "/\\*?[]"):
            raise ValueError(f"prefix must be a plain file name part (no / \\ * ? [ ]), got {prefix!r}")
        self.directory, self.prefix = Path(directory), prefix
        self.run: dict[str, Any] | None = None
        if run is not None:
            self.bind(run)
        self._metas: dict[Path, tuple[tuple[int, int], dict[str, Any] | str]] = {}
        self._cleaned = False

    def bind(self, run: dict[str, Any]) -> None:
        """Make ``run`` (a :func:`run_identity`) the run this manager saves, prunes and resumes."""
        if not isinstance(run, dict) or "id" not in run:
            raise TypeError(f"run must be a dict from run_identity(), got {run!r}")
        if self.run is not None and self.run["id"] != run["id"]:
            raise ValueError(
                f"this CheckpointManager belongs to run {self.run['id']}, not {run['id']} "
                f"({'; '.join(_differences(self.run, run, ''))}); give each run its own manager"
            )
        self.run = run

    def path_for(self, step: int) -> Path:
        return self.directory / f"{self.prefix}_{step:08d}.mpck"

    def paths(self) -> list[Path]:
        """Checkpoint files here, by name (step number)."""
        return sorted(self.directory.glob(f"{self.prefix}_*.mpck"))

    def remove_stale_tmp(self) -> list[Path]:
        """Delete the temporary files a killed write left here (``.NAME.mpck.XXXX.tmp``); returns them."""
        self._cleaned = True
        gone = sorted(self.directory.glob(".*.mpck.*.tmp")) if self.directory.is_dir() else []
        for p in gone:
            p.unlink(missing_ok=True)
        return gone

    def _meta(self, path: Path) -> dict[str, Any] | str:
        """The verified meta of ``path``, or why it is refused (cached while the file is unchanged)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return "it vanished while being read"
        key = (st.st_size, st.st_mtime_ns)
        hit = self._metas.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            found: dict[str, Any] | str = read_checkpoint(path).meta
        except CheckpointError as err:
            found = str(err)
        except OSError as err:
            found = f"{path} cannot be read: {err}"
        self._metas[path] = (key, found)
        return found

    def scan(self, run: dict[str, Any] | None = None) -> Scan:
        """Every file here, sorted: this run's valid ones (newest written first) and the skipped ones.

        Args:
            run: the run to look for. Default: the bound run, or any run when unbound.
        """
        run = run or self.run
        out = Scan()
        for path in self.paths():
            meta = self._meta(path)
            if isinstance(meta, str):
                out.skipped.append((path, meta))
            elif run is not None and (meta.get("run") or {}).get("id") != run["id"]:
                why = "; ".join(_differences(meta.get("run") or {}, run, "")) or "no run identity recorded"
                out.skipped.append((path, f"{path} is another run's checkpoint: {why}"))
            else:
                out.valid.append((path, meta))
        out.valid.sort(key=lambda pm: (pm[1].get("written_ns", 0), pm[1].get("step", 0)), reverse=True)
        return out

    def save(self, engine: Any, meta: dict[str, Any] | None = None) -> Path:
        """Save now (binding the run on the first save), then prune this run's older files."""
        if self.run is None:
            self.bind(run_identity(engine.backend, engine.model_name, engine.config.to_dict(), None))
        assert self.run is not None
        if not self._cleaned:
            self.remove_stale_tmp()
        path = self.path_for(engine.step)
        if path.exists():
            old = self._meta(path)
            if isinstance(old, str) or (old.get("run") or {}).get("id") != self.run["id"]:
                path = path.with_name(f"{path.stem}.{self.run['id'][:8]}.mpck")  # never overwrite what is not ours
        extra = {**(meta or {}), "run": self.run}
        if self.run.get("dataset") is not None:
            extra["dataset"] = self.run["dataset"]
        written = save_checkpoint(path, engine, meta=extra)
        self._metas.pop(written, None)
        mine = [p for p, _ in self.scan(self.run).valid if p != written]
        for old_path in mine[self.keep - 1 :]:
            old_path.unlink(missing_ok=True)
        return written

    def maybe_save(self, engine: Any, meta: dict[str, Any] | None = None) -> Path | None:
        """Save if ``engine.step`` is a multiple of ``every``; the path written, or None."""
        return self.save(engine, meta) if engine.step > 0 and engine.step % self.every == 0 else None

    def latest(self, run: dict[str, Any] | None = None) -> Path | None:
        """The newest valid checkpoint of this run; each file passed over is named in a warning."""
        found = self.scan(run)
        warn_skipped(found.skipped)
        return found.newest


def warn_skipped(skipped: Sequence[tuple[Path, str]]) -> None:
    """One UserWarning per file a scan passed over, saying why."""
    for _, why in skipped:
        warnings.warn(f"skipping a checkpoint: {why}", UserWarning, stacklevel=3)
