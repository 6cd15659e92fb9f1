"""Training engines: one API, one room per framework (torch, mlx).

Usage::

    from mpcourse.engines import make_engine, available_backends
"""

from mpcourse.engines.base import (BACKENDS, SIZES, ZOO, BackendUnavailableError, Engine, History,
                                   StepRecord, available_backends, make_engine)

__all__ = ["BACKENDS", "SIZES", "ZOO", "BackendUnavailableError", "Engine", "History", "StepRecord",
           "available_backends", "make_engine"]
