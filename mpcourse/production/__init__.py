"""Mixed precision in production: fallback, precision phases, checkpoints, monitoring, validation.

Usage::

    import mpcourse as mpc
    from mpcourse import production as prod

    ds = mpc.data.load("digits")
    tr = prod.Trainer("torch", "mlp", mpc.TrainConfig(precision="fp16"), ds,
                      fallback=prod.FallbackPolicy(window=20, max_overflow_rate=0.5),
                      monitor=prod.Monitor(), checkpoints=prod.CheckpointManager("run", every=50))
    hist = tr.fit(steps=300)        # one History across every precision switch
    prod.validate(ds, precision="fp16", epochs=3)   # fp32 vs mixed: accuracy, speedup, overflows

From a shell, a run that can be killed and resumed (what notebook 06 does)::

    python -m mpcourse.production train --dir run --steps 300 --every 25 --resume

One module per concept: ``fallback``, ``schedule``, ``predict`` (the predict phase, measured),
``trainer``, ``validation``, ``checkpoint``,
``monitor`` (with overflow-rate and NaN alerts), ``ckpt_format`` (the checkpoint file format),
``long_run`` (a production GradScaler configuration run until its scale reaches the clamp), and
``cli`` for the shell command.
"""

from mpcourse.production.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    state_differences,
)
from mpcourse.production.cli import main
from mpcourse.production.fallback import SAFETY, FallbackPolicy, switch_precision
from mpcourse.production.monitor import Monitor
from mpcourse.production.predict import PredictCopy, PredictReport, predict_phase
from mpcourse.production.schedule import MemoryEstimate, Phase, PrecisionSchedule, estimate_memory
from mpcourse.production.trainer import Trainer
from mpcourse.production.validation import Check, ValidationReport, judge, validate

__all__ = [
    "FallbackPolicy",
    "switch_precision",
    "Phase",
    "PrecisionSchedule",
    "MemoryEstimate",
    "estimate_memory",
    "Trainer",
    "predict_phase",
    "PredictReport",
    "PredictCopy",
    "Check",
    "ValidationReport",
    "judge",
    "validate",
    "Monitor",
    "CheckpointManager",
    "CheckpointError",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "state_differences",
    "main",
    "SAFETY",
]
