"""The course around the notebooks: objectives, exercises, student versions, `mpcourse lab`.

Usage::

    from mpcourse.authoring import notebooks as course

    nbs = course.notebook_paths()                 # notebooks/0*.ipynb, in course order
    course.objectives(course.read(nbs[0]))        # ['Explain ...', ...] from the objectives cell
    student = course.make_student(course.read(nbs[0]))   # solution cells -> placeholders
    course.write_students("students/")            # every notebook, written for learners
    course.sync_docs()                            # refresh the generated blocks in course/*.md
    course.lab_main([])                           # JupyterLab at notebooks/01_fundamentals.ipynb

From a shell::

    python -m mpcourse.authoring.notebooks students [OUT]      # student notebooks (default: _students/)
    python -m mpcourse.authoring.notebooks sync [--check]      # objectives/exercises blocks in course/*.md
    python -m mpcourse.authoring.notebooks slides [--check]    # slide metadata on every notebook cell
    python -m mpcourse.authoring.notebooks lab [--dry-run] [-- JUPYTER ARGS]

Exercise solutions live in the tested notebooks, in cells tagged ``solution``: the notebook
tests execute them. Student versions replace each such cell's source with a placeholder and
drop its outputs, so nothing of the solution is left in the file.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat

__all__ = [
    "SOLUTION_TAG",
    "PLACEHOLDER_TAG",
    "CODE_PLACEHOLDER",
    "MARKDOWN_PLACEHOLDER",
    "course_root",
    "notebook_paths",
    "read",
    "title",
    "objectives",
    "exercises",
    "solution_cells",
    "make_student",
    "write_students",
    "render_objectives",
    "render_exercises",
    "sync_docs",
    "lab_command",
    "lab_main",
    "main",
]

SOLUTION_TAG = "solution"
PLACEHOLDER_TAG = "exercise-placeholder"
CODE_PLACEHOLDER = (
    "# Exercise: write your solution here.\n# (Solutions are in the instructor's version of this notebook.)\n"
)
MARKDOWN_PLACEHOLDER = "*Exercise: write your answer here.*"
DEFAULT_NOTEBOOK = "01_fundamentals.ipynb"

_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*\S)\s*$")
_HEADING = re.compile(r"^\s*#{1,6}\s+(.*\S)\s*$")


def course_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``notebooks/`` and ``course/``.

    Args:
        start: where to look (default: the checkout this package lives in, then the current
            directory).

    Raises:
        FileNotFoundError: no ``notebooks/`` folder at or above the place looked at.
    """
    candidates = [Path(start)] if start is not None else [Path(__file__).resolve().parent.parent, Path.cwd()]
    for base in candidates:
        for folder in (base.resolve(), *base.resolve().parents):
            if (folder / "notebooks").is_dir():
                return folder
    raise FileNotFoundError(
        f"no notebooks/ folder at or above {', '.join(str(c) for c in candidates)}; "
        "run from a checkout of the course (git clone ...; pip install -e .)"
    )


def notebook_paths(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The course notebooks (``notebooks/NN_*.ipynb``) in course order."""
    folder = course_root(root) / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def read(path: str | os.PathLike[str]) -> nbformat.NotebookNode:
    """Read a notebook (nbformat 4)."""
    return nbformat.read(os.fspath(path), as_version=4)


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _tags(cell: dict[str, Any]) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def title(nb: dict[str, Any]) -> str:
    """The notebook's first heading (its title), without the ``#`` marks."""
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for line in _source(cell).splitlines():
            m = _HEADING.match(line)
            if m:
                return m.group(1).strip()
    return ""


def objectives(nb: dict[str, Any]) -> list[str]:
    """The bullet list that follows the first line mentioning "objectives" in a markdown cell.

    Returns:
        The objectives as strings (markdown kept), or ``[]`` when the notebook has none.
    """
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        lines = _source(cell).splitlines()
        for i, line in enumerate(lines):
            if "objective" not in line.lower() or _BULLET.match(line):
                continue
            found: list[str] = []
            for follow in lines[i + 1 :]:
                bullet = _BULLET.match(follow)
                if bullet:
                    found.append(bullet.group(1))
                elif not follow.strip():
                    continue  # blank lines in a loose list
                elif found and follow.startswith((" ", "\t")):
                    found[-1] += " " + follow.strip()  # a wrapped bullet
                elif found or _HEADING.match(follow):
                    break  # the list (or section) ended
            if found:
                return found
    return []


def exercises(nb: dict[str, Any]) -> str:
    """The markdown of the exercises section: the first markdown cell whose heading says
    "exercise", without that heading. ``""`` when there is none."""
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        lines = _source(cell).splitlines()
        for i, line in enumerate(lines):
            m = _HEADING.match(line)
            if m and "exercise" in m.group(1).lower():
                return "\n".join(lines[i + 1 :]).strip()
    return ""


def solution_cells(nb: dict[str, Any]) -> list[int]:
    """Indices of the cells tagged ``solution``."""
    return [i for i, c in enumerate(nb["cells"]) if SOLUTION_TAG in _tags(c)]


def make_student(nb: dict[str, Any]) -> nbformat.NotebookNode:
    """A copy of ``nb`` in which every solution cell is a placeholder.

    A code solution becomes :data:`CODE_PLACEHOLDER` with no outputs and no execution count;
    a markdown solution becomes :data:`MARKDOWN_PLACEHOLDER`. The ``solution`` tag is replaced
    by ``exercise-placeholder`` and attachments are dropped. Other cells are untouched.
    """
    student = nbformat.from_dict(copy.deepcopy(dict(nb)))
    for i in solution_cells(student):
        cell = student["cells"][i]
        tags = [t for t in _tags(cell) if t != SOLUTION_TAG] + [PLACEHOLDER_TAG]
        meta = {k: v for k, v in cell.get("metadata", {}).items() if k in ("slideshow", "editable", "deletable")}
        meta["tags"] = tags
        cell["metadata"] = meta
        cell.pop("attachments", None)
        if cell["cell_type"] == "code":
            cell["source"] = CODE_PLACEHOLDER
            cell["outputs"] = []
            cell["execution_count"] = None
        else:
            cell["source"] = MARKDOWN_PLACEHOLDER
    return student


def write_students(out: str | os.PathLike[str] = "_students", root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write the student version of every course notebook into ``out``; returns the paths."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebook_paths(root):
        target = out_dir / path.name
        nbformat.write(make_student(read(path)), os.fspath(target))
        written.append(target)
    return written


# --- generated blocks in course/*.md --------------------------------------------------------


def _block(name: str) -> tuple[str, str]:
    return (
        f"<!-- BEGIN GENERATED {name}: python -m mpcourse.authoring.notebooks sync -->",
        f"<!-- END GENERATED {name} -->",
    )


def render_objectives(root: str | os.PathLike[str] | None = None) -> str:
    """Markdown: per notebook, its title and the objectives from its objectives cell."""
    parts = []
    for path in notebook_paths(root):
        nb = read(path)
        parts.append(f"### [{path.stem}](../notebooks/{path.name}): {title(nb)}\n")
        goals = objectives(nb)
        parts.append("\n".join(f"- {g}" for g in goals) if goals else "- *(this notebook has no objectives cell yet)*")
        parts.append("")
    return "\n".join(parts).strip() + "\n"


def render_exercises(root: str | os.PathLike[str] | None = None) -> str:
    """Markdown: per notebook, its exercises and how many solution cells back them."""
    parts = []
    for path in notebook_paths(root):
        nb = read(path)
        n = len(solution_cells(nb))
        parts.append(f"### [{path.stem}](../notebooks/{path.name}): {title(nb)}\n")
        parts.append(exercises(nb) or "*(no exercises section yet)*")
        parts.append(
            f"\n*Solutions: {n} cell{'s' if n != 1 else ''} tagged `solution` in the "
            "notebook, executed by the notebook tests.*\n"
        )
    return "\n".join(parts).strip() + "\n"


def _replace_block(text: str, name: str, body: str) -> str:
    begin, end = _block(name)
    if begin not in text or end not in text:
        raise ValueError(f"markers for the generated block {name!r} are missing: add the lines {begin!r} and {end!r}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}{end}{tail}"


def sync_docs(root: str | os.PathLike[str] | None = None, *, check: bool = False) -> list[Path]:
    """Refresh the generated blocks of ``course/syllabus.md`` and ``course/exercises.md``.

    Args:
        root: the course checkout (default: found from this package).
        check: only report; write nothing.

    Returns:
        The files that changed (or, with ``check``, would change).
    """
    base = course_root(root)
    jobs = [
        (base / "course" / "syllabus.md", "OBJECTIVES", render_objectives(base)),
        (base / "course" / "exercises.md", "EXERCISES", render_exercises(base)),
    ]
    changed = []
    for path, name, body in jobs:
        old = path.read_text(encoding="utf-8")
        new = _replace_block(old, name, body)
        if new != old:
            changed.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    return changed


# --- mpcourse lab ---------------------------------------------------------------------------


def lab_command(
    notebook: str = DEFAULT_NOTEBOOK, *, root: str | os.PathLike[str] | None = None, extra: Sequence[str] = ()
) -> tuple[list[str], Path]:
    """The JupyterLab command line that opens ``notebooks/<notebook>``, and the folder to run
    it in (the course root, so every notebook and course page is in the file browser).

    Raises:
        FileNotFoundError: the notebook does not exist (the message lists the ones that do).
    """
    base = course_root(root)
    target = base / "notebooks" / notebook
    if not target.is_file():
        have = ", ".join(p.name for p in notebook_paths(base)) or "none"
        raise FileNotFoundError(f"no notebook {notebook!r} in {base / 'notebooks'}; have: {have}")
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        f"--ServerApp.root_dir={base}",
        f"--LabApp.default_url=/lab/tree/notebooks/{notebook}",
        *extra,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in cmd:
        cmd.append("--allow-root")  # containers (Docker, CI) often run as root
    return cmd, base


def lab_main(argv: Sequence[str] | None = None) -> int:
    """``mpcourse lab``: start JupyterLab at the course, opened at notebook 01.

    Args:
        argv: ``[--notebook NAME] [--dry-run] [JUPYTER ARGS...]``; unknown arguments go to
            ``jupyter lab`` (e.g. ``--port 8890 --no-browser``).

    Returns:
        JupyterLab's exit status (0 for ``--dry-run``, 2 when the notebook is missing).
    """
    parser = argparse.ArgumentParser(prog="mpcourse lab", description="Open the course in JupyterLab.")
    parser.add_argument("--notebook", default=DEFAULT_NOTEBOOK, help=f"notebook to open (default: {DEFAULT_NOTEBOOK})")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the command and the folder it runs in; start nothing"
    )
    args, extra = parser.parse_known_args(list(argv or []))
    if extra[:1] == ["--"]:
        extra = extra[1:]
    try:
        cmd, cwd = lab_command(args.notebook, extra=extra)
    except FileNotFoundError as exc:
        print(f"mpcourse lab: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"cd {cwd} && {' '.join(cmd)}")
        return 0
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd), env.get("PYTHONPATH")]))
    try:
        return subprocess.call(cmd, cwd=cwd, env=env)
    except KeyboardInterrupt:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mpcourse.authoring.notebooks {students,sync,slides,lab}``; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lab"]:
        return lab_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m mpcourse.authoring.notebooks")
    sub = parser.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("students", help="write student notebooks without solutions")
    st.add_argument("out", nargs="?", default="_students")
    sy = sub.add_parser("sync", help="refresh generated blocks in course/syllabus.md, exercises.md")
    sy.add_argument("--check", action="store_true", help="exit 1 if anything is out of date")
    sl = sub.add_parser("slides", help="add slide metadata to every notebook cell")
    sl.add_argument("--check", action="store_true", help="exit 1 if any cell lacks it")
    sub.add_parser("lab", help="open JupyterLab at notebook 01")
    args = parser.parse_args(argv)
    if args.cmd == "students":
        for path in write_students(args.out):
            print(path)
        return 0
    if args.cmd == "sync":
        changed = sync_docs(check=args.check)
        for path in changed:
            print(("out of date: " if args.check else "updated: ") + str(path))
        return 1 if (args.check and changed) else 0
    from mpcourse.authoring import slides  # noqa: PLC0415 (only this command needs it)

    changed = slides.apply_all(notebook_paths(), check=args.check)
    for path in changed:
        print(("missing slide metadata: " if args.check else "updated: ") + str(path))
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
