"""The layout's rules, checked on the import graph: no cycles, rooms reachable, scalers share one shape."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import mpcourse as mpc

PKG = Path(mpc.__file__).parent


def find_cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """Every import edge a -> b for which b leads back to a (a package importing its own
    submodules to re-export them is not an edge between two concepts, so it is not counted)."""
    cycles = []
    for a in sorted(graph.modules):
        for b in sorted(graph.find_modules_directly_imported_by(a)):
            if b.startswith(a + "."):
                continue
            back = graph.find_shortest_chain(importer=b, imported=a)
            if back is not None:
                cycles.append((a, *back))
    return cycles


def test_no_import_cycle_anywhere_in_mpcourse() -> None:
    """Every import, including those inside functions, is an edge: no module reaches itself."""
    cycles = find_cycles(grimp.build_graph("mpcourse", include_external_packages=False))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_the_cycle_check_finds_a_planted_cycle() -> None:
    graph = grimp.build_graph("mpcourse", include_external_packages=False)
    graph.add_import(importer="mpcourse.scaler", imported="mpcourse.config")  # config imports scaler
    assert ("mpcourse.scaler", "mpcourse.config", "mpcourse.scaler") in find_cycles(graph)


@pytest.mark.parametrize("room", mpc._LAZY)
def test_every_lazy_room_loads(room: str) -> None:
    assert getattr(mpc, room).__name__ == f"mpcourse.{room}"


def test_loading_every_library_room_never_loads_authoring() -> None:
    code = (
        "import sys, mpcourse as mpc\n"
        "for room in mpc._LAZY: getattr(mpc, room)\n"
        "import mpcourse.production.cli, mpcourse.bench.cli, mpcourse.studies.demo\n"
        "print(sorted(m for m in sys.modules if m.startswith('mpcourse.authoring')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "authoring" not in mpc._LAZY and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_no_module_is_far_over_400_lines() -> None:
    sizes = {str(p.relative_to(PKG)): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    assert sizes, "no modules found"
    over = {k: v for k, v in sizes.items() if v > 450}
    assert over == {}, f"split these modules (one concept each): {over}"


def test_framework_rooms_have_the_same_file_names() -> None:
    """The torch and MLX rooms mirror each other; the twins that are missing are the known ones."""
    torch_files = {p.name for p in (PKG / "engines" / "torch").glob("*.py")}
    mlx_files = {p.name for p in (PKG / "engines" / "mlx").glob("*.py")}
    assert mlx_files <= torch_files | {"distributed.py", "fp8.py", "arrays.py"}
    # MLX has no GradScaler, no TensorBoard writer, no sharded checkpoint or collectives of torch's kind
    # and no Accelerate/Lightning launchers; recipes.py and master.py teach torch's own AMP API:
    # these twins are absent on purpose.
    assert torch_files - mlx_files <= {
        "scaling.py",
        "tensorboard.py",
        "sharded_checkpoint.py",
        "collectives.py",
        "launchers.py",
        "recipes.py",
        "master.py",
        "inspect.py",
        "support.py",
        "distributed.py",
        "fp8.py",
    }


def test_no_module_defines_dtype_tables_or_default_losses_twice() -> None:
    """One DTYPES table and one default loss per framework, in its engine module."""
    found: dict[str, list[str]] = {"DTYPES": [], "default_loss": []}
    for p in PKG.rglob("*.py"):
        for node in ast.parse(p.read_text()).body:
            names = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            if isinstance(node, ast.FunctionDef | ast.AnnAssign):
                names.append(getattr(node, "name", None) or getattr(node.target, "id", ""))  # type: ignore[union-attr]
            for n in names:
                key = n.lstrip("_")
                if key in found:
                    found[key].append(str(p.relative_to(PKG)))
    assert sorted(found["DTYPES"]) == ["engines/mlx/engine.py", "engines/torch/engine.py"]
    assert sorted(found["default_loss"]) == ["engines/mlx/engine.py", "engines/torch/engine.py"]


def test_noop_scaler_has_the_scalers_interface() -> None:
    s = mpc.NoOpLossScaler()
    assert isinstance(s, mpc.scaler.LossScaler)
    assert (s.kind, s.scale, s.skips_nonfinite) == ("none", 1.0, False)
    s.update(True)
    assert s.scale == 1.0 and s.state_dict() == {"kind": "none"}
    s.load_state_dict({"kind": "none"})
    with pytest.raises(ValueError, match="'static' scaler, not a 'none' one"):
        s.load_state_dict(mpc.StaticLossScaler(8.0).state_dict())
    with pytest.raises(TypeError, match="found_inf must be a bool"):
        s.update(1)
    assert isinstance(mpc.scaler.scaler_from_state_dict({"kind": "none"}), mpc.NoOpLossScaler)
    assert mpc.StaticLossScaler(2.0).skips_nonfinite and mpc.DynamicLossScaler().skips_nonfinite
