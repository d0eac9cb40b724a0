"""sample.py's speed under three OpenMP waiting policies: PASSIVE (what every command sets), a bounded spin, ACTIVE.

    python bench/omp_wait.py                           # bench/results/omp-wait-cpu.json (about 10 minutes)
    python bench/omp_wait.py --out /tmp/omp.json       # anywhere else
    python bench/omp_wait.py --tiny --out /tmp/o.json  # one short round of the small shape, for the tests

minigpt/entrypoint.py sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP unless the user set it:
idle OpenMP threads then sleep at once instead of spinning. This measures what that costs and buys
against ACTIVE (threads never sleep) and a bounded spin between them ("SPIN": GOMP_SPINCOUNT=SPIN_COUNT
and no OMP_WAIT_POLICY; libgomp's own default is 300000, ten times as long): whole processes of
`sample.py --init CKPT --max-new-tokens N --seed 1` (the default decode) under each, alternating
(P S A P S A ...) for --rounds rounds; the
figure is the median of the tokens/s each process prints on stderr (prefill included). Measured on
the machine as it is (idle, if nothing else runs), then while --load busy-looping Python processes,
started here and ended here (each also stops by itself after --load-limit seconds), take CPU time
from it. Two random-init checkpoints (--shapes): "small", train.py's default shape
(minigpt.train.config.TrainConfig's sizes), where a decode step is mostly dispatch, and "124m",
GPT-2 124M, where it is mostly reading weights; each written with minigpt.save_pretrained.
tests/bench/test_readme_figures.py holds README.md to readme_figures() of the committed file.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `minigpt` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before torch is imported: a quiet early Ctrl-C (each child gets its own policy)
    from minigpt import entrypoint

    entrypoint.start()

from bench.common import RESULTS_DIR, environment, log, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = RESULTS_DIR / "omp-wait-cpu.json"
POLICIES = ("PASSIVE", "SPIN", "ACTIVE")
SPIN_COUNT = "30000"
# What each policy sets in the environment (after removing both variables)
POLICY_ENV = {
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "SPIN": {"GOMP_SPINCOUNT": SPIN_COUNT},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
}
SHAPES = ("small", "124m")
CONDITIONS = ("idle", "busy")
SPEED = re.compile(r"([\d.]+) tok/s")
BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def rate(tokens_per_s: float) -> str:
    """A speed as the README writes it: whole tokens/s from 10 up, one decimal below."""
    return f"{tokens_per_s:.0f}" if tokens_per_s >= 10 else f"{tokens_per_s:.1f}"


def readme_figures(result: dict) -> list[str]:
    """The strings README.md must contain for this result, formatted as it writes them."""
    figures = [result["cpu_model"], f"{result['rounds']} rounds", f"{result['load_processes']} busy-looping"]
    for shape in result["shapes"]:
        for condition in CONDITIONS:
            m = result["median_tokens_per_s"][shape][condition]
            figures.append(
                f"| {shape} | {condition} | {rate(m['PASSIVE'])} | {rate(m['SPIN'])} | {rate(m['ACTIVE'])} |"
            )
    return figures


def write_checkpoint(directory: Path, shape: str) -> dict:
    """A random-init GPT of `shape` (SHAPES), saved as sample.py --init reads it; its sizes."""
    import torch

    from minigpt import GPT, GPTConfig, save_pretrained
    from minigpt.train.config import TrainConfig

    if shape == "small":
        cfg = TrainConfig()
        config = GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size)
    else:
        config = GPTConfig()  # GPT-2 124M
    torch.manual_seed(0)
    save_pretrained(GPT(config), directory)
    return {k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "block_size")}


def sample_speed(ckpt: Path, tokens: int, policy: str, timeout: float) -> float:
    """tokens/s that one whole sample.py process reports under `policy` (POLICIES)."""
    argv = [sys.executable, "sample.py", "--init", str(ckpt), "--max-new-tokens", str(tokens), "--seed", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICY_ENV[policy])
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    found = SPEED.findall(proc.stderr)
    if proc.returncode != 0 or not found:
        sys.stderr.write(proc.stderr[-2000:])
        raise SystemExit(f"error: sample.py exited with {proc.returncode}")
    return float(found[-1])


def start_load(n: int, limit: float) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(limit)]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait()


def measure(ckpt: Path, tokens: int, rounds: int, load: int, load_limit: float, timeout: float) -> dict:
    speeds: dict[str, dict[str, list[float]]] = {}
    for condition in CONDITIONS:
        speeds[condition] = {policy: [] for policy in POLICIES}
        procs = start_load(load, load_limit) if condition == "busy" else []
        try:
            if procs:
                time.sleep(1.0)  # the load is running before the first process starts
            for i in range(rounds):
                for policy in POLICIES:
                    speed = sample_speed(ckpt, tokens, policy, timeout)
                    speeds[condition][policy].append(speed)
                    log(f"{ckpt.name}, {condition}, round {i + 1}/{rounds}, {policy}: {speed:.1f} tokens/s")
                if procs and any(p.poll() is not None for p in procs):
                    raise SystemExit("error: the load ended before the measurement (raise --load-limit)")
        finally:
            stop_load(procs)
    return speeds


def main() -> int:
    from minigpt.cli import OneLineParser

    p = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the JSON to write (default {DEFAULT_OUT})")
    p.add_argument("--tokens", type=int, default=100, help="--max-new-tokens of each sample.py process")
    p.add_argument("--rounds", type=int, default=5, help="rounds of PASSIVE, SPIN, ACTIVE, per shape and condition")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"checkpoints, from {', '.join(SHAPES)} (default all)")
    p.add_argument("--load", type=int, default=2, help="busy-looping processes while measuring `busy`")
    p.add_argument("--load-limit", type=float, default=400.0, help="seconds after which each one stops by itself")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one sample.py process may take")
    p.add_argument("--tiny", action="store_true", help="1 round of 4 tokens (for the tests)")
    args = p.parse_args()
    if args.tiny:
        if args.out.resolve() == DEFAULT_OUT.resolve():
            p.error("--tiny writes no committed results: give --out")
        args.tokens, args.rounds, args.shapes = 4, 1, "small"
    shapes = args.shapes.split(",")
    if not shapes or any(s not in SHAPES for s in shapes):
        p.error(f"--shapes: choose from {', '.join(SHAPES)}, got {args.shapes!r}")
    load_before = list(os.getloadavg())
    sizes, speeds = {}, {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="omp-wait-") as tmp:
        for shape in shapes:
            ckpt = Path(tmp) / shape
            sizes[shape] = write_checkpoint(ckpt, shape)
            speeds[shape] = measure(ckpt, args.tokens, args.rounds, args.load, args.load_limit, args.timeout)
    elapsed = time.perf_counter() - t0

    import torch

    from minigpt.provenance import cpu_model

    payload = {
        "benchmark": "omp_wait",
        "cpu_model": cpu_model(),
        "command": f"<policy's environment> python sample.py --init CKPT --max-new-tokens {args.tokens} --seed 1",
        "policies": POLICY_ENV,
        "shapes": shapes,
        "checkpoints": {shape: {"init": "random (torch.manual_seed(0))", **size} for shape, size in sizes.items()},
        "tiny": args.tiny,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "order": "per shape: PASSIVE, SPIN, ACTIVE alternating, idle first, then busy",
        "load_processes": args.load,
        "load": f"{args.load} busy-looping `python -c` processes",
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": load_before,  # 1, 5 and 15 minute load averages before the first process
        "elapsed_s": elapsed,
        "tokens_per_s": speeds,
        "median_tokens_per_s": {
            shape: {c: {p: statistics.median(v) for p, v in s.items()} for c, s in by_condition.items()}
            for shape, by_condition in speeds.items()
        },
        "environment": environment("cpu"),
    }
    write_json(args.out, payload)
    log(f"wrote {args.out}")
    for figure in readme_figures(payload):
        print(figure)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
