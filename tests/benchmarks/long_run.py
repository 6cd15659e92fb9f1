"""The Rust report's GradScaler configuration on a real task, long enough to reach the clamp.

    python tests/benchmarks/long_run.py [--steps 4500] [--backend torch]

fp16, init scale 65536, growth every 2000 finite steps, clamp [1, 262144], the zoo MLP on the
digits (Adam, lr 1e-3, batch 64). Prints every change of the scale, the first step at the
clamp, the monitor's alerts, the final loss and accuracy, and the wall time, and records them in
``course/results/benchmarks/long_run-*.json`` (host, versions, date; ``--no-record`` to skip).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mpcourse as mpc  # noqa: E402
from mpcourse.bench.script_record import write_script_record  # noqa: E402
from mpcourse.production import long_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4500)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--no-record", action="store_true", help="do not write course/results/benchmarks/")
    args = ap.parse_args(argv)
    run = long_run.run(mpc.data.load("digits"), steps=args.steps, backend=args.backend)
    s = run.summary()
    print(f"{args.backend}, {s['steps']} steps, config {long_run.RUST_REPORT}")
    for step, scale in s["milestones"]:
        print(f"  step {step:>5}: scale {scale:g}")
    print(
        f"clamp {run.config.max_scale:g} reached at step {s['clamp_reached_at']}; highest scale {s['max_scale_seen']:g}"
    )
    print(f"skipped steps {s['skipped_steps']}; alerts {s['alerts'] or 'none'}")
    print(f"final loss {s['final_loss']:.4f}, test accuracy {s['accuracy']:.3f}, {s['seconds']:.1f} s of steps")
    if not args.no_record:
        settings = {"steps": args.steps, "backend": args.backend, "config": long_run.RUST_REPORT}
        path = write_script_record("long_run", settings=settings, results=s, frameworks=[args.backend])
        print("recorded:", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
