"""Every command goes through the shared runtime set-up (minigpt/entrypoint.py).

A command is a file that runs something under `if __name__ == "__main__":`: the scripts at the
top of the repository, the bench scripts and the package's `python -m` modules. Each must call
`entrypoint.start()` before it imports torch (passive OpenMP waiting is read once, when torch
loads OpenMP; a Ctrl-C during the imports is one line) and run its main through
`entrypoint.run(main)` (a Ctrl-C or SIGTERM later is one line with exit 130 / 143). test_signals.py
runs the main scripts with real signals; this test holds the rest to the same pattern by reading
their source.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Commands that handle their signals themselves, and why.
OWN_SIGNALS = {
    # The one-call GPU check: its stages stop their child on Ctrl-C / SIGTERM and keep what was
    # measured; it runs on the lent machine's older torch, with the same start() first.
    "bench/gpu_suite.py",
}


def commands() -> list[str]:
    files = sorted(ROOT.glob("*.py")) + sorted((ROOT / "bench").glob("*.py")) + sorted((ROOT / "minigpt").rglob("*.py"))
    out = []
    for path in files:
        text = path.read_text()
        if 'if __name__ == "__main__":' in text and path.name != "entrypoint.py":
            out.append(path.relative_to(ROOT).as_posix())
    return out


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"


def _imports_torch_or_package(node: ast.stmt) -> bool:
    """A top-level import that loads torch (directly, or through any minigpt / bench module)."""
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] in ("torch", "minigpt", "bench") for a in node.names)
    if isinstance(node, ast.ImportFrom) and node.module:
        root = node.module.split(".")[0]
        if node.module == "minigpt" and [a.name for a in node.names] == ["entrypoint"]:
            return False
        return root in ("torch", "minigpt", "bench")
    return False


def test_the_command_list_is_not_empty():
    found = commands()
    for expected in ("train.py", "sample.py", "serve.py", "bench/run.py", "minigpt/model/hub.py"):
        assert expected in found
    assert set(OWN_SIGNALS) <= set(found)


@pytest.mark.parametrize("name", commands())
def test_command_goes_through_the_entrypoint(name):
    tree = ast.parse((ROOT / name).read_text())
    body = tree.body
    guards = [node for node in body if _is_main_guard(node)]
    runs = [
        node
        for guard in guards
        for node in ast.walk(guard)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "entrypoint.run"
    ]
    if name not in OWN_SIGNALS:
        assert runs, f"{name}: its __main__ guard does not run main through entrypoint.run(main)"
    starts = [
        i
        for i, node in enumerate(body)
        if any(isinstance(n, ast.Call) and ast.unparse(n.func) == "entrypoint.start" for n in ast.walk(node))
    ]
    assert starts, f"{name}: entrypoint.start() is never called"
    if name.startswith("minigpt/"):  # run with -m: the package's imports come first, and load no torch
        return
    first_heavy = next((i for i, node in enumerate(body) if _imports_torch_or_package(node)), len(body))
    assert starts[0] < first_heavy, f"{name}: entrypoint.start() comes after an import that loads torch"


EXIT_SCRIPT = """
import gc, sys, types
from minigpt import entrypoint
entrypoint.start()
if sys.argv[1] == "triton":
    sys.modules["triton"] = types.ModuleType("triton")  # as if a kernel had been loaded
out = open(sys.argv[2], "w")  # left open: the interpreter's shutdown must still flush it
def main():
    out.write("written by main")
    print("printed by main")
    return 3
code = entrypoint.run(main)
print("frozen" if gc.get_freeze_count() else "not frozen")
sys.exit(code)
"""


@pytest.mark.parametrize("loaded, frozen", [("nothing", "frozen"), ("triton", "not frozen")])
def test_the_exit_skips_the_last_collection_and_keeps_everything(tmp_path, loaded, frozen):
    """After main, entrypoint.run freezes the heap (the shutdown's cycle collection takes ~0.5 s with
    torch loaded) unless triton is loaded; the exit code, printed text and an open file all survive."""
    import subprocess
    import sys

    path = tmp_path / "out.txt"
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, loaded, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 3 and proc.stderr == ""
    assert proc.stdout.splitlines() == ["printed by main", frozen]
    assert path.read_text() == "written by main"
