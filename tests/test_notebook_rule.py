"""The nbval rule of the course notebooks (issue 12), checked mechanically on every notebook.

The rule (written out in ``notebooks/conftest.py``): a stored output is compared verbatim only
where it is deterministic on every machine; an output that depends on training numerics, device
kernels, timing or the machine is tagged ``nbval-ignore-output``, and its claims are asserted.

What this file checks, from the cells' Python source (``ast``) and their stored outputs:

- A. *Nothing compared depends on training.* A "producer" is a call whose result depends on
  training numerics, device kernels, timing or the machine (``fit``, ``train``, ``evaluate``,
  ``validate``, ``run_grid``, ``batch_gradients``, ``available_backends`` ...). Names bound from a
  producer's result are tainted, across cells, and so is every name computed from a tainted one
  (and a function whose body calls a producer becomes one). An untagged cell whose stored output
  holds text (not only figures or widget views) must not print or display a tainted value.
- B. *What is hidden is asserted.* A tagged cell that shows a tainted value needs an ``assert``,
  in itself or in a later cell, that reads a tainted name the tagged cell binds or reads.
- C. *Device-neutral notebooks.* Every notebook that trains sets ``DEVICE = "auto"`` in its first
  code cell and names no device literally in a call (``device="cpu"``).
- D. *Not vacuous.* Each notebook has producers, tagged-and-asserted cells and compared cells;
  and the checker itself flags a planted violation of A, of B and of C.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TAG = "nbval-ignore-output"

# Calls whose results depend on training numerics, device kernels, timing or the machine.
PRODUCERS = frozenset(
    {
        # training and evaluation (engines, studies, production, widgets)
        "fit", "train", "compare", "recommend", "evaluate", "validate", "Trainer", "backward", "measure",
        # gradients, activations, op dtypes, faults: one device's kernels
        "batch_gradients", "op_dtypes", "find_first_nonfinite", "underflow_fractions",
        "activation_ranges", "clip_order_effect", "saved_tensor_bytes",
        # timing and the machine
        "run_grid", "elementwise_gbps", "matmul_tflops", "matmul_peak_tflops", "perf_counter", "time",
        "available_backends", "check_device", "resolve_device", "cpu_flags", "cpu_model", "describe_cpu",
        "load_results", "Popen", "run", "Monitor",
    }
)  # fmt: skip
OUTPUT_CALLS = frozenset({"print", "display"})
# Methods that change their receiver (``eng.fit(...)`` trains ``eng``; ``panel.train()`` its figure).
MUTATORS = frozenset({"fit", "train", "backward"})


@dataclass
class Cell:
    """One code cell: its index, tag, source facts and whether its stored output holds text."""

    index: int
    tagged: bool
    text_output: bool
    tree: ast.Module
    binds: set[str] = field(default_factory=set)
    tainted_binds: set[str] = field(default_factory=set)
    reads: set[str] = field(default_factory=set)
    shows_tainted: set[str] = field(default_factory=set)
    shows_producer: bool = False
    asserts_read: set[str] = field(default_factory=set)
    calls_producer: bool = False
    flows: list[tuple[set[str], set[str]]] = field(default_factory=list)  # (bound, read to compute them)


def _call_name(node: ast.Call) -> str | None:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _base_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _targets(node: ast.AST) -> set[str]:
    if isinstance(node, (ast.Tuple, ast.List)):
        return set().union(*(_targets(e) for e in node.elts)) if node.elts else set()
    base = _base_name(node)
    return {base} if base else set()


def _loads(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _has_producer(node: ast.AST, producers: set[str]) -> bool:
    return any(isinstance(n, ast.Call) and _call_name(n) in producers for n in ast.walk(node))


def _depends(node: ast.AST, tainted: set[str], producers: set[str]) -> bool:
    return bool(_loads(node) & tainted) or _has_producer(node, producers)


def _bindings(tree: ast.AST) -> list[tuple[set[str], ast.AST]]:
    """(names bound, the expression they are computed from) for every binding in ``tree``."""
    out: list[tuple[set[str], ast.AST]] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Assign):
            out.append((set().union(*(_targets(t) for t in n.targets)), n.value))
        elif isinstance(n, (ast.AugAssign, ast.AnnAssign)) and n.value is not None:
            out.append((_targets(n.target), n.value))
        elif isinstance(n, (ast.For, ast.comprehension)):
            out.append((_targets(n.target), n.iter))
        elif isinstance(n, ast.withitem) and n.optional_vars is not None:
            out.append((_targets(n.optional_vars), n.context_expr))
        elif isinstance(n, ast.NamedExpr):
            out.append((_targets(n.target), n.value))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and _call_name(n) in MUTATORS:
            receiver = _base_name(n.func.value)  # eng.fit(...) changes eng itself
            if receiver:
                out.append(({receiver}, n))
    return out


def _shown(tree: ast.Module) -> list[ast.AST]:
    """The expressions whose values reach the output: print/display arguments, the last expression."""
    shown: list[ast.AST] = [
        a
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and _call_name(n) in OUTPUT_CALLS
        for a in [*n.args, *(k.value for k in n.keywords)]
    ]
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        shown.append(tree.body[-1].value)
    return shown


def _has_text_output(outputs: list[dict[str, Any]]) -> bool:
    """True when nbval compares text of this cell: a stream, a repr, or html that is not a figure."""
    for o in outputs:
        if o.get("output_type") == "stream":
            return True
        data = o.get("data", {})
        if "application/vnd.jupyter.widget-view+json" in data or "application/vnd.plotly.v1+json" in data:
            continue
        html = "".join(data.get("text/html", ""))
        if html and "PlotlyConfig" in html and "<script" in html:  # plotly's loader, the same everywhere
            continue
        if any(k.startswith("text/") for k in data) or o.get("output_type") == "error":
            return True
    return False


def _source(cell: dict[str, Any]) -> str:
    src = "".join(cell["source"])
    return "\n".join("pass" if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines())


def analyse(nb: dict[str, Any]) -> list[Cell]:
    """Every code cell of ``nb`` with its taint facts (names tainted by producers, across cells)."""
    tainted: set[str] = set()
    producers: set[str] = set(PRODUCERS)
    cells = []
    modules: set[str] = set()  # imported names: a module is never a training result
    for i, raw in enumerate(nb["cells"]):
        if raw["cell_type"] != "code":
            continue
        tree = ast.parse(_source(raw))
        for n in ast.walk(tree):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                modules |= {(a.asname or a.name).split(".")[0] for a in n.names}
        cell = Cell(i, TAG in raw.get("metadata", {}).get("tags", []), _has_text_output(raw.get("outputs", [])), tree)
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            if any(_depends(s, tainted, producers) for s in fn.body):
                producers.add(fn.name)
        bindings = [(names - modules, value) for names, value in _bindings(tree)]
        for stmt in tree.body:  # in order: a name rebound from clean values only is clean again
            own = [(names - modules, value) for names, value in _bindings(stmt)]
            dirty = {n for names, value in own if _depends(value, tainted, producers) for n in names}
            rebound = {n for names, value in own for n in names if isinstance(value, ast.expr)}
            tainted -= rebound - dirty
            changed = True
            while changed:  # a fixed point: in a loop, a later line may taint what an earlier one reads
                changed = False
                for names, value in own:
                    if names - tainted and _depends(value, tainted, producers):
                        cell.tainted_binds |= names
                        tainted |= names
                        changed = True
        cell.binds = set().union(*(names for names, _ in bindings)) if bindings else set()
        cell.flows = [(names, _loads(value)) for names, value in bindings]
        cell.reads = _loads(tree)
        cell.calls_producer = _has_producer(tree, producers)
        for expr in _shown(tree):
            cell.shows_tainted |= _loads(expr) & tainted
            cell.shows_producer |= _has_producer(expr, producers)
        cell.asserts_read = set().union(*(_loads(n) for n in ast.walk(tree) if isinstance(n, ast.Assert)))
        cell.tainted_binds |= cell.binds & tainted
        cells.append(cell)
    _mark_tainted_reads(cells, tainted)
    return cells


def _mark_tainted_reads(cells: list[Cell], tainted: set[str]) -> None:
    for cell in cells:
        cell.reads &= tainted | cell.tainted_binds


def _asserted(names: set[str], cells: list[Cell]) -> bool:
    """Whether an assert in ``cells`` reads ``names`` or a name computed from them (in order)."""
    derived = set(names)
    for pos, cell in enumerate(cells):
        for _ in range(len(cell.flows) + 1):  # names computed from names computed from them ...
            for bound, read in cell.flows:
                if read & derived:
                    derived |= bound
                elif pos > 0:  # a later cell that rebinds a name from other values: not this claim's
                    derived -= bound
        if cell.asserts_read & derived:
            return True
    return False


def violations(nb: dict[str, Any]) -> list[str]:
    """Breaches of rules A, B and C in ``nb`` (empty when it follows the rule)."""
    cells = analyse(nb)
    found: list[str] = []
    setup = cells[0].index if cells else -1
    setup_names = cells[0].binds if cells else set()
    for pos, cell in enumerate(cells):
        shows = cell.shows_tainted or cell.shows_producer
        if cell.text_output and shows and not cell.tagged:
            what = ", ".join(sorted(cell.shows_tainted)) or "a producer's result"
            found.append(f"A: cell {cell.index} shows {what} (training/device/timing) untagged: compared verbatim")
        if cell.tagged and cell.index != setup and cell.text_output and shows:
            links = (cell.tainted_binds | cell.reads) - setup_names
            if not _asserted(links, cells[pos:]):
                found.append(f"B: cell {cell.index} is {TAG} but nothing asserts on {sorted(links) or 'its result'}")
    trains = any(c.calls_producer for c in cells[1:])
    first = ast.unparse(cells[0].tree) if cells else ""
    if trains and "DEVICE = 'auto'" not in first:
        found.append('C: the first code cell does not set DEVICE = "auto"')
    for cell in cells:
        for n in ast.walk(cell.tree):
            if isinstance(n, ast.Call):
                for k in n.keywords:
                    if k.arg == "device" and isinstance(k.value, ast.Constant) and k.value.value != "auto":
                        found.append(f"C: cell {cell.index} pins device={k.value.value!r}; use DEVICE")
    return found


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_every_course_notebook_is_checked():
    assert [p.name[:2] for p in NOTEBOOKS][:6] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_follows_the_nbval_rule(path):
    assert violations(_load(path)) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_rule_is_not_vacuous_in_this_notebook(path):
    cells = analyse(_load(path))
    assert any(c.calls_producer for c in cells), "the taint analysis found no training/device call"
    hidden = [c for c in cells[1:] if c.tagged and c.text_output and (c.shows_tainted or c.shows_producer)]
    assert hidden, "no tagged cell hides a training/device output here"
    assert any(c.asserts_read for c in cells), "no assert cell"


def test_deterministic_outputs_are_still_compared_across_the_course():
    # 05 (debugging) is training from end to end; the others show formats, the scaler and texts.
    compared = {p.stem: [c.index for c in analyse(_load(p)) if c.text_output and not c.tagged] for p in NOTEBOOKS}
    assert sum(map(len, compared.values())) >= 15 and sum(bool(v) for v in compared.values()) >= 5, compared


def _nb(*cells: tuple[str, bool, str]) -> dict[str, Any]:
    def code(src: str, tagged: bool, out: str) -> dict[str, Any]:
        outputs = [{"output_type": "stream", "name": "stdout", "text": [out]}] if out else []
        return {"cell_type": "code", "source": [src], "metadata": {"tags": [TAG] if tagged else []}, "outputs": outputs}

    return {"cells": [code(*c) for c in cells]}


SETUP = ('import mpcourse as mpc\nDEVICE = "auto"\nmpc.available_backends()', True, "['torch:cpu']")
TRAIN = "eng = mpc.make_engine('torch', 'mlp', device=DEVICE)\nhist = eng.fit(ds, steps=5)\nloss = hist.losses[-1]"


def test_the_checker_flags_an_untagged_training_output():
    bad = _nb(SETUP, (TRAIN + "\nprint(loss)", False, "2.30"), ("assert loss < 3", False, ""))
    assert [v[:9] for v in violations(bad)] == ["A: cell 1"]
    derived = _nb(SETUP, (TRAIN, False, ""), ("x = {'l': loss}\nfor k, v in x.items():\n    print(v)", False, "2.3"))
    assert [v[:9] for v in violations(derived)] == ["A: cell 2"]  # taint follows names across cells


def test_a_studies_table_is_a_training_output():
    table = "rows = model_table.measure(ds, steps=44, device=DEVICE)\nprint(model_table.format_rows(rows))"
    assert [v[:9] for v in violations(_nb(SETUP, (table, False, "mlp fp32 2.18")))] == ["A: cell 1"]
    assert [v[:9] for v in violations(_nb(SETUP, (table, True, "mlp fp32 2.18")))] == ["B: cell 1"]
    assert violations(_nb(SETUP, (table, True, "mlp fp32 2.18"), ("assert rows[0]['vs_fp32'] == 1", False, ""))) == []


def test_the_checker_flags_a_tagged_output_without_an_assert():
    bad = _nb(SETUP, (TRAIN + "\nprint(loss)", True, "2.30"), ("print('done')", False, "done"))
    assert [v[:9] for v in violations(bad)] == ["B: cell 1"]
    good = _nb(SETUP, (TRAIN + "\nprint(loss)", True, "2.30"), ("assert loss < 3  # why", False, ""))
    assert violations(good) == []


def test_the_checker_flags_a_pinned_device_and_a_missing_auto():
    pinned = _nb(SETUP, ("eng = mpc.make_engine('torch', 'mlp', device='cpu')", False, ""))
    assert [v[:9] for v in violations(pinned)] == ["C: cell 1"]
    no_auto = _nb(('import mpcourse as mpc\nDEVICE = "cpu"', False, ""), (TRAIN, False, ""))
    assert [v[:3] for v in violations(no_auto)] == ["C: "]


def test_deterministic_outputs_stay_compared():
    pure = _nb(SETUP, ("print(mpc.formats.info('fp16').max)", False, "65504"))
    assert violations(pure) == []
    cells = analyse(pure)
    assert not cells[1].shows_tainted and not cells[1].tagged


def test_the_rule_is_written_where_the_harness_is():
    conftest = (ROOT / "notebooks" / "conftest.py").read_text()
    cfg = (ROOT / "tests" / "nbval_sanitize.cfg").read_text()
    for text in (conftest, cfg):
        assert TAG in text and "assert" in text and "MPS" in text and "CUDA" in text
    assert "tests/test_notebook_rule.py" in conftest


def test_an_assert_on_a_reused_name_does_not_count_for_the_hidden_output():
    reused = _nb(SETUP, (TRAIN + "\nprint(loss)", True, "2.30"), ("loss = 1.0\nassert loss == 1.0", False, ""))
    assert [v[:9] for v in violations(reused)] == ["B: cell 1"]


def test_removing_a_real_assert_cell_is_caught():
    nb = _load(NOTEBOOKS[1])  # 02: an assert cell guards what the training table of section 3 shows
    assert violations(nb) == []
    where = {k: next(i for i, c in enumerate(nb["cells"]) if k in "".join(c["source"]))
             for k in ("results = runs.compare(task, configs", "unscaled fp16 should stall")}  # fmt: skip
    nb["cells"][where["unscaled fp16 should stall"]]["source"] = ["pass\n"]
    assert any(v.startswith(f"B: cell {where['results = runs.compare(task, configs']} ") for v in violations(nb))
