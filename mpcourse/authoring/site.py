"""The static course site: notebooks and course pages as HTML that works offline.

Usage::

    from mpcourse.authoring import site

    report = site.build("_site")       # returns a BuildReport; open _site/index.html
    report.pages, report.figures, report.seconds

From a shell: ``python -m mpcourse.authoring.site build [OUT]`` (default ``_site``).

Nothing is fetched while building and nothing is loaded from a CDN while viewing:

- notebooks go through nbconvert's HTML exporter ("lab" template) with the blocks that load
  require.js, mermaid and the widget manager from CDNs removed;
- plotly figures are re-rendered from their ``application/vnd.plotly.v1+json`` output (which
  the notebooks' plotly renderer stores) into divs that use ``assets/plotly.min.js``, copied
  from the installed plotly package;
- math uses MathJax 2 copied from the ``jupyter-server-mathjax`` package when it is installed
  (otherwise formulas stay as TeX source);
- widgets cannot run without a kernel. A course widget stores, in the same output as its live
  view, the plotly figure it drew on the settings its cell gave it (see
  :mod:`mpcourse.widgets.display`); the page shows that figure, rendered like every other one,
  under :data:`WIDGET_CAPTION`. A widget without a figure becomes :data:`WIDGET_NOTE`;
- course pages (``course/*.md``) are converted with mistune, nbconvert's markdown library;
- each notebook also gets a student version (solutions replaced by placeholders) to download.
"""

from __future__ import annotations

import argparse
import copy
import html
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from mpcourse.authoring import notebooks as course

__all__ = [
    "PLOTLY_MIME",
    "WIDGET_MIME",
    "WIDGET_NOTE",
    "WIDGET_CAPTION",
    "BuildReport",
    "offline_notebook",
    "notebook_html",
    "markdown_html",
    "build",
    "site_main",
    "main",
]

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = (
    '<div class="mpc-widget-note"><strong>Interactive widget.</strong> Widgets need a running '
    "kernel, so this static page cannot show it. Run the notebook to use it: "
    "<code>mpcourse lab</code> locally, or the Binder link on the home page.</div>"
)
# {what}: the widget's text repr (its class and settings), escaped.
WIDGET_CAPTION = (
    '<div class="mpc-widget-caption"><strong>Interactive widget, shown as its default run.</strong> '
    "The figure above is what <code>{what}</code> drew on the settings in this cell when the notebook "
    "was executed. Run the notebook to change them and redraw it: <code>mpcourse lab</code> locally, "
    "or the Binder link on the home page.</div>"
)
PAGES = (
    ("syllabus", "Syllabus"),
    ("instructor-guide", "Instructor guide"),
    ("exercises", "Exercises"),
    ("glossary", "Glossary"),
)
_MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"
# The loaders that plotly's "notebook_connected" renderer writes: the page loads plotly locally.
_CDN_PLOTLY = re.compile(
    r"<script[^>]*>\s*import\s+[\"']https?://cdn\.plot\.ly/[^\"']*[\"'];?\s*</script>"
    r"|<script[^>]*\bsrc=[\"']https?://cdn\.plot\.ly/[^\"']*[\"'][^>]*>\s*</script>"
)

_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
{%- if resources.mpc_mathjax -%}{{ mathjax(resources.mpc_mathjax) }}{%- endif -%}
{%- endblock html_head_js_mathjax -%}
{% block extra_css %}
<script src="{{ resources.mpc_assets }}/plotly.min.js"></script>
<link rel="stylesheet" href="{{ resources.mpc_assets }}/site.css">
{% endblock extra_css %}
{%- block body_header -%}
{{ super() }}
{{ resources.mpc_nav }}
{%- endblock body_header -%}
{% block any_cell %}
{%- if 'solution' in cell.metadata.get('tags', []) -%}
<details class="mpc-solution"><summary>Solution (try the exercise first)</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{% endblock any_cell %}
"""

_CSS = """
.mpc-nav { position: sticky; top: 0; z-index: 10; background: #1f3a5f; padding: 0.5em 1em;
  font-family: system-ui, sans-serif; font-size: 14px; }
.mpc-nav a { color: #fff; margin-right: 1.1em; text-decoration: none; }
.mpc-nav a:hover { text-decoration: underline; }
.mpc-page { max-width: 52em; margin: 1.5em auto 4em; padding: 0 1em; line-height: 1.55;
  font-family: system-ui, sans-serif; }
.mpc-page table { border-collapse: collapse; margin: 1em 0; }
.mpc-page th, .mpc-page td { border: 1px solid #ccd; padding: 0.3em 0.6em; vertical-align: top; }
.mpc-page code, .mpc-page pre { background: #f3f4f7; border-radius: 3px; }
.mpc-page pre { padding: 0.6em; overflow-x: auto; }
.mpc-widget-note { border-left: 4px solid #d9822b; background: #fff6ec; padding: 0.6em 1em;
  font-family: system-ui, sans-serif; }
.mpc-widget-caption { border-left: 4px solid #2b7bd9; background: #eef5fd; padding: 0.4em 1em;
  font-family: system-ui, sans-serif; font-size: 14px; }
.mpc-solution { border: 1px dashed #8a9; margin: 0.5em 0; padding: 0.3em 0.6em; }
.mpc-solution summary { cursor: pointer; color: #275; font-family: system-ui, sans-serif; }
.mpc-downloads { font-family: system-ui, sans-serif; font-size: 14px; margin: 0.8em 1em; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{title}</title><link rel="stylesheet" href="{assets}/site.css"></head>
<body>{nav}<main class="mpc-page">
{body}
</main></body></html>
"""


@dataclass
class BuildReport:
    """What :func:`build` wrote: pages (relative paths), figures, widgets, time.

    ``figures`` counts every plotly figure drawn on the pages, ``widget_figures`` of them the
    widgets' default runs; ``widgets`` counts the widgets without a figure, shown as a note.
    """

    out: Path
    pages: list[str] = field(default_factory=list)
    figures: int = 0
    widget_figures: int = 0
    widgets: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"site: {len(self.pages)} pages, {self.figures} plotly figures "
            f"({self.widget_figures} of them widgets' default runs), "
            f"{self.widgets} widget notes in {self.seconds:.1f} s -> "
            f"{self.out / 'index.html'}"
        )


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def offline_notebook(nb: Any) -> tuple[nbformat.NotebookNode, int, int, int]:
    """A copy of ``nb`` whose outputs need no network and no kernel.

    Plotly outputs become HTML divs that use a page-level ``Plotly`` (from
    ``assets/plotly.min.js``). A widget output that also carries a plotly figure (its default
    run) becomes that figure followed by :data:`WIDGET_CAPTION`; one without a figure becomes
    :data:`WIDGET_NOTE`. The saved widget state is dropped.

    Returns:
        The notebook, the number of plotly figures (widgets' included), the number of them that
        are widgets' default runs, and the number of widget notes.
    """
    import plotly.io as pio  # noqa: PLC0415 (plotly is heavy; only the build needs it)

    nb = nbformat.from_dict(copy.deepcopy(dict(nb)))
    nb.metadata.pop("widgets", None)
    figures = widget_figures = widgets = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data")
            if not data:
                continue
            if PLOTLY_MIME in data:
                page = pio.to_html(
                    data[PLOTLY_MIME],
                    include_plotlyjs=False,
                    full_html=False,
                    validate=False,
                    config={"responsive": True},
                )
                if WIDGET_MIME in data:
                    what = html.escape(_text(data.get("text/plain", "this widget")))
                    page += WIDGET_CAPTION.format(what=what)
                    widget_figures += 1
                out["data"] = {"text/html": page}
                out["metadata"] = {}
                figures += 1
            elif WIDGET_MIME in data:
                out["data"] = {"text/html": WIDGET_NOTE}
                out["metadata"] = {}
                widgets += 1
            elif "text/html" in data:
                page = data["text/html"]
                page = "".join(page) if isinstance(page, list) else page
                data["text/html"] = _CDN_PLOTLY.sub("", page)
    return nb, figures, widget_figures, widgets


def _local_links(text: str, *, from_notebooks: bool) -> str:
    """Point links at .ipynb/.md sources to the pages built from them."""

    def fix(m: re.Match[str]) -> str:
        target = m.group(2)
        if re.match(r"^[a-z]+:", target) or target.startswith("#") or "students/" in target:
            return m.group(0)
        path, _, anchor = target.partition("#")
        name = path.rsplit("/", 1)[-1]
        if path.endswith(".ipynb"):
            path = (name if from_notebooks else f"notebooks/{name}")[:-6] + ".html"
        elif path.endswith(".md"):
            path = ("../" if from_notebooks else "") + name[:-3] + ".html"
        return f'{m.group(1)}"{path}{"#" + anchor if anchor else ""}"'

    return re.sub(r'(href=)"([^"]+)"', fix, text)


def _nav(prefix: str, notebooks: Sequence[Path]) -> str:
    links = [f'<a href="{prefix}index.html">mpcourse</a>']
    links += [f'<a href="{prefix}{slug}.html">{label}</a>' for slug, label in PAGES]
    links += [
        f'<a href="{prefix}notebooks/{p.stem}.html" title="{html.escape(p.stem)}">{p.stem[:2]}</a>' for p in notebooks
    ]
    return f'<nav class="mpc-nav">{"".join(links)}</nav>'


def notebook_html(nb: Any, *, nav: str, assets: str, mathjax: str | None) -> str:
    """HTML for one (already offline) notebook, with the site's navigation."""
    import jinja2  # noqa: PLC0415
    from nbconvert import HTMLExporter  # noqa: PLC0415

    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[jinja2.DictLoader({"mpc_site.html.j2": _TEMPLATE})],
        template_file="mpc_site.html.j2",
    )
    resources = {
        "metadata": {"name": course.title(nb) or "notebook"},
        "mpc_nav": nav,
        "mpc_assets": assets,
        "mpc_mathjax": mathjax,
    }
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return body


def markdown_html(text: str) -> str:
    """Markdown (tables, strikethrough, bare URLs) to an HTML fragment with mistune."""
    import mistune  # noqa: PLC0415

    md = mistune.create_markdown(escape=False, plugins=["table", "strikethrough", "url"])
    return str(md(text))


def _page(title: str, body_md: str, nav: str) -> str:
    body = _local_links(markdown_html(body_md), from_notebooks=False)
    return _PAGE.format(title=html.escape(title), assets="assets", nav=nav, body=body)


def _index_md(root: Path, notebooks: Sequence[Path]) -> str:
    intro_path = root / "course" / "index.md"
    intro = intro_path.read_text(encoding="utf-8") if intro_path.is_file() else "# mpcourse\n"
    rows = ["| # | notebook | objectives | files |", "|---|---|---|---|"]
    for path in notebooks:
        nb = course.read(path)
        goals = "<br>".join(course.objectives(nb)) or "&ndash;"
        rows.append(
            f"| {path.stem[:2]} | [{course.title(nb)}](notebooks/{path.stem}.html) | "
            f"{goals} | [student .ipynb](students/{path.name}) |"
        )
    return intro.rstrip() + "\n\n## The notebooks\n\n" + "\n".join(rows) + "\n"


def _copy_mathjax(assets: Path) -> str | None:
    try:
        import jupyter_server_mathjax  # noqa: PLC0415
    except ImportError:
        return None
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (src / "MathJax.js").is_file():
        return None
    shutil.copytree(src, assets / "mathjax", dirs_exist_ok=True)
    return f"../assets/mathjax/MathJax.js?config={_MATHJAX_CONFIG}"


def build(out: str | os.PathLike[str] = "_site", root: str | os.PathLike[str] | None = None) -> BuildReport:
    """Build the whole site into ``out`` (created; pages in it are overwritten).

    Args:
        out: output folder.
        root: the course checkout (default: found from this package).
    """
    import plotly.offline  # noqa: PLC0415

    start = time.perf_counter()
    base = course.course_root(root)
    out_dir = Path(out)
    report = BuildReport(out=out_dir)
    assets = out_dir / "assets"
    for folder in (assets, out_dir / "notebooks", out_dir / "students"):
        folder.mkdir(parents=True, exist_ok=True)
    (assets / "plotly.min.js").write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    (assets / "site.css").write_text(_CSS, encoding="utf-8")
    mathjax = _copy_mathjax(assets)

    notebooks = course.notebook_paths(base)
    nav_nb = _nav("../", notebooks)
    for path in notebooks:
        nb = course.read(path)
        offline, figures, widget_figures, widgets = offline_notebook(nb)
        downloads = (
            f'<div class="mpc-downloads">Download: <a href="../students/{path.name}">'
            f"student version (no solutions)</a></div>"
        )
        page = notebook_html(offline, nav=nav_nb + downloads, assets="../assets", mathjax=mathjax)
        rel = f"notebooks/{path.stem}.html"
        (out_dir / rel).write_text(_local_links(page, from_notebooks=True), encoding="utf-8")
        nbformat.write(course.make_student(nb), os.fspath(out_dir / "students" / path.name))
        report.pages.append(rel)
        report.figures += figures
        report.widget_figures += widget_figures
        report.widgets += widgets

    nav = _nav("", notebooks)
    (out_dir / "index.html").write_text(_page("mpcourse", _index_md(base, notebooks), nav), encoding="utf-8")
    report.pages.append("index.html")
    for slug, label in PAGES:
        src = base / "course" / f"{slug}.md"
        if src.is_file():
            (out_dir / f"{slug}.html").write_text(_page(label, src.read_text(encoding="utf-8"), nav), encoding="utf-8")
            report.pages.append(f"{slug}.html")
    report.seconds = time.perf_counter() - start
    return report


def site_main(argv: Sequence[str] | None = None) -> int:
    """``mpcourse site [build] [OUT]``: build the course site into OUT (default ``_site``)."""
    argv = list(argv or [])
    if argv[:1] == ["build"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="mpcourse site", description="Build the offline course site.")
    parser.add_argument("out", nargs="?", default="_site", help="output folder (default _site)")
    args = parser.parse_args(argv)
    try:
        report = build(args.out)
    except FileNotFoundError as exc:
        print(f"mpcourse site: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0


def main() -> int:
    """``python -m mpcourse.authoring.site build [OUT]``."""
    return site_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
