"""The ``mpcourse`` command: demo, doctor, bench, lab, site.

Usage::

    mpcourse demo                       # fp32 vs fp16 vs bf16 on digits, on the best device
    mpcourse demo --backend mlx --epochs 5
    mpcourse doctor                     # backends, devices, versions; does fp16/bf16/fp8 really run?
    mpcourse bench                      # the benchmark grid (notebook 03)
    mpcourse lab                        # JupyterLab at notebook 01
    mpcourse site _site                 # the static course site, built offline

``python -m mpcourse`` is the same command.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import math
import platform
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from mpcourse.engines import BACKENDS
from mpcourse.engines.zoo import ZOO

__all__ = ["main", "doctor"]


def _demo(args: argparse.Namespace) -> int:
    from mpcourse.studies.demo import run_demo

    run_demo(
        backend=args.backend,
        device=args.device,
        model=args.model,
        epochs=args.epochs,
        dataset=args.dataset,
        report=None if args.no_report else args.report,
    )
    return 0


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def doctor(out: TextIO | None = None) -> list[dict[str, object]]:
    """Print and return what can run here: each backend:device and whether fp16/bf16/fp8 train on it.

    fp8's line also says whether its matmul is native (``torch._scaled_mm`` on an FP8 GPU) or
    emulated (fp32 on dequantized values, as on any CPU).

    Each check builds a tiny engine and takes two real training steps; a precision "runs" when
    its steps finish with finite losses and the fp32 master weights changed.
    """
    import numpy as np

    from mpcourse.config import TrainConfig
    from mpcourse.engines import available_backends, make_engine
    from mpcourse.hardware import describe_cpu

    out = out or sys.stdout
    print(f"python {platform.python_version()} on {platform.platform()} ({platform.machine()})", file=out)
    for dist in ("mpcourse", "torch", "mlx", "numpy", "ml_dtypes", "plotly", "ipywidgets", "jupyterlab", "nbval"):
        print(f"  {dist:<11} {_version(dist)}", file=out)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 64)).astype(np.float32), rng.integers(0, 10, 32)
    rows: list[dict[str, object]] = []
    print(f"\nCPU: {describe_cpu()}", file=out)
    found = available_backends()
    print(f"\nbackends found: {', '.join(found) or 'none (install torch or mlx)'}", file=out)
    for pair in found:
        backend, device = pair.split(":", 1)
        for lim in importlib.import_module(f"mpcourse.engines.{backend}.support").limits(device):
            word = "WILL NOT WORK" if lim.blocking else "note"
            print(f"  {pair:<11} {lim.precision}: {word}: {lim.message}", file=out)
        for precision in ("fp32", "fp16", "bf16", "fp8"):
            try:
                eng = make_engine(
                    backend, "mlp", TrainConfig(precision=precision, batch_size=32), device=device, verbose=False
                )
                before = eng.evaluate((x, y))["loss"]
                recs = [eng.train_step(x, y) for _ in range(2)]
                after = eng.evaluate((x, y))["loss"]
                ok = all(math.isfinite(r.loss) for r in recs) and after != before
                msg = f"ok (loss {recs[0].loss:.3f} -> {after:.3f})" if ok else "ran, but the loss did not move"
                if precision == "fp8":
                    from mpcourse.bench.grid import backend_tools

                    msg += f" [matmul {backend_tools(backend).fp8_matmul(device)}]"
            except Exception as err:  # doctor reports every failure instead of stopping at the first
                ok, msg = False, f"FAILED: {type(err).__name__}: {err}"
            rows.append({"backend": backend, "device": device, "precision": precision, "ok": ok, "detail": msg})
            print(f"  {pair:<11} {precision}: {msg}", file=out)
    return rows


def _doctor(args: argparse.Namespace) -> int:
    rows = doctor()
    return 0 if rows and all(r["ok"] for r in rows if r["precision"] == "fp32") else 1


def _delegate(module: str, func: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            print(f"mpcourse: {module} is not available: {err}", file=sys.stderr)
            return 2
        return int(getattr(mod, func)(argv))

    return run


_PASSTHROUGH = {
    "bench": ("mpcourse.bench", "bench_main", "run the benchmark grid and record results"),
    "lab": ("mpcourse.authoring.notebooks", "lab_main", "open JupyterLab at the course"),
    "site": ("mpcourse.authoring.site", "site_main", "build the static course site (offline)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpcourse`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASSTHROUGH:
        module, func, _ = _PASSTHROUGH[argv[0]]
        return _delegate(module, func)(argv[1:])
    parser = argparse.ArgumentParser(prog="mpcourse", description="Mixed precision training, measured.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train one model in fp32, fp16 and bf16 and compare")
    demo.add_argument("--backend", default="torch", choices=list(BACKENDS))
    demo.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps, gpu (mlx)")
    demo.add_argument("--model", default="mlp", choices=list(ZOO))
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--dataset", default="digits", choices=["digits", "synthetic"])
    demo.add_argument("--report", default="reports", help="folder for the HTML report (default: reports)")
    demo.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    demo.set_defaults(func=_demo)
    doc = sub.add_parser("doctor", help="what runs here: backends, devices, versions, fp16/bf16/fp8 checks")
    doc.set_defaults(func=_doctor)
    for name, (_, _, text) in _PASSTHROUGH.items():
        sub.add_parser(name, help=text, add_help=False)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as err:
        print(f"mpcourse {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
