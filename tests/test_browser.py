"""Real-browser tests: JupyterLab driven by Playwright in headless Chromium, and the built site.

They need Debian's ``chromium`` (or ``MPCOURSE_CHROMIUM=/path/to/chrome``) and the ``playwright``
package; Playwright never downloads a browser of its own here. Locally they skip with the reason
when either is missing; with ``CI=true`` a missing browser is a failure, not a skip.

Screenshots go to ``artifacts/`` at the repository root (git-ignored): browser-02.png (the panel)
and browser-02-page.png (the window) after the widget trained, site-<notebook>.png for each page of the built site.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mpcourse.authoring import notebooks as course
from mpcourse.authoring import site

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"
FIXTURE = Path(__file__).resolve().parent / "data" / "mini_course"
NOTEBOOK_02 = "02_loss_scaling.ipynb"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (required in CI: .ci/run installs chromium and playwright)")
    pytest.skip(reason)


def _chromium() -> str:
    path = os.environ.get("MPCOURSE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        _unavailable(f"no Chromium at {path} (apt-get install -y chromium, or set MPCOURSE_CHROMIUM)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium that may only reach the loopback interface and local files."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install playwright)")
    executable = _chromium()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _new_page(browser: Any, external: list[str], **kw: Any) -> Any:
    """A page in a fresh context whose requests off this machine are refused and recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, **kw)

    def gate(route: Any) -> None:
        url = route.request.url
        if re.match(r"^(file:|data:|blob:|about:|https?://(127\.0\.0\.1|localhost)[:/])", url):
            route.continue_()
        else:
            external.append(url)
            route.abort()

    context.route("**/*", gate)
    return context.new_page()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _notebook_02() -> tuple[Path, str]:
    """(course root, notebook name): notebook 02 of the course, or the fixture before it lands."""
    real = REPO / "notebooks" / NOTEBOOK_02
    if real.is_file():
        return REPO, NOTEBOOK_02
    return FIXTURE, "01_demo.ipynb"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """JupyterLab on 127.0.0.1 (no token), on a copy of the notebooks so nothing is autosaved
    into the repository. Yields (base URL, notebook name)."""
    root, name = _notebook_02()
    work = tmp_path_factory.mktemp("lab")
    shutil.copytree(root / "notebooks", work / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    # No "official Jupyter news?" pop-up over the notebook (and no news fetched).
    notification = work / "settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port = _free_port()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        MPCOURSE_PROGRESS="0",
        JUPYTER_CONFIG_DIR=str(work / "cfg"),
        JUPYTER_RUNTIME_DIR=str(work / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(work / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"),
    )
    cmd, cwd = course.lab_command(
        name,
        root=work,
        extra=[
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
            "--ServerApp.shutdown_no_activity_timeout=900",
        ],
    )
    log = open(work / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n" + (work / "lab.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{base}/api/status", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("jupyter lab did not answer within 120 s:\n" + (work / "lab.log").read_text()[-3000:])
            time.sleep(0.5)
        yield base, name
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


_KERNEL_IDLE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!(k && k.status === 'idle' && w.content && w.content.widgets.length);
}"""

_ALL_RUN = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const code = w.content.widgets.filter(c => c.model.type === 'code');
  const busy = Array.from(document.querySelectorAll('.jp-InputPrompt'))
                    .some(p => p.textContent.includes('*'));
  return !busy && w.sessionContext.session.kernel.status === 'idle'
         && code.every(c => c.model.executionCount !== null);
}"""

_ERRORS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const found = [];
  w.content.widgets.forEach((c, i) => {
    if (c.model.type !== 'code') return;
    for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === 'error') found.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
    }
  });
  for (const el of document.querySelectorAll('.jp-OutputArea-output')) {
    const t = el.textContent || '';
    if (/Traceback \\(most recent call last\\)|Error displaying widget|Failed to load model/.test(t))
      found.push('page shows: ' + t.slice(0, 200));
  }
  return found;
}"""

# The output area that holds the initial-scale slider, found afresh on every call (JupyterLab
# may re-render outputs, so no element handle is kept), and what the page shows of each plotly
# figure in it: every trace's data and the rendered SVG paths of its lines and markers.
_PANEL = """() => Array.from(document.querySelectorAll('.jp-OutputArea-output')).find(o =>
  Array.from(o.querySelectorAll('.widget-slider .widget-label')).some(l => /init/i.test(l.textContent)))"""
_FIGURES = f"""() => {{ const area = ({_PANEL})();
  if (!area) return null;
  return Array.from(area.querySelectorAll('.js-plotly-plot')).map(el => JSON.stringify({{
    data: (el.data || []).map(t => ({{x: t.x ? Array.from(t.x) : null, y: t.y ? Array.from(t.y) : null}})),
    svg: Array.from(el.querySelectorAll('.scatterlayer path, .barlayer path')).map(p => p.getAttribute('d'))
  }})); }}"""


def _widget_output(page: Any) -> Any:
    """The initial-scale slider of the loss-scaling panel (label matching "init")."""
    sliders = page.locator(".jp-OutputArea-output .widget-slider").filter(
        has=page.locator(".widget-label", has_text=re.compile(r"init", re.I))
    )
    sliders.first.wait_for(state="visible", timeout=60_000)
    return sliders.first


def _move_slider(page: Any, slider: Any, presses: int = 10) -> tuple[str, str]:
    """Step the slider down from the keyboard on its focused handle; returns (before, after) readouts.

    A mouse drag of the noUiSlider handle stopped moving it in Debian's chromium 156 (the
    pointer events land, the handle stays); arrow keys on the focused handle are the slider's
    own keyboard support (one ``step`` per press), work the same in every Chromium, and end in
    the same ``change`` event a drag ends in, which is what a ``continuous_update=False``
    widget sends to the kernel.
    """
    readout = slider.locator(".widget-readout")
    before = readout.inner_text().strip()
    handle = slider.locator(".noUi-handle").first
    handle.wait_for(state="visible", timeout=30_000)
    handle.focus()
    assert handle.evaluate("h => h === document.activeElement"), "the slider handle did not take the focus"
    for _ in range(presses):
        handle.press("ArrowLeft")
    page.wait_for_timeout(500)
    return before, readout.inner_text().strip()


def test_notebook_02_trains_from_the_widget_in_jupyterlab(browser: Any, lab: tuple[str, str]):
    base, name = lab
    external: list[str] = []
    page = _new_page(browser, external)
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    start = time.monotonic()
    page.goto(f"{base}/lab/tree/notebooks/{name}", wait_until="domcontentloaded")
    page.wait_for_function(_KERNEL_IDLE, timeout=180_000, polling=500)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(_ALL_RUN, timeout=300_000, polling=1000)
    run_all_s = time.monotonic() - start
    assert page.evaluate(_ERRORS) == [], "a cell shows an error after Run All"

    slider = _widget_output(page)
    slider.scroll_into_view_if_needed()
    page.wait_for_function(
        f"() => {{ const f = ({_FIGURES})(); return f && f.length > 0; }}", timeout=60_000, polling=500
    )
    figures_before = page.evaluate(_FIGURES)
    page.evaluate(f"() => {{ window.__mpcBefore = JSON.stringify(({_FIGURES})()); }}")

    before, after = _move_slider(page, slider)
    assert after != before, f"ten ArrowLeft presses on the initial-scale slider did not move it ({before})"
    panel = slider.locator("xpath=ancestor::div[contains(@class,'jp-OutputArea-output')][1]")
    panel.get_by_role("button", name=re.compile(r"train", re.I)).first.click()
    try:
        page.wait_for_function(
            f"() => {{ const f = ({_FIGURES})(); return !!f && f.length > 0 && "
            "JSON.stringify(f) !== window.__mpcBefore; }",
            timeout=180_000,
            polling=500,
        )
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.wait_for_timeout(1000)  # let plotly finish drawing before the picture
        panel.screenshot(path=str(ARTIFACTS / "browser-02.png"))
        page.screenshot(path=str(ARTIFACTS / "browser-02-page.png"))
    figures_after = page.evaluate(_FIGURES)
    assert figures_after != figures_before
    assert any(json.loads(f)["svg"] for f in figures_after), "the new figure draws nothing"
    # The kernel trained with the value the keys set: the redrawn scale trace starts there.
    starts = [t["y"][0] for f in figures_after for t in json.loads(f)["data"] if t["y"]]
    assert any(abs(v - float(after)) <= 0.01 * float(after) for v in starts), (after, starts)
    assert page_errors == [], f"the page raised: {page_errors}"
    page.wait_for_function(_ALL_RUN, timeout=120_000, polling=1000)
    assert page.evaluate(_ERRORS) == [], "a cell shows an error after training from the widget"
    print(
        f"browser: {name} run-all {run_all_s:.1f} s; slider {before} -> {after}; "
        f"total {time.monotonic() - start:.1f} s; refused off-machine requests: {external}"
    )


def test_built_site_shows_plotly_figures_offline(browser: Any, tmp_path: Path):
    root = REPO if (REPO / "notebooks" / NOTEBOOK_02).is_file() else FIXTURE
    report = site.build(tmp_path / "site", root=root)
    notebooks = course.notebook_paths(root)
    external: list[str] = []
    page = _new_page(browser, external)
    ARTIFACTS.mkdir(exist_ok=True)
    for path in notebooks:
        page.goto((tmp_path / "site" / "notebooks" / f"{path.stem}.html").as_uri())
        page.wait_for_load_state("load")
        divs = page.locator(".plotly-graph-div").count()
        assert divs >= 1, f"{path.stem}: no plotly figure on the page"
        page.wait_for_function(
            "n => document.querySelectorAll('.plotly-graph-div .main-svg').length >= n", arg=divs, timeout=60_000
        )
        page.screenshot(path=str(ARTIFACTS / f"site-{path.stem}.png"))
    assert external == [], f"the site asked for off-machine resources: {external}"
    assert report.figures >= len(notebooks)
