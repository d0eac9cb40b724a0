"""bench/supervisor.py: cases run in child processes; one that raises or hangs is recorded and the
rest run in a fresh child; a stage's timeout ends the run and leaves the rest "not run"."""

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

sys.path.insert(0, str(ROOT))
from bench import supervisor  # noqa: E402

# A child: runs the cases its command line names, through serve_cases.
CHILD = """
import json, sys, time
from pathlib import Path
from bench.supervisor import serve_cases

def run(case):
    if case["do"] == "raise":
        raise ValueError("boom")
    if case["do"] == "hang":
        time.sleep(120)
    return {"done": case["n"]}

sys.exit(serve_cases(json.loads(sys.argv[1]), json.loads(sys.argv[2]), run, Path(sys.argv[3]), "test"))
"""


def starter(tmp_path: Path, cases: list[dict], events: Path, children: list):
    def start(todo: list[int]) -> supervisor.Child:
        children.append(todo)
        cmd = [sys.executable, "-c", CHILD, json.dumps(cases), json.dumps(todo), str(events)]
        return supervisor.Child(cmd, tmp_path / "stage.log", {**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)

    return start


def test_a_case_that_raises_or_hangs_is_recorded_and_the_rest_run_in_a_fresh_child(tmp_path):
    cases = [{"n": 0, "do": "ok"}, {"n": 1, "do": "raise"}, {"n": 2, "do": "hang"}, {"n": 3, "do": "ok"}]
    events, children, progress = tmp_path / "events.jsonl", [], []
    t0 = time.monotonic()
    results, timed_out = supervisor.run_cases(
        cases, starter(tmp_path, cases, events, children), events, timeout=60, case_timeout=3, progress=progress.append
    )
    assert time.monotonic() - t0 < 40
    assert [r["status"] for r in results] == ["ok", "failed", "timeout", "ok"]
    assert results[0] == {"case": cases[0], "status": "ok", "result": {"done": 0}}
    assert results[1]["reason"] == "ValueError: boom"
    assert results[2]["reason"] == "killed after the case's timeout (3 s)"
    assert not timed_out and children == [[0, 1, 2, 3], [2, 3], [3]]
    assert [r["status"] for r in progress[0]] == ["ok", "failed", "not run", "not run"]  # after each child
    assert len(progress) == 3
    assert supervisor.stage_status(results, timed_out, 60) == {"status": "partial", "reason": "ValueError: boom"}
    assert "Traceback" in (tmp_path / "stage.log").read_text()  # what the children printed


def test_the_stage_timeout_ends_the_run(tmp_path):
    cases = [{"n": 0, "do": "hang"}, {"n": 1, "do": "ok"}]
    events, children = tmp_path / "events.jsonl", []
    results, timed_out = supervisor.run_cases(
        cases, starter(tmp_path, cases, events, children), events, timeout=2, case_timeout=60
    )
    assert timed_out and children == [[0, 1]]
    assert results[0]["status"] == "timeout" and "the stage's timeout" in results[0]["reason"]
    assert results[1] == {"case": cases[1], "status": "not run", "reason": "the stage's timeout (2 s)"}
    assert supervisor.stage_status(results, timed_out, 2) == {"status": "timeout", "reason": "timed out after 2 s"}


def test_a_child_that_never_reaches_a_case_fails_every_case_once(tmp_path):
    cases = [{"n": 0, "do": "ok"}, {"n": 1, "do": "ok"}]
    events, starts = tmp_path / "events.jsonl", []

    def start(todo):
        starts.append(todo)
        cmd = [sys.executable, "-c", "raise SystemExit('error: no GPU')"]
        return supervisor.Child(cmd, tmp_path / "stage.log", dict(os.environ), cwd=ROOT)

    results, timed_out = supervisor.run_cases(cases, start, events, timeout=60, case_timeout=60)
    assert starts == [[0, 1]] and not timed_out
    assert [(r["status"], r["reason"]) for r in results] == [("failed", "error: no GPU")] * 2
    assert supervisor.stage_status(results, timed_out, 60) == {"status": "failed", "reason": "error: no GPU"}


def test_archive_packs_the_folder_under_its_name(tmp_path):
    import tarfile

    folder = tmp_path / "gpu-x"
    (folder / "logs").mkdir(parents=True)
    (folder / "summary.md").write_text("# x\n")
    (folder / "logs" / "env.log").write_text("log\n")
    (folder / ".half.json.1.tmp").write_text("{")  # a file being written: left out
    supervisor.archive(folder, tmp_path / "out" / "suite.tar.gz")
    with tarfile.open(tmp_path / "out" / "suite.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["gpu-x", "gpu-x/logs", "gpu-x/logs/env.log", "gpu-x/summary.md"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["suite.tar.gz"]
