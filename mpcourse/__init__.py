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

from mpcourse import clipping, config, data, formats, fp8, history, scaler
from mpcourse.config import TrainConfig
from mpcourse.engines import available_backends, make_engine
from mpcourse.history import History, StepRecord
from mpcourse.scaler import DynamicLossScaler, NoOpLossScaler, StaticLossScaler

__version__ = "0.1.0"

# The rooms that pull in plotly/ipywidgets, or that only some notebooks need, load on first use.
# (authoring/ is not among them: the library never imports it.)
_LAZY = ("bench", "debug", "engines", "hardware", "memory", "numerics", "plots", "production", "studies", "widgets")


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"mpcourse.{name}")
    raise AttributeError(f"module 'mpcourse' has no attribute {name!r}")


__all__ = [
    "DynamicLossScaler",
    "History",
    "NoOpLossScaler",
    "StaticLossScaler",
    "StepRecord",
    "TrainConfig",
    "available_backends",
    "clipping",
    "config",
    "data",
    "formats",
    "fp8",
    "history",
    "make_engine",
    "scaler",
]
