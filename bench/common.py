"""Shared pieces of the benchmarks: the environment record and JSON output.

Every results file carries the device it ran on, the library versions and the
git commit, so a figure can always be traced back to what produced it.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path

import torch

from minigpt.files import atomic_write
from minigpt.provenance import device_name, git_commit, package_version, utc_now

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # the committed results: written only on request
RUNS_DIR = Path(__file__).resolve().parent / "runs"  # a folder per run, ignored by git


def output_dir(out: Path | None, update_results: bool, name: str) -> Path:
    """Where a benchmark writes: --out if given, bench/results with --update-results, else a new
    folder bench/runs/<date>-<time>-<name>/, so an ordinary run never changes a committed file."""
    if out is not None and update_results:
        raise ValueError("give --out or --update-results, not both")
    if update_results:
        return RESULTS_DIR
    if out is not None:
        return out
    return RUNS_DIR / f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{name}"


def device_tag(device: str | torch.device) -> str:
    """The device in a results file name: "cpu", or the GPU's name in lower-case-and-dashes."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def environment(device: str | torch.device) -> dict:
    """Who, where and with what: attached to every results file."""
    return {
        "device": device_name(device),
        "device_type": torch.device(device).type,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": package_version("triton"),
        "transformers": package_version("transformers"),
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": utc_now(),
    }


def write_json(path: str | Path, payload: dict) -> Path:
    return atomic_write(path, json.dumps(payload, indent=2) + "\n")
