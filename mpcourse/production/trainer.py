"""The production Trainer: fallback, precision phases, checkpoints and monitoring around one engine.

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
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from mpcourse._validate import int_at_least
from mpcourse.config import PRECISIONS, TrainConfig
from mpcourse.data import Dataset
from mpcourse.engines import Engine, make_engine
from mpcourse.history import History, StepRecord
from mpcourse.production.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointManager,
    dataset_record,
    load_checkpoint,
    read_checkpoint,
    run_identity,
    warn_skipped,
)
from mpcourse.production.fallback import SAFETY, FallbackPolicy, transfer
from mpcourse.production.monitor import Monitor
from mpcourse.production.schedule import PrecisionSchedule

__all__ = ["Trainer"]


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
        monitor: a :class:`~mpcourse.production.monitor.Monitor`, or None. Default None.
        checkpoints: a :class:`~mpcourse.production.checkpoint.CheckpointManager`, or None. Default None.
        throttle: seconds to sleep after each step (to make a crash demo watchable). Default 0.
    """

    def __init__(
        self,
        backend: str,
        model: Any,
        config: TrainConfig,
        data: Dataset,
        *,
        device: str = "auto",
        size: str = "small",
        fallback: FallbackPolicy | None = None,
        schedule: PrecisionSchedule | None = None,
        monitor: Monitor | None = None,
        checkpoints: CheckpointManager | None = None,
        throttle: float = 0.0,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be an mpcourse.TrainConfig, got {type(config).__name__}")
        self.config, self.data = config, data
        self.fallback, self.schedule, self.monitor = fallback, schedule, monitor
        self.checkpoints, self.throttle = checkpoints, float(throttle)
        self.floor = "fp16"  # fallback never returns below this precision
        self._pending: tuple[str, dict[str, Any]] | None = None
        self._recent: deque[StepRecord] = deque(maxlen=fallback.window if fallback else 1)
        first = self._wanted(0)
        self.engine = make_engine(
            backend, model, self._config_for(first), device=device, data=data, size=size, verbose=False
        )
        self.history = History(meta={**self.engine.describe(), "trainer": True})
        # What makes a checkpoint this run's: the user's config (not the current phase's) and the data.
        try:
            record: dict[str, Any] | None = dataset_record(data)
        except TypeError:  # batches from an iterable: nothing to fingerprint up front
            record = None
        self.run = run_identity(backend, self.engine.model_name, config.to_dict(), record)
        if checkpoints is not None:
            checkpoints.bind(self.run)
        self.resume_skipped: list[tuple[Path, str]] = []  # what the last resume passed over, and why

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
        self.engine = transfer(self.engine, self._config_for(precision))
        self._recent.clear()
        self.history.events.append(
            {"step": self.engine.step, "kind": event.pop("kind"), "from": old, "to": precision, **event}
        )

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
            self.checkpoints.save(self.engine, meta={"trainer": self.trainer_state()})

    def trainer_state(self) -> dict[str, Any]:
        """The trainer's own part of a checkpoint: fallback floor, History, the fallback window."""
        return {"floor": self.floor, "history": self.history.to_dict(), "recent": [r.step for r in self._recent]}

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
                assert self.fallback is not None  # _pending is only set by the fallback policy
                to = self.fallback.next_precision(self.engine.config.precision)
                self.floor = to
                self._switch(to, {"kind": "fallback", "reason": reason, "evidence": evidence})
                self._maybe_checkpoint()
        return self.history

    def fit(self, steps: int, progress: bool = False) -> History:
        """Train ``steps`` more steps (through any switches); returns the whole History."""
        int_at_least("steps", steps, 1)
        return self.run_to(self.engine.step + steps, progress)

    def resume(self, source: str | Path | CheckpointManager) -> Checkpoint:
        """Continue from a checkpoint file, or the newest valid one of this run in a directory/manager.

        Files passed over (damaged, or another run's) are listed in ``self.resume_skipped`` with
        why, and each is named in a UserWarning.

        Raises:
            CheckpointError: no valid checkpoint of this run there (the message lists what was
                skipped and why), or the file is bad or from another run (backend, model, config
                or dataset). The trainer is left as it was.
            FileNotFoundError: ``source`` is a file path that does not exist.
        """
        if isinstance(source, CheckpointManager) or Path(source).is_dir():
            mgr = source if isinstance(source, CheckpointManager) else CheckpointManager(source, run=self.run)
            found = mgr.scan(self.run)
            self.resume_skipped = found.skipped
            warn_skipped(found.skipped)
            if found.newest is None:
                why = "; ".join(w for _, w in found.skipped) or "the directory holds no checkpoint files"
                raise CheckpointError(f"no valid checkpoint of this run in {mgr.directory}: {why}")
            path = found.newest
        else:
            path, self.resume_skipped = Path(source), []
        ck = read_checkpoint(path)
        precision = ck.meta.get("precision")
        if precision not in PRECISIONS:
            raise CheckpointError(f"{path}: no valid precision in its meta ({precision!r})")
        engine = transfer(self.engine, self._config_for(precision))
        data = self.data if self.run["dataset"] is not None else None
        load_checkpoint(path, engine, data=data)  # refuses another backend, model, config or dataset
        self.engine = engine
        state = ck.meta.get("trainer", {})
        self.floor = state.get("floor", "fp16")
        if "history" in state:
            self.history = History.from_dict(state["history"])
        by_step = {r.step: r for r in self.history.records}
        self._recent.clear()
        self._recent.extend(by_step[s] for s in state.get("recent", []) if s in by_step)
        return ck
