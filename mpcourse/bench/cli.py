"""``mpcourse bench``: run a grid from the shell and record what it measured.

Usage::

    mpcourse bench --preset default --out course/results
    mpcourse bench --preset gpu --devices cuda --out "$OUT"
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from mpcourse import hardware
from mpcourse.bench.grid import PRECISIONS, PRESETS, BenchGrid, plan
from mpcourse.bench.results import format_table, write_results
from mpcourse.bench.run import run_grid

__all__ = ["grid_from_args", "bench_main"]


# --- the command -----------------------------------------------------------------------------
def _csv(kind: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return tuple(kind(t) for t in items)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from err

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mpcourse bench",
        description=(
            "Measure training throughput, step time, peak memory and TFLOP/s over a grid of "
            "backend x device x precision x model x batch, print a table and write a JSON-lines results file."
        ),
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="a named grid (default: %(default)s, < 2 min on a 2-core CPU; gpu: the recorded GPU grid)",
    )
    p.add_argument("--backends", type=_csv(str), help="torch,mlx (default: every installed one)")
    p.add_argument("--devices", type=_csv(str), help="auto, or cpu,cuda,cuda:1,mps (torch) / cpu,gpu (mlx)")
    p.add_argument(
        "--precisions",
        type=_csv(str),
        help=f"from {','.join(PRECISIONS)} (default: all but fp8; fp8 is marked emulated where it is not native)",
    )
    p.add_argument("--models", type=_csv(str), help="zoo names, name:large for the large size")
    p.add_argument("--batches", type=_csv(int), help="batch sizes, e.g. 128,512")
    p.add_argument("--widths", type=_csv(int), help="hidden widths for mlp/deep_mlp, e.g. 256,1024")
    p.add_argument("--steps", type=int, help="timed steps per configuration (>= 3)")
    p.add_argument("--warmup", type=int, help="untimed steps first")
    p.add_argument("--max-case-seconds", type=float, help="stop timing a configuration after this long")
    p.add_argument(
        "--features", type=int, dest="num_features", help="input features (a square for cnn/transformer/lstm)"
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--no-peak", action="store_true", help="do not measure the matmul peak")
    p.add_argument(
        "--out",
        default=None,
        help="results file (.jsonl) or directory (default: course/results "
        "if it exists here, else the current directory)",
    )
    p.add_argument("--no-save", action="store_true", help="print the table only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def grid_from_args(ns: argparse.Namespace) -> BenchGrid:
    """A BenchGrid from the preset, with every option given on the command line replacing it."""
    values = dict(PRESETS[ns.preset])
    for name in (
        "backends",
        "devices",
        "precisions",
        "models",
        "batches",
        "widths",
        "steps",
        "warmup",
        "max_case_seconds",
        "num_features",
        "threads",
    ):
        if getattr(ns, name) is not None:
            values[name] = getattr(ns, name)
    if ns.no_peak:
        values["matmul_peak"] = False
    return BenchGrid(**values)


def _cpu_note(units: list[str] | None) -> str:
    """Why a half-precision case can be slower, from this CPU's flags (not assumed)."""
    if units is None:
        return "This CPU's flags cannot be read."
    if not units:
        return "This CPU has no bf16/fp16 instructions: its fp16/bf16 matmuls convert to fp32 and back."
    return (
        f"This CPU has {', '.join(units)}: only the formats those cover can run natively "
        "(the others convert), and small cases are dominated by overhead."
    )


def bench_main(argv: list[str] | None = None) -> int:
    """``mpcourse bench``: parse, check everything, run the grid, print the table, save the rows.

    Returns 0 when every configuration ran, 1 when some failed (they are in the table and the
    file), 2 on bad input (nothing was run).
    """
    parser = _parser()
    ns = parser.parse_args(argv)
    try:
        grid = grid_from_args(ns)
        plan(grid)  # bad devices/backends fail here, before anything runs
    except (ValueError, TypeError) as err:
        print(f"mpcourse bench: error: {err}", file=sys.stderr)
        return 2
    load, cores = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0), os.cpu_count() or 1
    if load > 0.75 * cores:
        print(
            f"warning: this machine is busy (1-min load average {load:.1f} on {cores} cores): CPU timings "
            f"will be noisy{'' if grid.threads == 1 else '; --threads 1 steadies them'}. The load is "
            f"recorded with the results.",
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    rows = run_grid(grid, progress=False if ns.no_progress else None)
    print(format_table(rows))
    recorded_load = rows[0]["load_avg_1min"] if rows else None
    print(
        f"\n{len(rows)} configurations in {time.perf_counter() - t0:.1f} s"
        + (
            f" (1-min load average at start: {recorded_load:.2f} on {os.cpu_count()} cores)"
            if recorded_load is not None
            else ""
        )
    )
    slower = [r for r in rows if r["status"] == "ok" and r["speedup_vs_fp32"] and r["speedup_vs_fp32"] < 1]
    if slower:
        print(
            f"{len(slower)} configuration(s) ran SLOWER than fp32 here, e.g. {slower[0]['label']} "
            f"({slower[0]['speedup_vs_fp32']:.2f}x). {_cpu_note(hardware.native_half_units())} See notebook 03."
        )
    if rows and not ns.no_save:
        out = ns.out or ("course/results" if Path("course/results").is_dir() else ".")
        print(f"results: {write_results(rows, out)}")
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"FAILED {r['label']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(bench_main())
