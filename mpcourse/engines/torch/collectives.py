"""Measured facts of scaling out: reduction-dtype error, fp8 over gloo, the skip drill, memory per rank.

Usage (a fresh process; it launches its own workers)::

    python -m mpcourse.engines.torch.collectives          # prints one JSON line

    from mpcourse.engines.torch.collectives import measure
    facts = measure(nproc=2)                              # the same, as a dict (spawned workers)
    facts["reduction_error"]["bf16"]                      # relative error of a bf16 all-reduce
    facts["fp8_all_reduce"]                               # {"refused": True, "error": "..."} on gloo
    facts["drill"]["agreed"]["sha256_by_rank"]            # equal; "disagreed": they differ
    facts["bytes"]["fsdp"], facts["bytes"]["ddp"]         # parameters, grads, optimizer, per rank
    facts["state_dict_resumes_exactly"]                   # {"ddp": True, "fsdp": True}
    facts["bf16_reduce_drift"]["fsdp"]                    # fp32 training, gradients reduced in bf16:
                                                          #   distance from the fp32-reduced run / distance moved

Every number comes from real processes talking through torch.distributed (gloo on CPU).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mpcourse.config import TrainConfig
from mpcourse.engines.torch.distributed import (
    DistributedTorchEngine,
    elastic_run,
    init_distributed,
    local_bytes,
    model_sha256,
    shutdown_distributed,
)
from mpcourse.engines.torch.engine import DTYPES, default_loss

__all__ = ["reduction_errors", "fp8_all_reduce", "measure_worker", "measure", "main"]


def reduction_errors(grad: torch.Tensor, dtypes: tuple[str, ...] = ("fp32", "bf16", "fp16")) -> dict[str, float]:
    """Relative L2 error of summing ``grad`` over the ranks in each dtype, against an fp64 sum (collective).

    Each rank casts its own gradient to the dtype, the all-reduce sums in that dtype, and the
    result is compared with the fp64 all-reduce of the same fp32 gradients.
    """
    exact = grad.detach().double().clone()
    dist.all_reduce(exact)
    out = {}
    for name in dtypes:
        t = grad.detach().to(DTYPES[name]).clone()
        dist.all_reduce(t)
        out[name] = float(torch.linalg.vector_norm(t.double() - exact) / torch.linalg.vector_norm(exact))
    return out


def fp8_all_reduce() -> dict[str, Any]:
    """Try an all-reduce of an fp8 (e4m3) tensor on the current group; whether the backend refused it."""
    t = torch.ones(8, dtype=torch.float8_e4m3fn)
    try:
        dist.all_reduce(t)
    except (RuntimeError, TypeError, ValueError) as err:
        return {"refused": True, "backend": dist.get_backend(), "error": f"{type(err).__name__}: {err}"[:300]}
    return {"refused": False, "backend": dist.get_backend(), "result": t.float().tolist()}


def _engine(strategy: str, precision: str, batch: int, **kw: Any) -> DistributedTorchEngine:
    cfg = TrainConfig(precision=precision, batch_size=batch, seed=0)
    return DistributedTorchEngine("mlp", cfg, device="cpu", strategy=strategy, **kw)


def _params(engine: DistributedTorchEngine) -> dict[str, np.ndarray]:
    model = engine.state_dict()["framework"]["model"]  # full tensors (collective under FSDP)
    return {k: v.double().numpy() for k, v in model.items()}


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


def measure_worker(opts: dict[str, Any]) -> dict[str, Any]:
    """One rank of :func:`measure` (module level: the launcher's workers import it)."""
    from mpcourse import data as data_mod

    init_distributed("cpu")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        ds = data_mod.load("digits", seed=0)
        batch, steps = opts["batch"], opts["steps"]
        x, y = ds.x_train[:batch], ds.y_train[:batch]
        # 1. The reduction's dtype, on this rank's real fp32 gradients of one batch.
        eng = _engine("ddp", "fp32", batch)
        part = np.array_split(np.arange(batch), world)[rank]
        xt, yt = eng.tensors(x[part], y[part])
        default_loss(eng.module(xt), yt).backward()  # the plain module: no DDP reduction yet
        grad = torch.cat([p.grad.reshape(-1) for p in eng.module.parameters()])
        errors = reduction_errors(grad)
        # 2. fp8 through the backend.
        fp8 = fp8_all_reduce()
        # 3. One rank overflows after the reduction: with and without the agreed flag.
        drill = {}
        for name, agree in (("agreed", True), ("disagreed", False)):
            e = _engine("ddp", "fp16", batch, agree_found_inf=agree, inject_inf=(1, world - 1))
            hist = e.fit(ds, steps=steps, progress=False)
            drill[name] = {
                "sha256": model_sha256(e),
                "scale": e.scale,
                "skipped": [r.step for r in hist.records if r.skipped],
            }
        # 4. What each rank holds after a step, DDP against FSDP2; and the in-memory state round
        #    trip (full, gathered tensors): a restored engine continues exactly as the original.
        held, resumed = {}, {}
        for strategy in ("ddp", "fsdp"):
            e = _engine(strategy, "fp16", batch)
            e.fit(ds, steps=1, progress=False)
            held[strategy] = local_bytes(e)
            twin = _engine(strategy, "fp16", batch)
            twin.load_state_dict(e.state_dict())
            e.fit(ds, steps=2, progress=False)
            twin.fit(ds, steps=2, progress=False)
            resumed[strategy] = model_sha256(twin) == model_sha256(e) and twin.step == e.step
        # 5. The whole path: fp32 training whose gradients are reduced in bf16, against fp32 reduction.
        drift = {}
        for strategy in ("ddp", "fsdp"):
            ref, low = _engine(strategy, "fp32", batch), _engine(strategy, "fp32", batch, reduce_dtype="bf16")
            start = _params(ref)
            ref.fit(ds, steps=steps, progress=False)
            low.fit(ds, steps=steps, progress=False)
            drift[strategy] = _distance(_params(low), _params(ref)) / _distance(_params(ref), start)
        return {
            "reduction_error": errors,
            "fp8_all_reduce": fp8,
            "drill": drill,
            "bytes": held,
            "resumed": resumed,
            "bf16_reduce_drift": drift,
        }
    finally:
        shutdown_distributed()


def measure(nproc: int = 2, batch: int = 256, steps: int = 3, start_method: str = "spawn") -> dict[str, Any]:
    """Run :func:`measure_worker` on ``nproc`` processes; returns the facts, drill results per rank."""
    results = elastic_run(measure_worker, ({"batch": batch, "steps": steps},), nproc, start_method=start_method)
    ranks = [results[r] for r in sorted(results)]
    first = ranks[0]
    return {
        "world_size": nproc,
        "torch": torch.__version__,
        "reduction_error": first["reduction_error"],
        "fp8_all_reduce": first["fp8_all_reduce"],
        "drill": {
            k: {f"{f}_by_rank": [r["drill"][k][f] for r in ranks] for f in ("sha256", "scale", "skipped")}
            for k in ("agreed", "disagreed")
        },
        "bytes": {s: [r["bytes"][s] for r in ranks] for s in ("ddp", "fsdp")},
        "bf16_reduce_drift": first["bf16_reduce_drift"],
        "state_dict_resumes_exactly": {s: all(r["resumed"][s] for r in ranks) for s in ("ddp", "fsdp")},
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m mpcourse.engines.torch.collectives [NPROC]``: the facts as one JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    nproc = int(argv[0]) if argv else 2
    # A fresh process that has run no torch op: fork is safe and saves a torch import per worker.
    print(json.dumps(measure(nproc, start_method="fork" if sys.platform == "linux" else "spawn")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
