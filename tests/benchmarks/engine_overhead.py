"""Engine overhead: mpcourse's TorchEngine against a plain hand-written PyTorch loop, side by side.

Usage::

    PYTHONPATH=. python tests/benchmarks/engine_overhead.py                 # fp32 and fp16 AMP on the best device
    PYTHONPATH=. python tests/benchmarks/engine_overhead.py --device cpu --precisions fp32 --rounds 7
    PYTHONPATH=. python tests/benchmarks/engine_overhead.py --fused on      # both sides with a fused optimizer
    PYTHONPATH=. python tests/benchmarks/engine_overhead.py --threads 1     # on a CPU shared with other jobs

Both sides train the same model (784-1024-1024-10 MLP by default, identical initial weights)
on the same data in the same batch order (the engine's: ``default_rng([seed, epoch])``
permutations), with the same optimizer, autocast dtype and GradScaler. The engine does more
per step -- it unscales explicitly, computes the gradient norm, checks for clipping, writes a
StepRecord with one device sync -- and that extra is the overhead measured here.

The two alternate in one process: each round runs a block of steps of one, then of the other
(the order flips every round), so a machine that gets busier or quieter affects both alike.
The overhead is the median over rounds of engine/plain block time; both sides' losses are
compared at the end to show they did the same work. Exit status 1 when an overhead exceeds
``--target`` (default 5%).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import mpcourse as mpc
from mpcourse.engines.torch.engine import DTYPES, resolve_device, sync
from mpcourse.engines.torch.models import build_model


class PlainLoop:
    """The loop a PyTorch user writes by hand (the torch.amp recipe), nothing more."""

    def __init__(self, model: torch.nn.Module, precision: str, device: torch.device, lr: float, fused: bool) -> None:
        self.model, self.device = model.to(device), device
        self.opt = torch.optim.Adam(model.parameters(), lr=lr, **({"fused": True} if fused else {}))
        self.dtype = DTYPES[precision]
        self.amp = precision != "fp32"
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step(self, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
        xt = torch.from_numpy(x).to(self.device, non_blocking=True)
        yt = torch.from_numpy(y).to(self.device, non_blocking=True)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp):
            out = self.model(xt)
        loss = F.cross_entropy(out.float(), yt)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.detach()


def run(precision: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    rng = np.random.default_rng(0)
    n = args.batch * 8
    x = rng.standard_normal((n, args.features)).astype(np.float32)
    y = rng.integers(0, 10, n)
    model = build_model("mlp", "small", args.features, 10, seed=0, hidden=tuple(args.hidden))
    fused = {"auto": None, "on": True, "off": False}[args.fused]
    cfg = mpc.TrainConfig(precision=precision, batch_size=args.batch, seed=0, lr=1e-3, fused=fused)
    eng = mpc.make_engine(
        "torch", copy.deepcopy(model), cfg, device=str(device), num_features=args.features, verbose=False
    )
    plain = PlainLoop(copy.deepcopy(model), precision, device, lr=1e-3, fused=eng.fused)
    per_epoch = n // args.batch
    state = {"step": 0}
    plain_losses: list[torch.Tensor] = []

    def plain_block(k: int) -> None:
        for _ in range(k):
            s = state["step"]
            order = np.random.default_rng([0, s // per_epoch]).permutation(n)  # the engine's order
            idx = order[(s % per_epoch) * args.batch : (s % per_epoch + 1) * args.batch]
            plain_losses.append(plain.step(x[idx], y[idx]))
            state["step"] += 1
        sync(device)

    eng_losses: list[float] = []

    def engine_block(k: int) -> None:
        eng_losses.extend(eng.fit((x, y), steps=k, progress=False).losses.tolist())

    engine_block(args.warmup)
    plain_block(args.warmup)
    ratios, t_eng, t_plain = [], 0.0, 0.0
    for r in range(args.rounds):
        times = {}
        for name, block in (
            (("engine", engine_block), ("plain", plain_block))
            if r % 2 == 0
            else (("plain", plain_block), ("engine", engine_block))
        ):
            sync(device)
            t0 = time.perf_counter()
            block(args.steps)
            times[name] = time.perf_counter() - t0
        ratios.append(times["engine"] / times["plain"])
        t_eng += times["engine"]
        t_plain += times["plain"]
    plain_vals = torch.stack(plain_losses).float().cpu().numpy()
    diff = float(np.max(np.abs(np.asarray(eng_losses) - plain_vals)))
    steps = args.rounds * args.steps
    return {
        "engine_ms": 1e3 * t_eng / steps,
        "plain_ms": 1e3 * t_plain / steps,
        "median_ratio": statistics.median(ratios),
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
        "total_ratio": t_eng / t_plain,
        "max_loss_diff": diff,
        "fused": float(eng.fused),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--precisions", default="fp32,fp16", help="comma-separated, from fp32, fp16, bf16")
    p.add_argument("--features", type=int, default=784)
    p.add_argument("--hidden", type=lambda s: [int(v) for v in s.split(",")], default=[1024, 1024])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=3, help="steps per block")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--fused", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--target", type=float, default=0.05, help="allowed overhead (0.05 = 5%%)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    precisions = [v.strip() for v in args.precisions.split(",")]
    for prec in precisions:
        if prec not in DTYPES:
            p.error(f"unknown precision {prec!r}; allowed: fp32, fp16, bf16")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    hidden = "-".join(map(str, args.hidden))
    print(
        f"engine vs plain loop: {args.features}-{hidden}-10 MLP, batch {args.batch}, Adam, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rounds} alternating rounds of "
        f"{args.steps} steps; 1-min load average {load:.2f} on {os.cpu_count()} cores"
    )
    ok = True
    for prec in precisions:
        r = run(prec, args, device)
        over = r["median_ratio"] - 1
        verdict = "OK" if over <= args.target else "OVER TARGET"
        ok &= over <= args.target
        amp = "fp32" if prec == "fp32" else f"{prec} AMP" + (" + GradScaler" if prec == "fp16" else "")
        print(
            f"{amp:>22}: engine {r['engine_ms']:.2f} ms/step, plain {r['plain_ms']:.2f} ms/step, "
            f"ratio {r['median_ratio']:.3f} (median of rounds; range {r['min_ratio']:.3f}-{r['max_ratio']:.3f}, "
            f"total {r['total_ratio']:.3f}) -> overhead {over:+.1%} [{verdict}, target <= {args.target:.0%}]; "
            f"fused={bool(r['fused'])}; max |loss diff| {r['max_loss_diff']:.2e}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
