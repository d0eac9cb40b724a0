"""bench/train_step.py: the arms compute one loss, the results are complete, bad input is one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import train_step  # noqa: E402

NOT_NANOGPT = """
import torch
class GPTConfig:
    def __init__(self, **kw):
        self.__dict__.update(kw)
class GPT(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.other = torch.nn.Linear(2, 2)
"""


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_step.py"), *args], capture_output=True, text=True, timeout=300
    )


def test_tiny_run_writes_every_arm(tmp_path):
    proc = run_cli("--tiny", "--rounds", "2", "--steps-per-round", "1", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "train-step-cpu.json").read_text())
    assert set(record["arms"]) == {"minigpt", "minigpt-plain-loss"}  # no --nanogpt: that arm is left out
    assert record["nanogpt"] is None
    for arm in record["arms"].values():
        assert len(arm["rounds_s"]) == 2 and arm["tokens_per_s"] > 0
        assert arm["top_ops"] and all(op["self_ms"] >= 0 for op in arm["top_ops"])
    assert record["arms"]["minigpt"]["minigpt_speedup"] == 1.0
    assert record["environment"]["device_type"] == "cpu"


def test_arms_start_from_one_loss():
    """Same weights, same batch: the fused chunked loss equals F.cross_entropy over all the logits."""
    models, x, y = train_step.arms(train_step.SHAPES["tiny"], None, seed=3)
    losses = {name: fn(x, y).item() for name, (_, fn) in models.items()}
    assert losses["minigpt"] == pytest.approx(losses["minigpt-plain-loss"], rel=1e-5)
    assert torch.equal(
        models["minigpt"][0].transformer.wte.weight, models["minigpt-plain-loss"][0].transformer.wte.weight
    )


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "no model.py there"),
        ({"model.py": "raise ImportError('needs something')\n"}, "failed to import: ImportError: needs something"),
        ({"model.py": "x = 1\n"}, "has no GPT / GPTConfig classes"),
        ({"model.py": NOT_NANOGPT}, "weights do not map onto nanoGPT's GPT"),
    ],
)
def test_bad_nanogpt_folder_is_one_line(tmp_path, files, message):
    folder = tmp_path / "nanoGPT"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    proc = run_cli("--tiny", "--rounds", "1", "--nanogpt", str(folder), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["--rounds", "0"], ["--steps-per-round", "0"]])
def test_bad_counts_are_refused(tmp_path, args):
    proc = run_cli("--tiny", *args, "--out", str(tmp_path))
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr
