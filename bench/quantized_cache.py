"""sample.py's start with --quantize int4: quantizing at load against reading the kept quantized model.

    python bench/quantized_cache.py                         # bench/results/quantized-cache-cpu.json
    python bench/quantized_cache.py --tiny --out /tmp/q.json

from_pretrained(..., quantize=...) keeps the quantized model in a cache
($MINIGPT_QUANTIZED_DIR, minigpt.model.load.quantized_cache_file), so only a checkpoint's first
quantized load rounds its weights. This times whole processes of
`sample.py --init CKPT --quantize MODE --max-new-tokens 1`, alternating a cold cache (an empty
folder: quantize, then write the cache) and a warm one (read it), for --rounds rounds, and records
each process's wall time, its "loaded ... in X s" figure and its peak resident memory
(its VmHWM, Linux). CKPT is a random-init GPT-2 124M written with save_pretrained (--tiny:
a 2-layer one). tests/bench/test_readme_figures.py holds README.md to the committed file.
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

if __name__ == "__main__":  # before torch is imported: a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

from bench.common import RESULTS_DIR, environment, log, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = RESULTS_DIR / "quantized-cache-cpu.json"
LOADED = re.compile(r"loaded .* in ([\d.]+)s")
PEAK = re.compile(r"^peak_kb=(\d+)$", re.MULTILINE)
# sample.py run in a process that reports its own peak resident memory as it exits
# (VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec, so a child would report this process's peak)
WRAPPER = (
    "import runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "finally:\n"
    "    hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')]\n"
    "    print(f'peak_kb={hwm[0]}', file=sys.stderr)\n"
)


def make_checkpoint(directory: Path, tiny: bool) -> Path:
    import torch

    from minigpt.model.config import GPTConfig, preset
    from minigpt.model.load import save_pretrained
    from minigpt.model.model import GPT

    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=4, n_embd=128) if tiny else preset("gpt2")
    save_pretrained(GPT(config).eval(), directory)
    return directory


def one_process(ckpt: Path, cache: Path, mode: str) -> dict:
    """Wall time, the load time sample.py prints, and the peak memory of one sample.py process."""
    argv = [sys.executable, "-c", WRAPPER, str(ROOT / "sample.py"), "--init", str(ckpt), "--quantize", mode]
    argv += ["--max-new-tokens", "1", "--prompt", "Hello", "--seed", "1"]
    env = {**os.environ, "MINIGPT_QUANTIZED_DIR": str(cache)}
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"sample.py failed: {out.stderr.strip().splitlines()[-1:]}")
    loaded, peak = LOADED.search(out.stderr), PEAK.search(out.stderr)
    return {"wall_s": wall, "load_s": float(loaded.group(1)), "peak_rss_bytes": int(peak.group(1)) * 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mode", default="int4", choices=["int8", "int4", "int8-dynamic"])
    p.add_argument("--tiny", action="store_true", help="a 2-layer model and one round, for the tests")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    rounds = 1 if args.tiny else args.rounds
    from minigpt.provenance import cpu_model

    with tempfile.TemporaryDirectory(prefix="minigpt-quantized-cache-") as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp / "model", args.tiny)
        warm = tmp / "warm"
        one_process(ckpt, warm, args.mode)  # fills the warm cache
        runs = {"cold": [], "warm": []}
        for r in range(rounds):
            for kind in ("cold", "warm"):  # alternating, each in a fresh process
                cache = tmp / f"cold-{r}" if kind == "cold" else warm
                runs[kind].append(one_process(ckpt, cache, args.mode))
                log(f"round {r + 1} {kind}: {runs[kind][-1]['wall_s']:.2f} s")
    median = {
        kind: {k: statistics.median(run[k] for run in rs) for k in ("wall_s", "load_s", "peak_rss_bytes")}
        for kind, rs in runs.items()
    }
    result = {
        "benchmark": "quantized-cache",
        "environment": environment("cpu"),
        "cpu_model": cpu_model(),
        "model": "GPT-2 124M shape, random init" if not args.tiny else "2 layers x 128, random init",
        "mode": args.mode,
        "rounds": rounds,
        "tiny": args.tiny,
        "runs": runs,
        "median": median,
    }
    write_json(args.out, result)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
