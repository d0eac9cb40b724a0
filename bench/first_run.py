"""The README's first command, measured: `python train.py` (the default `cpu` recipe), then sample.py.

    python bench/first_run.py                          # bench/results/first-run-cpu.json (about 5 minutes)
    python bench/first_run.py --out /tmp/first.json    # anywhere else
    python bench/first_run.py --tiny --out /tmp/f.json # a few steps, for the tests (not the README's figures)

It runs exactly what "Two commands" runs after the install, each as a whole process from the
repository root: `python train.py` with every setting at its default but --out-dir (a temporary
folder, so an `out/` of your own is left alone), then `python sample.py --init <that folder>
--prompt "def " --max-new-tokens 200`. From the run's log.jsonl and run.json it records what the
README quotes of it (the final val loss and bits per byte, the unigram baseline, the evaluation
at step 150, the time of the training steps, the wall time of both commands, the sample train.py
printed at the end) with the environment (bench/common.py). tests/bench/test_readme_figures.py
holds the README to readme_figures() of the committed file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `minigpt` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

from bench.common import RESULTS_DIR, environment, log, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = RESULTS_DIR / "first-run-cpu.json"
SAMPLE_ARGS = ["--prompt", "def ", "--max-new-tokens", "200"]  # the README's sample.py call, after --init
# --tiny: a few steps of the same model, evaluated and sampled once at the end (tests only).
TINY_FLAGS = ["--max-steps", "3", "--eval-interval", "0", "--eval-steps", "1", "--sample-tokens", "8"]
EARLY_STEP = 150  # the README also quotes the evaluation at this step (the default --eval-interval)
SAMPLE_BLOCK = re.compile(r"^--- sample at step (\d+) ---\n(.*?)\n---$", re.S | re.M)


def minutes(seconds: float) -> str:
    """A wall time as the README writes it: "2 min 49 s" (whole seconds)."""
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s"


def readme_figures(result: dict) -> list[str]:
    """The strings README.md must contain for this result, formatted as it writes them."""
    figures = [
        f"a {result['num_params'] / 1e6:.1f}M-parameter GPT-2",
        f"{result['steps']} steps",
        f"took {minutes(result['train_time_s'])}",
        f"`train.py` plus the `sample.py` call {minutes(result['total_wall_s'])}",
        f"**val loss is {result['val_loss']:.2f} nats/token**",
        f"(the unigram baseline of the corpus is {result['unigram_entropy']:.2f})",
        f"**{result['val_bpb']:.2f} bits per byte**",
        result["cpu_model"],
    ]
    early = result.get("early_eval")
    if early is not None:
        figures.append(
            f"at step {early['step']} {early['val_loss']:.2f} nats/token, {early['val_bpb']:.2f} bits per byte"
        )
    return figures


def run_timed(argv: list[str], what: str) -> tuple[float, subprocess.CompletedProcess]:
    """argv as a whole process from the repository root; (wall seconds, the finished process)."""
    log(f"running {what}: {' '.join(argv[1:])}")
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"error: {what} exited with {proc.returncode}")
    log(f"{what} took {wall:.1f} s")
    return wall, proc


def measure(out_dir: Path, tiny: bool) -> dict:
    train_argv = [sys.executable, "train.py", "--out-dir", str(out_dir), *(TINY_FLAGS if tiny else [])]
    train_wall, train = run_timed(train_argv, "train.py")
    sample_argv = [sys.executable, "sample.py", "--init", str(out_dir), *SAMPLE_ARGS]
    sample_wall, sample = run_timed(sample_argv, "sample.py")

    run = json.loads((out_dir / "run.json").read_text())
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    samples = SAMPLE_BLOCK.findall(train.stderr)
    early = next((r for r in evals if r["step"] == EARLY_STEP), None)
    summary = json.loads(train.stdout.strip().splitlines()[-1])  # train.py's last line: the run's summary
    assert summary["val_loss"] == evals[-1]["val_loss"], "log.jsonl and train.py's summary disagree"
    return {
        "train_command": "python train.py",
        "train_flags": ["--out-dir", "<temporary folder>", *(TINY_FLAGS if tiny else [])],
        "sample_command": "python sample.py --init out " + " ".join(f'"{a}"' if " " in a else a for a in SAMPLE_ARGS),
        "tiny": tiny,
        "recipe": run["train_config"]["recipe"],
        "num_params": run["num_params"],
        "device_used": run["device"],
        "data_order": run["train_config"]["data_order"],
        "steps": steps[-1]["step"],
        "tokens_per_step": steps[-1]["tokens"] // steps[-1]["step"],
        "train_time_s": steps[-1]["train_time"],  # the training steps only, as train.py counts them
        "train_wall_s": train_wall,  # the whole train.py process: imports, evaluations, samples, checkpoints
        "sample_wall_s": sample_wall,
        "total_wall_s": train_wall + sample_wall,
        "final_train_loss": steps[-1]["loss"],
        "val_loss": evals[-1]["val_loss"],
        "val_bpb": evals[-1]["val_bpb"],
        "unigram_entropy": run["unigram_entropy"],
        "early_eval": None if early is None else {k: early[k] for k in ("step", "val_loss", "val_bpb")},
        "evals": [{k: r[k] for k in ("step", "val_loss", "val_bpb")} for r in evals],
        "final_sample": samples[-1][1] if samples else None,
        "final_sample_step": int(samples[-1][0]) if samples else None,
        "sample_py_stdout": sample.stdout,
        "sample_py_speed": (sample.stderr.strip().splitlines() or [""])[-1],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the JSON to write (default {DEFAULT_OUT})")
    p.add_argument("--tiny", action="store_true", help=f"train.py {' '.join(TINY_FLAGS)} (for the tests)")
    args = p.parse_args()
    if args.tiny and args.out.resolve() == DEFAULT_OUT.resolve():
        p.error("--tiny writes no committed results: give --out")
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
        result = measure(Path(tmp) / "out", args.tiny)

    from minigpt.provenance import cpu_model

    env = environment("cpu")
    payload = {
        "benchmark": "first_run",
        "cpu_model": cpu_model(),
        "one_run": True,
        "loadavg_before": load_before,  # 1, 5 and 15 minute load averages before train.py started
        **result,
        "environment": env,
    }
    assert all(math.isfinite(payload[k]) for k in ("val_loss", "val_bpb", "train_time_s", "total_wall_s"))
    write_json(args.out, payload)
    log(f"wrote {args.out}")
    for figure in readme_figures(payload):
        print(figure)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
