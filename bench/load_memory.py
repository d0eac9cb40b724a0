"""Peak memory and time of loading a checkpoint, with two safetensors readers side by side.

Writes a random-init fp32 checkpoint of a preset's shape (gpt2-xl by default) in the
Hugging Face layout, then loads it with from_pretrained in a fresh process per
(reader, dtype, repeat), the readers in alternation, and records that process's load
time and peak resident memory (VmHWM from /proc/self/status: unlike ru_maxrss, it starts
afresh at exec instead of inheriting the parent's high-water mark), and the resident
memory after the load split into anonymous and file-backed pages (RssAnon, RssFile: the
kernel can drop file-backed pages under pressure, anonymous ones it cannot). The model's
own size in each dtype is recorded beside it.

Readers: "library" is safetensors' `safe_open(...).get_tensor` (it memory-maps the file);
"plain-reads" is minigpt.model.weights' own, which reads each tensor into its own buffer with
ordinary file reads.

    python bench/load_memory.py                   # gpt2-xl, float32 and bfloat16
    python bench/load_memory.py --preset gpt2     # quicker
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

import torch  # noqa: E402

from bench.common import RESULTS_DIR, environment, log, status_bytes, write_json  # noqa: E402
from minigpt.model import weights  # noqa: E402
from minigpt.model.config import PRESETS, preset  # noqa: E402
from minigpt.model.families import GPT2  # noqa: E402
from minigpt.model.load import from_pretrained  # noqa: E402
from minigpt.provenance import cpu_model  # noqa: E402

READERS = ("library", "plain-reads")


def write_random_checkpoint(name: str, directory: Path) -> None:
    """A transformers-layout fp32 checkpoint of the preset's shape, one tensor at a time."""
    from safetensors.torch import save_file

    cfg = preset(name)
    C, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    shapes = {
        "transformer.wte.weight": (V, C),
        "transformer.wpe.weight": (cfg.block_size, C),
        "transformer.ln_f.weight": (C,),
        "transformer.ln_f.bias": (C,),
    }
    for i in range(L):
        p = f"transformer.h.{i}."
        shapes.update(
            {
                p + "ln_1.weight": (C,),
                p + "ln_1.bias": (C,),
                p + "ln_2.weight": (C,),
                p + "ln_2.bias": (C,),
                p + "attn.c_attn.weight": (C, 3 * C),
                p + "attn.c_attn.bias": (3 * C,),
                p + "attn.c_proj.weight": (C, C),
                p + "attn.c_proj.bias": (C,),
                p + "mlp.c_fc.weight": (C, 4 * C),
                p + "mlp.c_fc.bias": (4 * C,),
                p + "mlp.c_proj.weight": (4 * C, C),
                p + "mlp.c_proj.bias": (C,),
            }
        )
    assert all(
        (GPT2.layout(k) is not None) == (len(s) == 2 and not k.endswith(("wte.weight", "wpe.weight")))
        for k, s in shapes.items()
    )
    tensors = {k: torch.randn(s) * 0.02 for k, s in shapes.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(GPT2.config_to_hf(cfg)))


def library_reader(path: Path, dtype=None, into=None):
    """(metadata, tensors) through safetensors' safe_open, as weights.read_tensors returns them
    (`into`, the loader's offer of buffers to read into, is declined: every tensor is new)."""
    from safetensors import safe_open

    f = safe_open(str(path), framework="pt")
    return f.metadata() or {}, ((key, f.get_tensor(key)) for key in f.keys())


def child(path: str, dtype: str, reader: str) -> None:
    """Runs in a fresh process: load with the given reader, then report as JSON on stdout."""
    if reader == "library":
        weights.read_tensors = library_reader  # the one place from_pretrained reads a file's tensors
    base = status_bytes("VmHWM")
    t0 = time.perf_counter()
    model = from_pretrained(path, dtype=getattr(torch, dtype))
    seconds = time.perf_counter() - t0
    peak = status_bytes("VmHWM")
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(
        json.dumps(
            {
                "reader": reader,
                "dtype": dtype,
                "load_s": seconds,
                "peak_rss_bytes": peak,
                "rss_before_load_bytes": base,
                "rss_anon_after_bytes": status_bytes("RssAnon"),
                "rss_file_after_bytes": status_bytes("RssFile"),
                "model_bytes": model_bytes,
            }
        )
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-xl", choices=list(PRESETS), help="which shape to write and load")
    p.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated dtypes to load in")
    p.add_argument("--readers", default=",".join(READERS), help=f"comma-separated readers: {', '.join(READERS)}")
    p.add_argument("--repeats", type=int, default=2, help="loads per reader and dtype (in alternation)")
    p.add_argument("--out", default=None, help="results JSON (default: bench/results/load-memory-<preset>.json)")
    p.add_argument("--child", nargs=3, metavar=("PATH", "DTYPE", "READER"), help=argparse.SUPPRESS)
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
        log(f"writing a random {args.preset} checkpoint to {tmp} ...")
        # in its own process, so this one stays small while the loads run
        subprocess.run([sys.executable, __file__, "--preset", args.preset, "--write", tmp], check=True)
        size = (Path(tmp) / "model.safetensors").stat().st_size
        for dtype in args.dtypes.split(","):
            for _ in range(args.repeats):
                for reader in args.readers.split(","):
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", tmp, dtype, reader],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gib = 2**30
    summary = []
    print(
        f"{'reader':>12} {'dtype':>9} {'model GiB':>10} {'peak RSS GiB':>13} {'anon GiB':>9} {'file GiB':>9} "
        f"{'load s':>7}"
    )
    for dtype in args.dtypes.split(","):
        for reader in args.readers.split(","):
            rs = [r for r in runs if r["dtype"] == dtype and r["reader"] == reader]
            row = {
                "reader": reader,
                "dtype": dtype,
                "model_bytes": rs[0]["model_bytes"],
                "peak_rss_bytes_median": statistics.median(r["peak_rss_bytes"] for r in rs),
                "rss_anon_after_bytes_median": statistics.median(r["rss_anon_after_bytes"] for r in rs),
                "rss_file_after_bytes_median": statistics.median(r["rss_file_after_bytes"] for r in rs),
                "load_s_median": statistics.median(r["load_s"] for r in rs),
            }
            summary.append(row)
            print(
                f"{reader:>12} {dtype:>9} {row['model_bytes'] / gib:>10.2f} "
                f"{row['peak_rss_bytes_median'] / gib:>13.2f} {row['rss_anon_after_bytes_median'] / gib:>9.2f} "
                f"{row['rss_file_after_bytes_median'] / gib:>9.2f} {row['load_s_median']:>7.2f}"
            )
    path = Path(args.out) if args.out else RESULTS_DIR / f"load-memory-{args.preset}.json"
    write_json(
        path,
        {
            "environment": environment("cpu"),
            "preset": args.preset,
            "checkpoint_bytes": size,
            "checkpoint_dtype": "float32",
            "cpu": cpu_model(),
            "summary": summary,
            "runs": runs,
        },
    )
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
