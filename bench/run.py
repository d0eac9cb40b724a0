"""One entry point for the benchmarks: training, sampling, kernels, and the CPU targets.

    python bench/run.py --suite all                 # CPU: small sizes (minutes); CUDA: real sizes
    python bench/run.py --suite sample --full       # every size
    python bench/run.py --suite cpu-targets         # the CPU figures the fast-decoding issue targets
    python bench/run.py --suite train,sample --tiny --out /tmp/b   # seconds: what the tests run
    python bench/run.py --suite all --update-results  # replace the committed files in bench/results/

Suites:
- train: tokens/s and MFU of forward + backward + AdamW step (train.py's optimizer and
  gradient clipping) for several models, batch and block sizes, attention/LayerNorm
  backends, with and without torch.compile. bf16 autocast on CUDA, fp32 on a CPU.
- sample: prefill tokens/s, time to first token and decode tokens/s of minigpt.generate.decoder
  (greedy) at several batch sizes, beside transformers' GPT2LMHeadModel.generate (its
  default KV cache) on the same random-init weights in the same run, as a ratio.
- kernels: bench/kernel_speed.py's run_kernel_bench (Triton attention and LayerNorm).
- cpu-targets: GPT-2 124M shape on the CPU: decode at batch 1 (fp32 and bf16 against
  transformers in the same dtype; int8 and int4 weight-only quantized against transformers
  fp32; and each as sample.py's --decode auto against --decode simple) and one training step
  at B=4, T=256, with the fp32 matmul ceiling, and the same step run with the plain
  F.cross_entropy loss and by transformers (about 5 minutes).
"all" is train, sample and kernels.

MFU: FLOPs per token from minigpt.train.flops.flops_per_token (6N + attention), against the
datasheet bf16 peak of a known GPU (minigpt.train.flops.PEAK_FLOPS), or else against an
fp32 (CPU) or bf16 (GPU) matmul measured in the same run ("matmul_fraction" is reported
against the measured matmul everywhere).

Results: <out>/e2e-<device>.json (environment, settings, every case), .md (tables) and
.png (throughput against batch size; MFU by backend); cpu-targets.json/.md for that suite.
<out> is --out, or by default a new folder bench/runs/<date>-<time>-<suites>/ (ignored by
git); only --update-results writes over the committed files in bench/results/.
A short table goes to stdout, progress to stderr, with each part's wall time and the whole run's.

Partial results: each results file is written at the start (environment and settings) and
again, atomically, as each of its parts finishes (e2e: train, sample, kernels; cpu-targets:
decode, train), with "complete": false, "parts" (those planned), "parts_done" and "wall_s"
(seconds per finished part); at the end it says "complete": true (and the PNG is drawn).
Ctrl-C or SIGTERM stops the run at once with one line on stderr naming the file(s) that hold
what was measured so far, and exit code 130 (143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `minigpt` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minigpt import entrypoint  # noqa: E402  (imports no torch)

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    entrypoint.start()

import torch  # noqa: E402

from bench import e2e, report  # noqa: E402
from bench.common import RESULTS_DIR, RUNS_DIR, atomic_write, device_tag, environment, log, output_dir  # noqa: E402
from minigpt.generate.decoder import Decoder  # noqa: E402
from minigpt.generate.simple import generate  # noqa: E402
from minigpt.model.backends import set_backends, triton_unavailable_reason  # noqa: E402
from minigpt.model.config import GPTConfig, preset  # noqa: E402
from minigpt.model.model import GPT  # noqa: E402
from minigpt.model.quantize import quantize_model  # noqa: E402

SUITES = ("train", "sample", "kernels", "cpu-targets")
ALL = ("train", "sample", "kernels")

# Model shapes by name: OpenAI's presets plus two small ones for the CPU.
TINY = GPTConfig(block_size=128, n_layer=2, n_head=2, n_embd=64)
CPU_SMALL = GPTConfig(block_size=256, n_layer=4, n_head=4, n_embd=128)  # train.py's "cpu" recipe shape
MODELS = {
    "tiny": TINY,
    "cpu-small": CPU_SMALL,
    "124M": preset("gpt2"),
    "355M": preset("gpt2-medium"),
    "1.5B": preset("gpt2-xl"),
}

# What each size runs. train: lists of case dicts; sample: (model, batch sizes, prompt, new tokens).
PLANS = {
    "tiny": {
        "train": [
            dict(model="tiny", batch_size=2, block_size=32, attn=a, ln="torch", compile=False) for a in ("math", "sdpa")
        ],
        "train_timing": dict(steps=1, repeats=2, warmup=1),
        "sample": [("tiny", (1, 2), 8, 8)],
        "sample_repeats": 2,
    },
    "cpu-quick": {
        "train": [
            dict(model="cpu-small", batch_size=b, block_size=t, attn="sdpa", ln="torch", compile=False)
            for b in (8, 16)
            for t in (64, 128)
        ]
        + [dict(model="cpu-small", batch_size=16, block_size=128, attn="math", ln="torch", compile=False)],
        "train_timing": dict(steps=1, repeats=3, warmup=1),
        "sample": [("cpu-small", (1, 8, 64), 16, 32), ("124M", (1,), 16, 16)],
        "sample_repeats": 3,
    },
    "cpu-full": {
        "train": [
            dict(model="cpu-small", batch_size=b, block_size=t, attn=a, ln="torch", compile=c)
            for b in (8, 16, 32)
            for t in (128, 256)
            for a in ("math", "sdpa")
            for c in (False, True)
        ]
        + [dict(model="124M", batch_size=4, block_size=256, attn="sdpa", ln="torch", compile=c) for c in (False, True)],
        "train_timing": dict(steps=1, repeats=3, warmup=1),
        "sample": [("cpu-small", (1, 8, 64), 16, 64), ("124M", (1, 8, 64), 16, 32)],
        "sample_repeats": 3,
    },
    "cuda-quick": {
        "train": [
            dict(model="124M", batch_size=16, block_size=1024, attn=a, ln=n, compile=False)
            for a in ("math", "sdpa", "triton")
            for n in ("torch", "triton")
        ]
        + [dict(model="124M", batch_size=16, block_size=1024, attn=a, ln="torch", compile=True) for a in ("sdpa",)]
        + [
            dict(model=m, batch_size=b, block_size=t, attn="auto", ln="auto", compile=False)
            for m in ("124M", "355M")
            for b in (4, 8, 32)
            for t in (512, 1024)
        ],
        "train_timing": dict(steps=5, repeats=5, warmup=3),
        "sample": [("124M", (1, 8, 64), 128, 128), ("1.5B", (1, 8, 64), 128, 128)],
        "sample_repeats": 5,
    },
    "cuda-full": {
        "train": [
            dict(model=m, batch_size=16, block_size=1024, attn=a, ln=n, compile=c)
            for m in ("124M", "355M")
            for a in ("math", "sdpa", "triton")
            for n in ("torch", "triton")
            for c in (False, True)
        ]
        + [
            dict(model=m, batch_size=b, block_size=t, attn="auto", ln="auto", compile=c)
            for m in ("124M", "355M")
            for b in (4, 8, 16, 32)
            for t in (256, 512, 1024)
            for c in (False, True)
        ],
        "train_timing": dict(steps=10, repeats=5, warmup=3),
        "sample": [("124M", (1, 8, 64), 128, 256), ("355M", (1, 8, 64), 128, 256), ("1.5B", (1, 8, 64), 128, 256)],
        "sample_repeats": 5,
    },
}

# The CPU figures the fast-decoding issue asks for, with its targets.
CPU_TARGETS = {
    # int8 / int4: weight-only quantized (minigpt.model.quantize) bf16 model, against transformers in float32
    "decode": dict(
        model="124M",
        batch_size=1,
        prompt_len=16,
        new_tokens=128,
        dtypes=("float32", "bfloat16", "int8", "int4"),
        target_ratio={"float32": 1.2, "bfloat16": 2.0, "int8": 3.0, "int4": None},
        repeats=3,
        int4_group_size=64,
    ),
    "train": dict(
        model="124M",
        batch_size=4,
        block_size=256,
        attn="sdpa",
        ln="torch",
        compile=False,
        steps=1,
        repeats=5,
        warmup=2,
        target_tokens_per_s=245.0,
    ),
    "matmul_n": 2048,
}


def model_config(name: str, block_size: int | None = None) -> GPTConfig:
    config = MODELS[name]
    if block_size is not None and block_size > config.block_size:
        config = GPTConfig(**{**config.to_dict(), "block_size": block_size})
    return config


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (where the OS has them): how busy the machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------
# Suites


def run_train(device: torch.device, plan: dict, peak: float, max_contention: float) -> list[dict]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results = []
    for case in plan["train"]:
        config = model_config(case["model"], case["block_size"])
        log(f"train {case}")
        reason = triton_unavailable_reason(device)
        if reason is not None and "triton" in (case["attn"], case["ln"]):
            record = {**case, "skipped": reason}
        else:
            try:
                record = e2e.bench_train(
                    config,
                    device=device,
                    dtype=dtype,
                    peak=peak,
                    max_contention=max_contention,
                    **{k: v for k, v in case.items() if k != "model"},
                    **plan["train_timing"],
                )
            except torch.OutOfMemoryError as e:
                record = {**case, "skipped": f"out of memory: {str(e).splitlines()[0]}"}
                torch.cuda.empty_cache()
        record["model"] = case["model"]
        if "tokens_per_s" in record:
            log(f"  {record['tokens_per_s']:.0f} tok/s, MFU {record['mfu']:.3f}")
        else:
            log(f"  skipped: {record['skipped']}")
        results.append(record)
    return results


def build_model(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    with torch.device(device):  # random init on the device itself: quick for 1.5B on a GPU
        model = GPT(model_config(name))
    return set_backends(model.to(dtype).eval())  # auto: the Triton kernels on CUDA


def run_sample(device: torch.device, plan: dict, max_contention: float, with_hf: bool) -> list[dict]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results = []
    for name, batch_sizes, prompt_len, new_tokens in plan["sample"]:
        model = build_model(name, device, dtype)
        for B in batch_sizes:
            log(f"sample {name} B={B} prompt={prompt_len} new={new_tokens} {dtype}")
            try:
                record = e2e.bench_sample(
                    model,
                    batch_size=B,
                    prompt_len=prompt_len,
                    new_tokens=new_tokens,
                    repeats=plan["sample_repeats"],
                    with_hf=with_hf,
                    max_contention=max_contention,
                )
            except torch.OutOfMemoryError as e:
                record = {"batch_size": B, "skipped": f"out of memory: {str(e).splitlines()[0]}"}
                torch.cuda.empty_cache()
            results.append({"model": name, "params": model.config.num_params(), **record})
        del model
    return results


def run_kernels(device: torch.device, quick: bool) -> dict:
    try:
        from bench.kernel_speed import run_kernel_bench
    except ImportError as e:
        log(f"kernels suite skipped: bench/kernel_speed.py cannot be imported ({e})")
        return {"skipped": f"bench/kernel_speed.py cannot be imported: {e}"}
    return run_kernel_bench(device, quick)


def _no_progress(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def run_cpu_targets(
    max_contention: float,
    parts: tuple[str, ...] = ("decode", "train"),
    out: dict | None = None,
    part: Callable[[str], contextlib.AbstractContextManager] = _no_progress,
) -> dict:
    """The cpu-targets figures, filled into `out` (a new dict by default) as they are measured;
    each of `parts` runs inside part(name) (PartialResults.part: timed, and written when done)."""
    device = torch.device("cpu")
    spec = CPU_TARGETS
    out = {} if out is None else out
    out.update(decode=[], train=None)
    d = spec["decode"]
    # The matmul ceiling drifts with the machine (a shared VM's): measured at the start and
    # again beside the training step, and the higher of the two used.
    matmuls: list[dict] = []

    def ceiling_at_start() -> None:
        matmuls.append(e2e.matmul_peak(device, torch.float32, spec["matmul_n"], repeats=10))
        out["matmul_fp32"] = matmuls[0]

    if "decode" in parts:
        with part("decode"):
            ceiling_at_start()
            _cpu_decode(out, d, max_contention)
    if "train" in parts:
        with part("train"):
            if not matmuls:
                ceiling_at_start()
            _cpu_train(out, spec, matmuls, max_contention)
    return out


def _cpu_decode(out: dict, d: dict, max_contention: float) -> None:
    device = torch.device("cpu")
    for dtype_name in d["dtypes"]:
        quantized = dtype_name in ("int8", "int4")
        log(f"cpu-targets decode {d['model']} {dtype_name}")
        hf = None
        if quantized:  # transformers has no such CPU path: its float32 model, on the same float weights
            hf = e2e.hf_twin(build_model(d["model"], device, torch.float32))
            model = build_model(d["model"], device, torch.bfloat16)
            quantize_model(model, dtype_name, group_size=d["int4_group_size"])
        else:
            model = build_model(d["model"], device, getattr(torch, dtype_name))
        record = e2e.bench_sample(
            model,
            batch_size=d["batch_size"],
            prompt_len=d["prompt_len"],
            new_tokens=d["new_tokens"],
            repeats=d["repeats"],
            max_contention=max_contention,
            hf=hf,
        )
        del hf
        if quantized:
            record.update(
                dtype=dtype_name,
                activations="bfloat16",
                baseline="transformers float32",
                group_size=d["int4_group_size"] if dtype_name == "int4" else None,
            )
        record["target_ratio"] = d["target_ratio"][dtype_name]
        record["meets_target"] = (
            None if record["target_ratio"] is None else record["ratio"]["decode"] >= record["target_ratio"]
        )
        # bytes of weights read per token: every parameter once (the tied wte as the lm_head); quantized,
        # every parameter and buffer but the embeddings (one row of each is read) once
        tensors = [
            t
            for name, t in [*model.named_parameters(), *model.named_buffers()]
            if not (quantized and name.startswith(("transformer.wte.", "transformer.wpe.")))
        ]
        weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
        record["weight_bytes"] = weight_bytes
        record["weight_gb_per_s"] = weight_bytes * record["ours"]["decode_tokens_per_s"] / 1e9
        log(f"cpu-targets decode {dtype_name}: --decode auto against --decode simple")
        record["auto_vs_simple"] = decode_auto_vs_simple(model, d, max_contention)
        out["decode"].append({"model": d["model"], **record})
        del model


def _cpu_train(out: dict, spec: dict, matmuls: list[dict], max_contention: float) -> None:
    device = torch.device("cpu")
    t = spec["train"]
    log(f"cpu-targets train {t}")
    matmuls.append(e2e.matmul_peak(device, torch.float32, spec["matmul_n"], repeats=10))
    ceiling = out["matmul_fp32"] = max(matmuls, key=lambda m: m["flops"])
    out["matmul_fp32_measurements"] = [m["flops"] for m in matmuls]
    config = model_config(t["model"], t["block_size"])
    record = e2e.bench_train(
        config,
        device=device,
        dtype=torch.float32,
        peak=ceiling["flops"],
        max_contention=max_contention,
        **{k: v for k, v in t.items() if k not in ("model", "target_tokens_per_s")},
    )
    record.update(
        model=t["model"],
        target_tokens_per_s=t["target_tokens_per_s"],
        meets_target=record["tokens_per_s"] >= t["target_tokens_per_s"],
        fraction_of_matmul_ceiling=record["mfu"],
        ceiling_tokens_per_s=ceiling["flops"] / record["flops_per_token"],
    )
    out["train"] = record
    # The same step, in the same run, as the usual alternatives would run it.
    out["train_baselines"] = []
    for implementation in ("minigpt-plain-loss", "transformers"):
        log(f"cpu-targets train baseline {implementation}")
        base = e2e.bench_train(
            config,
            device=device,
            dtype=torch.float32,
            peak=ceiling["flops"],
            max_contention=max_contention,
            implementation=implementation,
            **{k: v for k, v in t.items() if k not in ("model", "target_tokens_per_s")},
        )
        base.update(model=t["model"], minigpt_speedup=record["tokens_per_s"] / base["tokens_per_s"])
        out["train_baselines"].append(base)


def decode_auto_vs_simple(model: GPT, d: dict, max_contention: float) -> dict:
    """Decode tok/s of what sample.py's --decode auto runs on a CPU (minigpt.generate.decoder.Decoder, its
    cpu_linear chosen by timing) and --decode simple (one model(token, cache=cache) per token),
    timed in alternation; the ratio is the median of the per-round ratios."""
    B, P, N = d["batch_size"], d["prompt_len"], d["new_tokens"]
    idx = torch.randint(0, model.config.vocab_size, (B, P), generator=torch.Generator().manual_seed(1))
    decoder = Decoder(model, B, P + N + 1)
    fns = {
        ("auto", 1): lambda: decoder.generate(idx, 1, temperature=0),
        ("auto", N + 1): lambda: decoder.generate(idx, N + 1, temperature=0),
        ("simple", 1): lambda: generate(model, idx, 1, temperature=0),
        ("simple", N + 1): lambda: generate(model, idx, N + 1, temperature=0),
    }
    same = torch.equal(fns[("auto", N + 1)](), fns[("simple", N + 1)]())
    t = e2e.time_interleaved(fns, torch.device("cpu"), repeats=d["repeats"], max_contention=max_contention)

    def rates(side: str) -> list[float]:
        return [
            B * N / (full - first)
            for full, first in zip(t[(side, N + 1)]["times_s"], t[(side, 1)]["times_s"], strict=True)
        ]

    auto, simple = rates("auto"), rates("simple")
    record = {
        "auto_decode_tokens_per_s": statistics.median(auto),
        "simple_decode_tokens_per_s": statistics.median(simple),
        "ratio": statistics.median(a / s for a, s in zip(auto, simple, strict=True)),
        "cpu_linear": decoder.cpu_linear,
        "greedy_tokens_equal": same,
        "max_contention": max(c or 0.0 for r in t.values() for c in r["contention"]),
    }
    log(
        f"  auto {record['auto_decode_tokens_per_s']:.1f} tok/s, simple {record['simple_decode_tokens_per_s']:.1f} "
        f"tok/s: {record['ratio']:.2f}x (cpu_linear {decoder.cpu_linear})"
    )
    return record


# ----------------------------------------------------------------------------------------------
# Partial results


class PartialResults:
    """One results file (JSON, Markdown) written as its parts finish, so an interrupted or
    unfinished run keeps what it measured.

    It is written at once (environment and settings, no part done), and again after each part,
    atomically, with everything measured so far: "complete": false, "parts" (those planned),
    "parts_done" and "wall_s" (seconds per finished part); finish() writes it "complete": true.
    write(payload, final) writes the files and returns their paths, the JSON first.
    """

    def __init__(self, payload: dict, parts: list[str], write: Callable[[dict, bool], list[Path]], label: str):
        payload.update(complete=False, parts=list(parts), parts_done=[], wall_s={})
        self.payload, self.write, self.label = payload, write, label
        self.path = self.write(payload, False)[0]

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Time the body; when it ends without an exception, record the part as done and rewrite the files."""
        log(f"{self.label} {name}: started")
        start = time.perf_counter()
        yield
        wall = time.perf_counter() - start
        self.payload["parts_done"].append(name)
        self.payload["wall_s"][name] = round(wall, 3)
        self.write(self.payload, False)
        log(f"{self.label} {name}: done in {wall:.1f} s (results so far in {self.path})")

    def finish(self) -> list[Path]:
        """Mark the results complete and write them a last time (with the plot, where there is one)."""
        self.payload["complete"] = True
        return self.write(self.payload, True)


# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--suite", default="all", help=f"comma-separated suites: {', '.join(SUITES)}, or all (= {', '.join(ALL)})"
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device to run on (default: cuda when available, else cpu)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="the smallest sizes: seconds, for tests")
    size.add_argument("--full", action="store_true", help="every size (on a CPU: minutes, with torch.compile)")
    p.add_argument("--no-transformers", action="store_true", help="sample suite: skip the transformers baseline")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; cpu-targets uses 2 unless given)",
    )
    p.add_argument(
        "--max-contention",
        type=float,
        default=0.1,
        help="rerun a timed repeat when other processes used more than this fraction of the CPUs",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results directory (default: a new folder under {RUNS_DIR}, ignored by git)",
    )
    p.add_argument(
        "--update-results",
        action="store_true",
        help=f"write into {RESULTS_DIR}, replacing the committed results of these suites",
    )
    p.add_argument("--no-plot", action="store_true", help="write JSON and Markdown but no PNG")
    p.add_argument(
        "--cpu-targets-parts",
        default="decode,train",
        help="cpu-targets: which halves to run (decode, train; comma-separated); with one of them "
        "the files are cpu-targets-<part>.json/.md, so the other half's committed results stay",
    )
    args = p.parse_args(argv)
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    suites = [s for name in suites for s in (ALL if name == "all" else (name,))]
    unknown = [s for s in suites if s not in SUITES]
    if unknown or not suites:
        p.error(f"unknown suite(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SUITES)} or all")
    args.suites = list(dict.fromkeys(suites))
    try:
        args.out = output_dir(args.out, args.update_results, "-".join(args.suites))
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: no CUDA GPU is available", file=sys.stderr)
        return 2
    cpu_parts = tuple(part.strip() for part in args.cpu_targets_parts.split(",") if part.strip())
    if "cpu-targets" in args.suites and (not cpu_parts or set(cpu_parts) - {"decode", "train"}):
        print(f"error: --cpu-targets-parts {args.cpu_targets_parts!r}: choose decode, train or both", file=sys.stderr)
        return 2
    cpu_parts = tuple(p for p in ("decode", "train") if p in cpu_parts)
    if args.threads is None and "cpu-targets" in args.suites:
        args.threads = 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":  # as train.py: TF32 for the fp32 matmuls autocast leaves
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    files: list[PartialResults] = []  # the results files begun so far
    results_dir = None
    if args.update_results:  # partial files go to a run folder: bench/results only ever gets complete ones
        results_dir, args.out = args.out, output_dir(None, False, "-".join(args.suites))
    start = time.perf_counter()
    try:
        written = run_suites(args, device, cpu_parts, files)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (entrypoint.Interrupted): what was measured is on disk
        if not files:
            raise
        where = " and ".join(str(f.path) for f in files)
        print(f"error: interrupted; the results measured so far are in {where}", file=sys.stderr, flush=True)
        return entrypoint.exit_code(e)
    if results_dir is not None:
        written = [atomic_write(results_dir / path.name, path.read_bytes()) for path in written]
    for path in written:
        log(f"wrote {path}")
    log(f"suite {','.join(args.suites)}: done in {time.perf_counter() - start:.1f} s")
    return 0


def run_suites(args: argparse.Namespace, device: torch.device, cpu_parts: tuple[str, ...], files: list) -> list[Path]:
    """Every suite asked for, each results file begun (appended to `files`) before its first part
    and rewritten as each part finishes; the paths of the complete files."""
    size = "tiny" if args.tiny else ("full" if args.full else "quick")
    plan = PLANS["tiny"] if size == "tiny" else PLANS[f"{'cuda' if device.type == 'cuda' else 'cpu'}-{size}"]
    settings = {
        "suites": args.suites,
        "size": size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "max_contention": args.max_contention,
        "transformers_baseline": not args.no_transformers,
        "plan": {k: v for k, v in plan.items()},
        "tf32": device.type == "cuda",
        "train_dtype": "bfloat16 autocast" if device.type == "cuda" else "float32",
        "sample_dtype": "bfloat16" if device.type == "cuda" else "float32",
        "decode_method": "time(generate N+1) - time(generate 1), greedy, both sides timed in alternation",
        "loadavg_at_start": load_average(),
    }
    written = []
    e2e_suites = [s for s in args.suites if s in ALL]
    if e2e_suites:
        payload = {"benchmark": "e2e", "environment": environment(device), "settings": settings}
        stem = args.out / f"e2e-{device_tag(device)}"
        results = PartialResults(
            payload,
            e2e_suites,
            lambda payload, final: report.write(payload, stem, plot_png=final and not args.no_plot),
            "e2e",
        )
        files.append(results)
        if "train" in e2e_suites:
            with results.part("train"):
                matmul_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
                n = 8192 if device.type == "cuda" else (512 if size == "tiny" else 2048)
                matmul = e2e.matmul_peak(device, matmul_dtype, n)
                peak, source = e2e.peak_flops(
                    device, torch.bfloat16 if device.type == "cuda" else torch.float32, matmul
                )
                rows = run_train(device, plan, peak, args.max_contention)
                for r in rows:
                    if "tokens_per_s" in r:
                        r["matmul_fraction"] = r["flops_per_token"] * r["tokens_per_s"] / matmul["flops"]
                payload.update(matmul=matmul, peak={"flops": peak, "source": source}, train=rows)
        if "sample" in e2e_suites:
            with results.part("sample"):
                payload["sample"] = run_sample(device, plan, args.max_contention, not args.no_transformers)
        if "kernels" in e2e_suites:
            with results.part("kernels"):
                payload["kernels"] = run_kernels(device, quick=size != "full")
        written += results.finish()
        print(report.stdout_table(payload))
    if "cpu-targets" in args.suites:
        if device.type != "cpu":
            log("cpu-targets runs on the CPU whatever --device says")
        cpu_settings = {
            "threads": torch.get_num_threads(),
            "max_contention": args.max_contention,
            "targets": CPU_TARGETS,
            "decode_method": "time(generate 129 tokens) - time(generate 1 token), greedy, both sides "
            "timed in alternation: 128 decode steps with load, prefill and first "
            "token excluded; the ratio is the median of the per-round ratios",
            "mfu_peak": "fp32 matmul measured in this run (matmul_fp32)",
            "loadavg_at_start": load_average(),
            "parts": list(cpu_parts),
        }
        payload = {"benchmark": "cpu-targets", "environment": environment("cpu"), "settings": cpu_settings}
        stem = args.out / ("cpu-targets" if len(cpu_parts) == 2 else f"cpu-targets-{cpu_parts[0]}")
        results = PartialResults(
            payload, list(cpu_parts), lambda payload, final: report.write_cpu_targets(payload, stem), "cpu-targets"
        )
        files.append(results)
        run_cpu_targets(args.max_contention, cpu_parts, out=payload, part=results.part)
        written += results.finish()
        print(report.cpu_targets_table(payload))
    return written


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
