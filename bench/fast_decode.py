"""CPU decode: int8-dynamic (W8A8) and the compiled step against the paths before them, with
llama.cpp measured in the same rounds on the same weights.

    python bench/fast_decode.py                                   # GPT-2 124M shape, random init
    python bench/fast_decode.py --quality-init out                # also bits per byte: int8 vs int8-dynamic
    python bench/fast_decode.py --update-results                  # bench/results/fast-decode-cpu.json

Needs bench/vs_llamacpp.py's build and GGUF files (run it once). Every round times, one after
another, llama-bench's tg<N> and each minigpt variant of the same row (N greedy tokens at batch 1
after a one-token prompt, the prompt excluded): on a machine shared with other work, ratios of
figures taken side by side in each round are what to read; each figure is the median over rounds.
"compiled" variants are minigpt.generate.decoder's mode "compiled", the others sample.py's
--decode auto (the Decoder with F.linear for a decode this short, or the quantized kernels); the
compile's seconds are recorded beside them. --quality-init scores held-out text (as
bench/quantize_quality.py) with the float32 model, weight-only int8 and int8-dynamic.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `minigpt` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

import torch  # noqa: E402

from bench.common import environment, log, output_dir, write_json  # noqa: E402
from bench.vs_llamacpp import CACHE, LLAMA_CPP_PYTHON, llama_bench  # noqa: E402
from minigpt.generate.decoder import Decoder  # noqa: E402
from minigpt.model.load import from_pretrained  # noqa: E402
from minigpt.model.quantize import quantize_model  # noqa: E402
from minigpt.provenance import cpu_model  # noqa: E402

# Rows: the llama.cpp type, and minigpt's variants beside it: (name, dtype, quantization, decode mode).
ROWS = {
    "f32": [("float32", "float32", None, "auto"), ("float32 compiled", "float32", None, "compiled")],
    "f16": [("bfloat16", "bfloat16", None, "auto"), ("bfloat16 compiled", "bfloat16", None, "compiled")],
    "q8_0": [
        ("int8 (weight-only, bf16)", "bfloat16", "int8", "auto"),
        ("int8-dynamic (fp32)", "float32", "int8-dynamic", "auto"),
        ("int8-dynamic (fp32) compiled", "float32", "int8-dynamic", "compiled"),
    ],
    "q4_0": [
        ("int4 g32 (bf16)", "bfloat16", "int4", "auto"),
        ("int4 g32 (bf16) compiled", "bfloat16", "int4", "compiled"),
    ],
}


def load(directory: Path, dtype: str, quant: str | None) -> torch.nn.Module:
    model = from_pretrained(directory, dtype=getattr(torch, dtype))
    return model if quant is None else quantize_model(model, quant, group_size=32)


def decode_rate(decoder: Decoder, new: int) -> float:
    """Greedy tokens/s of `new` decode steps after a one-token prompt (the prefill and first token excluded)."""
    idx = torch.zeros(1, 1, dtype=torch.long)
    steps = decoder.steps(idx, new + 1, temperature=0)
    next(steps)
    start = time.perf_counter()
    for _ in steps:
        pass
    return new / (time.perf_counter() - start)


def prefill_rate(model, prompt: int) -> float:
    idx = torch.randint(0, model.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(1))
    decoder = Decoder(model, 1, prompt + 1)
    start = time.perf_counter()
    decoder.generate(idx, 1, temperature=0)
    return prompt / (time.perf_counter() - start)


def measure_row(binaries: Path, directory: Path, kind: str, rounds: int, new: int, threads: int, prefill: int) -> dict:
    variants = {}
    for name, dtype, quant, mode in ROWS[kind]:
        model = load(directory, dtype, quant)
        decoder = Decoder(model, 1, new + 2, mode=mode)
        start = time.perf_counter()
        decode_rate(decoder, new)  # warm-up; for "compiled", the compilation
        variants[name] = dict(
            model=model,
            decoder=decoder,
            dtype=dtype,
            quantize=quant,
            mode=mode,
            first_decode_s=round(time.perf_counter() - start, 2),
        )
        log(f"{kind}: {name} ready ({variants[name]['first_decode_s']} s first decode)")
    gguf = directory.parent / f"gpt2-random-{kind}.gguf"
    llama, ours = [], {name: [] for name in variants}
    pre_llama, pre_ours = [], {name: [] for name in variants}
    for r in range(rounds):
        llama.append(llama_bench(binaries, gguf, 0, new, threads))
        for name, v in variants.items():
            ours[name].append(decode_rate(v["decoder"], new))
        if prefill:
            pre_llama.append(llama_bench(binaries, gguf, prefill, 0, threads))
            for name, v in variants.items():
                if v["mode"] != "compiled":  # the compiled step is a decode step: the prefill is the same
                    pre_ours[name].append(prefill_rate(v["model"], prefill))
        log(
            f"{kind} round {r + 1}: llama.cpp {llama[-1]:.1f} tok/s; "
            + "; ".join(f"{name} {rates[-1]:.1f}" for name, rates in ours.items())
        )
    row = {
        "llama_cpp_type": kind,
        "llama_cpp_decode_tokens_per_s": statistics.median(llama),
        "llama_cpp_decode_rounds": llama,
        "variants": [],
    }
    if prefill:
        row["llama_cpp_prefill_tokens_per_s"] = statistics.median(pre_llama)
        row["llama_cpp_prefill_rounds"] = pre_llama
    for name, v in variants.items():
        # per round, ours over llama.cpp's taken just before it; the median of those ratios
        ratios = [a / b for a, b in zip(ours[name], llama, strict=True)]
        entry = {
            "name": name,
            "dtype": v["dtype"],
            "quantize": v["quantize"],
            "decode_mode": v["mode"],
            "first_decode_s": v["first_decode_s"],
            "compilations": v["decoder"].compilations,
            "decode_tokens_per_s": statistics.median(ours[name]),
            "decode_rounds": ours[name],
            "decode_vs_llama_cpp": statistics.median(ratios),
        }
        if pre_ours[name]:
            entry["prefill_tokens_per_s"] = statistics.median(pre_ours[name])
            entry["prefill_vs_llama_cpp"] = statistics.median(
                [a / b for a, b in zip(pre_ours[name], pre_llama, strict=True)]
            )
        row["variants"].append(entry)
    first = ours[ROWS[kind][0][0]]
    for entry in row["variants"][1:]:  # each variant against the row's first (the path before it), per round
        entry["decode_vs_first"] = statistics.median([a / b for a, b in zip(ours[entry["name"]], first, strict=True)])
    return row


def start_up(directory: Path, rounds: int) -> dict:
    """Seconds to the first token of `sample.py --max-new-tokens 1` (a fresh process each time) beside those
    of `python -c "import torch"` alone, the floor any pure-PyTorch program starts from, in alternation."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    commands = {
        "import_torch": [sys.executable, "-c", "import torch"],
        "sample_py": [sys.executable, str(repo / "sample.py"), "--init", str(directory), "--max-new-tokens", "1"],
    }
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"})
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(v) for name, v in seconds.items()}
    log(f"start-up: import torch {median['import_torch']:.2f} s, sample.py {median['sample_py']:.2f} s")
    return {
        "median_s": median,
        "rounds_s": seconds,
        "sample_py_over_import_torch": [
            a / b for a, b in zip(seconds["sample_py"], seconds["import_torch"], strict=True)
        ],
    }


def quality(init: str, max_bytes: int) -> list[dict]:
    """Bits per byte of held-out text: float32, weight-only int8 (bf16 activations) and int8-dynamic."""
    from bench.quantize_quality import DEFAULT_DATA, held_out_text
    from minigpt.eval.evaluate import bits_per_byte
    from minigpt.tokenizers.lookup import tokenizer_for

    text = held_out_text(DEFAULT_DATA, max_bytes)
    tokenizer = tokenizer_for(init)
    variants = [
        ("float32", "float32", None),
        ("int8", "bfloat16", "int8"),
        ("int8-dynamic", "float32", "int8-dynamic"),
        ("int8-dynamic (bf16 model)", "bfloat16", "int8-dynamic"),
    ]
    rows = []
    for name, dtype, quant in variants:
        model = from_pretrained(init, dtype=getattr(torch, dtype))
        if quant is not None:
            quantize_model(model, quant)
        with torch.inference_mode():
            r = bits_per_byte(model, tokenizer, text)
        rows.append({"model": name, "dtype": dtype, "quantize": quant, "bpb": r["bpb"], "tokens": r["tokens"]})
        log(f"quality {name}: {r['bpb']:.4f} bits/byte")
    for row in rows:
        row["bpb_vs_float32"] = row["bpb"] - rows[0]["bpb"]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"llama.cpp types to compare ({', '.join(ROWS)})")
    p.add_argument("--rounds", type=int, default=3, help="rounds of side-by-side timings (median)")
    p.add_argument("--new-tokens", type=int, default=64, help="decode steps timed per figure")
    p.add_argument("--prefill", type=int, default=0, help="also time a prefill of this many tokens (0: none)")
    p.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads")
    p.add_argument("--quality-init", default=None, help="a trained checkpoint: also score int8 vs int8-dynamic")
    p.add_argument("--quality-bytes", type=int, default=20_000, help="bytes of held-out text to score")
    p.add_argument("--start-up-rounds", type=int, default=0, help="also time sample.py's start-up (0: no)")
    p.add_argument("--out", type=Path, default=None, help="results directory (default: a new bench/runs/ folder)")
    p.add_argument("--update-results", action="store_true", help="write bench/results/fast-decode-cpu.json")
    args = p.parse_args(argv)
    kinds = [k for k in args.rows.split(",") if k]
    if set(kinds) - set(ROWS):
        print(f"error: --rows {args.rows!r}: choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2
    binaries = CACHE / f"{LLAMA_CPP_PYTHON}-native" / "bin"
    directory = CACHE / "bench-model" / "gpt2-random"
    if not (binaries / "llama-bench").exists() or not (directory / "model.safetensors").exists():
        print("error: no llama.cpp build or GGUF files; run python bench/vs_llamacpp.py once", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    payload = {
        "benchmark": "fast-decode",
        "environment": environment("cpu"),
        "cpu_model": cpu_model(),
        "model": "GPT-2 124M shape, random init (seed 0): bench/vs_llamacpp.py's weights and GGUF files",
        "settings": vars(args) | {"out": None},
        "load_average_before": list(os.getloadavg()),
        "rows": [
            measure_row(binaries, directory, k, args.rounds, args.new_tokens, args.threads, args.prefill) for k in kinds
        ],
        "load_average_after": list(os.getloadavg()),
        "notes": [
            "The machine was shared with other work running at the same time: read the ratios "
            "taken side by side in each round (decode_vs_llama_cpp, decode_vs_first), not the absolute rates.",
            "decode: N greedy steps at batch 1 after a one-token prompt; llama.cpp: llama-bench tg<N>, same threads.",
            "first_decode_s: the first decode of N tokens, the compilation included for mode 'compiled' "
            "(Inductor's on-disk caches as they were: a second process compiles faster).",
        ],
    }
    if args.start_up_rounds:
        payload["start_up"] = start_up(directory, args.start_up_rounds)
    if args.quality_init:
        payload["quality"] = quality(args.quality_init, args.quality_bytes)
    payload["wall_s"] = round(time.perf_counter() - started, 1)
    out = output_dir(args.out, args.update_results, "fast-decode")
    out.mkdir(parents=True, exist_ok=True)
    path = write_json(out / "fast-decode-cpu.json", payload)
    for row in payload["rows"]:
        print(f"{row['llama_cpp_type']}: llama.cpp {row['llama_cpp_decode_tokens_per_s']:.1f} tok/s")
        for v in row["variants"]:
            print(
                f"  {v['name']:30s} {v['decode_tokens_per_s']:6.1f} tok/s  {v['decode_vs_llama_cpp']:.2f}x llama.cpp"
                + (f"  {v['decode_vs_first']:.2f}x the row's first" if "decode_vs_first" in v else "")
            )
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
