"""The `kernels` package: the one in this repository, and independent of minigpt.

A PyPI distribution also installs a top-level module called `kernels`; if it
shadowed ours, every kernel test would silently exercise someone else's code.
"""
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KERNELS_DIR = (REPO_ROOT / "kernels").resolve()


def test_import_kernels_resolves_to_this_repository():
    import kernels

    assert kernels.__file__ is not None, f"`kernels` is a namespace package: {kernels.__path__}"
    assert Path(kernels.__file__).resolve().parent == KERNELS_DIR, kernels.__file__


def test_kernels_does_not_import_minigpt():
    # A fresh interpreter: this test process may already have imported minigpt.
    code = (
        "import sys, kernels\n"
        "print(kernels.__file__)\n"
        "leaked = sorted(m for m in sys.modules if m == 'minigpt' or m.startswith('minigpt.'))\n"
        "assert not leaked, f'kernels imported {leaked}'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert Path(result.stdout.strip()).resolve().parent == KERNELS_DIR, result.stdout
