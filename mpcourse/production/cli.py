"""``python -m mpcourse.production train``: a crash-safe training run from the shell.

Usage::

    python -m mpcourse.production train --dir run --steps 300 --every 25
    python -m mpcourse.production train --dir run --steps 300 --every 25 --resume   # after a kill
    python -m mpcourse.production train --dir run --steps 300 --nproc 2 --strategy fsdp   # see launch.py
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from mpcourse.config import PRECISIONS, TrainConfig
from mpcourse.engines import ZOO
from mpcourse.production.checkpoint import CheckpointManager, save_checkpoint
from mpcourse.production.fallback import FallbackPolicy
from mpcourse.production.launch import parse_inject, run_distributed, summary_fields, wants_processes
from mpcourse.production.trainer import Trainer

__all__ = ["main"]


# --- command line: a run that can be killed and resumed -------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m mpcourse.production",
        description="Crash-safe training runs with checkpoints, fallback and a monitor.",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train, checkpointing every N steps; --resume continues")
    t.add_argument("--dir", required=True, help="checkpoint directory")
    t.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    t.add_argument("--model", default="mlp", choices=list(ZOO))
    t.add_argument("--dataset", default="digits")
    t.add_argument("--precision", default="fp16", choices=list(PRECISIONS))
    t.add_argument("--steps", type=int, default=200, help="total steps of the run")
    t.add_argument("--every", type=int, default=20, help="checkpoint every N steps")
    t.add_argument("--keep", type=int, default=3)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--seed", type=int, default=0, help="seeds the model, the data order and the global RNGs")
    t.add_argument("--device", default="cpu")
    t.add_argument("--fallback", action="store_true", help="enable the fp16 -> bf16 -> fp32 fallback")
    t.add_argument("--throttle", type=float, default=0.0, help="seconds to sleep per step")
    t.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    t.add_argument("--out", default=None, help="final checkpoint (default DIR/final.mpck)")
    # Real processes through torch.distributed (mpcourse.production.launch):
    t.add_argument("--nproc", type=int, default=1, help="processes; >1 launches them with torch's elastic launcher")
    t.add_argument("--strategy", default=None, choices=["ddp", "fsdp"], help="data parallel strategy (default ddp)")
    t.add_argument("--reduce-dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="gradient reduction dtype")
    t.add_argument("--inject-inf", type=parse_inject, default=None, metavar="STEP:RANK", help="plant an inf gradient")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mpcourse.production train ...``: prints one JSON line when done."""
    from mpcourse import data as data_mod
    from mpcourse.engines.portable import seed_rngs

    args = _parser().parse_args(argv)
    if wants_processes(args):
        return run_distributed(args)
    seed_rngs(args.backend, args.seed)  # a resumed run gets the saved RNG state back instead
    ds = data_mod.load(args.dataset, seed=args.seed)
    cfg = TrainConfig(precision=args.precision, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    mgr = CheckpointManager(args.dir, every=args.every, keep=args.keep)
    tr = Trainer(
        args.backend,
        args.model,
        cfg,
        ds,
        device=args.device,
        checkpoints=mgr,
        fallback=FallbackPolicy() if args.fallback else None,
        throttle=args.throttle,
    )
    resumed_from = None
    if args.resume and mgr.latest() is not None:
        resumed_from = tr.resume(mgr).meta["step"]
    tr.run_to(args.steps)
    out = save_checkpoint(args.out or Path(args.dir) / "final.mpck", tr.engine, meta={"trainer": tr._trainer_state()})
    print(
        json.dumps(
            {
                "final": str(out),
                "step": tr.engine.step,
                "resumed_from": resumed_from,
                "precision": tr.engine.config.precision,
                "events": tr.events,
                **summary_fields(tr.engine, tr.history),
            }
        )
    )
    return 0
