"""Benchmark the Triton kernels against PyTorch: flash attention (TFLOPS) and LayerNorm (GB/s).

    python bench/kernel_speed.py            # on a GPU: the full sweep, bf16
    python bench/kernel_speed.py --quick    # a few sizes; on a CPU, the only mode (see below)

Attention: causal, bfloat16, batch 4 and H * D = 2048 (32 heads of 64 or 16 of
128, the Triton fused-attention tutorial's sizes), T from 512 to 8192. Providers:
`triton` (kernels.flash_attention), `sdpa` (torch.nn.functional.scaled_dot_product_attention,
is_causal=True, whichever backend PyTorch picks) and `math` (kernels.attention_reference,
which materialises the (B, H, T, T) scores and is skipped where those would not fit).
FLOP convention, as in the tutorial and the FlashAttention papers: the forward
does two T x T x D matmuls per head, 2 * 2 * B * H * T * T * D FLOPs, halved for
causal attention since half the scores are masked; the backward does five such
matmuls (2.5 x the forward), so forward + backward counts 3.5 x the forward.
Masked work a kernel does anyway, and the softmax's exponentials, are not counted.
The forward is timed under torch.no_grad(); forward + backward computes dq, dk, dv.

LayerNorm: bfloat16 x of shape (M, N) with M = 16384 rows, N from 768 (GPT-2 small)
to 8192, bfloat16 weight and bias; `triton` (kernels.layer_norm) against `torch`
(torch.nn.functional.layer_norm). Bytes counted are the minimum a kernel must move:
forward reads x, weight, bias and writes y, (2 M N + 2 N) elements; backward reads
x, dy, weight and writes dx, dweight, dbias, (3 M N + 3 N) elements; forward +
backward counts both. Saved statistics (2 M fp32 values) are not counted. The
device's copy bandwidth (dst.copy_(src) of a 1 GiB tensor, read + write counted)
is measured too, and LayerNorm is reported as a fraction of it.

Autotuning: the first call per attention shape tunes every candidate tile configuration
(21 over the three kernels); --max-autotune-configs N keeps the first N of each kernel.

Timing on CUDA: triton.testing.do_bench (warm-up, then the median of ~100 ms of
repeats, with the L2 cache flushed between them). On a CPU there is no GPU to
measure: the Triton kernels are skipped (the interpreter is a correctness tool,
not a speed measurement) and the torch providers run at tiny sizes in float32,
timed with time.perf_counter (median of repeats), so the script itself is exercised.

Results: kernels-<device>.json (every setting, every result, the environment) and a PNG
plot next to it, in --out, or by default a new folder bench/runs/<date>-<time>-kernels/
(ignored by git); --update-results writes them into bench/results/ instead. A table on
stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `kernels` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import RESULTS_DIR, RUNS_DIR, device_tag, environment, log, output_dir, write_json  # noqa: E402

# Read by kernels/flash_attention.py when a shape is first tuned: the candidates tried per kernel.
MAX_CONFIGS_ENV = "MINIGPT_AUTOTUNE_MAX_CONFIGS"

# Full sweep on a GPU.
ATTN_SEQ_LENS = (512, 1024, 2048, 4096, 8192)
ATTN_HEAD_DIMS = (64, 128)
ATTN_BATCH = 4
ATTN_WIDTH = 2048  # n_heads * head_dim: 32 heads of 64, 16 heads of 128
MATH_MAX_T = 4096  # above this the math reference's (B, H, T, T) scores and probabilities exceed 80 GB
LN_ROWS = 16384
LN_WIDTHS = (768, 1024, 1280, 1600, 4096, 8192)
COPY_BYTES = 1 << 30

# --quick on a GPU.
QUICK_SEQ_LENS = (512, 2048)
QUICK_HEAD_DIMS = (64,)
QUICK_LN_WIDTHS = (768, 1600)

# A CPU run: tiny sizes, torch providers only.
CPU_ATTN = {"batch": 1, "width": 128, "seq_lens": (64, 256), "head_dims": (64,)}
CPU_LN = {"rows": 512, "widths": (768, 1600)}
CPU_COPY_BYTES = 1 << 26
CPU_REPEATS = 5

TRITON_ON_CPU = "the Triton kernels need a CUDA device; the interpreter is a correctness tool, not a speed measurement"


# ----------------------------------------------------------------------------
# Timing and accounting
# ----------------------------------------------------------------------------


def time_ms(fn, device: torch.device) -> float:
    """Median milliseconds of fn(): do_bench on CUDA, perf_counter repeats on the CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()  # warm-up
    times = []
    for _ in range(CPU_REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def attention_flops(B: int, H: int, T: int, D: int, causal: bool, mode: str) -> float:
    """FLOPs counted for one call (see the module docstring for the convention)."""
    forward = 4.0 * B * H * T * T * D * (0.5 if causal else 1.0)
    return forward if mode == "fwd" else 3.5 * forward


def layer_norm_bytes(M: int, N: int, element_size: int, mode: str) -> int:
    """Bytes counted for one call (see the module docstring)."""
    forward = (2 * M * N + 2 * N) * element_size
    backward = (3 * M * N + 3 * N) * element_size
    return forward if mode == "fwd" else forward + backward


# ----------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------


MODES = ("fwd", "fwd+bwd")


def make_call(fn, inputs, grad, mode):
    """A no-argument callable: fn(*inputs) under no_grad, or forward and backward to every input."""
    if mode == "fwd":

        def call():
            with torch.no_grad():
                fn(*inputs)
    else:

        def call():
            torch.autograd.grad(fn(*inputs), inputs, grad)

    return call


def measure(call, device, skip_reason):
    """(ms, None), or (None, reason) when skipped or out of memory."""
    if skip_reason is not None:
        return None, skip_reason
    try:
        return time_ms(call, device), None
    except torch.cuda.OutOfMemoryError as err:
        return None, f"out of memory: {str(err).splitlines()[0]}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_attention(device, dtype, batch, width, seq_lens, head_dims, providers, skips):
    """One record per (head dim, T, provider, mode); a skipped one carries a reason instead of a time."""
    records = []
    for D in head_dims:
        H = width // D
        for T in seq_lens:
            g = torch.Generator(device="cpu").manual_seed(T + D)
            q, k, v, do = (torch.randn(batch, H, T, D, generator=g).to(device, dtype) for _ in range(4))
            inputs = tuple(t.requires_grad_(True) for t in (q, k, v))
            for name, attend in providers.items():
                for mode in MODES:
                    record = {
                        "op": "attention",
                        "provider": name,
                        "mode": mode,
                        "B": batch,
                        "H": H,
                        "T": T,
                        "D": D,
                        "dtype": str(dtype).removeprefix("torch."),
                        "causal": True,
                    }
                    ms, reason = measure(make_call(attend, inputs, do, mode), device, skips(name, T))
                    label = f"attention {name:6s} {mode:7s} T={T:5d} D={D:3d}"
                    if ms is None:
                        record["skipped"] = reason
                        log(f"{label}: skipped ({reason})")
                    else:
                        record["ms"] = ms
                        record["tflops"] = attention_flops(batch, H, T, D, True, mode) / (ms * 1e-3) / 1e12
                        log(f"{label}: {ms:8.3f} ms {record['tflops']:8.4g} TFLOPS")
                    records.append(record)
            del q, k, v, do, inputs
    return records


def bench_layer_norm(device, dtype, rows, widths, providers, skips):
    """One record per (N, provider, mode)."""
    records = []
    for N in widths:
        g = torch.Generator(device="cpu").manual_seed(N)
        x, dy = (torch.randn(rows, N, generator=g).to(device, dtype) for _ in range(2))
        weight = (1 + 0.1 * torch.randn(N, generator=g)).to(device, dtype)
        bias = (0.1 * torch.randn(N, generator=g)).to(device, dtype)
        inputs = tuple(t.requires_grad_(True) for t in (x, weight, bias))
        for name, norm in providers.items():
            for mode in MODES:
                record = {
                    "op": "layer_norm",
                    "provider": name,
                    "mode": mode,
                    "M": rows,
                    "N": N,
                    "dtype": str(dtype).removeprefix("torch."),
                }
                ms, reason = measure(make_call(norm, inputs, dy, mode), device, skips(name))
                label = f"layer_norm {name:6s} {mode:7s} N={N:5d}"
                if ms is None:
                    record["skipped"] = reason
                    log(f"{label}: skipped ({reason})")
                else:
                    record["ms"] = ms
                    record["gbps"] = layer_norm_bytes(rows, N, x.element_size(), mode) / (ms * 1e-3) / 1e9
                    log(f"{label}: {ms:8.3f} ms {record['gbps']:8.4g} GB/s")
                records.append(record)
    return records


def bench_copy(device, n_bytes):
    """GB/s of dst.copy_(src), counting the read and the write."""
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    gbps = 2 * n_bytes / (ms * 1e-3) / 1e9
    log(f"copy {n_bytes / 2**20:.0f} MiB: {ms:.3f} ms {gbps:.1f} GB/s")
    return {"op": "copy", "bytes": n_bytes, "ms": ms, "gbps": gbps}


def run_kernel_bench(device: str | torch.device, quick: bool) -> dict:
    """Run the sweep on `device` and return the results record (nothing is written)."""
    from minigpt_kernels import attention_reference, flash_attention, layer_norm

    device = torch.device(device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        dtype = torch.bfloat16
        attn = {
            "batch": ATTN_BATCH,
            "width": ATTN_WIDTH,
            "seq_lens": QUICK_SEQ_LENS if quick else ATTN_SEQ_LENS,
            "head_dims": QUICK_HEAD_DIMS if quick else ATTN_HEAD_DIMS,
        }
        ln = {"rows": LN_ROWS, "widths": QUICK_LN_WIDTHS if quick else LN_WIDTHS}
        copy_bytes = COPY_BYTES
    else:
        if not quick:
            log("no CUDA device: running the tiny CPU sizes (as --quick)")
        dtype = torch.float32
        attn, ln, copy_bytes = CPU_ATTN, CPU_LN, CPU_COPY_BYTES

    def attention_skips(name, T):
        if name == "triton" and not on_gpu:
            return TRITON_ON_CPU
        if name == "math" and on_gpu and T > MATH_MAX_T:
            return f"T > {MATH_MAX_T}: the materialised (B, H, T, T) scores and probabilities would not fit in memory"
        return None

    def layer_norm_skips(name):
        return TRITON_ON_CPU if name == "triton" and not on_gpu else None

    attention_providers = {
        "triton": lambda q, k, v: flash_attention(q, k, v, causal=True),
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "math": lambda q, k, v: attention_reference(q, k, v, causal=True),
    }
    layer_norm_providers = {
        "triton": lambda x, w, b: layer_norm(x, w, b, eps=1e-5),
        "torch": lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5),
    }

    copy = bench_copy(device, copy_bytes)
    attention = bench_attention(device, dtype, providers=attention_providers, skips=attention_skips, **attn)
    norms = bench_layer_norm(device, dtype, providers=layer_norm_providers, skips=layer_norm_skips, **ln)
    for record in norms:
        if "gbps" in record:
            record["fraction_of_copy"] = record["gbps"] / copy["gbps"]
    return {
        "benchmark": "kernels",
        "environment": environment(device),
        "settings": {
            "quick": quick,
            "dtype": str(dtype).removeprefix("torch."),
            "attention": {**attn, "causal": True, "math_max_T": MATH_MAX_T if on_gpu else None},
            "layer_norm": {**ln, "eps": 1e-5},
            "copy_bytes": copy_bytes,
            "autotune_max_configs": os.environ.get(MAX_CONFIGS_ENV) or "all",
            "timer": "triton.testing.do_bench, median" if on_gpu else f"time.perf_counter, median of {CPU_REPEATS}",
            "flop_convention": "forward 4*B*H*T*T*D, x0.5 causal; forward+backward 3.5x forward",
            "byte_convention": "forward (2MN + 2N) elements; backward (3MN + 3N); forward+backward both",
        },
        "copy": copy,
        "attention": attention,
        "layer_norm": norms,
    }


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------


def format_table(results: dict) -> str:
    lines = [f"copy bandwidth: {results['copy']['gbps']:.1f} GB/s", ""]
    lines.append(f"{'attention':10s} {'provider':8s} {'mode':8s} {'T':>6s} {'D':>4s} {'ms':>9s} {'TFLOPS':>8s}")
    for r in results["attention"]:
        value = f"{r['ms']:9.3f} {r['tflops']:8.4g}" if "ms" in r else f"{'skipped':>18s}"
        lines.append(f"{'':10s} {r['provider']:8s} {r['mode']:8s} {r['T']:6d} {r['D']:4d} {value}")
    lines.append("")
    lines.append(f"{'layer_norm':10s} {'provider':8s} {'mode':8s} {'N':>6s} {'ms':>9s} {'GB/s':>8s} {'of copy':>8s}")
    for r in results["layer_norm"]:
        if "ms" in r:
            value = f"{r['ms']:9.3f} {r['gbps']:8.4g} {r['fraction_of_copy']:8.3f}"
        else:
            value = f"{'skipped':>9s}"
        lines.append(f"{'':10s} {r['provider']:8s} {r['mode']:8s} {r['N']:6d} {value}")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, mode in zip(axes[:2], ("fwd", "fwd+bwd"), strict=True):
        for provider in ("triton", "sdpa", "math"):
            for D in sorted({r["D"] for r in results["attention"]}):
                points = [
                    (r["T"], r["tflops"])
                    for r in results["attention"]
                    if r["provider"] == provider and r["mode"] == mode and r["D"] == D and "tflops" in r
                ]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=f"{provider} d={D}")
        ax.set(xlabel="T", ylabel="TFLOPS", title=f"causal attention, {mode}")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[2]
    for provider in ("triton", "torch"):
        for mode in ("fwd", "fwd+bwd"):
            points = [
                (r["N"], r["gbps"])
                for r in results["layer_norm"]
                if r["provider"] == provider and r["mode"] == mode and "gbps" in r
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=f"{provider} {mode}")
    ax.axhline(results["copy"]["gbps"], color="gray", linestyle="--", label="copy")
    ax.set(xlabel="N", ylabel="GB/s", title=f"LayerNorm, M={results['settings']['layer_norm']['rows']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{results['environment']['device']} ({results['settings']['dtype']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device to benchmark (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few sizes only; on a CPU the tiny sizes are always used"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"directory for kernels-<device>.json and .png (default: a new folder under {RUNS_DIR}, ignored by git)",
    )
    parser.add_argument(
        "--update-results",
        action="store_true",
        help=f"write into {RESULTS_DIR}, replacing the committed kernel results",
    )
    parser.add_argument("--no-plot", action="store_true", help="write the JSON but not the PNG")
    parser.add_argument(
        "--max-autotune-configs",
        type=int,
        default=None,
        metavar="N",
        help="autotune each attention kernel over its first N candidates only (bounds the "
        f"first call per shape; sets {MAX_CONFIGS_ENV}; default: all)",
    )
    args = parser.parse_args(argv)
    try:
        args.out = output_dir(args.out, args.update_results, "kernels")
    except ValueError as e:
        parser.error(str(e))
    if args.max_autotune_configs is not None:
        if args.max_autotune_configs < 1:
            parser.error("--max-autotune-configs must be at least 1")
        os.environ[MAX_CONFIGS_ENV] = str(args.max_autotune_configs)

    device = torch.device(args.device)
    results = run_kernel_bench(device, quick=args.quick)
    stem = f"kernels-{device_tag(device)}"
    log(f"wrote {write_json(args.out / f'{stem}.json', results)}")
    if not args.no_plot:
        log(f"wrote {plot(results, args.out / f'{stem}.png')}")
    print(format_table(results))


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
