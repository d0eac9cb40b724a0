"""README.md's figures of the first command (bench/first_run.py) and of OpenMP passive waiting
(bench/omp_wait.py) are those of the committed results, and both scripts run and write every field."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import load_script

from minigpt.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
README = (ROOT / "README.md").read_text(encoding="utf-8")
FIRST_RUN = load_script(ROOT / "bench" / "first_run.py")
OMP_WAIT = load_script(ROOT / "bench" / "omp_wait.py")
ENVIRONMENT = {"device", "device_type", "cpu_count", "torch", "python", "commit", "date"}


def committed(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def missing_from_readme(figures: list[str]) -> list[str]:
    text = " ".join(README.split())  # a figure may be wrapped across lines
    return [figure for figure in figures if " ".join(figure.split()) not in text]


def assert_well_formed(result: dict, like: dict) -> None:
    """Every field of the committed file is there, set, and a finite number where it is one."""
    assert set(result) == set(like), set(result) ^ set(like)
    assert ENVIRONMENT <= set(result["environment"])
    assert result["environment"]["device_type"] == "cpu"
    assert result["cpu_model"] and result["cpu_model"] in result["environment"]["device"]
    for key, value in result.items():
        if isinstance(value, float):
            assert math.isfinite(value) and value >= 0, key


# ----------------------------------------------------------------------------------------------
# The first command: train.py with its defaults, then sample.py


def test_committed_first_run_is_the_default_run():
    result = committed("first-run-cpu.json")
    assert not result["tiny"] and result["train_flags"] == ["--out-dir", "<temporary folder>"]
    assert result["recipe"] == "cpu" and result["steps"] == TrainConfig().max_steps
    assert result["early_eval"]["step"] == FIRST_RUN.EARLY_STEP
    assert result["evals"][-1]["step"] == result["steps"]


def test_readme_states_the_first_run_figures():
    result = committed("first-run-cpu.json")
    assert not missing_from_readme(FIRST_RUN.readme_figures(result))


def test_readme_shows_the_start_of_the_sample_train_py_printed_at_the_end():
    result = committed("first-run-cpu.json")
    shown = re.search(r"sample\s+it\s+printed\s+at\s+the\s+end\s+began:\s*```\n(.*?)\n```", README, re.S).group(1)
    assert shown.strip() and result["final_sample"].startswith(shown)
    assert result["final_sample_step"] == result["steps"]


def test_first_run_tiny_writes_every_field(tmp_path):
    out = tmp_path / "first.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "first_run.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert_well_formed(result, committed("first-run-cpu.json"))
    assert result["tiny"] and result["steps"] == 3 and result["early_eval"] is None
    assert result["final_sample"].startswith(TrainConfig().sample_prompt)
    assert "tok/s" in result["sample_py_speed"] and result["sample_py_stdout"].startswith("def ")
    assert proc.stdout.splitlines() == FIRST_RUN.readme_figures(result)


def test_first_run_tiny_will_not_overwrite_the_committed_results():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "first_run.py"), "--tiny"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "--out" in proc.stderr


def test_minutes_is_how_the_readme_writes_a_wall_time():
    assert FIRST_RUN.minutes(169.4) == "2 min 49 s"
    assert FIRST_RUN.minutes(179.6) == "3 min 0 s"


# ----------------------------------------------------------------------------------------------
# OpenMP passive waiting: sample.py with OMP_WAIT_POLICY=PASSIVE against ACTIVE


def test_committed_omp_wait_is_a_full_measurement():
    result = committed("omp-wait-cpu.json")
    assert not result["tiny"] and result["rounds"] >= 3
    for condition in OMP_WAIT.CONDITIONS:
        for policy in OMP_WAIT.POLICIES:
            speeds = result["tokens_per_s"][condition][policy]
            assert len(speeds) == result["rounds"]
            assert result["median_tokens_per_s"][condition][policy] == pytest.approx(sorted(speeds)[len(speeds) // 2])


def test_readme_states_the_omp_wait_figures():
    result = committed("omp-wait-cpu.json")
    assert not missing_from_readme(OMP_WAIT.readme_figures(result))


def test_omp_wait_tiny_writes_every_field(tmp_path):
    out = tmp_path / "omp.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "omp_wait.py"), "--tiny", "--load", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert_well_formed(result, committed("omp-wait-cpu.json"))
    assert result["tiny"] and result["rounds"] == 1 and result["load_processes"] == 1
    for condition in OMP_WAIT.CONDITIONS:
        for policy in OMP_WAIT.POLICIES:
            (speed,) = result["tokens_per_s"][condition][policy]
            assert speed > 0
    assert proc.stdout.splitlines() == OMP_WAIT.readme_figures(result)


def test_rate_is_how_the_readme_writes_a_speed():
    assert OMP_WAIT.rate(131.7) == "132"
    assert OMP_WAIT.rate(7.06) == "7.1"
