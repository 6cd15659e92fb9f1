"""mpcourse: mixed precision training (FP16/BF16 with loss scaling), taught and implemented.

Usage::

    import mpcourse as mpc

    ds = mpc.data.load("digits")
    eng = mpc.make_engine("torch", model="mlp", config=mpc.TrainConfig(precision="fp16"))
    hist = eng.fit(ds, epochs=3)
    eng.evaluate(ds)

``import mpcourse`` needs neither torch nor mlx: a framework is imported only when an engine
for it is built.
"""

from mpcourse import clipping, config, data, formats, scaler
from mpcourse.config import TrainConfig
from mpcourse.engines.base import History, StepRecord, available_backends, make_engine
from mpcourse.scaler import DynamicLossScaler, StaticLossScaler

__version__ = "0.1.0"

# Submodules that pull in plotly/ipywidgets or are only needed by some notebooks load on first use.
_LAZY = ("bench", "checkpoint", "clip_study", "course", "debug", "demo", "hardware", "memory", "monitor", "numerics", "plots",
         "production", "runs", "site", "symptoms", "widgets")


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"mpcourse.{name}")
    raise AttributeError(f"module 'mpcourse' has no attribute {name!r}")

__all__ = [
    "DynamicLossScaler",
    "History",
    "StaticLossScaler",
    "StepRecord",
    "TrainConfig",
    "available_backends",
    "clipping",
    "config",
    "data",
    "formats",
    "make_engine",
    "scaler",
]
