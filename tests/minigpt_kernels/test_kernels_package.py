"""The `minigpt_kernels` package: the one in this repository, independent of minigpt, and out of
the way of Hugging Face's `kernels` distribution (which transformers depends on and imports as
the top-level module `kernels`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
KERNELS_DIR = (REPO_ROOT / "minigpt_kernels").resolve()


def run_fresh(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter started in the repository root (as `python train.py` is)."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120
    )


def test_import_resolves_to_this_repository():
    import minigpt_kernels

    assert minigpt_kernels.__file__ is not None, f"a namespace package: {minigpt_kernels.__path__}"
    assert Path(minigpt_kernels.__file__).resolve().parent == KERNELS_DIR, minigpt_kernels.__file__


@pytest.mark.slow
def test_kernels_do_not_import_minigpt():
    result = run_fresh(
        "import sys, minigpt_kernels\n"
        "print(minigpt_kernels.__file__)\n"
        "leaked = sorted(m for m in sys.modules if m == 'minigpt' or m.startswith('minigpt.'))\n"
        "assert not leaked, f'minigpt_kernels imported {leaked}'\n"
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert Path(result.stdout.strip()).resolve().parent == KERNELS_DIR, result.stdout


def test_nothing_here_shadows_a_top_level_kernels_module():
    # From the repository root, `import kernels` must find Hugging Face's package (or nothing),
    # never a directory of this repository: transformers imports it when it is installed.
    result = run_fresh(
        "import importlib.util\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print('' if spec is None or spec.origin is None else spec.origin)\n"
    )
    assert result.returncode == 0, result.stderr
    origin = result.stdout.strip()
    assert not origin or Path(origin).resolve().parent.parent != REPO_ROOT, origin  # not ./kernels/


@pytest.mark.slow
def test_transformers_gpt2_imports_beside_minigpt():
    result = run_fresh(
        "import minigpt, minigpt_kernels\nfrom transformers import GPT2LMHeadModel, GPT2Config\n"
        "GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8))\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_script_directory_holds_a_kernels_module():
    # A script run as `python bench/X.py` has bench/ first on sys.path, so a bench/kernels.py
    # would be what transformers gets for `import kernels` in that process.
    for directory in (REPO_ROOT, REPO_ROOT / "bench"):
        assert not (directory / "kernels.py").exists() and not (directory / "kernels").exists(), directory
