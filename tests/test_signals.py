"""Ctrl-C (SIGINT) and SIGTERM reach every command line as one line on stderr and exit 130 / 143.

Real processes, real signals: while torch is imported (the first second of any script), while
eval.py scores, and while train.py and prepare.py tokenize a corpus in a pool of worker processes
(which must be stopped, quietly). The shared set-up is minigpt/entrypoint.py; OMP_WAIT_POLICY is its
other half, checked here too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train.py", "sample.py", "eval.py", "prepare.py"]
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def start(args: list[str], env: dict | None = None, cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def wait_until(condition, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler installed for sig (the SigCgt mask of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (sig - 1) & 1)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def assert_one_line(code: int, err: str, sig: int, out: str = "") -> None:
    assert code == EXIT[sig], (code, err)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Error" not in err, err
    assert err.endswith("\n") and err.rstrip().splitlines()[-1].startswith("error: interrupted"), err
    assert [line for line in err.splitlines() if line.startswith("error")] == [err.rstrip().splitlines()[-1]], err


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


@needs_proc
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_signal_while_torch_imports(script, sig):
    """Sent as soon as the script's first line has run, long before `import torch` is done: with
    --help the script would print its usage (exit 0) had the signal come after the imports."""
    proc = start([script, "--help"])
    wait_until(lambda: catches(proc.pid, signal.SIGTERM) or proc.poll() is not None, what="entrypoint.start()")
    os.kill(proc.pid, sig)
    code, out, err = finish(proc)
    assert out == "", "the signal came after the imports: the test did not test anything"
    assert_one_line(code, err, sig)
    assert err.count("\n") == 1, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from minigpt import GPT, GPTConfig
    from minigpt.model.load import save_pretrained

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("ckpt")
    save_pretrained(GPT(GPTConfig(block_size=16, vocab_size=50257, n_layer=1, n_head=2, n_embd=16)), directory)
    return directory


@needs_proc
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_eval_signal_while_scoring(checkpoint, tmp_path, sig):
    text = tmp_path / "long.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20000, encoding="utf-8")
    out = tmp_path / "results.json"
    args = ["eval.py", "--init", str(checkpoint), "--task", f"bpb:{text}", "--stride", "1", "--batch-size", "1"]
    proc = start([*args, "--device", "cpu", "--no-progress", "--output", str(out)])
    lines = []

    def scoring() -> bool:  # the "loaded ..." line comes just before scoring starts
        line = proc.stderr.readline()
        lines.append(line)
        return line.startswith("loaded ") or line == ""

    wait_until(scoring, what="the model to load")
    time.sleep(0.5)
    assert proc.poll() is None, "".join(lines)
    os.kill(proc.pid, sig)
    code, stdout, err = finish(proc)
    assert_one_line(code, err, sig)
    assert stdout == "" and not out.exists()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Enough text that two workers take several seconds to tokenize it."""
    root = tmp_path_factory.mktemp("corpus")
    words = [f"word{i}" for i in range(5000)]
    for i in range(400):
        (root / f"doc_{i:03d}.txt").write_text(" ".join(words[(i * 7 + j * 13) % 5000] for j in range(12000)))
    return root


@needs_proc
@pytest.mark.parametrize(
    "command, sig",
    [("train.py", signal.SIGTERM), ("prepare.py", signal.SIGTERM), ("prepare.py", signal.SIGINT)],
)
def test_signal_while_tokenizing_stops_the_workers(corpus, tmp_path, command, sig):
    env = {"MINIGPT_DATA_DIR": str(tmp_path / "data")}
    if command == "train.py":
        args = ["train.py", "--data", str(corpus), "--out-dir", str(tmp_path / "out"), "--device", "cpu"]
    else:
        args = ["prepare.py", str(corpus), "--out-dir", str(tmp_path / "prepared"), "--workers", "2"]
    proc = start(args, env=env)
    if (os.cpu_count() or 1) < 2 and command == "train.py":
        proc.kill()
        pytest.skip("train.py tokenizes in one process on a one-core machine")
    wait_until(lambda: len(children(proc.pid)) >= 2 or proc.poll() is not None, what="the worker pool")
    time.sleep(0.5)
    workers = children(proc.pid)
    assert proc.poll() is None and len(workers) >= 2, proc.communicate()
    os.kill(proc.pid, sig)
    code, _, err = finish(proc)
    assert_one_line(code, err, sig)
    wait_until(lambda: not any(alive(pid) for pid in workers), timeout=10, what="the workers to stop")
    if command == "prepare.py":
        assert not (tmp_path / "prepared" / "meta.json").exists()  # an incomplete directory is never marked done


@pytest.mark.parametrize("script", SCRIPTS)
def test_passive_omp_waiting_and_huge_pages_unless_the_user_set_them(script, tmp_path):
    """Every script sets OMP_WAIT_POLICY=PASSIVE and THP_MEM_ALLOC_ENABLE=1 before torch is imported, and
    keeps a user's values."""
    probe = tmp_path / "sitecustomize.py"
    # Runs when torch's package starts to import: what OpenMP will read.
    probe.write_text(
        "import builtins, os, sys\n"
        "real = builtins.__import__\n"
        "def spy(name, *a, **k):\n"
        "    if name.split('.')[0] == 'torch' and 'torch' not in sys.modules:\n"
        "        get = os.environ.get\n"
        "        sys.stderr.write(f\"OMP={get('OMP_WAIT_POLICY', '-')},{get('THP_MEM_ALLOC_ENABLE', '-')}\\n\")\n"
        "        builtins.__import__ = real\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = spy\n"
    )
    cases = (
        ({}, "PASSIVE,1"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE,1"),
        ({"THP_MEM_ALLOC_ENABLE": "0"}, "PASSIVE,0"),
    )
    for given, expected in cases:
        env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
        env.pop("OMP_WAIT_POLICY", None)
        env.pop("THP_MEM_ALLOC_ENABLE", None)
        env.update(given)
        r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert f"OMP={expected}" in r.stderr.splitlines(), (given, r.stderr)
