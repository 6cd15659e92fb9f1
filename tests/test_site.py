"""The course site builds without network, and its pages load nothing from off the machine."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mpcourse.authoring import notebooks as course
from mpcourse.authoring import site

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "data" / "mini_course"

# Anything a browser would fetch: script/img/iframe/link sources, CSS url() and JS imports.
_FETCHED = re.compile(
    r"""<(?:script|img|iframe|link|source|embed)\b[^>]*\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//"""
    r"""|url\(\s*["']?(?:https?:)?//"""
    r"""|\bimport\s*\(?\s*["'](?:https?:)?//""",
    re.I,
)


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every outgoing connection or name lookup in this process fail, and record it."""
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args[:2]))
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def _course_roots() -> list[Path]:
    roots = [FIXTURE]
    if (REPO / "notebooks").is_dir() and course.notebook_paths(REPO):
        roots.append(REPO)
    return roots


@pytest.mark.parametrize("root", _course_roots(), ids=lambda p: p.name)
def test_build_offline_every_notebook_page_has_plotly_figures(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    attempts = _no_network(monkeypatch)
    report = site.build(tmp_path / "site", root=root)
    assert attempts == []
    out = tmp_path / "site"
    notebooks = course.notebook_paths(root)
    assert notebooks
    for path in notebooks:
        page = (out / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
        stored = sum(
            site.PLOTLY_MIME in o.get("data", {}) for c in course.read(path).cells for o in c.get("outputs", [])
        )
        assert stored >= 1, f"{path.name} stores no plotly figure output"
        assert page.count('class="plotly-graph-div"') == stored, path.name
        widget_outputs = [o.get("data", {}) for c in course.read(path).cells for o in c.get("outputs", [])]
        widget_outputs = [d for d in widget_outputs if site.WIDGET_MIME in d]
        with_figure = sum(site.PLOTLY_MIME in d for d in widget_outputs)
        assert page.count('class="mpc-widget-caption"') == with_figure, path.name
        assert page.count('class="mpc-widget-note"') == len(widget_outputs) - with_figure, path.name
        if root == REPO:  # every course widget with a figure stored it when its notebook ran
            without = {"".join(d["text/plain"]).split("(")[0] for d in widget_outputs if site.PLOTLY_MIME not in d}
            assert without <= {"FormatExplorer"}, (path.name, without)
        assert f"students/{path.name}" in page
        assert (out / "students" / path.name).is_file()
    for html_file in out.rglob("*.html"):
        text = html_file.read_text(encoding="utf-8")
        assert not _FETCHED.findall(text), f"{html_file} loads something over the network"
        assert "cdn.plot.ly" not in text and "unpkg.com" not in text and "cdnjs" not in text
    assert (out / "assets" / "plotly.min.js").stat().st_size > 1_000_000
    assert {"index.html", "syllabus.html", "exercises.html"} <= set(report.pages)
    for slug, _ in site.PAGES:  # every course page the repository has is built, the glossary included
        assert ((root / "course" / f"{slug}.md").is_file()) == (f"{slug}.html" in report.pages), slug
    if root == REPO:
        assert "glossary.html" in report.pages
        glossary = (out / "glossary.html").read_text(encoding="utf-8")
        assert "Hysteresis" in glossary and "ulp" in glossary
        assert 'href="../glossary.html"' in (out / "notebooks" / "01_fundamentals.html").read_text(encoding="utf-8")
    assert report.figures >= len(notebooks)


def test_build_in_a_network_namespace_without_any_interface(tmp_path: Path):
    """The one README command, run where the kernel gives the process no network at all."""
    unshare = shutil.which("unshare")
    if not unshare or subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode:
        pytest.skip("unshare -rn (a private network namespace) is not permitted here")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [
            unshare,
            "-rn",
            sys.executable,
            "-c",
            "import sys, socket\n"
            "try:\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\n"
            "except OSError:\n    pass\nelse:\n    sys.exit('network reachable: not a real test')\n"
            "from mpcourse.authoring import site\nprint(site.build(sys.argv[1], root=sys.argv[2]))",
            str(tmp_path / "site"),
            str(FIXTURE),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plotly figures" in result.stdout
    assert (tmp_path / "site" / "notebooks" / "01_demo.html").is_file()


def test_offline_notebook_replaces_plotly_and_widget_outputs():
    nb = course.read(FIXTURE / "notebooks" / "01_demo.ipynb")
    assert "widgets" in nb.metadata or any(
        site.WIDGET_MIME in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])
    )
    offline, figures, widget_figures, widgets = site.offline_notebook(nb)
    assert (figures, widget_figures, widgets) == (2, 0, 1)  # the fixture's widget stores no figure
    assert "widgets" not in offline.metadata
    outputs = [o for c in offline.cells for o in c.get("outputs", [])]
    assert not any(site.PLOTLY_MIME in o.get("data", {}) for o in outputs)
    assert not any(site.WIDGET_MIME in o.get("data", {}) for o in outputs)
    htmls = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert sum(site.WIDGET_NOTE == h for h in htmls) == 1
    divs = [h for h in htmls if "plotly-graph-div" in h]
    assert len(divs) == 2 and all("Plotly.newPlot" in h for h in divs)
    # the figure's data survives the conversion: the bar chart of 2**k
    assert "Powers of two" in divs[1] and json.dumps([1, 2, 4, 8, 16]).replace(" ", "") in divs[1].replace(" ", "")
    assert nb.cells[3].outputs != offline.cells[3].outputs  # the input was not modified


def test_offline_notebook_shows_a_widgets_default_run_and_keeps_the_note_without_a_figure():
    """Real widget outputs (their display bundles, as a notebook stores them) through the site build."""
    import numpy as np

    from mpcourse import widgets

    steps = [np.linspace(-1, 1, 64, dtype=np.float32) * (1 + 30 * (i == 3)) for i in range(6)]
    fp8 = widgets.Fp8TraceExplorer(steps)
    table = widgets.FormatExplorer("0.1")  # a table, no figure: it keeps the note
    nb = nbformat.v4.new_notebook()
    for w in (fp8, table):
        cell = nbformat.v4.new_code_cell("w")
        cell.outputs = [nbformat.v4.new_output("execute_result", data=w._repr_mimebundle_(), execution_count=1)]
        nb.cells.append(cell)
    offline, figures, widget_figures, widgets_left = site.offline_notebook(nb)
    assert (figures, widget_figures, widgets_left) == (1, 1, 1)
    shown = [o["data"]["text/html"] for c in offline.cells for o in c.outputs]
    assert not any(
        site.WIDGET_MIME in o["data"] or site.PLOTLY_MIME in o["data"] for c in offline.cells for o in c.outputs
    )
    figure, note = shown
    assert figure.count('class="plotly-graph-div"') == 1 and "Plotly.newPlot" in figure
    assert fp8.figure.layout.title.text in figure  # the widget's own figure, its title included
    caption = site.WIDGET_CAPTION.format(what=html.escape(repr(fp8)))
    assert figure.endswith(caption) and "default run" in caption and "Run the notebook" in caption
    assert note == site.WIDGET_NOTE
    assert "1 of them widgets' default runs" in str(site.BuildReport(out=Path("s"), figures=3, widget_figures=1))


@pytest.mark.skipif(not (REPO / "notebooks").is_dir(), reason="no course notebooks in this checkout")
def test_saved_notebooks_keep_no_widget_state():
    """The widgets' figures travel in their outputs; their saved models (which nbconvert --execute
    writes to ``metadata.widgets`` unless ``--ExecutePreprocessor.store_widget_state=False``) are
    dropped by the site anyway, and made 04 weigh 5 MB."""
    stored = [p.name for p in course.notebook_paths(REPO) if "widgets" in course.read(p).metadata]
    assert stored == [], (
        f"strip metadata.widgets from {stored} (load, pop it, dump with indent=1): "
        "--ExecutePreprocessor.store_widget_state=False avoids it except where an ipywidgets Output captures a figure "
        "(05's HistoryInspector), where nbclient then fails"
    )


def test_local_links_point_at_built_pages():
    fix = site._local_links
    page = '<a href="../notebooks/02_loss_scaling.ipynb#top">x</a><a href="syllabus.md">s</a>'
    assert fix(page, from_notebooks=False) == (
        '<a href="notebooks/02_loss_scaling.html#top">x</a><a href="syllabus.html">s</a>'
    )
    assert fix('<a href="03_performance.ipynb">n</a>', from_notebooks=True) == '<a href="03_performance.html">n</a>'
    assert (
        fix('<a href="https://example.org/a.ipynb">e</a>', from_notebooks=True)
        == '<a href="https://example.org/a.ipynb">e</a>'
    )


def test_site_main_builds_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(course, "course_root", lambda start=None: FIXTURE)
    assert site.site_main(["build", str(tmp_path / "s")]) == 0
    assert "pages" in capsys.readouterr().out
    assert (tmp_path / "s" / "index.html").is_file()
    assert site.site_main([str(tmp_path / "t")]) == 0  # `mpcourse site OUT`
    assert (tmp_path / "t" / "notebooks" / "01_demo.html").is_file()
    with pytest.raises(SystemExit):
        site.site_main(["build", "a", "b"])
