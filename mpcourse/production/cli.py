"""``python -m mpcourse.production train``: a crash-safe training run from the shell.

Usage::

    python -m mpcourse.production train --dir run --steps 300 --every 25
    python -m mpcourse.production train --dir run --steps 300 --every 25 --resume   # after a kill
    python -m mpcourse.production train --dir run --steps 300 --resume --allow-fresh-start

A refused flag (``--steps 0``, ``--device tpu``, a ``--resume`` with no valid checkpoint of this
run ...) exits with status 2 and one line on stderr naming the flag, the value and what is
allowed, before anything is written. A run ends with one JSON line on stdout.

Adding a flag: give it a ``type=`` from :func:`int_at_least` / :func:`number_in` (or
``choices=``) for its own range, and put checks that involve other flags in :func:`check_flags`,
raising :class:`UsageError`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from mpcourse.config import PRECISIONS, TrainConfig
from mpcourse.engines import ZOO
from mpcourse.engines.base import DeviceUnavailableError
from mpcourse.production.checkpoint import CheckpointError, CheckpointManager, save_checkpoint
from mpcourse.production.fallback import FallbackPolicy
from mpcourse.production.trainer import Trainer

__all__ = ["main", "UsageError", "check_flags", "int_at_least", "number_in", "DEVICES"]

PROG = "python -m mpcourse.production"

# Device names each engine accepts (whether the device is present is checked when it is built).
DEVICES: dict[str, tuple[str, ...]] = {
    "torch": ("auto", "cpu", "cuda", "cuda:N", "mps"),
    "mlx": ("auto", "cpu", "gpu", "metal", "cuda"),
}


class UsageError(ValueError):
    """A refused flag; ``str(err)`` is the one line the command prints (flag, value, what is allowed)."""

    def __init__(self, flag: str, value: Any, allowed: str) -> None:
        super().__init__(f"argument {flag}: {value!r} is not allowed; {allowed}")


# --- flag types: each names what it allows ---------------------------------------------------------
def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse ``type=`` for an int >= ``lo``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: an int >= {lo}")
        return value

    return parse


def number_in(lo: float, *, lo_open: bool) -> Callable[[str], float]:
    """An argparse ``type=`` for a finite number > ``lo`` (``lo_open``) or >= ``lo``."""
    allowed = f"a finite number {'>' if lo_open else '>='} {lo:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < lo or (lo_open and value == lo):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: {allowed}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, as the mpcourse CLI prints, instead of argparse's usage block.
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    from mpcourse import data as data_mod

    ap = _Parser(prog=PROG, description="Crash-safe training runs with checkpoints, fallback and a monitor.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train, checkpointing every N steps; --resume continues")
    t.add_argument("--dir", required=True, help="checkpoint directory")
    t.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    t.add_argument("--model", default="mlp", choices=list(ZOO))
    t.add_argument("--dataset", default="digits", choices=data_mod.available())
    t.add_argument("--precision", default="fp16", choices=list(PRECISIONS))
    t.add_argument("--steps", type=int_at_least(1), default=200, help="total steps of the run, >= 1")
    t.add_argument("--every", type=int_at_least(1), default=20, help="checkpoint every N steps, >= 1")
    t.add_argument("--keep", type=int_at_least(1), default=3, help="checkpoints of this run to keep, >= 1")
    t.add_argument("--lr", type=number_in(0, lo_open=True), default=1e-3)
    t.add_argument("--batch-size", type=int_at_least(1), default=64)
    t.add_argument(
        "--seed", type=int_at_least(0), default=0, help="seeds the model, the data order and the global RNGs"
    )
    t.add_argument("--device", default="cpu", help="torch: auto, cpu, cuda, cuda:N, mps; mlx: auto, cpu, gpu")
    t.add_argument("--fallback", action="store_true", help="enable the fp16 -> bf16 -> fp32 fallback")
    t.add_argument("--throttle", type=number_in(0, lo_open=False), default=0.0, help="seconds to sleep per step")
    t.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint of this run")
    t.add_argument(
        "--allow-fresh-start",
        action="store_true",
        help="with --resume: start from step 0 when no valid checkpoint of this run exists (else: exit 2)",
    )
    t.add_argument("--out", default=None, help="final checkpoint (default DIR/final.mpck)")
    return ap


def check_flags(args: argparse.Namespace) -> None:
    """Checks that involve more than one flag; raises :class:`UsageError` naming the flag."""
    allowed, dev = DEVICES[args.backend], args.device
    indexed = args.backend == "torch" and dev.startswith("cuda:") and dev[5:].isdigit()
    if dev not in allowed and not indexed:
        raise UsageError("--device", args.device, f"allowed with --backend {args.backend}: {', '.join(allowed)}")
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise UsageError("--out", args.out, "allowed: a file path (this is a directory)")


def _fail(message: str) -> int:
    print(f"{PROG} train: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mpcourse.production train ...``: prints one JSON line when done; 2 on a refused flag."""
    from mpcourse import data as data_mod
    from mpcourse.engines.portable import seed_rngs

    try:
        args = _parser().parse_args(argv)
        check_flags(args)
    except SystemExit as stop:  # argparse: a refused flag (2) or --help (0)
        return int(stop.code or 0)
    except UsageError as err:
        return _fail(str(err))
    seed_rngs(args.backend, args.seed)  # a resumed run gets the saved RNG state back instead
    mgr = CheckpointManager(args.dir, every=args.every, keep=args.keep)
    try:
        ds = data_mod.load(args.dataset, seed=args.seed)
        cfg = TrainConfig(precision=args.precision, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
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
    except DeviceUnavailableError as err:
        return _fail(str(UsageError("--device", args.device, str(err))))
    except (ValueError, TypeError) as err:  # a combination the engine refuses (e.g. model and data)
        return _fail(str(err))
    resumed_from, fresh_start = None, False
    if args.resume:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # each skipped file is printed below, once, instead
            try:
                resumed_from = tr.resume(mgr).meta["step"]
            except CheckpointError as err:
                if not args.allow_fresh_start:
                    return _fail(f"argument --resume: {err}; pass --allow-fresh-start to start from step 0 instead")
                fresh_start = True
        for _, why in tr.resume_skipped:
            print(f"resume: skipped {why}", file=sys.stderr)
        if fresh_start:
            print(f"resume: no valid checkpoint of this run in {args.dir}; starting from step 0", file=sys.stderr)
    removed = mgr.remove_stale_tmp()
    tr.run_to(args.steps)
    out = save_checkpoint(
        args.out or Path(args.dir) / "final.mpck",
        tr.engine,
        meta={"trainer": tr.trainer_state(), "run": tr.run},
        data=ds,
    )
    print(
        json.dumps(
            {
                "final": str(out),
                "step": tr.engine.step,
                "resumed_from": resumed_from,
                "fresh_start": fresh_start,
                "skipped": [why for _, why in tr.resume_skipped],
                "removed_tmp": [p.name for p in removed],
                "precision": tr.engine.config.precision,
                "events": tr.events,
            }
        )
    )
    return 0
