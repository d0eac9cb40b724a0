"""Start-up: loading a 124M checkpoint, time to first token of a whole process, tokenizer ready.

    python bench/startup.py                      # JSON to a new bench/runs/ folder
    python bench/startup.py --update-results     # bench/results/startup-cpu.json

Every figure is a fresh Python process (what a user waits for), the variants run in
alternation round by round on the same random-init GPT-2 124M checkpoint that transformers
writes (to --checkpoint, default /tmp/gpt2-124m-random), medians of --repeats rounds:

- load: `GPT.from_pretrained(dir)` against `GPT2LMHeadModel.from_pretrained(dir)`, timed inside
  the process after the imports (the import times are recorded beside it), and the time to read
  the checkpoint file's bytes (from the page cache: it was just read) for the floor.
- first token: the whole process of `sample.py --init DIR --max-new-tokens 1` against a tiny
  transformers script doing the same job (the same tiktoken tokenizer, GPT2LMHeadModel load,
  one greedy token, print), timed from the parent twice: when its stdout first holds more than
  the prompt (the token is on the screen) and when the process has exited.
- tokenizer: `minigpt.tokenizers.get_encoding("gpt2")` with its cache built, and the top of a
  cProfile of it.

Every process gets the environment minigpt.entrypoint.start() made here (OMP_WAIT_POLICY=PASSIVE,
THP_MEM_ALLOC_ENABLE=1, unless set before), transformers' too; minigpt's load and first token are
also timed with THP_MEM_ALLOC_ENABLE=0 ("without huge pages"), to show what the huge pages buy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `minigpt` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

from bench.common import environment, log, output_dir, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

WRITE_CHECKPOINT = """
import sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config()).save_pretrained(sys.argv[1])
"""

# Each prints one JSON line of its own timings (seconds since the process started its script).
LOAD_OURS = """
import json, sys, time
t0 = time.perf_counter()
import torch
from minigpt import from_pretrained
t1 = time.perf_counter()
from_pretrained(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""

LOAD_HF = """
import json, sys, time
t0 = time.perf_counter()
import torch
from transformers import GPT2LMHeadModel
t1 = time.perf_counter()
GPT2LMHeadModel.from_pretrained(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""

READ_FILE = """
import json, sys, time
t0 = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    while f.read(1 << 24):
        pass
print(json.dumps({"read_s": time.perf_counter() - t0}))
"""

FIRST_TOKEN_HF = """
import sys
import torch
from transformers import GPT2LMHeadModel
from minigpt.tokenizers import get_encoding  # the same tokenizer as sample.py's
enc = get_encoding("gpt2")
model = GPT2LMHeadModel.from_pretrained(sys.argv[1]).eval()
idx = torch.tensor([enc.encode(sys.argv[2])])
with torch.inference_mode():
    out = model.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=1, do_sample=False,
                         pad_token_id=50256)
sys.stdout.write(sys.argv[2] + enc.decode(out[0, idx.size(1):].tolist()))
sys.stdout.flush()  # on the screen now, as sample.py's, not when the interpreter exits
"""

TOKENIZER = """
import json, time
t0 = time.perf_counter()
from minigpt.tokenizers import get_encoding
t1 = time.perf_counter()
get_encoding("gpt2")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "get_encoding_s": t2 - t1}))
"""

TOKENIZER_PROFILE = """
import cProfile, io, pstats
from minigpt.tokenizers import get_encoding
profile = cProfile.Profile()
profile.enable()
get_encoding("gpt2")
profile.disable()
out = io.StringIO()
pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(18)
print(out.getvalue())
"""


def python(code: str, *args: str, env: dict | None = None) -> tuple[float, str]:
    """Run code in a fresh interpreter; (wall seconds seen from here, its stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"a timed process failed: {proc.stderr.strip().splitlines()[-1:]}")
    return wall, proc.stdout


def first_output(argv: list[str], env: dict, prompt: str) -> dict:
    """Run a command that prints `prompt` and then what it generates: {"first_output_s" (from the
    start until stdout holds more than the prompt: the first token on the screen), "process_s"
    (until the process has exited, the interpreter's shutdown included)}."""
    want = len(prompt.encode())
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    seen, first = 0, None
    while chunk := os.read(proc.stdout.fileno(), 1 << 16):
        seen += len(chunk)
        if first is None and seen > want:
            first = time.perf_counter() - t0
    stderr = proc.stderr.read().decode(errors="replace")
    proc.wait(timeout=600)
    wall = time.perf_counter() - t0
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode != 0 or first is None:
        raise RuntimeError(f"{Path(argv[1]).name} failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    return {"first_output_s": first, "process_s": wall}


def medians(rows: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("/tmp/gpt2-124m-random"),
        help="where the random-init 124M checkpoint is (written by transformers if missing)",
    )
    p.add_argument("--repeats", type=int, default=5, help="rounds of every variant, in alternation")
    p.add_argument("--prompt", default="The meaning of life is", help="the first-token prompt")
    p.add_argument(
        "--before",
        type=Path,
        default=None,
        help="also time from_pretrained of another checkout of this package (e.g. the code before a change)",
    )
    p.add_argument("--out", type=Path, default=None, help="results directory (default: a new bench/runs/ folder)")
    p.add_argument("--update-results", action="store_true", help="write bench/results/startup-cpu.json")
    args = p.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    small_pages = {**env, "THP_MEM_ALLOC_ENABLE": "0"}
    if not (args.checkpoint / "model.safetensors").exists():
        python(WRITE_CHECKPOINT, str(args.checkpoint))
    ckpt = str(args.checkpoint)
    sides = {
        "minigpt": lambda: python(LOAD_OURS, ckpt, env=env),
        "minigpt without huge pages": lambda: python(LOAD_OURS, ckpt, env=small_pages),
        "transformers": lambda: python(LOAD_HF, ckpt, env=env),
        "read file": lambda: python(READ_FILE, str(args.checkpoint / "model.safetensors")),
    }
    if args.before:
        sides["minigpt before"] = lambda: python(LOAD_OURS, ckpt, env={**os.environ, "PYTHONPATH": str(args.before)})
    sample = [
        sys.executable,
        str(ROOT / "sample.py"),
        "--init",
        ckpt,
        "--max-new-tokens",
        "1",
        "--device",
        "cpu",
        "--temperature",
        "0",
        "--prompt",
        args.prompt,
    ]
    first = {
        "sample.py": lambda: first_output(sample, env, args.prompt),
        "sample.py without huge pages": lambda: first_output(sample, small_pages, args.prompt),
        "transformers script": lambda: first_output(
            [sys.executable, "-c", FIRST_TOKEN_HF, ckpt, args.prompt], env, args.prompt
        ),
    }
    python(TOKENIZER, env=env)  # builds the tokenizer cache if it is missing
    load_rows = {name: [] for name in sides}
    first_rows = {name: [] for name in first}
    tokenizer_rows = []
    for r in range(args.repeats + 1):  # round 0 warms the page cache and is dropped
        for name, fn in sides.items():
            wall, out = fn()
            if r:
                load_rows[name].append({"process_s": wall, **json.loads(out)})
        for name, fn in first.items():
            row = fn()
            if r:
                first_rows[name].append(row)
        wall, out = python(TOKENIZER, env=env)
        if r:
            tokenizer_rows.append({"process_s": wall, **json.loads(out)})
        log(f"round {r} done")
    _, profile = python(TOKENIZER_PROFILE, env=env)
    size = (args.checkpoint / "model.safetensors").stat().st_size
    load = {name: medians(rows) | {"rounds": rows} for name, rows in load_rows.items()}
    load["read file"]["gb_per_s"] = size / load["read file"]["read_s"] / 1e9
    payload = {
        "benchmark": "startup",
        "environment": environment("cpu"),
        "loadavg_at_start": list(os.getloadavg()),
        "settings": {
            "checkpoint": ckpt,
            "checkpoint_bytes": size,
            "repeats": args.repeats,
            "prompt": args.prompt,
            "method": "fresh processes, variants in alternation, medians; the first round dropped",
            "environment": {k: env.get(k) for k in ("OMP_WAIT_POLICY", "THP_MEM_ALLOC_ENABLE")},
        },
        "load": load,
        "first_token": {name: medians(rows) | {"rounds": rows} for name, rows in first_rows.items()},
        "tokenizer": medians(tokenizer_rows) | {"rounds": tokenizer_rows, "profile": profile},
    }
    out = output_dir(args.out, args.update_results, "startup")
    out.mkdir(parents=True, exist_ok=True)
    path = write_json(out / "startup-cpu.json", payload)
    for name, r in load.items():
        if "load_s" in r:
            inside = f"load {r['load_s']:.3f} s, import {r['import_s']:.3f} s"
        else:
            inside = f"read {r['read_s']:.3f} s"
        print(f"{name:26s} {inside}, whole process {r['process_s']:.2f} s")
    for name, r in payload["first_token"].items():
        print(
            f"first token {name:28s} on stdout at {r['first_output_s']:.2f} s, process ended at {r['process_s']:.2f} s"
        )
    t = payload["tokenizer"]
    print(f"get_encoding('gpt2') {1e3 * t['get_encoding_s']:.1f} ms (import {1e3 * t['import_s']:.0f} ms)")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
