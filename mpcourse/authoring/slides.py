"""Slide metadata for the notebooks, so a teacher can present them with jupyterlab-rise.

Usage::

    from mpcourse.authoring import notebooks as course

    from mpcourse.authoring import slides

    nb = course.read("notebooks/01_fundamentals.ipynb")
    slides.add_slide_metadata(nb)      # True if it changed anything; running it again: False
    slides.missing(nb)                 # [] once every cell has cell.metadata.slideshow.slide_type
    slides.apply_all(course.notebook_paths())   # in place, for every notebook

From a shell: ``python -m mpcourse.authoring.notebooks slides [--check]``.

The rules (a cell that already has a slide type keeps it, so authors can override any cell):

- the first cell, and every markdown cell that opens with a ``#`` or ``##`` heading: ``slide``;
- a markdown cell that opens with a ``###`` heading, or prose that follows a code cell:
  ``subslide`` (explanation, code and figure then share one vertical slide);
- cells tagged ``solution``: ``skip`` (a presentation does not give answers away);
- everything else: ``-`` (continues the current slide).

The notebook also gets ``metadata.rise = {"scroll": true}`` (long slides scroll) unless it has
its own ``rise`` settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nbformat

__all__ = ["SLIDE_TYPES", "slide_type_for", "add_slide_metadata", "missing", "apply_all"]

SLIDE_TYPES: tuple[str, ...] = ("slide", "subslide", "fragment", "skip", "notes", "-")
_HEADING = re.compile(r"^(#{1,6})\s+\S")


def _first_line(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    text = "".join(src) if isinstance(src, list) else str(src)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def slide_type_for(cells: list[dict[str, Any]], index: int) -> str:
    """The slide type the rules above give ``cells[index]`` (ignoring any it already has)."""
    cell = cells[index]
    if "solution" in cell.get("metadata", {}).get("tags", []):
        return "skip"
    if index == 0:
        return "slide"
    if cell["cell_type"] != "markdown":
        return "-"
    heading = _HEADING.match(_first_line(cell))
    if heading:
        return "slide" if len(heading.group(1)) <= 2 else "subslide"
    return "subslide" if cells[index - 1]["cell_type"] == "code" else "-"


def missing(nb: dict[str, Any]) -> list[int]:
    """Indices of cells without a valid ``metadata.slideshow.slide_type``."""
    return [
        i
        for i, c in enumerate(nb["cells"])
        if c.get("metadata", {}).get("slideshow", {}).get("slide_type") not in SLIDE_TYPES
    ]


def add_slide_metadata(nb: dict[str, Any]) -> bool:
    """Give every cell without a slide type the one the rules choose; idempotent.

    Returns:
        Whether anything changed.
    """
    changed = False
    cells = nb["cells"]
    for i in missing(nb):
        meta = cells[i].setdefault("metadata", {})
        meta.setdefault("slideshow", {})["slide_type"] = slide_type_for(cells, i)
        changed = True
    if "rise" not in nb.setdefault("metadata", {}):
        nb["metadata"]["rise"] = {"scroll": True}
        changed = True
    return changed


def apply_all(paths: Iterable[str | os.PathLike[str]], *, check: bool = False) -> list[Path]:
    """Add slide metadata to each notebook file in place.

    Args:
        paths: notebook files.
        check: write nothing; only report which files lack metadata.

    Returns:
        The files that changed (or, with ``check``, would change).
    """
    changed = []
    for path in map(Path, paths):
        nb = nbformat.read(os.fspath(path), as_version=4)
        if add_slide_metadata(nb):
            changed.append(path)
            if not check:
                nbformat.write(nb, os.fspath(path))
    return changed
