"""Property tests for issue 14 (hypothesis): scaler state machines and their state round trips,
random damage to a checkpoint file, and a kill at a random point of the checkpoint write path.

They use a tiny stand-in engine (numpy arrays, no framework), so together they run in seconds;
the example counts are set so the whole file stays well under a minute on a shared 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any
from unittest import mock

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpcourse as mpc
from mpcourse.production.checkpoint import CheckpointError, CheckpointManager, read_checkpoint, save_checkpoint
from mpcourse.production.ckpt_format import PREFIX_SIZE
from mpcourse.scaler import DynamicLossScaler, StaticLossScaler

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- scalers -------------------------------------------------------------------------------------------
dynamic_settings = st.fixed_dictionaries(
    {
        "init_scale": st.sampled_from([1.0, 2.0**10, 2.0**16]),
        "growth_factor": st.sampled_from([1.5, 2.0, 4.0]),
        "backoff_factor": st.sampled_from([0.25, 0.5, 0.9]),
        "growth_interval": st.integers(1, 6),
        "hysteresis": st.integers(1, 4),
        "min_scale": st.sampled_from([None, 2.0**-4, 1.0]),
        "max_scale": st.sampled_from([None, 2.0**12, 2.0**24]),
    }
)


def _walk(s: Any, verdicts: list[bool]) -> list[tuple[float, int]]:
    out = []
    for v in verdicts:
        s.update(v)
        out.append((s.scale, s.total_skipped))
    return out


@FAST
@given(kw=dynamic_settings, verdicts=st.lists(st.booleans(), max_size=150), cut=st.integers(0, 150))
def test_dynamic_round_trip_anywhere_accepts_every_reachable_state(
    kw: dict[str, Any], verdicts: list[bool], cut: int
) -> None:
    a = DynamicLossScaler(**kw)
    cut = min(cut, len(verdicts))
    for v in verdicts[:cut]:
        a.update(v)
        DynamicLossScaler().load_state_dict(a.state_dict())  # validation never refuses a state update reaches
    b = DynamicLossScaler()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert _walk(b, verdicts[cut:]) == _walk(a, verdicts[cut:])
    assert b.state_dict() == a.state_dict()


@FAST
@given(
    scale=st.sampled_from([1.0, 3.0, 2.0**15, 1e-3]),
    verdicts=st.lists(st.booleans(), max_size=150),
    cut=st.integers(0, 150),
)
def test_static_walk_and_round_trip(scale: float, verdicts: list[bool], cut: int) -> None:
    a = StaticLossScaler(scale)
    cut = min(cut, len(verdicts))
    _walk(a, verdicts[:cut])
    b = StaticLossScaler(7.0)
    b.load_state_dict(a.state_dict())
    rest_a, rest_b = _walk(a, verdicts[cut:]), _walk(b, verdicts[cut:])
    assert rest_a == rest_b and a.state_dict() == b.state_dict()
    assert a.scale == float(np.float32(scale)) and a.total_steps == len(verdicts)
    assert a.total_skipped == sum(verdicts)
    run = 0
    for v in verdicts:
        run = run + 1 if v else 0
    assert a.consecutive_skipped == run


def _bad_values(key: str, state: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that break ``state[key]``'s type, range or consistency (always refused)."""
    junk = st.sampled_from([None, "x", True, 1.5, [1], -1])
    if key == "scale":
        out = [math.nan, math.inf, 0.0, -4.0]
        if state.get("max_scale") is not None:
            out.append(state["max_scale"] * 2)
        if state.get("min_scale") is not None:
            out.append(state["min_scale"] / 2)
        return st.sampled_from(out) | st.sampled_from([None, "x", True])
    if key == "growth_tracker":
        return junk | st.integers(state["growth_interval"], state["growth_interval"] + 100)
    if key == "hysteresis_left":
        return junk | st.sampled_from([0, state["hysteresis"] + 1])
    if key == "total_skipped":
        return junk | st.integers(state["total_steps"] + 1, state["total_steps"] + 50)
    if key == "consecutive_skipped":
        return junk | st.integers(state["total_skipped"] + 1, state["total_skipped"] + 50)
    if key == "total_steps":
        return junk | st.sampled_from([-5, 2.0])
    if key in ("growth_interval", "hysteresis"):
        return junk | st.sampled_from([0, -3])
    if key in ("growth_factor",):
        return st.sampled_from([1.0, 0.5, math.nan, math.inf, "x", None])
    if key in ("backoff_factor",):
        return st.sampled_from([1.0, 0.0, 2.0, math.nan, "x", None])
    return st.sampled_from([0.0, -1.0, math.nan, "x", True])  # init_scale, min_scale, max_scale


@FAST
@given(kw=dynamic_settings, verdicts=st.lists(st.booleans(), max_size=60), data=st.data())
def test_a_broken_field_is_refused_naming_a_key_and_changes_nothing(
    kw: dict[str, Any], verdicts: list[bool], data: st.DataObject
) -> None:
    kind = data.draw(st.sampled_from(["dynamic", "static"]))
    s: Any = DynamicLossScaler(**kw) if kind == "dynamic" else StaticLossScaler(kw["init_scale"])
    _walk(s, verdicts)
    good = s.state_dict()
    keys = sorted(k for k in good if k != "kind")
    key = data.draw(st.sampled_from(keys + ["<missing>", "<unknown>"]))
    bad = dict(good)
    if key == "<missing>":
        del bad[data.draw(st.sampled_from(keys))]
    elif key == "<unknown>":
        bad["surprise"] = 1
    else:
        if key in ("min_scale", "max_scale") and good[key] is None:
            key = "scale" if kind == "static" else "growth_tracker"
        bad[key] = data.draw(_bad_values(key, good))
    target: Any = DynamicLossScaler(**kw) if kind == "dynamic" else StaticLossScaler(kw["init_scale"])
    _walk(target, verdicts)
    with pytest.raises((ValueError, TypeError)) as err:
        target.load_state_dict(bad)
    msg = str(err.value)
    assert any(k in msg for k in [*keys, "surprise", "missing keys"]), msg
    assert target.state_dict() == good


# --- a tiny engine to checkpoint -------------------------------------------------------------------------
@dataclasses.dataclass
class TinyEngine:
    """What save_checkpoint reads from an engine, with numpy state (no framework needed)."""

    step: int = 0
    backend: str = "numpy"
    model_name: str = "tiny"
    device: str = "cpu"
    config: mpc.TrainConfig = dataclasses.field(default_factory=mpc.TrainConfig)
    epoch: int = 0
    batch_in_epoch: int = 0

    def state_dict(self) -> dict[str, Any]:
        w = np.arange(24, dtype=np.float32).reshape(4, 6) * (self.step + 1)
        return {
            "framework": {
                "w": w,
                "bf": w.astype(ml_dtypes.bfloat16),
                "s": np.float32(self.step),
                "scaler": {"kind": "static", "scale": 2.0**self.step},
            },
            "step": self.step,
            "pair": ("t", self.step),
        }


@lru_cache(maxsize=1)
def _good_file() -> tuple[str, bytes]:
    d = Path(tempfile.mkdtemp(prefix="mpcourse-faults-"))
    path = save_checkpoint(d / "ckpt_00000003.mpck", TinyEngine(step=3))
    return path.name, path.read_bytes()


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_damage_is_always_a_checkpoint_error(data: st.DataObject) -> None:
    name, good = _good_file()
    n = len(good)
    near_front = st.integers(0, PREFIX_SIZE + 64)  # the prefix and the header's start, often
    offset = data.draw(near_front | st.integers(0, n - 1))
    offset = min(offset, n - 1)
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "zeros", "swap"]))
    raw = bytearray(good)
    if kind == "flip":
        raw[offset] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del raw[offset:]
    elif kind == "extend":
        raw += bytes(data.draw(st.binary(min_size=1, max_size=16)))
    elif kind == "insert":
        raw[offset:offset] = data.draw(st.binary(min_size=1, max_size=4))
    elif kind == "delete":
        del raw[offset : offset + data.draw(st.integers(1, 8))]
    elif kind == "zeros":
        end = min(n, offset + data.draw(st.integers(1, 64)))
        raw[offset:end] = bytes(end - offset)
    else:  # two bytes swapped
        other = data.draw(st.integers(0, n - 1))
        raw[offset], raw[other] = raw[other], raw[offset]
    if bytes(raw) == good:  # a no-op swap or zeroing of zeros is not damage
        return
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError) as err:  # never another exception, never a silent load
            read_checkpoint(path)
        assert str(path) in str(err.value)
        found = CheckpointManager(d).scan()
        assert found.newest is None and [p for p, _ in found.skipped] == [path]


# --- a kill at a random point of the write path ------------------------------------------------------------
class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (every later file operation fails too)."""


class Killer:
    """Counts file operations of a save and kills the 'process' at operation number ``at``."""

    def __init__(self, at: int) -> None:
        self.at, self.count, self.dead = at, 0, False

    def tick(self, what: str) -> None:
        if self.dead:
            raise Killed(f"already dead ({what})")
        self.count += 1
        if self.count == self.at:
            self.dead = True
            raise Killed(f"killed at operation {self.at}: {what}")


class _File:
    def __init__(self, f: Any, killer: Killer) -> None:
        self._f, self._k = f, killer

    def write(self, b: bytes) -> int:
        if not self._k.dead and self._k.count + 1 == self._k.at:
            self._f.write(b[: len(b) // 2])  # half of this write reached the file
        self._k.tick("write")
        return self._f.write(b)

    def flush(self) -> None:
        self._k.tick("flush")
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()  # the kernel closes a killed process's files too


def _killing(killer: Killer) -> Any:
    real_fdopen, real_fsync, real_replace, real_unlink = os.fdopen, os.fsync, os.replace, os.unlink
    real_path_unlink = Path.unlink

    def fdopen(fd: int, *a: Any, **k: Any) -> _File:
        return _File(real_fdopen(fd, *a, **k), killer)

    def fsync(fd: int) -> None:
        killer.tick("fsync")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        killer.tick("replace")
        real_replace(src, dst)

    def unlink(path: Any, *a: Any, **k: Any) -> None:
        killer.tick("unlink")
        real_unlink(path, *a, **k)

    def path_unlink(self: Path, missing_ok: bool = False) -> None:
        killer.tick("prune")
        real_path_unlink(self, missing_ok=missing_ok)

    stack = [
        mock.patch("os.fdopen", fdopen),
        mock.patch("os.fsync", fsync),
        mock.patch("os.replace", replace),
        mock.patch("os.unlink", unlink),
        mock.patch.object(Path, "unlink", path_unlink),
    ]
    return stack


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keep=st.integers(1, 3), before=st.integers(1, 4), at=st.integers(1, 22))
def test_a_kill_during_a_save_never_loses_the_newest_but_one(keep: int, before: int, at: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        mgr = CheckpointManager(d, every=10, keep=keep)
        eng = TinyEngine()
        for i in range(1, before + 1):
            eng.step = 10 * i
            mgr.save(eng)
        prev, new = 10 * before, 10 * (before + 1)
        eng.step = new
        killer = Killer(at)
        patches = _killing(killer)
        for p in patches:
            p.start()
        try:
            mgr.save(eng)
            killed = False
        except Killed:
            killed = True
        finally:
            for p in reversed(patches):
                p.stop()
        assert killed == killer.dead
        # The next start: a new manager for the same run.
        again = CheckpointManager(d, every=10, keep=keep, run=mgr.run)
        found = again.scan()
        assert found.skipped == []  # no half-written checkpoint is ever visible under its name
        steps = [meta["step"] for _, meta in found.valid]
        assert steps and steps[0] in (new, prev)
        assert prev in steps or new in steps
        if steps[0] == prev:
            assert killed and len(steps) == min(before, keep)  # nothing was pruned before the new file landed
        for path, meta in found.valid:  # each survivor holds exactly what was saved at its step
            state = read_checkpoint(path).state["framework"]
            assert np.array_equal(state["w"], TinyEngine(step=meta["step"]).state_dict()["framework"]["w"])
        assert len(steps) <= keep + 1
        again.remove_stale_tmp()
        assert not list(Path(d).glob(".*.tmp"))
        eng.step = new + 10
        again.save(eng)  # and the run goes on, pruning back to `keep`
        assert [m["step"] for _, m in again.scan().valid][0] == new + 10
        assert len(again.scan().valid) == min(keep, len(steps) + 1)
