"""Course tooling: objectives, exercises, student versions, slides, `mpcourse lab`; and the
course notebooks themselves (solutions present, executed, absent from the student versions)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mpcourse.authoring import notebooks as course
from mpcourse.authoring import slides

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "data" / "mini_course"
NOTEBOOKS = (
    "01_fundamentals",
    "02_loss_scaling",
    "03_performance",
    "04_clipping",
    "05_debugging",
    "06_production",
    "07_fp8",
)
SKIPPING_TAGS = {"skip-execution", "nbval-skip", "raises-exception"}


def _fixture_nb() -> nbformat.NotebookNode:
    return course.read(FIXTURE / "notebooks" / "01_demo.ipynb")


def _source(cell) -> str:
    return "".join(cell.source) if isinstance(cell.source, list) else cell.source


# --- library functions on the fixture --------------------------------------------------------


def test_title_objectives_exercises_of_the_fixture():
    nb = _fixture_nb()
    assert course.title(nb) == "01 Demo: a tiny course notebook"
    assert course.objectives(nb) == [
        "Plot a loss-scale trace with plotly",
        "Train from a widget with a slider and a button",
    ]
    assert course.exercises(nb).startswith("1. Print the smallest fp16 subnormal.")
    assert course.solution_cells(nb) == [6, 7]


def test_objectives_accepts_a_lead_in_sentence_and_stops_at_the_list_end():
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell(
                "# T\n\n**Learning objectives.** By the end you can:\n\n1. explain A\n2. measure B\n\n"
                "Then prose.\n- not an objective"
            )
        ]
    )
    assert course.objectives(nb) == ["explain A", "measure B"]
    assert course.objectives(nbformat.v4.new_notebook()) == []


def test_make_student_replaces_solutions_and_keeps_everything_else():
    nb = _fixture_nb()
    original = json.dumps(nb)
    student = course.make_student(nb)
    assert json.dumps(nb) == original, "make_student modified its input"
    assert len(student.cells) == len(nb.cells)
    for i, (a, b) in enumerate(zip(nb.cells, student.cells)):
        if i in (6, 7):
            assert b.source == course.CODE_PLACEHOLDER
            assert b.outputs == [] and b.execution_count is None
            assert b.metadata["tags"] == [course.PLACEHOLDER_TAG]
        else:
            assert a == b
    text = json.dumps(student)
    assert "SOLUTION-MARKER-ONE" not in text and "SOLUTION-MARKER-TWO" not in text
    assert "Powers of two" not in text  # the solution's figure output too
    nbformat.validate(student)


def test_make_student_markdown_solution():
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("Because 2**-25 rounds to zero.", metadata={"tags": ["solution"]})]
    )
    student = course.make_student(nb)
    assert student.cells[0].source == course.MARKDOWN_PLACEHOLDER


def test_write_students_and_command_line(tmp_path: Path):
    written = course.write_students(tmp_path / "a", root=FIXTURE)
    assert [p.name for p in written] == ["01_demo.ipynb"]
    assert "SOLUTION-MARKER" not in written[0].read_text()
    result = subprocess.run(
        [sys.executable, "-m", "mpcourse.authoring.notebooks", "students", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    if (REPO / "notebooks").is_dir() and course.notebook_paths(REPO):
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [p.name for p in course.notebook_paths(REPO)]


def test_sync_docs_fills_and_checks_the_generated_blocks(tmp_path: Path):
    root = tmp_path / "c"
    shutil.copytree(FIXTURE, root)
    assert course.sync_docs(root, check=True) != []
    assert len(course.sync_docs(root)) == 2
    assert course.sync_docs(root, check=True) == []
    syllabus = (root / "course" / "syllabus.md").read_text()
    assert "- Train from a widget with a slider and a button" in syllabus
    assert "01 Demo: a tiny course notebook" in syllabus
    exercises = (root / "course" / "exercises.md").read_text()
    assert "Print the smallest fp16 subnormal" in exercises and "2 cells tagged" in exercises
    (root / "course" / "exercises.md").write_text("# no markers\n")
    with pytest.raises(ValueError, match="EXERCISES"):
        course.sync_docs(root)


def test_lab_command_and_dry_run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    cmd, cwd = course.lab_command("01_demo.ipynb", root=FIXTURE, extra=["--port", "9999"])
    assert cwd == FIXTURE.resolve()
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={FIXTURE.resolve()}" in cmd
    assert "--LabApp.default_url=/lab/tree/notebooks/01_demo.ipynb" in cmd
    assert cmd[cmd.index("--port") + 1] == "9999"
    with pytest.raises(FileNotFoundError, match="01_demo.ipynb"):
        course.lab_command("99_missing.ipynb", root=FIXTURE)
    monkeypatch.setattr(course, "course_root", lambda start=None: FIXTURE.resolve())
    assert course.lab_main(["--notebook", "01_demo.ipynb", "--dry-run"]) == 0
    assert "jupyterlab" in capsys.readouterr().out
    assert course.lab_main(["--notebook", "nope.ipynb"]) == 2
    assert "nope.ipynb" in capsys.readouterr().err


def test_course_root_error_names_the_place(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="notebooks/"):
        course.course_root(tmp_path)


# --- slides ----------------------------------------------------------------------------------


def test_slide_metadata_rules_and_idempotence():
    nb = _fixture_nb()
    assert slides.missing(nb) == list(range(len(nb.cells)))
    assert slides.add_slide_metadata(nb) is True
    kinds = [c.metadata["slideshow"]["slide_type"] for c in nb.cells]
    assert kinds == ["slide", "-", "slide", "-", "-", "slide", "skip", "skip"]
    assert nb.metadata["rise"] == {"scroll": True}
    assert slides.missing(nb) == []
    before = json.dumps(nb)
    assert slides.add_slide_metadata(nb) is False
    assert json.dumps(nb) == before


def test_slide_metadata_keeps_an_authors_choice_and_subslides_prose_after_code():
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(
        cells=[
            md("# Title"),
            code("x = 1"),
            md("Prose after code."),
            md("### Part", metadata={"slideshow": {"slide_type": "fragment"}}),
            md("### Part 2"),
        ]
    )
    slides.add_slide_metadata(nb)
    assert [c.metadata["slideshow"]["slide_type"] for c in nb.cells] == [
        "slide",
        "-",
        "subslide",
        "fragment",
        "subslide",
    ]


def test_apply_all_writes_once(tmp_path: Path):
    path = tmp_path / "n.ipynb"
    shutil.copy(FIXTURE / "notebooks" / "01_demo.ipynb", path)
    assert slides.apply_all([path], check=True) == [path]
    assert slides.apply_all([path]) == [path]
    assert slides.apply_all([path]) == []
    assert slides.missing(course.read(path)) == []


# --- the course notebooks --------------------------------------------------------------------


def _course_notebooks() -> list[Path]:
    return [REPO / "notebooks" / f"{name}.ipynb" for name in NOTEBOOKS]


@pytest.mark.parametrize("path", _course_notebooks(), ids=lambda p: p.stem)
def test_notebook_has_objectives_exercises_and_at_least_two_executed_solutions(path: Path):
    if not path.is_file():
        pytest.fail(f"{path.name} has not landed in notebooks/")
    nb = course.read(path)
    assert course.objectives(nb), f"{path.name}: no learning objectives list near the top"
    assert course.exercises(nb), f"{path.name}: no exercises section"
    solutions = course.solution_cells(nb)
    assert len(solutions) >= 2, f"{path.name}: {len(solutions)} solution cells, need >= 2"
    for i in solutions:
        cell = nb.cells[i]
        tags = set(cell.metadata.get("tags", []))
        assert not tags & SKIPPING_TAGS, f"{path.name} cell {i}: a solution must execute ({tags})"
        if cell.cell_type == "code":
            # Stored outputs come from a full run (nbval re-executes every cell in CI).
            assert cell.execution_count is not None, f"{path.name} cell {i}: never executed"
            assert not any(o.output_type == "error" for o in cell.outputs), f"{path.name} cell {i}: the solution raised"
    assert any(nb.cells[i].cell_type == "code" for i in solutions)


@pytest.mark.parametrize("path", _course_notebooks(), ids=lambda p: p.stem)
def test_student_version_contains_no_solution_code(path: Path):
    if not path.is_file():
        pytest.fail(f"{path.name} has not landed in notebooks/")
    nb = course.read(path)
    student = course.make_student(nb)
    assert course.solution_cells(student) == []
    solution_ids = set(course.solution_cells(nb))
    # What the notebook holds outside its solutions: a solution line that also appears there
    # (an import, a call the lesson made first) proves nothing either way and is not checked.
    others = nbformat.from_dict(dict(nb))
    others.cells = [c for i, c in enumerate(nb.cells) if i not in solution_ids]
    elsewhere = json.dumps(others)
    text = json.dumps(student)  # sources, outputs and metadata alike
    checked = 0
    for i in solution_ids:
        cell = nb.cells[i]
        assert student.cells[i].source in (course.CODE_PLACEHOLDER, course.MARKDOWN_PLACEHOLDER)
        for line in _source(cell).splitlines():
            line = line.strip()
            needle = json.dumps(line)[1:-1]
            if len(line) < 8 or line.startswith("#") or needle in elsewhere:
                continue
            assert needle not in text, f"{path.name} cell {i}: {line!r} leaked"
            checked += 1
        for out in cell.get("outputs", []):
            for value in out.get("data", {}).values():
                blob = value if isinstance(value, str) else json.dumps(value)
                if len(blob) > 40:
                    assert json.dumps(blob)[1:-1] not in text, f"{path.name} cell {i}: output"
    assert checked >= 2, f"{path.name}: the solutions have no distinctive lines to check"


@pytest.mark.parametrize("path", _course_notebooks(), ids=lambda p: p.stem)
def test_every_cell_has_slide_metadata(path: Path):
    if not path.is_file():
        pytest.fail(f"{path.name} has not landed in notebooks/")
    nb = course.read(path)
    assert slides.missing(nb) == [], (
        f"{path.name}: cells without slide metadata; run python -m mpcourse.authoring.notebooks slides"
    )


def test_course_docs_are_in_sync_with_the_notebooks():
    if not all(p.is_file() for p in _course_notebooks()):
        pytest.fail("not every course notebook has landed")
    assert course.sync_docs(REPO, check=True) == [], (
        "course/*.md generated blocks are stale: run python -m mpcourse.authoring.notebooks sync"
    )
