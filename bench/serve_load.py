"""Load on serve.py: 1, 4, 16 and 64 concurrent streaming clients against one served model.

    python bench/serve_load.py                     # JSON to a new bench/runs/ folder
    python bench/serve_load.py --update-results    # bench/results/serve-load-cpu.json

serve.py runs as its own process (--max-batch 64, so every client decodes in the same batch) on a
random-init GPT-2 124M checkpoint (written once to --checkpoint, default /tmp/gpt2-124m-random-minigpt;
random weights decode at the same speed as trained ones, and greedy decoding of a fixed budget makes
every request the same length). Each client sends --requests streaming completions one after another,
each --max-tokens tokens from its own short prompt. Per level: aggregate tokens/s (every completion
token of every client over the level's wall time) and time to first token (request sent to first
text chunk), p50 and p99. A warm-up request runs before the first level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
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

import httpx  # noqa: E402

from bench.common import environment, log, output_dir, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 4, 16, 64)


def write_checkpoint(path: Path) -> None:
    import torch

    from minigpt.model.config import GPTConfig
    from minigpt.model.load import save_pretrained
    from minigpt.model.model import GPT

    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig()), path)  # GPT-2 124M's shape


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    at = q * (len(values) - 1)
    lo, hi = int(at), min(int(at) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (at - lo)


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> tuple[float, int, float]:
    """(time to first text, completion tokens, total seconds) of one streaming completion."""
    body = {
        "model": "gpt2-124m",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"status {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif ttft is None and chunk["choices"] and chunk["choices"][0]["text"]:
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (total if ttft is None else ttft), tokens, total


async def level(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def run_client(i: int) -> list[tuple[float, int, float]]:
            return [
                await one_request(client, url, f"Client {i} asks question {j}: what is the", max_tokens)
                for j in range(requests)
            ]

        t0 = time.perf_counter()
        results = await asyncio.gather(*(run_client(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    flat = [r for rs in results for r in rs]
    ttfts = [r[0] for r in flat]
    tokens = sum(r[1] for r in flat)
    return {
        "clients": clients,
        "requests": len(flat),
        "completion_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_s": percentile(ttfts, 0.5),
        "ttft_p99_s": percentile(ttfts, 0.99),
        "per_client_tokens_per_s": statistics.median(r[1] / r[2] for r in flat),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("/tmp/gpt2-124m-random-minigpt"))
    p.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrent clients per level")
    p.add_argument("--requests", type=int, default=2, help="requests each client sends one after another")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per request")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server (default: its own)")
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON (default: a new bench/runs/ folder)")
    p.add_argument("--update-results", action="store_true", help="write bench/results/serve-load-cpu.json")
    args = p.parse_args()
    out = output_dir(args.out, args.update_results, "serve-load")

    if not (args.checkpoint / "config.json").is_file():
        log(f"writing a random-init GPT-2 124M checkpoint to {args.checkpoint}")
        write_checkpoint(args.checkpoint)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, str(ROOT / "serve.py"), "--init", f"gpt2-124m={args.checkpoint}", "--port", str(port)]
    cmd += ["--device", "cpu", "--max-batch", str(max(args.levels)), "--max-queue", str(max(args.levels))]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve.py did not start: {server.stderr.read()[-2000:] if server.stderr else ''}")
            time.sleep(0.2)
        loadavg_start = list(os.getloadavg())
        asyncio.run(one_request(httpx.AsyncClient(timeout=600), url, "warm up", 8))
        levels = []
        for clients in args.levels:
            result = asyncio.run(level(url, clients, args.requests, args.max_tokens))
            log(
                f"{clients:3d} clients: {result['tokens_per_s']:7.1f} tok/s, "
                f"TTFT p50 {result['ttft_p50_s'] * 1e3:.0f} ms p99 {result['ttft_p99_s'] * 1e3:.0f} ms"
            )
            levels.append(result)
    finally:
        server.terminate()
        server.wait(60)
    single = next((r["tokens_per_s"] for r in levels if r["clients"] == 1), None)
    payload = {
        "benchmark": "serve-load",
        "environment": environment("cpu"),
        "loadavg_at_start": loadavg_start,
        "loadavg_at_end": list(os.getloadavg()),
        "settings": {
            "model": "GPT-2 124M shape, random init (decodes at the speed of trained weights)",
            "checkpoint": str(args.checkpoint),
            "server": "serve.py in its own process, --max-batch and --max-queue = the largest level, float32",
            "server_torch_threads": args.threads or "torch's default",
            "requests_per_client": args.requests,
            "max_tokens": args.max_tokens,
            "sampling": "greedy, streaming (Server-Sent Events)",
            "note": "a CPU shared with other work: figures vary from run to run (see loadavg)",
        },
        "levels": levels,
        "speedup_vs_one_client": {str(r["clients"]): r["tokens_per_s"] / single for r in levels} if single else None,
    }
    path = write_json(out / "serve-load-cpu.json", payload)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
