"""What the probes report: the first non-finite layer, and per-layer tables (framework-neutral).

Usage::

    import mpcourse as mpc

    report = mpc.debug.find_first_nonfinite(eng, x, y)   # a NonFiniteReport
    report.first.describe()                              # one sentence: where, what, why
    table = mpc.debug.underflow_fractions(eng, x, y)     # a LayerTable, one row per layer
    table.column("underflow")

The probes in ``engines/torch/probes.py`` and ``engines/mlx/probes.py`` build these types, and
:mod:`mpcourse.debug` hands them to the user; the types live here, in the engines' layer, so the
probes never import the debug package that dispatches to them.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["LayerFault", "NonFiniteReport", "LayerTable"]


@dataclass(frozen=True)
class LayerFault:
    """Where non-finite values first appeared in one pass.

    Attributes:
        phase: ``"forward"`` or ``"backward"``.
        layer: the submodule's dotted name (``"layers.1"``), ``"(model)"`` for the root.
        layer_type: its class name (``"Linear"``).
        what: what held the inf/nan: ``"output"`` (forward), ``"grad_input"`` (the gradient it
            passes back), ``"grad of <param>"``, or ``"grad_output"`` (the gradient it received).
        produced_here: True when what flowed in was finite (the layer made the inf/nan itself);
            False when it arrived already non-finite from code between layers or the loss.
        nonfinite: how many values were inf/nan. total: how many values there were.
        dtype: the dtype of the tensor that held them.
        max_abs_in: the largest finite magnitude of what flowed in (inputs forward,
            grad_output backward); nan when unknown.
        order: the position of this event among the pass's layer events.
    """

    phase: str
    layer: str
    layer_type: str
    what: str
    produced_here: bool
    nonfinite: int
    total: int
    dtype: str
    max_abs_in: float
    order: int

    def describe(self) -> str:
        """One sentence for people."""
        where = f"{self.layer} ({self.layer_type})"
        if self.produced_here:
            return (
                f"{self.phase}: {where} produced {self.nonfinite}/{self.total} inf/nan values in "
                f"its {self.what} ({self.dtype}) from finite inputs (largest |in| {self.max_abs_in:.4g})"
            )
        if self.phase == "backward" and self.what == "grad_output" and self.layer == "(model)":
            return (
                f"backward: the gradient arriving at the model's output from the loss is already "
                f"non-finite ({self.nonfinite}/{self.total}, {self.dtype}): loss x scale overflows "
                f"{self.dtype} there -- the loss scale is too high"
            )
        src = "the loss or code between layers" if self.phase == "backward" else "code between layers (or the input)"
        return (
            f"{self.phase}: the {self.what} of {where} is already non-finite ({self.nonfinite}/"
            f"{self.total}, {self.dtype}): it came from {src}, not from a layer"
        )

    def __repr__(self) -> str:
        return f"LayerFault({self.describe()})"


@dataclass(frozen=True)
class NonFiniteReport:
    """What :func:`find_first_nonfinite` found.

    Attributes:
        forward: the first forward fault, or None when every activation was finite.
        backward: the first backward fault, or None (also when not searched).
        backward_searched: False when phase was "forward", or the forward was already
            non-finite (then every gradient is too, and the forward fault is the cause).
        loss: the (unscaled) loss of the batch. scale: the loss scale used backward.
        precision: the compute precision of the pass. backend: ``"torch"`` or ``"mlx"``.
    """

    forward: LayerFault | None
    backward: LayerFault | None
    backward_searched: bool
    loss: float
    scale: float
    precision: str
    backend: str

    @property
    def found(self) -> bool:
        """True when any non-finite value was found."""
        return self.forward is not None or self.backward is not None

    @property
    def first(self) -> LayerFault | None:
        """The fault to fix first: the forward one if any, else the backward one."""
        return self.forward or self.backward

    def __repr__(self) -> str:
        lines = [f"NonFiniteReport({self.backend}, {self.precision}, loss {self.loss:.4g}, scale {self.scale:g})"]
        lines.append("  " + (self.forward.describe() if self.forward else "forward: every activation finite"))
        if self.backward is not None:
            lines.append("  " + self.backward.describe())
        elif self.backward_searched:
            lines.append("  backward: every gradient finite")
        else:
            lines.append(
                "  backward: not searched"
                + (" (the forward is already non-finite)" if self.forward is not None else "")
            )
        return "\n".join(lines)


class LayerTable(list):
    """Rows (dicts) of per-layer numbers, in call order, with a table view for notebooks."""

    def __init__(self, rows: Any = (), title: str = "") -> None:
        super().__init__(rows)
        self.title = title

    def column(self, name: str) -> list[Any]:
        """One column over all rows."""
        return [r[name] for r in self]

    def row(self, layer: str) -> dict[str, Any]:
        """The row of one layer, by name (KeyError if absent)."""
        for r in self:
            if r["layer"] == layer:
                return r
        raise KeyError(f"no layer {layer!r}; layers: {', '.join(self.column('layer'))}")

    @staticmethod
    def _cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 or not math.isfinite(v) else f"{v:.2e}"
        return str(v)

    def __repr__(self) -> str:
        if not self:
            return f"LayerTable({self.title!r}, empty)"
        cols = list(self[0])
        width = {c: max(len(c), *(len(self._cell(r[c])) for r in self)) for c in cols}
        out = [self.title] if self.title else []
        out.append("  ".join(c.ljust(width[c]) for c in cols))
        out += ["  ".join(self._cell(r[c]).ljust(width[c]) for c in cols) for r in self]
        return "\n".join(out)

    def _repr_html_(self) -> str:
        if not self:
            return f"<p>{html.escape(self.title)}: empty</p>"
        cols = list(self[0])
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(self._cell(r[c]))}</td>" for c in cols) + "</tr>" for r in self
        )
        cap = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
