"""Shared pieces of the benchmarks: the environment record, where results go, the log and the files.

Every results file carries the device it ran on, the library versions and the git commit, so a
figure can always be traced back to what produced it. Progress goes to stderr through log(),
results to files through write_json() and write_text(), which replace a file atomically.

Importing this module imports no torch (minigpt.files is plain Python; the functions that need
torch import it): bench/gpu_suite.py's supervising process uses the log and the writers, and it
must not import torch (see bench/supervisor.py).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from minigpt import files

if TYPE_CHECKING:
    import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # the committed results: written only on request
RUNS_DIR = Path(__file__).resolve().parent / "runs"  # a folder per run, ignored by git


def log(message: str) -> None:
    """One line of progress on stderr, with the wall-clock time, flushed at once."""
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Files


def atomic_write(path: str | Path, data: str | bytes | Callable[[BinaryIO], object]) -> Path:
    """minigpt.files.atomic_write (text, bytes or write(f); a reader sees the old file or the new
    one), making the parent folder first if it is missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return files.atomic_write(path, data)


def write_text(path: str | Path, text: str) -> Path:
    """Text (a Markdown table, a summary) to path, atomically."""
    return atomic_write(path, text)


def write_json(path: str | Path, payload: Any, *, default: Callable[[Any], Any] | None = None) -> Path:
    """payload as indented JSON to path, atomically; `default` as json.dumps takes it (e.g. str)."""
    return atomic_write(path, json.dumps(payload, indent=2, default=default) + "\n")


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


# ----------------------------------------------------------------------------------------------
# The environment


def slug(name: str) -> str:
    """A name in lower-case-and-dashes, for a file or folder name: "NVIDIA H100 80GB" -> "nvidia-h100-80gb"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def device_tag(device: str | torch.device) -> str:
    """The device in a results file name: "cpu", or the GPU's name in lower-case-and-dashes."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return slug(torch.cuda.get_device_name(device))


def environment(device: str | torch.device) -> dict:
    """Who, where and with what: attached to every results file."""
    import torch

    from minigpt.provenance import device_name, git_commit, package_version, utc_now

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


def status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmHWM: its peak resident set)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status: this benchmark needs Linux")
