"""Issue 14's cases, tried against whichever mpcourse is on PYTHONPATH; prints tried / refused clearly.

Usage::

    PYTHONPATH=. MPCOURSE_PROGRESS=0 python tests/fault_census.py

Only names that exist before and after the fix are used, so the same script measures both (the
closing note of issue 14 quotes its last line). Needs torch and mlx; takes about a minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import struct
import sys
import tempfile
import warnings
from pathlib import Path

import mpcourse as mpc
from mpcourse.production import checkpoint as ckm
from mpcourse.production.cli import main as train_main

warnings.simplefilter("ignore")
results: list[tuple[str, bool, str]] = []


def case(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, bool(ok), detail))


def tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="i14-"))


ds = mpc.data.load("digits", seed=0)


def eng(backend: str = "torch", **cfg):  # type: ignore[no-untyped-def]
    return mpc.make_engine(backend, "mlp", mpc.TrainConfig(**cfg), device="cpu", data=ds, verbose=False)


def refused(fn, *args, keys=(), types=(ValueError, TypeError)) -> tuple[bool, str]:  # type: ignore[no-untyped-def]
    """Whether ``fn(*args)`` raises one of ``types`` whose message holds every one of ``keys``."""
    try:
        fn(*args)
    except types as err:
        return all(k in str(err) for k in keys), f"{type(err).__name__}: {str(err)[:150]}"
    except Exception as err:  # noqa: BLE001 - a crash of another type is "not clear"
        return False, f"{type(err).__name__}: {str(err)[:150]}"
    return False, "accepted"


# 1. a save never removes the file it wrote
e = eng()
d = tmp()
mgr = ckm.CheckpointManager(d / "run", every=1, keep=1)
e.step = 900
mgr.save(e)
e.step = 5
p = mgr.save(e)
case("save keeps the file it wrote", p.exists(), str([x.name for x in mgr.paths()]))

# 2-4. damaged files
good = ckm.save_checkpoint(d / "a.mpck", eng(precision="fp16")).read_bytes()
for off, what in [
    (8, "header_len"),
    (16, "payload_len"),
    (30, "digest/prefix"),
    (60, "digest"),
    (100, "header"),
    (-1, "payload"),
]:
    bad = bytearray(good)
    bad[off] ^= 1
    f = d / f"flip{off}.mpck"
    f.write_bytes(bytes(bad))
    ok, det = refused(ckm.read_checkpoint, f, keys=(str(f),), types=(ckm.CheckpointError,))
    case(f"byte {off} ({what}) damaged -> CheckpointError naming the file", ok, det)
hl, pl = struct.unpack_from("<QQ", good, 8)
for k in (1, 7):  # lengths that still add up to the file size: the header boundary moves
    bad = bytearray(good)
    struct.pack_into("<QQ", bad, 8, hl + k, pl - k)
    f = d / f"shift_{k}.mpck"
    f.write_bytes(bytes(bad))
    ok, det = refused(ckm.read_checkpoint, f, keys=(str(f),), types=(ckm.CheckpointError,))
    case(f"length fields shifted by {k} (same total) -> CheckpointError", ok, det)
    mg = ckm.CheckpointManager(f.parent, prefix="shift")
    try:
        mg.latest()
        case(f"latest() with a shifted-length file ({k}) does not crash", True)
    except Exception as err:  # noqa: BLE001
        case(f"latest() with a shifted-length file ({k}) does not crash", False, f"{type(err).__name__}")
for n in (0, 5, 40, 55):
    f = d / f"short{n}.mpck"
    f.write_bytes(good[:n])
    ok, det = refused(ckm.read_checkpoint, f, keys=(str(f),), types=(ckm.CheckpointError,))
    ok = ok and ("truncated" in det or "empty" in det) and "version" not in det
    case(f"truncated to {n} bytes -> says truncated", ok, det)
rng = random.Random(0)
hits = 0
N = 200
for _ in range(N):
    bad = bytearray(good)
    off = rng.randrange(len(bad))
    bad[off] ^= rng.randrange(1, 256)
    f = d / "rand.mpck"
    f.write_bytes(bytes(bad))
    ok, _ = refused(ckm.read_checkpoint, f, keys=(str(f),), types=(ckm.CheckpointError,))
    hits += ok
case(f"random byte damage: {hits}/{N} refused as CheckpointError", hits == N)

# 5. state loaders
for backend in ("torch", "mlx"):
    for bad in (math.nan, 0.0, math.inf, -4.0):
        x = eng(backend, precision="fp16")
        st = x.state_dict()
        st["framework"]["scaler"]["scale"] = bad
        before = json.dumps(x.state_dict()["framework"]["scaler"], default=repr)
        ok, det = refused(x.load_state_dict, st, keys=("scale",))
        ok = ok and json.dumps(x.state_dict()["framework"]["scaler"], default=repr) == before
        case(f"{backend} engine scale {bad} refused", ok, det)
    x = eng(backend, precision="fp16")
    ok, det = refused(x.load_state_dict, {**x.state_dict(), "framework": {}}, keys=("scaler",), types=(ValueError,))
    case(f"{backend} engine {{'framework': {{}}}} -> ValueError naming the key", ok, det)

dyn_cases = [
    ("growth_tracker", 50),
    ("growth_tracker", "x"),
    ("growth_tracker", True),
    ("growth_tracker", 1.5),
    ("growth_tracker", -1),
    ("scale", 2.0**30),
    ("scale", 0.5),
    ("scale", math.nan),
    ("hysteresis_left", 0),
    ("hysteresis_left", 3),
    ("total_steps", None),
    ("total_steps", 10.5),
    ("total_skipped", 11),
    ("consecutive_skipped", 5),
    ("total_steps", -1),
]
for key, bad in dyn_cases:
    s = mpc.DynamicLossScaler(init_scale=8.0, growth_interval=3, hysteresis=2, min_scale=1.0, max_scale=2.0**10)
    for v in [False, True, False, False, True, True, False, True, False, False]:
        s.update(v)
    st = s.state_dict()
    ok, det = refused(s.load_state_dict, {**st, key: bad}, keys=(key,))
    case(f"dynamic {key}={bad!r} refused naming the key", ok and s.state_dict() == st, det)
for key, bad in [
    ("scale", -4.0),
    ("total_steps", -1),
    ("total_skipped", 5),
    ("consecutive_skipped", False),
    ("total_steps", 2.5),
]:
    s = mpc.StaticLossScaler(64.0)
    s.update(True)
    s.update(False)
    st = s.state_dict()
    ok, det = refused(s.load_state_dict, {**st, key: bad}, keys=(key,))
    case(f"static {key}={bad!r} refused naming the key", ok and s.state_dict() == st, det)

for backend in ("torch", "mlx"):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        x = eng(backend, precision="fp16", master_weights=False, loss_scale=1024.0)
    rec = x.fit(ds, steps=1, progress=False).records[0]
    case(
        f"{backend} pure fp16 Adam warns and reports its NaN step",
        bool(w) and rec.found_inf,
        f"warned={bool(w)} found_inf={rec.found_inf}",
    )

# 6. the CLI
flags = [
    ["--steps", "-5"],
    ["--steps", "0"],
    ["--every", "0"],
    ["--keep", "0"],
    ["--device", "tpu"],
    ["--dataset", "nope"],
    ["--lr", "-1"],
    ["--seed", "-3"],
    ["--throttle", "-1"],
]


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = train_main(argv)
        except SystemExit as stop:
            rc = int(stop.code or 0)
        except Exception as exc:  # noqa: BLE001
            print(f"Traceback: {type(exc).__name__}: {exc}", file=sys.stderr)
            rc = 1
    return rc, out.getvalue(), err.getvalue()


for f in flags:
    run = tmp() / "run"
    steps = [] if f[0] == "--steps" else ["--steps", "3"]
    rc, out, err = cli(["train", "--dir", str(run), *steps, *f])
    lines = err.strip().splitlines()
    ok = rc == 2 and len(lines) == 1 and f[0] in err and f[1] in err and not run.exists()
    case(
        f"CLI {' '.join(f)} -> exit 2, one line, nothing written",
        ok,
        f"rc={rc} lines={len(lines)} wrote={run.exists()} {lines[-1][:120] if lines else ''}",
    )

run = tmp() / "run"
base = ["train", "--dir", str(run), "--steps", "4", "--every", "2"]
cli(base)
for extra in (["--lr", "0.01"], ["--dataset", "underflow"]):
    rc, out, err = cli([*base, "--resume", *extra])
    lines = err.strip().splitlines()
    case(
        f"CLI --resume {' '.join(extra)} (another run) -> exit 2, one line",
        rc == 2 and len(lines) == 1,
        f"rc={rc} {lines[-1][:120] if lines else ''}",
    )
for p in run.glob("ckpt_*.mpck"):
    p.write_bytes(p.read_bytes()[:-10])
rc, out, err = cli([*base, "--resume"])
case("CLI --resume with every checkpoint damaged -> exit 2", rc == 2, f"rc={rc} {out.strip()[-120:]}")
(run / ".ckpt_00000008.mpck.x.tmp").write_bytes(b"stale")
cli([*base, "--steps", "6"])
case("stale .tmp removed on the next start", not (run / ".ckpt_00000008.mpck.x.tmp").exists())

tried = len(results)
clear = sum(ok for _, ok, _ in results)
for name, ok, det in results:
    print(f"ok   {name}" if ok else f"FAIL {name}  [{det}]")
print(f"cases tried: {tried}; refused clearly / behaved as the issue asks: {clear}; not: {tried - clear}")
