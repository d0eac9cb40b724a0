"""Running benchmark cases in child processes with timeouts: the GPU suite's process supervisor.

bench/gpu_suite.py says what each stage measures; this module runs it. The supervising process
imports no torch (nor anything that does): every stage runs in child processes with a timeout,
and a child that hangs is killed with its process group. A stage's cases (one measurement each)
run one after another in one child; a case that raises is recorded and ends that child, and the
cases after it run in a fresh one (a CUDA error can poison the process). A case that outlives its
own timeout is killed and recorded the same way. A failed or timed-out stage is recorded and the
next one still runs. The whole run has a time budget: each stage's timeout is cut to what is
left, and a stage with no time left is recorded as skipped. The suite rewrites its summary after
every stage, so an interrupted run still leaves one.

The two sides talk through files: the supervisor starts a child with the indices of the cases it
has to run (start(todo) in run_cases), and the child (serve_cases) appends one JSON line per
event to an events file: {"index", "event": "start", "time"} before a case and {"index", "event":
"end", "status": "ok", "result"} or {..., "status": "failed", "reason"} after it. What a child
prints goes to its stage's log.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from bench.common import atomic_write, log

# ----------------------------------------------------------------------------------------------
# One child process


def _kill_group(proc: subprocess.Popen) -> None:
    """End a child started in its own session, and everything it started (compile workers)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_line(log_path: Path, offset: int, errors_first: bool = True) -> str:
    """The last line a child wrote to its log after `offset`; with errors_first, the last error line."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines if errors_first else []):
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", line) or line.startswith("error:"):
            return line[:300]
    return lines[-1][:300] if lines else ""


class Child:
    """One child process with its output appended to a log; poll() until it ends or is killed."""

    current: Child | None = None  # the one running, to be killed if the suite itself is stopped

    def __init__(self, cmd: list[str], log_path: Path, env: dict, cwd: Path):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.offset = log_path.stat().st_size if log_path.exists() else 0
        self.log = open(log_path, "ab")
        self.log.write(f"$ {' '.join(cmd)}\n".encode())
        self.log.flush()
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        Child.current = self

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        _kill_group(self.proc)

    def wait_or_kill(self, timeout: float) -> bool:
        """Wait for the child to end, killing it after `timeout` seconds; True if it was killed."""
        end = time.monotonic() + timeout
        while self.running():
            if time.monotonic() >= end:
                self.kill()
                return True
            time.sleep(0.2)
        return False

    def close(self, errors_first: bool = True) -> tuple[int | None, str]:
        """(exit code, the last line of its log: see _last_line) once it has ended."""
        self.proc.wait()
        self.log.close()
        Child.current = None
        return self.proc.returncode, _last_line(self.log_path, self.offset, errors_first)


# ----------------------------------------------------------------------------------------------
# A stage's cases: the supervisor's side


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            pass
    return events


def run_cases(
    cases: list[dict],
    start: Callable[[list[int]], Child],
    events_path: Path,
    timeout: float,
    case_timeout: float,
    progress: Callable[[list[dict]], None] | None = None,
) -> tuple[list[dict], bool]:
    """Run every case in child processes, within `timeout` seconds in all and `case_timeout` each.

    start(todo) starts a child that runs the cases whose indices are in todo, in order, reporting
    on events_path (serve_cases). A child that dies or is killed takes the case it was running
    with it; a fresh one then runs the rest. After each child, progress(records) is given what is
    known so far (a case not reached yet: "not run"). Returns (one record per case: {"case",
    "status": "ok" | "failed" | "timeout" | "not run", "result" or "reason"}, whether the stage's
    timeout ended the run).
    """
    events_path.unlink(missing_ok=True)
    results: list[dict | None] = [None] * len(cases)
    stage_end = time.monotonic() + timeout
    timed_out = False
    while any(r is None for r in results):
        todo = [i for i, r in enumerate(results) if r is None]
        if time.monotonic() >= stage_end:
            timed_out = True
            break
        child = start(todo)
        killed_for = None
        while child.running():
            time.sleep(0.2)
            now = time.monotonic()
            started = {e["index"]: e["time"] for e in read_events(events_path) if e["event"] == "start"}
            ended = {e["index"] for e in read_events(events_path) if e["event"] == "end"}
            current = [i for i in started if i not in ended and results[i] is None]
            if now >= stage_end:
                killed_for = f"the stage's timeout ({timeout:g} s)"
            elif current and time.time() - started[current[0]] > case_timeout:
                killed_for = f"the case's timeout ({case_timeout:g} s)"
            if killed_for:
                child.kill()
                break
        rc, last = child.close()
        events = read_events(events_path)
        for e in events:
            if e["event"] == "end" and results[e["index"]] is None:
                results[e["index"]] = {
                    "case": cases[e["index"]],
                    **{k: v for k, v in e.items() if k not in ("index", "event")},
                }
        in_flight = [e["index"] for e in events if e["event"] == "start" and results[e["index"]] is None]
        if in_flight:  # the case this child was running when it died or was killed
            status = "timeout" if killed_for else "failed"
            reason = f"killed after {killed_for}" if killed_for else f"the process exited with code {rc}: {last}"
            results[in_flight[0]] = {"case": cases[in_flight[0]], "status": status, "reason": reason}
        elif rc != 0 and not any(e["event"] == "start" for e in events if e["index"] in todo):
            # it never reached a case (an import error, an injected failure, no GPU): nothing will
            reason = f"killed after {killed_for}" if killed_for else (last or f"exit code {rc}")
            for i in todo:
                if results[i] is None:
                    results[i] = {"case": cases[i], "status": "timeout" if killed_for else "failed", "reason": reason}
        if killed_for and killed_for.startswith("the stage"):
            timed_out = True
            break
        if [i for i, r in enumerate(results) if r is None] == todo:  # no progress: do not loop forever
            for i in todo:
                results[i] = {"case": cases[i], "status": "failed", "reason": last or f"exit code {rc}"}
        if progress is not None:  # what is known so far, in case this whole process is stopped from outside
            progress(
                [
                    r or {"case": cases[i], "status": "not run", "reason": "not reached yet"}
                    for i, r in enumerate(results)
                ]
            )
    return [
        r or {"case": cases[i], "status": "not run", "reason": f"the stage's timeout ({timeout:.0f} s)"}
        for i, r in enumerate(results)
    ], timed_out


def stage_status(results: list[dict], timed_out: bool, timeout: float) -> dict:
    """A stage's {"status", "reason"} from its cases' records (run_cases)."""
    ok = sum(r["status"] == "ok" for r in results)
    bad = [r for r in results if r["status"] != "ok"]
    if not bad:
        return {"status": "ok"}
    if timed_out:
        return {"status": "timeout", "reason": f"timed out after {timeout:.0f} s"}
    if ok:
        return {"status": "partial", "reason": bad[0]["reason"]}
    return {"status": "timeout" if all(r["status"] == "timeout" for r in bad) else "failed", "reason": bad[0]["reason"]}


# ----------------------------------------------------------------------------------------------
# A stage's cases: the child's side


def serve_cases(
    cases: list[dict], todo: list[int], run_case: Callable[[dict], dict], events_path: Path, label: str
) -> int:
    """Run cases[i] for each i in todo, in order, reporting each start and end on events_path.

    A case that raises is recorded, and ends this process (the return value 3 is its exit code):
    a CUDA error can leave it unusable.
    """

    def emit(event: dict) -> None:
        with open(events_path, "a") as f:
            f.write(json.dumps(event, default=str) + "\n")

    for index in todo:
        case = cases[index]
        emit({"index": index, "event": "start", "time": time.time()})
        log(f"[{label}] case {index}: {json.dumps(case)}")
        try:
            result = run_case(case)
        # A benchmark harness records whatever a case raised, so that the next case still runs;
        # the process then exits, since a CUDA error leaves it unusable.
        except Exception as e:  # noqa: BLE001
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}".rstrip(": ")
            emit({"index": index, "event": "end", "status": "failed", "reason": reason})
            log(f"[{label}] case {index} failed: {reason}")
            traceback.print_exc()
            return 3
        emit({"index": index, "event": "end", "status": "ok", "result": result})
    return 0


# ----------------------------------------------------------------------------------------------
# What the children need, and what they leave


def install_wheels(wheel_dir: Path, site: Path, log_path: Path) -> dict:
    """pip install --no-index --no-deps --target site every wheel in wheel_dir: the pure-Python
    dependencies carried to a machine without a package index (site then goes on the children's
    PYTHONPATH). Returns {"status": "ok" | "failed" | "skipped", "reason", "wheels"}."""
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    if not wheels:
        return {"status": "skipped", "reason": f"no wheels in {wheel_dir}", "wheels": []}
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--target",
        str(site),
        *map(str, wheels),
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as f:
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=120)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": "pip timed out after 120 s", "wheels": [w.name for w in wheels]}
    ok = proc.returncode == 0
    return {
        "status": "ok" if ok else "failed",
        "reason": None if ok else f"pip exited with {proc.returncode}",
        "wheels": [w.name for w in wheels],
    }


def junit_counts(xml: Path) -> dict | None:
    """tests, passed, failures, errors, skipped from pytest's JUnit XML (None if it is not there)."""
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = [
        f"{c.get('classname')}::{c.get('name')}"
        for s in suites
        for c in s.iter("testcase")
        if c.find("failure") is not None or c.find("error") is not None
    ][:50]
    return counts


def archive(folder: Path, target: Path) -> None:
    """folder as one .tar.gz whose top directory is the folder's name (written atomically; files
    being written, whose names end in .tmp, are left out)."""

    def pack(f) -> None:
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
            tar.add(folder, arcname=folder.name, filter=lambda info: None if info.name.endswith(".tmp") else info)

    atomic_write(target, pack)
