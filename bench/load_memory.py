"""Peak memory of loading a checkpoint: does a bf16 load avoid an fp32 copy of the model?

Writes a random-init fp32 checkpoint of a preset's shape (gpt2-xl by default,
6.2 GB) in the Hugging Face layout, then loads it with GPT.from_pretrained in a
fresh process per dtype and records that process's peak resident memory (VmHWM
from /proc/self/status: unlike ru_maxrss, it starts afresh at exec instead of
inheriting the parent's high-water mark). The model's own size in each dtype is
recorded beside it.

    python bench/load_memory.py                   # gpt2-xl, float32 and bfloat16
    python bench/load_memory.py --preset gpt2     # quicker
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS_DIR, environment, write_json  # noqa: E402
from minigpt.config import PRESETS, preset  # noqa: E402
from minigpt.weights import TRANSPOSED  # noqa: E402


def write_random_checkpoint(name: str, directory: Path) -> None:
    """A transformers-layout fp32 checkpoint of the preset's shape, one tensor at a time."""
    from safetensors.torch import save_file

    cfg = preset(name)
    C, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (cfg.block_size, C),
              "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)}
    for i in range(L):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,), p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
                       p + "attn.c_attn.weight": (C, 3 * C), p + "attn.c_attn.bias": (3 * C,),
                       p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                       p + "mlp.c_fc.weight": (C, 4 * C), p + "mlp.c_fc.bias": (4 * C,),
                       p + "mlp.c_proj.weight": (4 * C, C), p + "mlp.c_proj.bias": (C,)})
    assert all(k.endswith(TRANSPOSED) == (len(s) == 2 and not k.endswith(("wte.weight", "wpe.weight")))
               for k, s in shapes.items())
    tensors = {k: torch.randn(s) * 0.02 for k, s in shapes.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(cfg.to_hf_dict()))


def peak_rss_bytes() -> int:
    """This process's peak resident set size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status: this benchmark needs Linux")


def child(path: str, dtype: str) -> None:
    """Runs in a fresh process: load, then report peak RSS as JSON on stdout."""
    from minigpt.model import GPT

    base = peak_rss_bytes()
    model = GPT.from_pretrained(path, dtype=getattr(torch, dtype))
    peak = peak_rss_bytes()
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"dtype": dtype, "peak_rss_bytes": peak, "rss_before_load_bytes": base,
                      "model_bytes": model_bytes}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-xl", choices=list(PRESETS), help="which shape to write and load")
    p.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated dtypes to load in")
    p.add_argument("--out", default=None, help="results JSON (default: bench/results/load-memory-<preset>.json)")
    p.add_argument("--child", nargs=2, metavar=("PATH", "DTYPE"), help=argparse.SUPPRESS)
    p.add_argument("--write", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if args.write:
        write_random_checkpoint(args.preset, Path(args.write))
        return 0

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"writing a random {args.preset} checkpoint to {tmp} ...", file=sys.stderr)
        # in its own process, so this one stays small while the loads run
        subprocess.run([sys.executable, __file__, "--preset", args.preset, "--write", tmp], check=True)
        size = (Path(tmp) / "model.safetensors").stat().st_size
        for dtype in args.dtypes.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", tmp, dtype],
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gib = 2**30
    print(f"{'dtype':>9} {'model GiB':>10} {'peak RSS GiB':>13} {'peak / model':>13}")
    for r in runs:
        print(f"{r['dtype']:>9} {r['model_bytes'] / gib:>10.2f} {r['peak_rss_bytes'] / gib:>13.2f} "
              f"{r['peak_rss_bytes'] / r['model_bytes']:>13.2f}")
    path = Path(args.out) if args.out else RESULTS_DIR / f"load-memory-{args.preset}.json"
    write_json(path, {"environment": environment("cpu"), "preset": args.preset, "checkpoint_bytes": size,
                      "checkpoint_dtype": "float32", "runs": runs})
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
