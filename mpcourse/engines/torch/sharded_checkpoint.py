"""Sharded checkpoints for :class:`~mpcourse.engines.torch.distributed.DistributedTorchEngine`.

Usage (every rank calls each function: they are collective)::

    from mpcourse.engines.torch.sharded_checkpoint import save_distributed, load_distributed, latest_distributed

    save_distributed(eng, "run/step_000020", meta={"skipped": [5]})   # each rank writes its shard
    path = latest_distributed("run")                                  # newest complete folder
    extra = load_distributed(eng2, path)                              # eng2 continues exactly
    extra["meta"]                                                     # {"skipped": [5]}

Model and optimizer go through ``torch.distributed.checkpoint`` (``get_state_dict`` /
``set_state_dict``: sharded under FSDP2, whole under DDP); the loss scaler's state, the data
position (step, epoch, batch in epoch) and the run's description go into ``mpcourse.json``
beside them, written by rank 0.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

if TYPE_CHECKING:
    from mpcourse.engines.torch.distributed import DistributedTorchEngine

__all__ = ["save_distributed", "load_distributed", "latest_distributed"]


def save_distributed(
    engine: DistributedTorchEngine, path: str | os.PathLike[str], meta: dict[str, Any] | None = None
) -> Path:
    """Save model and optimizer shards with ``torch.distributed.checkpoint``, plus scaler and data position.

    ``meta`` (JSON values, rank 0's) is stored beside them. Collective: every rank calls it.
    The files go to ``path + ".tmp"``, which rank 0 renames to ``path`` once every rank has
    written: a run killed mid-save leaves only a ``.tmp`` folder, which
    :func:`latest_distributed` ignores.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = Path(path)
    tmp = final.with_name(final.name + ".tmp")
    if engine.rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    dist.barrier()
    model, optim = get_state_dict(engine.model, engine.optimizer)
    dcp.save({"model": model, "optim": optim}, checkpoint_id=str(tmp))
    if engine.rank == 0:
        extra = {
            "step": engine.step,
            "epoch": engine.epoch,
            "batch_in_epoch": engine.batch_in_epoch,
            "scaler": engine.scaling.state_dict(),
            "describe": engine.describe(),
            "meta": meta or {},
        }
        (tmp / "mpcourse.json").write_text(json.dumps(extra))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    dist.barrier()
    return final


def load_distributed(engine: DistributedTorchEngine, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Restore what :func:`save_distributed` wrote (collective); returns its ``mpcourse.json`` record.

    Raises:
        ValueError: the checkpoint is for another strategy, world size, model or config; nothing
            is loaded then.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    extra = json.loads((path / "mpcourse.json").read_text())
    mine = engine.describe()
    for key in ("strategy", "world_size", "model", "config"):
        if extra["describe"].get(key) != mine.get(key):
            raise ValueError(
                f"{path} was saved with {key}={extra['describe'].get(key)!r}, this engine has {key}={mine.get(key)!r}"
            )
    if extra["scaler"].get("kind") != engine.scaling.kind:
        raise ValueError(f"{path} has a {extra['scaler'].get('kind')!r} scaler, this engine {engine.scaling.kind!r}")
    model, optim = get_state_dict(engine.model, engine.optimizer)
    dcp.load({"model": model, "optim": optim}, checkpoint_id=str(path))  # in place, into these dicts
    set_state_dict(engine.model, engine.optimizer, model_state_dict=model, optim_state_dict=optim)
    engine.scaling.load_state_dict(extra["scaler"])
    engine.step, engine.epoch, engine.batch_in_epoch = extra["step"], extra["epoch"], extra["batch_in_epoch"]
    return dict(extra)


def latest_distributed(directory: str | os.PathLike[str]) -> Path | None:
    """The newest complete ``step_NNNNNN`` checkpoint folder in ``directory``, or None."""
    found = sorted(
        p
        for p in Path(directory).glob("step_*")
        if p.is_dir() and p.suffix != ".tmp" and (p / "mpcourse.json").exists()
    )
    return found[-1] if found else None
