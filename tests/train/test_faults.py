"""Kill a tiny training run (SIGKILL) at chosen and random moments and resume it each time.

Every resume must succeed, the per-step losses must equal those of an uninterrupted run
bit for bit (the same float operations in the same order, on the CPU), and no checkpoint
may be lost or half-present: after each kill every ckpt_* directory is complete and the
latest checkpoint is never older than before. The child processes run train.py through
tests/fault_hooks.py, which pauses at a named point (a training step, a checkpoint write,
between the `latest` pointer and the rename, a half-done prune) so that the kill lands there.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import ROOT, load_script, make_corpus, read_log, tiny_argv

from minigpt.train.checkpoint import checkpoints, latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.slow
train = load_script(ROOT / "train.py")
HOOKS = Path(__file__).resolve().parents[1] / "fault_hooks.py"
STEPS = 12
SETTINGS = dict(max_steps=STEPS, ckpt_interval=1, keep_checkpoints=2, dropout=0.1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("fault_data"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> Path:
    """The same run, uninterrupted, in this process."""
    out = tmp_path_factory.mktemp("fault_reference") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main(tiny_argv(data_dir, out, **SETTINGS)) == 0
    finally:
        torch.set_num_threads(before)
    return out


def start(argv: list[str], events: Path, **env) -> subprocess.Popen:
    events.write_text("")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT_EVENTS": str(events), **env}
    return subprocess.Popen(
        [sys.executable, str(HOOKS), *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when_paused(proc: subprocess.Popen, events: Path, timeout: float = 120) -> bool:
    """SIGKILL the process once it pauses at its fault point; False if it ended first."""
    deadline = time.monotonic() + timeout
    while "PAUSED" not in events.read_text():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the fault point was never reached"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return True


def check_checkpoints(out: Path) -> int:
    """Every ckpt_* is complete and loadable; returns the latest step (0 if none)."""
    for step, path in checkpoints(out):
        assert load_checkpoint(path).step == step
        load_file(str(path / "model.safetensors"))
        json.loads((path / "config.json").read_text())
    latest = latest_checkpoint(out)
    return load_checkpoint(latest).step if latest else 0


def test_sigkill_anywhere_then_resume_matches_an_uninterrupted_run(data_dir, reference, tmp_path):
    rng = random.Random(int(os.environ.get("FAULT_SEED", "12")))
    out, events = tmp_path / "run", tmp_path / "events"
    # Each kind of fault point once, in a random order, at a random occurrence; then a kill
    # at a random time; then a run to the end.
    kinds = ["step", "write", "pointer", "prune"]
    rng.shuffle(kinds)
    history, latest = [], 0
    for kind in kinds + ["random"]:
        argv = ["--resume", "--out-dir", str(out)] if latest else tiny_argv(data_dir, out, **SETTINGS)
        if kind == "random":
            proc = start(argv, events)
            time.sleep(rng.uniform(0.5, 4.0))
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
            killed = proc.returncode == -signal.SIGKILL
        else:
            # Early occurrences, so that every kind is still ahead: a prune needs two checkpoints
            # after the one resumed from (keep 2), a step or a write only one.
            n = rng.randint(1, 2 if kind == "prune" else 3)
            proc = start(argv, events, FAULT_AT=f"{kind}:{n}")
            killed = kill_when_paused(proc, events)
            err = "" if killed else proc.communicate()[1]
            assert killed, f"{kind}:{n} was not reached ({history}): {err[-2000:]}"
        history.append((kind, latest, killed))
        now = check_checkpoints(out)
        assert now >= latest, f"the latest checkpoint went back from {latest} to {now} after {history}"
        latest = now
        if not killed:
            assert proc.returncode == 0, err[-2000:]
            break
    if latest < STEPS:
        argv = ["--resume", "--out-dir", str(out)] if latest else tiny_argv(data_dir, out, **SETTINGS)
        proc = start(argv, events)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{history}: {err[-2000:]}"

    assert check_checkpoints(out) == STEPS
    assert not list(out.glob(".tmp_*")) and not list(out.glob(".trash_*")) and not (out / "superseded").exists()
    got, got_eval = read_log(out)
    want, want_eval = read_log(reference)
    assert sorted(got) == list(range(1, STEPS + 1)), history
    for step in want:  # bitwise: json keeps a float's every bit
        assert got[step]["loss"] == want[step]["loss"], (step, history)
        assert got[step]["grad_norm"] == want[step]["grad_norm"], (step, history)
    assert got_eval[STEPS]["val_loss"] == want_eval[STEPS]["val_loss"]


def test_disk_full_in_a_real_process_then_resume(data_dir, reference, tmp_path):
    out, events = tmp_path / "run", tmp_path / "events"
    proc = start(tiny_argv(data_dir, out, **SETTINGS), events, FAULT_ENOSPC="4")  # the checkpoint of step 4
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if "error" in line.lower()]
    assert line.startswith("error: cannot write the checkpoint of step 4") and "No space left on device" in line
    assert f"the last checkpoint is still {out / 'ckpt_00000003'}" in line
    assert [step for step, _ in checkpoints(out)] == [2, 3] and not list(out.glob(".tmp_*"))
    assert check_checkpoints(out) == 3

    proc = start(["--resume", "--out-dir", str(out)], events)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    got, want = read_log(out)[0], read_log(reference)[0]
    assert [got[s]["loss"] for s in want] == [want[s]["loss"] for s in want]


def test_a_second_run_into_a_locked_out_dir_is_refused_then_a_dead_holder_is_not(data_dir, tmp_path):
    out, events = tmp_path / "run", tmp_path / "events"
    first = start(tiny_argv(data_dir, out, **SETTINGS), events, FAULT_AT="step:3")  # paused after ckpt_2
    try:
        deadline = time.monotonic() + 120
        while "PAUSED" not in events.read_text():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the first run never reached step 3"
            time.sleep(0.02)
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        for argv in (tiny_argv(data_dir, out, **SETTINGS), ["--resume", "--out-dir", str(out)]):
            second = subprocess.run(
                [sys.executable, str(ROOT / "train.py"), *argv],
                cwd=ROOT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert second.returncode == 2, second.stderr[-2000:]
            assert second.stderr.count("\n") == 1 and second.stderr.startswith("error: "), second.stderr
            assert f"process {first.pid} holds" in second.stderr
            assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written
    finally:
        first.kill()
        first.communicate()
    # The lock file of the killed run is left, but no live process holds it: --resume goes on.
    assert (out / ".lock").read_text().strip() == str(first.pid)
    proc = start(["--resume", "--out-dir", str(out)], events)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert check_checkpoints(out) == STEPS
