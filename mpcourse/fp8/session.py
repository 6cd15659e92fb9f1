"""What the FP8 layers of one model share while it trains: the recipe and one step's log.

Usage (the engines' FP8 layers do this; ``engines/torch/fp8.py`` and ``engines/mlx/fp8.py``)::

    session = Fp8Session(recipe, always_record=False)   # an engine's: records only inside a step
    session.begin_step()              # this step's casts feed the recipe and the log
    ...                               # forward and backward: every cast adds its stats to .log
    stats = session.end_step()        # {tensor key: {amax, scale, saturated, ...}}; recipe.update()

An engine's session records only between :meth:`begin_step` and :meth:`end_step`, so a probe or
an evaluation forward never feeds the recipe's history; ``convert()``'s session (``always_record``)
records every cast.
"""

from __future__ import annotations

from typing import Any, TypeVar

from mpcourse.fp8.base import Fp8Recipe

__all__ = ["Fp8Session"]

S = TypeVar("S", bound="Fp8Session")


class Fp8Session:
    """The recipe and the log of the current step, shared by every converted layer of a model."""

    def __init__(self, recipe: Fp8Recipe, *, always_record: bool = True) -> None:
        if not isinstance(recipe, Fp8Recipe):
            raise TypeError(f"recipe must be an mpcourse.fp8 recipe, got {recipe!r}")
        self.recipe = recipe
        self.always_record = always_record
        self.recording = always_record
        self.log: dict[str, dict[str, Any]] = {}

    def begin_step(self) -> None:
        """A training step starts: its casts feed the recipe and the log until :meth:`end_step`."""
        self.recording = True

    def end_step(self) -> dict[str, dict[str, Any]]:
        """The step's per-tensor stats; advances the recipe (delayed scaling rolls its histories)."""
        self.recipe.update()
        log, self.log = self.log, {}
        self.recording = self.always_record
        return log

    @classmethod
    def of(cls: type[S], module: Any) -> S:
        """The session a converted module carries (a TypeError for one that was not converted)."""
        state = getattr(module, "fp8_state", None)
        if not isinstance(state, cls):
            raise TypeError(f"{type(module).__name__} was not converted to fp8 (no fp8_state); call convert() first")
        return state

    def for_engine(self: S) -> S:
        """This session, recording only inside an engine's training steps from now on."""
        self.always_record = self.recording = False
        return self
