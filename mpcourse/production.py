"""Mixed precision in production: fallback, precision phases, checkpoints, monitoring, validation.

Usage::

    import mpcourse as mpc
    from mpcourse import production as prod

    ds = mpc.data.load("digits")
    tr = prod.Trainer("torch", "mlp", mpc.TrainConfig(precision="fp16"), ds,
                      fallback=prod.FallbackPolicy(window=20, max_overflow_rate=0.5),
                      schedule=prod.PrecisionSchedule.fp32_warmup(50, then="fp16"),
                      monitor=prod.Monitor(), checkpoints=prod.CheckpointManager("run", every=50))
    hist = tr.fit(steps=300)        # one History across every precision switch
    hist.events                     # [{'step': 50, 'kind': 'phase', ...}, {'kind': 'fallback', ...}]
    tr.resume("run")                # after a crash: continue from the newest good checkpoint

    prod.validate(ds, precision="fp16", epochs=3)   # fp32 vs mixed: accuracy, speedup, overflows

From a shell, a run that can be killed and resumed (what notebook 06 does)::

    python -m mpcourse.production train --dir run --steps 300 --every 25
    python -m mpcourse.production train --dir run --steps 300 --every 25 --resume

Switching precision is exact: master weights and optimizer state are fp32 in every precision,
so a new engine in the new precision takes them over bit for bit; only the loss scaler starts
afresh (bf16 and fp32 need none). This module is framework-neutral: engines convert their
tensors in :mod:`mpcourse.engines.portable`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mpcourse.checkpoint import (Checkpoint, CheckpointError, CheckpointManager, load_checkpoint,
                                 read_checkpoint, save_checkpoint, state_differences)
from mpcourse.config import PRECISIONS, TrainConfig
from mpcourse.data import Dataset
from mpcourse.engines.base import ZOO, Engine, History, StepRecord, make_engine
from mpcourse.monitor import Monitor

__all__ = ["FallbackPolicy", "switch_precision", "Phase", "PrecisionSchedule", "MemoryEstimate",
           "estimate_memory", "Trainer", "Check", "ValidationReport", "judge", "validate",
           "Monitor", "CheckpointManager", "CheckpointError", "Checkpoint", "save_checkpoint",
           "load_checkpoint", "read_checkpoint", "state_differences", "main"]

# Range, not precision: fp16 overflows first, bf16 has fp32's exponent range, fp32 is the floor.
SAFETY: dict[str, int] = {"fp16": 0, "bf16": 1, "fp32": 2}


def _check_precision(name: str, p: Any) -> str:
    if p not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, PRECISIONS))}; got {p!r}")
    return p


# --- fallback ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FallbackPolicy:
    """When to give up on a precision, and what to fall back to.

    Usage::

        pol = FallbackPolicy(window=50, max_overflow_rate=0.2)   # fp16 -> bf16 -> fp32
        pol.check(last_records, min_scale=1.0)   # None, or ("overflow_rate", {evidence})

    Args:
        chain: precisions from least to most robust. Default ``("fp16", "bf16", "fp32")``.
        window: steps the overflow rate is measured over; the rate is judged only once a full
            window has run in the current precision. Default 50.
        max_overflow_rate: fall back when the share of overflowing steps in the window
            reaches this, in (0, 1]. Default 0.2 (a healthy dynamic scaler overflows about
            once per ``growth_interval`` steps).
        on_min_scale: also fall back when an overflow finds the scale already at
            ``TrainConfig(min_scale=...)``: the scaler cannot back off any further. Default True.
    """

    chain: tuple[str, ...] = ("fp16", "bf16", "fp32")
    window: int = 50
    max_overflow_rate: float = 0.2
    on_min_scale: bool = True

    def __post_init__(self) -> None:
        if not self.chain or len(set(self.chain)) != len(self.chain):
            raise ValueError(f"chain must list distinct precisions, got {self.chain!r}")
        for p in self.chain:
            _check_precision("each chain entry", p)
        if [SAFETY[p] for p in self.chain] != sorted(SAFETY[p] for p in self.chain):
            raise ValueError(f"chain must go from less to more range (fp16, bf16, fp32), got {self.chain!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an int >= 1, got {self.window!r}")
        if not isinstance(self.max_overflow_rate, (int, float)) or not 0 < self.max_overflow_rate <= 1:
            raise ValueError(f"max_overflow_rate must be in (0, 1], got {self.max_overflow_rate!r}")

    def next_precision(self, current: str) -> str | None:
        """The first precision in the chain with more range than ``current``, or None."""
        return next((p for p in self.chain if SAFETY[p] > SAFETY[current]), None)

    def check(self, recent: Sequence[StepRecord], min_scale: float | None = None) -> tuple[str, dict[str, Any]] | None:
        """Judge the steps run so far in the current precision (newest last).

        Returns None (keep going) or ``(reason, evidence)`` with reason ``"min_scale"`` or
        ``"overflow_rate"``.
        """
        if not recent:
            return None
        last = recent[-1]
        if self.on_min_scale and min_scale is not None and last.found_inf and last.scale <= min_scale:
            return "min_scale", {"scale": last.scale, "min_scale": min_scale, "step": last.step,
                                 "overflow_steps": [r.step for r in recent[-self.window:] if r.found_inf]}
        if len(recent) >= self.window:
            win = recent[-self.window:]
            over = [r.step for r in win if r.found_inf]
            rate = len(over) / len(win)
            if rate >= self.max_overflow_rate:
                return "overflow_rate", {"overflow_rate": rate, "threshold": self.max_overflow_rate,
                                         "window": [win[0].step, win[-1].step], "overflow_steps": over,
                                         "last_scale": last.scale}
        return None


def _rebuild(engine: Engine, config: TrainConfig) -> Engine:
    base, _, size = engine.model_name.partition(":")
    model: Any = base if base in ZOO else engine.model  # a user's model object is taken over as is
    loss_fn = getattr(engine, "loss_fn", None)
    if loss_fn is getattr(sys.modules[type(engine).__module__], "_default_loss", None):
        loss_fn = None  # the engine's own default (MLX compiles only its own loss)
    new = make_engine(engine.backend, model, config, device=engine.device, loss_fn=loss_fn,
                      num_features=engine.num_features,
                      num_classes=engine.num_classes, size=size or "small", verbose=False)
    new.model_name = engine.model_name
    return new


def switch_precision(engine: Engine, precision: str) -> Engine:
    """A new engine in ``precision`` that takes over ``engine``'s weights, optimizer and data position.

    Exact, because the master weights and the optimizer state are fp32 whatever the compute
    precision; the new engine gets the loss scaler its precision needs (``loss_scale="auto"``),
    starting fresh. The old engine should not be used afterwards.

    Raises:
        ValueError: an unknown precision, or an engine without fp32 master weights
            (``master_weights=False`` keeps no fp32 copy to hand over).
    """
    _check_precision("precision", precision)
    return _transfer(engine, engine.config.replace(precision=precision, loss_scale="auto"))


def _transfer(engine: Engine, config: TrainConfig) -> Engine:
    """A new engine with ``config`` holding ``engine``'s state, with a fresh scaler of its own."""
    if config == engine.config:
        return engine
    if not engine.config.master_weights:
        raise ValueError("switching precision needs fp32 master weights (TrainConfig(master_weights=True)); "
                         "this engine trains its half-precision parameters directly")
    new = _rebuild(engine, config)
    state = engine.state_dict()
    fresh = new.state_dict()["framework"]
    if "scaler" in fresh:
        state["framework"]["scaler"] = fresh["scaler"]
    new.load_state_dict(state)
    return new


# --- precision phases and memory ------------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    """A stretch of training in one precision; ``steps=None`` runs to the end."""

    name: str
    precision: str
    steps: int | None = None

    def __post_init__(self) -> None:
        _check_precision(f"phase {self.name!r} precision", self.precision)
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ValueError(f"phase {self.name!r}: steps must be an int >= 1 or None, got {self.steps!r}")


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """Estimated training memory in one precision (bytes), from real parameter and activation counts.

    An estimate, not a measurement: fp32 master weights, fp32 gradients and optimizer state,
    a half-precision copy of the weights for the forward (autocast keeps one), and every leaf
    layer's output kept for backward at the compute width. Allocator overhead, workspaces and
    the ops autocast keeps in fp32 (softmax, norms, the loss) are left out.
    """

    precision: str
    parameters: int
    activations: int
    batch_size: int
    weights: int
    grads: int
    optimizer: int
    compute_copy: int
    activation_bytes: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.compute_copy + self.activation_bytes

    def saved_vs(self, reference: "MemoryEstimate") -> int:
        """Bytes saved compared with ``reference`` (negative: this one needs more)."""
        return reference.total - self.total


def estimate_memory(engine: Engine, x: np.ndarray, precision: str | None = None) -> MemoryEstimate:
    """Estimate training memory of ``engine``'s model at ``precision`` for the batch ``x``.

    The counts are real (the framework's parameters; one forward pass over ``x`` with every
    leaf layer's output size recorded); the bytes per value follow the recipe (see
    :class:`MemoryEstimate`).
    """
    from mpcourse.engines.portable import activation_count, parameter_count

    precision = _check_precision("precision", precision or engine.config.precision)
    x = np.asarray(x, dtype=np.float32)
    p, a = parameter_count(engine), activation_count(engine, x)
    width = 4 if precision == "fp32" else 2
    states = {"adam": 2, "adamw": 2, "sgd": 1 if engine.config.momentum > 0 else 0}[engine.config.optimizer]
    return MemoryEstimate(precision=precision, parameters=p, activations=a, batch_size=len(x),
                          weights=4 * p, grads=4 * p, optimizer=4 * p * states,
                          compute_copy=0 if precision == "fp32" else 2 * p, activation_bytes=width * a)


class PrecisionSchedule:
    """Precision by training phase: e.g. an fp32 warm-up, then fp16.

    Usage::

        s = PrecisionSchedule.fp32_warmup(100, then="fp16")
        s = PrecisionSchedule.from_map({"warmup": "fp32", "main": "bf16", "finetune": "fp32"},
                                       steps={"warmup": 100, "main": 800})  # the last runs on
        s.phase_at(150).precision                 # 'bf16'
        s.memory_estimates(eng, ds.x_train[:64])  # one MemoryEstimate per phase

    Args:
        phases: Phase objects or ``(name, precision, steps)`` tuples; every phase but the
            last needs a step count.
    """

    def __init__(self, phases: Sequence[Phase | tuple[Any, ...]]) -> None:
        self.phases = tuple(p if isinstance(p, Phase) else Phase(*p) for p in phases)
        if not self.phases:
            raise ValueError("a PrecisionSchedule needs at least one phase")
        if any(p.steps is None for p in self.phases[:-1]):
            raise ValueError("every phase but the last needs steps=<int> (only the last may run to the end)")

    @classmethod
    def fp32_warmup(cls, warmup_steps: int, then: str = "fp16") -> "PrecisionSchedule":
        """``warmup_steps`` in fp32, then ``then`` to the end."""
        return cls([Phase("warmup", "fp32", warmup_steps), Phase("main", then)])

    @classmethod
    def from_map(cls, precisions: Mapping[str, str], steps: Mapping[str, int]) -> "PrecisionSchedule":
        """Phases in the mapping's order; ``steps`` names every phase's length but the last's."""
        unknown = set(steps) - set(precisions)
        if unknown:
            raise ValueError(f"steps names phases {sorted(unknown)} that precisions lacks")
        names = list(precisions)
        return cls([Phase(n, precisions[n], steps.get(n)) for n in names])

    def starts(self) -> list[int]:
        """The first step of each phase."""
        out, at = [], 0
        for p in self.phases:
            out.append(at)
            at += p.steps or 0
        return out

    def phase_at(self, step: int) -> Phase:
        """The phase that global ``step`` belongs to (the last one after every length ran out)."""
        for start, p in zip(self.starts(), self.phases):
            if p.steps is None or step < start + p.steps:
                return p
        return self.phases[-1]

    def next_boundary(self, step: int) -> int | None:
        """The first phase start after ``step``, or None."""
        return next((s for s in self.starts() if s > step), None)

    def memory_estimates(self, engine: Engine, x: np.ndarray) -> list[dict[str, Any]]:
        """Per phase: its estimate and the bytes it saves against fp32 (see :func:`estimate_memory`)."""
        ref = estimate_memory(engine, x, "fp32")
        out = []
        for p in self.phases:
            est = estimate_memory(engine, x, p.precision)
            out.append({"phase": p.name, "precision": p.precision, "steps": p.steps,
                        "estimate_bytes": est.total, "saved_bytes": est.saved_vs(ref),
                        "saved_fraction": est.saved_vs(ref) / ref.total, "estimate": est})
        return out

    def __repr__(self) -> str:
        return "PrecisionSchedule(" + ", ".join(f"{p.name}:{p.precision}x{p.steps or 'rest'}"
                                                for p in self.phases) + ")"


# --- the production loop ----------------------------------------------------------------------
class Trainer:
    """An engine wrapped with fallback, precision phases, a monitor and crash-safe checkpoints.

    Usage::

        tr = Trainer("torch", "mlp", mpc.TrainConfig(precision="fp16"), ds,
                     fallback=FallbackPolicy(), checkpoints=CheckpointManager("run", every=50))
        tr.fit(steps=500)                  # or tr.run_to(500): the same, by global step
        tr.engine, tr.history, tr.events, tr.monitor.summary()

    Args:
        backend, model, config, data: as for :func:`mpcourse.make_engine` and ``fit``.
        device: the engine's device. Default ``"auto"``.
        size: zoo model size. Default ``"small"``.
        fallback: a :class:`FallbackPolicy`, or None for none. Default None.
        schedule: a :class:`PrecisionSchedule`, or None to train in ``config.precision``.
        monitor: a :class:`~mpcourse.monitor.Monitor`, or None. Default None.
        checkpoints: a :class:`~mpcourse.checkpoint.CheckpointManager`, or None. Default None.
        throttle: seconds to sleep after each step (to make a crash demo watchable). Default 0.
    """

    def __init__(self, backend: str, model: Any, config: TrainConfig, data: Dataset, *,
                 device: str = "auto", size: str = "small", fallback: FallbackPolicy | None = None,
                 schedule: PrecisionSchedule | None = None, monitor: Monitor | None = None,
                 checkpoints: CheckpointManager | None = None, throttle: float = 0.0) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be an mpcourse.TrainConfig, got {type(config).__name__}")
        self.config, self.data = config, data
        self.fallback, self.schedule, self.monitor = fallback, schedule, monitor
        self.checkpoints, self.throttle = checkpoints, float(throttle)
        self.floor = "fp16"         # fallback never returns below this precision
        self._pending: tuple[str, dict[str, Any]] | None = None
        self._recent: deque[StepRecord] = deque(maxlen=fallback.window if fallback else 1)
        first = self._wanted(0)
        self.engine = make_engine(backend, model, self._config_for(first), device=device, data=data,
                                  size=size, verbose=False)
        self.history = History(meta={**self.engine.describe(), "trainer": True})

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.history.events

    def _wanted(self, step: int) -> str:
        want = self.schedule.phase_at(step).precision if self.schedule else self.config.precision
        return max(want, self.floor, key=SAFETY.__getitem__)

    def _config_for(self, precision: str) -> TrainConfig:
        # The user's own scaler settings in their precision; the default scaler in any other.
        if precision == self.config.precision:
            return self.config
        return self.config.replace(precision=precision, loss_scale="auto")

    def _switch(self, precision: str, event: dict[str, Any]) -> None:
        old = self.engine.config.precision
        self.engine = _transfer(self.engine, self._config_for(precision))
        self._recent.clear()
        self.history.events.append({"step": self.engine.step, "kind": event.pop("kind"), "from": old,
                                    "to": precision, **event})

    def _on_step(self, engine: Engine, rec: StepRecord) -> bool:
        self.history.records.append(rec)
        if self.monitor is not None:
            self.monitor.update(rec, engine)
        if self.throttle:
            time.sleep(self.throttle)
        if self.fallback is not None and self.fallback.next_precision(engine.config.precision):
            self._recent.append(rec)
            verdict = self.fallback.check(list(self._recent), engine.config.min_scale)
            if verdict is not None:
                self._pending = verdict
                return True  # stop fit(); the loop switches, then checkpoints
        self._maybe_checkpoint()
        return False

    def _maybe_checkpoint(self) -> None:
        if self.checkpoints is not None and self.engine.step % self.checkpoints.every == 0:
            self.checkpoints.save(self.engine, meta={"trainer": self._trainer_state()})

    def _trainer_state(self) -> dict[str, Any]:
        return {"floor": self.floor, "history": self.history.to_dict(),
                "recent": [r.step for r in self._recent]}

    def run_to(self, total_steps: int, progress: bool = False) -> History:
        """Train until the engine's global step reaches ``total_steps``; returns the whole History."""
        while self.engine.step < total_steps:
            want = self._wanted(self.engine.step)
            if want != self.engine.config.precision:
                phase = self.schedule.phase_at(self.engine.step).name if self.schedule else None
                self._switch(want, {"kind": "phase", "phase": phase})
            stop = total_steps
            if self.schedule is not None:
                stop = min(stop, self.schedule.next_boundary(self.engine.step) or stop)
            self._pending = None
            self.engine.fit(self.data, steps=stop - self.engine.step, progress=progress, callback=self._on_step)
            if self._pending is not None:
                reason, evidence = self._pending
                to = self.fallback.next_precision(self.engine.config.precision)  # type: ignore[union-attr]
                self.floor = to  # type: ignore[assignment]
                self._switch(to, {"kind": "fallback", "reason": reason, "evidence": evidence})  # type: ignore[arg-type]
                self._maybe_checkpoint()
        return self.history

    def fit(self, steps: int, progress: bool = False) -> History:
        """Train ``steps`` more steps (through any switches); returns the whole History."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        return self.run_to(self.engine.step + steps, progress)

    def resume(self, source: str | Path | CheckpointManager) -> Checkpoint:
        """Continue from a checkpoint file, or the newest good one in a directory/manager.

        Raises:
            FileNotFoundError: no usable checkpoint there.
            CheckpointError: the file is bad or from another run.
        """
        if isinstance(source, CheckpointManager) or Path(source).is_dir():
            mgr = source if isinstance(source, CheckpointManager) else CheckpointManager(source)
            path = mgr.latest()
            if path is None:
                raise FileNotFoundError(f"no usable checkpoint in {mgr.directory}")
        else:
            path = Path(source)
        ck = read_checkpoint(path)
        precision = ck.meta.get("precision")
        if precision not in PRECISIONS:
            raise CheckpointError(f"{path}: no valid precision in its meta ({precision!r})")
        self.engine = _transfer(self.engine, self._config_for(precision))
        load_checkpoint(path, self.engine)  # refuses another backend, model or config
        state = ck.meta.get("trainer", {})
        self.floor = state.get("floor", "fp16")
        if "history" in state:
            self.history = History.from_dict(state["history"])
        by_step = {r.step: r for r in self.history.records}
        self._recent.clear()
        self._recent.extend(by_step[s] for s in state.get("recent", []) if s in by_step)
        return ck


# --- validation against fp32 ---------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One pass/fail line of a validation."""

    name: str
    value: float
    threshold: float
    rule: str
    passed: bool


def judge(*, fp32_accuracy: float, mixed_accuracy: float, overflow_rate: float, speedup: float,
          max_accuracy_drop: float = 0.01, max_overflow_rate: float = 0.05,
          min_speedup: float | None = None) -> tuple[Check, ...]:
    """The pass/fail rules of :func:`validate`, as a pure function.

    Accuracy: mixed may be at most ``max_accuracy_drop`` (a fraction: 0.01 = 1 point) below
    fp32; being better passes. Overflow rate: strictly below ``max_overflow_rate``. Speedup
    (fp32 time / mixed time): judged only when ``min_speedup`` is given, since on a CPU
    half precision is usually slower and that is no defect of the run.
    """
    drop = fp32_accuracy - mixed_accuracy
    checks = [Check("accuracy drop vs fp32", drop, max_accuracy_drop, "<=",
                    bool(math.isfinite(drop) and drop <= max_accuracy_drop + 1e-12)),
              Check("overflow rate", overflow_rate, max_overflow_rate, "<",
                    bool(overflow_rate < max_overflow_rate))]
    if min_speedup is not None:
        checks.append(Check("speedup vs fp32", speedup, min_speedup, ">=",
                            bool(math.isfinite(speedup) and speedup >= min_speedup)))
    return tuple(checks)


@dataclass(frozen=True)
class ValidationReport:
    """fp32 against mixed precision on one task; ``passed`` when every check passed."""

    precision: str
    fp32_accuracy: float
    mixed_accuracy: float
    speedup: float
    overflow_rate: float
    checks: tuple[Check, ...]
    fp32_history: History = field(repr=False)
    mixed_history: History = field(repr=False)

    @property
    def accuracy_diff(self) -> float:
        """Mixed minus fp32 accuracy, in points (percentage points)."""
        return 100.0 * (self.mixed_accuracy - self.fp32_accuracy)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def table(self) -> list[dict[str, Any]]:
        """The checks as rows, ready for a DataFrame or a printout."""
        return [{"check": c.name, "value": c.value, "rule": f"{c.rule} {c.threshold:g}",
                 "result": "PASS" if c.passed else "FAIL"} for c in self.checks]


def _seconds_per_sample(h: History, skip: int) -> float:
    # The median step: one step stalled by another process does not decide the verdict.
    rs = h.records[skip:] or h.records
    return float(np.median([r.seconds / r.samples for r in rs]))


def validate(data: Dataset, *, backend: str = "torch", model: str = "mlp", precision: str = "fp16",
             config: TrainConfig | None = None, epochs: int = 3, device: str = "auto",
             size: str = "small", max_accuracy_drop: float = 0.01, max_overflow_rate: float = 0.05,
             min_speedup: float | None = None, warmup_steps: int = 5) -> ValidationReport:
    """Train fp32 and ``precision`` on the same task, seed and data order; compare them.

    The two runs advance in turns, one step each, so a busy machine slows both alike; the
    speedup is the ratio of their median device-synchronised seconds per sample.

    Args:
        data: the dataset (train split trained on, test split scored).
        backend, model, device, size: as for :func:`mpcourse.make_engine`.
        precision: the mixed precision under test. Default ``"fp16"``.
        config: base TrainConfig (its precision is replaced). Default ``TrainConfig()``.
        epochs: epochs for each run. Default 3.
        max_accuracy_drop, max_overflow_rate, min_speedup: see :func:`judge`.
        warmup_steps: first steps left out of the timing (allocation, caches). Default 5.
    """
    _check_precision("precision", precision)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    base = config or TrainConfig()
    engines = {p: make_engine(backend, model, base.replace(precision=p, loss_scale=base.loss_scale
                                                           if p == base.precision else "auto"),
                              device=device, data=data, size=size, verbose=False)
               for p in ("fp32", precision)}
    hists = {p: History(meta=e.describe()) for p, e in engines.items()}
    # Interleaved step by step, so both runs see the same machine load when they are timed.
    for _ in range(epochs * engines["fp32"].steps_per_epoch(len(data.x_train))):
        for p, e in engines.items():
            hists[p].extend(e.fit(data, steps=1, progress=False))
    runs = {p: (hists[p], engines[p].evaluate(data)["accuracy"]) for p in engines}
    (h32, a32), (hmp, amp) = runs["fp32"], runs[precision]
    speedup = _seconds_per_sample(h32, warmup_steps) / _seconds_per_sample(hmp, warmup_steps)
    checks = judge(fp32_accuracy=a32, mixed_accuracy=amp, overflow_rate=hmp.overflow_rate, speedup=speedup,
                   max_accuracy_drop=max_accuracy_drop, max_overflow_rate=max_overflow_rate,
                   min_speedup=min_speedup)
    return ValidationReport(precision, a32, amp, speedup, hmp.overflow_rate, checks, h32, hmp)


# --- command line: a run that can be killed and resumed -------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mpcourse.production",
                                 description="Crash-safe training runs with checkpoints, fallback and a monitor.")
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
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mpcourse.production train ...``: prints one JSON line when done."""
    from mpcourse import data as data_mod
    from mpcourse.engines.portable import seed_rngs

    args = _parser().parse_args(argv)
    seed_rngs(args.backend, args.seed)  # a resumed run gets the saved RNG state back instead
    ds = data_mod.load(args.dataset, seed=args.seed)
    cfg = TrainConfig(precision=args.precision, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    mgr = CheckpointManager(args.dir, every=args.every, keep=args.keep)
    tr = Trainer(args.backend, args.model, cfg, ds, device=args.device, checkpoints=mgr,
                 fallback=FallbackPolicy() if args.fallback else None, throttle=args.throttle)
    resumed_from = None
    if args.resume and mgr.latest() is not None:
        resumed_from = tr.resume(mgr).meta["step"]
    tr.run_to(args.steps)
    out = save_checkpoint(args.out or Path(args.dir) / "final.mpck", tr.engine,
                          meta={"trainer": tr._trainer_state()})
    print(json.dumps({"final": str(out), "step": tr.engine.step, "resumed_from": resumed_from,
                      "precision": tr.engine.config.precision, "events": tr.events}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
