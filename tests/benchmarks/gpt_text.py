"""The text workload's cost here: the zoo GPT on ``mpc.data.load("text")``, steps, seconds, loss.

Usage::

    PYTHONPATH=. python tests/benchmarks/gpt_text.py                          # torch fp32, 300 steps
    PYTHONPATH=. python tests/benchmarks/gpt_text.py --backends torch,mlx --precisions fp32,fp16,bf16 --steps 20

Prints one line per run: backend, precision, steps, wall seconds, ms/step, the loss of the first
step, the mean loss of the last 20 steps, and the test loss. (ln 96 = 4.56 is the uniform guess.)
The machine's load average is printed first: on a shared CPU the times move with it. The runs
are recorded in ``course/results/benchmarks/gpt_text-*.json`` (host, versions, date; ``--no-record``
to skip): what the README quotes comes from there.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import mpcourse as mpc
from mpcourse.bench.script_record import write_script_record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="torch")
    ap.add_argument("--precisions", default="fp32")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--no-record", action="store_true", help="do not write course/results/benchmarks/")
    args = ap.parse_args()
    runs = []
    ds = mpc.data.load("text")
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; text: {ds}")
    for backend in args.backends.split(","):
        for prec in args.precisions.split(","):
            scaling = "dynamic" if prec == "fp16" else "none"
            cfg = mpc.TrainConfig(precision=prec, loss_scale=scaling, lr=args.lr, batch_size=args.batch_size)
            eng = mpc.make_engine(backend, "gpt", cfg, device="cpu", data=ds, verbose=False)
            t0 = time.perf_counter()
            hist = eng.fit(ds, steps=args.steps, progress=False)
            wall = time.perf_counter() - t0
            test = eng.evaluate((ds.x_test[:256], ds.y_test[:256]))["loss"]
            tail = float(np.mean(hist.losses[-20:]))
            print(
                f"{backend:5s} {prec:4s} steps {args.steps} batch {args.batch_size}: {wall:6.1f} s "
                f"({1000 * wall / args.steps:6.1f} ms/step), loss {hist.losses[0]:.3f} -> {tail:.3f} "
                f"(last 20), test {test:.3f}, skipped {hist.skipped_steps}",
                flush=True,
            )
            runs.append(
                {
                    "backend": backend,
                    "precision": prec,
                    "steps": args.steps,
                    "wall_s": wall,
                    "ms_per_step": 1000 * wall / args.steps,
                    "first_loss": float(hist.losses[0]),
                    "last20_loss": tail,
                    "test_loss": test,
                    "skipped": hist.skipped_steps,
                }
            )
    if not args.no_record:
        settings = {k: v for k, v in vars(args).items() if k != "no_record"}
        frameworks = sorted(set(args.backends.split(",")))
        print("recorded:", write_script_record("gpt_text", settings=settings, results=runs, frameworks=frameworks))


if __name__ == "__main__":
    main()
