"""`import mpcourse` works with neither torch nor mlx; asking for a missing backend says how to install it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent("""
    import sys, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split('.')[0] in ('torch', 'mlx'):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None
    sys.meta_path.insert(0, Block())
""")


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_import_without_frameworks() -> None:
    r = run("""
        import mpcourse as mpc
        from mpcourse import plots, cli
        from mpcourse.studies import demo
        assert mpc.formats is not None and mpc.data.load('digits').num_classes == 10
        s = mpc.DynamicLossScaler(); s.update(True); assert s.scale == 2.0**15
        assert mpc.available_backends() == [], mpc.available_backends()
        assert 'torch' not in sys.modules and 'mlx' not in sys.modules
        for backend in ('torch', 'mlx'):
            try:
                mpc.make_engine(backend)
            except ImportError as err:
                print(err)
            else:
                raise SystemExit('no error for a missing backend')
    """)
    assert r.returncode == 0, r.stderr
    assert "backend 'torch' is not installed: pip install torch" in r.stdout
    assert "backend 'mlx' is not installed: pip install 'mlx[cpu]' on Linux" in r.stdout
