"""``mpcourse train --nproc K``: a crash-safe run in K processes, started by torch's elastic launcher.

Usage::

    mpcourse train --dir run --steps 40 --every 10 --nproc 2 --strategy ddp --precision fp16
    mpcourse train --dir run --steps 40 --every 10 --nproc 2 --strategy fsdp --resume
    mpcourse train --dir run --steps 40 --nproc 2 --strategy ddp --inject-inf 5:1   # the drill

The launcher is the one ``torchrun`` runs (``torch.distributed.launcher.api.elastic_launch``),
with torchrun's ``--standalone`` rendezvous on ``localhost:0``: the operating system picks the
port. Each worker builds a :class:`~mpcourse.engines.torch.distributed.DistributedTorchEngine`,
resumes from the newest complete ``DIR/step_NNNNNN`` checkpoint with ``--resume``, trains with
the engine's own ``fit`` and saves every ``--every`` steps through torch.distributed.checkpoint.
The run ends with one JSON line::

    {"world_size": 2, "steps": 40, "final_loss": ..., "final_scale": 32768.0, "skipped_steps": 1,
     "params_sha256_by_rank": ["3f..", "3f.."], ...}

``--nproc 1`` without ``--strategy`` or ``--inject-inf`` is the single-process run of
:mod:`mpcourse.production.cli`, which prints the same keys.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mpcourse._validate import int_at_least
from mpcourse.engines.portable import model_arrays, model_sha256

__all__ = ["parse_inject", "wants_processes", "check_distributed", "run_distributed", "summary_fields"]


def parse_inject(text: str) -> tuple[int, int]:
    """``"STEP:RANK"`` -> ``(step, rank)``, both ints >= 0 (an argparse ``type=``)."""
    parts = str(text).split(":")
    try:
        step, rank = (int(p) for p in parts)
        if step < 0 or rank < 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--inject-inf wants STEP:RANK with ints >= 0 (e.g. 5:1), got {text!r}"
        ) from None
    return step, rank


def wants_processes(args: argparse.Namespace) -> bool:
    """Whether a parsed ``train`` command goes through torch.distributed (see the module docstring)."""
    return args.nproc != 1 or args.strategy is not None or args.inject_inf is not None


def summary_fields(engine: Any, history: Any, world_size: int = 1) -> dict[str, Any]:
    """The keys every ``train`` run prints, for a single-process engine and its History."""
    return {
        "world_size": world_size,
        "steps": engine.step,
        "final_loss": history.records[-1].loss if history.records else None,
        "final_scale": engine.scale,
        "skipped_steps": history.skipped_steps,
        "params_sha256_by_rank": [model_sha256(engine)],
    }


def check_distributed(args: argparse.Namespace) -> None:
    """Refuse, before any process starts, flags that a distributed run cannot honour (ValueError)."""
    int_at_least("--nproc", args.nproc, 1)
    if args.backend != "torch":
        raise ValueError(f"--nproc/--strategy/--inject-inf need --backend torch, got {args.backend!r}")
    if args.fallback:
        raise ValueError("--fallback is not supported with --nproc/--strategy (one precision per distributed run)")
    if args.inject_inf is not None and args.inject_inf[1] >= args.nproc:
        raise ValueError(f"--inject-inf rank {args.inject_inf[1]} does not exist with --nproc {args.nproc}")
    for flag, value in (("--steps", args.steps), ("--every", args.every)):
        if value < 1:
            raise ValueError(f"{flag} must be an int >= 1, got {value!r}")
    if args.batch_size < args.nproc:
        raise ValueError(f"--batch-size {args.batch_size} is smaller than --nproc {args.nproc}")


def run_distributed(args: argparse.Namespace) -> int:
    """Launch ``args.nproc`` workers, wait for them, print the run's JSON line; returns 0."""
    check_distributed(args)
    from mpcourse.engines.torch.distributed import elastic_run

    opts = {k: getattr(args, k) for k in _OPTS}
    opts["strategy"] = args.strategy or "ddp"
    # fork: this process has run no torch op (see elastic_run); spawn where fork is unsafe (macOS).
    results = elastic_run(_worker, (opts,), args.nproc, start_method="fork" if sys.platform == "linux" else "spawn")
    ranks = [results[r] for r in sorted(results)]
    line = {
        "world_size": args.nproc,
        "steps": ranks[0]["steps"],
        "final_loss": ranks[0]["final_loss"],
        "final_scale": ranks[0]["final_scale"],
        "skipped_steps": ranks[0]["skipped_steps"],
        "params_sha256_by_rank": [r["sha256"] for r in ranks],
        "scale_by_rank": [r["final_scale"] for r in ranks],
        "skipped_by_rank": [r["skipped"] for r in ranks],
        "bytes_by_rank": [r["bytes"] for r in ranks],
        "strategy": opts["strategy"],
        "precision": args.precision,
        "reduce_dtype": args.reduce_dtype,
        "resumed_from": ranks[0]["resumed_from"],
        "final": ranks[0]["final"],
        "final_params": str(Path(args.dir) / "final_params.npz"),
    }
    print(json.dumps(line))
    return 0


_OPTS = (
    "dir", "model", "dataset", "precision", "steps", "every", "lr", "batch_size", "seed", "device",
    "throttle", "resume", "reduce_dtype", "inject_inf",
)  # fmt: skip


def _worker(opts: dict[str, Any]) -> dict[str, Any]:
    """One rank of the run (module level: the launcher spawns processes that import it)."""
    from mpcourse import data as data_mod
    from mpcourse.config import TrainConfig
    from mpcourse.engines.portable import seed_rngs
    from mpcourse.engines.torch import distributed as D
    from mpcourse.engines.torch import sharded_checkpoint as C

    D.init_distributed(opts["device"])
    try:
        seed_rngs("torch", opts["seed"])
        ds = data_mod.load(opts["dataset"], seed=opts["seed"])
        cfg = TrainConfig(precision=opts["precision"], lr=opts["lr"], batch_size=opts["batch_size"], seed=opts["seed"])
        eng = D.DistributedTorchEngine(
            opts["model"],
            cfg,
            device=opts["device"],
            num_features=ds.num_features,
            num_classes=ds.num_classes,
            strategy=opts["strategy"],
            reduce_dtype=opts["reduce_dtype"],
            inject_inf=tuple(opts["inject_inf"]) if opts["inject_inf"] else None,
        )
        directory = Path(opts["dir"])
        meta: dict[str, Any] = {"skipped": [], "final_loss": None}
        resumed_from = None
        latest = C.latest_distributed(directory) if opts["resume"] else None
        if latest is not None:
            meta = C.load_distributed(eng, latest)["meta"]
            resumed_from = eng.step

        def on_step(engine: Any, rec: Any) -> bool:
            meta["final_loss"] = rec.loss
            if rec.skipped:
                meta["skipped"].append(rec.step)
            if opts["throttle"]:
                time.sleep(opts["throttle"])
            if engine.step % opts["every"] == 0:
                C.save_distributed(engine, directory / f"step_{engine.step:06d}", meta=meta)
            return False

        if eng.step < opts["steps"]:
            eng.fit(ds, steps=opts["steps"] - eng.step, progress=False, callback=on_step)
        final = C.save_distributed(eng, directory / "final", meta=meta)
        arrays = model_arrays(eng)  # collective under FSDP: every rank gathers the full model
        if eng.rank == 0:
            np.savez(directory / "final_params.npz", **arrays)  # type: ignore[arg-type]
        return {
            "steps": eng.step,
            "final_loss": meta["final_loss"],
            "final_scale": eng.scale,
            "skipped_steps": len(meta["skipped"]),
            "skipped": list(meta["skipped"]),
            "sha256": model_sha256(eng, arrays),
            "bytes": D.local_bytes(eng),
            "resumed_from": resumed_from,
            "final": str(final),
        }
    finally:
        D.shutdown_distributed()
