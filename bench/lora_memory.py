"""Peak memory of LoRA against full fine-tuning: a few AdamW steps of a random-init preset on the CPU.

Each (method, preset) runs in a fresh process, which builds the model in float32, takes `--steps`
optimizer steps of batch 1 x `--context` tokens (AdamW, as train.py) and reports its peak resident
memory (VmHWM of /proc/self/status, which starts afresh at exec). Full fine-tuning holds the weights,
their gradients and AdamW's two moments: 16 bytes per parameter, ~25 GB for gpt2-xl's 1.56B in fp32,
more than a 24 GB machine has; the default plan then measures full fine-tuning at gpt2-large and
LoRA at both, and the JSON records that arithmetic beside the figures.

    python bench/lora_memory.py                        # writes bench/results/lora-memory-cpu.json
    python bench/lora_memory.py --plan lora:gpt2 full:gpt2 --out /tmp/lora.json   # quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

import torch  # noqa: E402

from bench.common import RESULTS_DIR, environment, log, write_json  # noqa: E402
from minigpt.model.config import preset  # noqa: E402
from minigpt.model.lora import add_lora, lora_parameters  # noqa: E402
from minigpt.model.model import GPT  # noqa: E402
from minigpt.provenance import cpu_model  # noqa: E402

DEFAULT_PLAN = ("lora:gpt2-xl", "lora:gpt2-large", "full:gpt2-large")
BYTES_FULL = 4 + 4 + 8  # fp32 weight, its gradient, AdamW's exp_avg and exp_avg_sq


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(method: str, name: str, steps: int, context: int, rank: int, targets: str) -> dict:
    """Run the steps here; what the parent records."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = GPT(preset(name)).train()
    if method == "lora":
        add_lora(model, rank, 2 * rank, targets)
        params = lora_parameters(model)
    else:
        params = list(model.parameters())
    build_s = time.perf_counter() - t0
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    idx = torch.randint(0, model.config.vocab_size, (1, context + 1))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model(idx[:, :-1], targets=idx[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return {
        "method": method,
        "preset": name,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in params),
        "peak_rss_bytes": peak_rss(),
        "build_s": build_s,
        "step_s": times,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", nargs="+", default=list(DEFAULT_PLAN), help="METHOD:PRESET runs (lora or full)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default="c_attn,c_proj")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "lora-memory-cpu.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        method, name = args.child.split(":")
        print(json.dumps(child(method, name, args.steps, args.context, args.rank, args.targets)))
        return 0
    runs = []
    for spec in args.plan:
        log(f"{spec}: {args.steps} steps of 1 x {args.context} tokens in a fresh process")
        out = subprocess.run(
            [sys.executable, __file__, "--child", spec, "--steps", str(args.steps), "--context", str(args.context)]
            + ["--rank", str(args.rank), "--targets", args.targets],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            log(f"{spec} failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
            runs.append({"spec": spec, "failed": out.returncode})
            continue
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        log(f"{spec}: peak RSS {runs[-1]['peak_rss_bytes'] / 2**30:.2f} GiB")
    xl = preset("gpt2-xl").num_params()
    write_json(
        args.out,
        {
            "environment": environment("cpu"),
            "cpu": cpu_model(),
            "settings": {
                "steps": args.steps,
                "batch": 1,
                "context": args.context,
                "dtype": "float32",
                "optimizer": "AdamW (fused)",
                "lora_rank": args.rank,
                "lora_alpha": 2 * args.rank,
                "lora_targets": args.targets,
            },
            "note": (
                f"full fine-tuning of gpt2-xl in fp32 holds {BYTES_FULL} bytes per parameter (weight, gradient, two "
                f"AdamW moments): {xl:,} x {BYTES_FULL} = {xl * BYTES_FULL / 1e9:.1f} GB before activations, more "
                "than this 24 GB machine; so full fine-tuning is measured at gpt2-large, LoRA at both"
            ),
            "runs": runs,
        },
    )
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
