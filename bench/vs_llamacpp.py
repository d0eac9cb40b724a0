"""minigpt against llama.cpp on the CPU, on the same GPT-2 124M weights.

    python bench/vs_llamacpp.py                       # build llama.cpp once (cached), then measure
    python bench/vs_llamacpp.py --update-results      # write bench/results/vs-llamacpp-cpu.json
    python bench/vs_llamacpp.py --build-only          # just the llama.cpp build

llama.cpp comes from the llama-cpp-python source distribution on PyPI (`pip download`, no binary),
which vendors a llama.cpp tree; llama-bench, llama-simple and llama-quantize are built from it with
cmake into ~/.cache/minigpt/llama.cpp/<version>-<flags>/ (never in the repository). "native" is
GGML_NATIVE=ON; on a CPU with AMX a second build, "noamx", turns GGML_NATIVE off and names the
AVX-512 extensions one by one with the AMX ones off, so the quantized prefill rows can be read
without AMX's tile kernels. A CPU without AMX skips that build (native already has no AMX).

A random-init GPT-2 124M is saved with minigpt's own writer and exported by minigpt.export at f32,
f16, q8_0 and q4_0. Before timing anything, llama.cpp's greedy tokens on the f32 file must equal
minigpt's (on a copy whose block weights are scaled up, PARITY_BLOCK_SCALE, so that its greedy
tokens do not repeat); the q8_0 file is also checked against llama-quantize's own q8_0 of the f32 file.

Then the two engines take turns (A B A B ...) for each figure:
- decode: tokens/s at batch 1, 128 new tokens, the prompt excluded (llama-bench's tg128; for
  minigpt the Decoder's steps after prefill, as bench/run.py's cpu-targets measures decode),
  each also as a fraction of the memory bandwidth (a large tensor copy measured in this run):
  the weights' bytes read per token times tokens/s over the copy's bytes/s;
- prefill: tokens/s over a 512-token prompt (llama-bench's pp512; minigpt's Decoder prefill);
- start-up: seconds from starting the process to the first generated token, whole program
  (llama-simple; minigpt's sample.py), and the process's peak resident memory (its rusage).

The machine may be shared with other work: the JSON says so, and the rounds are short.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `minigpt` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minigpt import entrypoint  # noqa: E402  (imports no torch)

if __name__ == "__main__":  # before torch is imported
    entrypoint.start()

import torch  # noqa: E402

from bench.common import environment, log, output_dir, write_json  # noqa: E402
from minigpt.cli import OneLineParser  # noqa: E402
from minigpt.export.gguf import TYPES, export_gguf  # noqa: E402
from minigpt.generate.decoder import Decoder  # noqa: E402
from minigpt.model.config import preset  # noqa: E402
from minigpt.model.load import from_pretrained, save_pretrained  # noqa: E402
from minigpt.model.model import GPT  # noqa: E402
from minigpt.model.quantize import quantize_model  # noqa: E402
from minigpt.provenance import cpu_model  # noqa: E402
from minigpt.tokenizers import GPT2Tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python release whose vendored llama.cpp is built
CACHE = Path.home() / ".cache" / "minigpt" / "llama.cpp"
TARGETS = ("llama-bench", "llama-simple", "llama-quantize")
COMMON_CMAKE = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DGGML_CCACHE=OFF",
)
# The builds by name: their cmake switches beyond COMMON_CMAKE.
BUILDS = {
    "native": ("-DGGML_NATIVE=ON",),
    "noamx": (
        "-DGGML_NATIVE=OFF",
        *(
            f"-DGGML_{flag}=ON"
            for flag in ("SSE42", "AVX", "AVX2", "BMI2", "FMA", "F16C", "AVX512", "AVX512_VBMI", "AVX512_VNNI")
        ),
        "-DGGML_AVX512_BF16=ON",
        "-DGGML_AMX_TILE=OFF",
        "-DGGML_AMX_INT8=OFF",
        "-DGGML_AMX_BF16=OFF",
    ),
}


# ----------------------------------------------------------------------------------------------
# llama.cpp: download once, build once per flag set


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def builds_wanted() -> list[str]:
    """native always; noamx only where the CPU has AMX (elsewhere it would be the same code)."""
    return ["native", "noamx"] if any(flag.startswith("amx") for flag in cpu_flags()) else ["native"]


def sdist() -> Path:
    """The llama-cpp-python source archive, downloaded by pip once into the cache."""
    folder = CACHE / "sdist"
    found = sorted(folder.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    log(f"downloading llama-cpp-python {LLAMA_CPP_PYTHON} (source) with pip")
    command = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON}"]
    subprocess.run([*command, "--no-deps", "--no-binary", ":all:", "-d", str(folder)], check=True)
    found = sorted(folder.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"))
    if not found:
        raise RuntimeError(f"pip left no llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz in {folder}")
    return found[0]


def source_tree() -> Path:
    """llama.cpp's source, unpacked from the sdist once (into a temp folder, then renamed)."""
    tree = CACHE / f"{LLAMA_CPP_PYTHON}-src"
    if (tree / "CMakeLists.txt").exists():
        return tree
    archive = sdist()
    log(f"unpacking {archive.name}")
    scratch = Path(tempfile.mkdtemp(dir=CACHE, prefix=".unpack-"))
    with tarfile.open(archive) as tar:
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(scratch, members=members, filter="data")
    (scratch / prefix / ".git").unlink(missing_ok=True)  # a submodule pointer to a folder the sdist lacks
    os.replace(scratch / prefix, tree)
    shutil.rmtree(scratch, ignore_errors=True)
    return tree


def build(name: str, jobs: int = 2) -> Path:
    """Build TARGETS with BUILDS[name] (at nice 19); returns the folder holding the binaries."""
    folder = CACHE / f"{LLAMA_CPP_PYTHON}-{name}"
    binaries = folder / "bin"
    if all((binaries / target).exists() for target in TARGETS):
        return binaries
    tree = source_tree()
    log(f"building llama.cpp ({name}) in {folder}: tens of minutes on two cores")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(tree), "-B", str(folder), *generator, *COMMON_CMAKE, *BUILDS[name]]
    subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    subprocess.run([*nice, "cmake", "--build", str(folder), "-j", str(jobs), "--target", *TARGETS], check=True)
    return binaries


def sdist_sha256() -> str:
    return hashlib.sha256(sdist().read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# The model, its GGUF files and the checks before timing

# The rows: llama.cpp's type against minigpt's nearest CPU decode, (dtype, weight-only quantization or
# None). f16 twice: float16 is the same weights (decodes faster on a CPU without native float16
# arithmetic, prefills slower), bfloat16 the 16-bit type minigpt's CPU kernels favour.
PAIRS = [
    ("f32", ("float32", None)),
    ("f16", ("float16", None)),
    ("f16", ("bfloat16", None)),
    ("q8_0", ("bfloat16", "int8")),
    ("q4_0", ("bfloat16", "int4")),
]
PROMPT = "The meaning of life is"


# The greedy-parity model's block matrices are scaled up from GPT-2's init (std 0.02) by this
# factor: at 1x a random-init GPT-2 repeats one token (its tied embedding dominates the residual),
# a check a wrong attention or MLP would still pass; at 3x its 32 greedy tokens are nearly all
# distinct, so any difference in the blocks' maths shows.
PARITY_BLOCK_SCALE = 3.0


def make_model(folder: Path, block_scale: float = 1.0) -> Path:
    """A random-init GPT-2 124M (seed 0) with GPT-2's tokenizer, saved by minigpt; block_scale
    multiplies the transformer blocks' weight matrices (see PARITY_BLOCK_SCALE)."""
    directory = folder / ("gpt2-random" if block_scale == 1.0 else f"gpt2-random-x{block_scale:g}")
    if not (directory / "model.safetensors").exists():
        torch.manual_seed(0)
        model = GPT(preset("gpt2")).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 2 and ".h." in name:
                    p.mul_(block_scale)
        save_pretrained(model, directory)
        GPT2Tokenizer().save_pretrained(directory)
    return directory


def export_all(directory: Path, folder: Path) -> dict[str, dict]:
    files = {}
    for name in TYPES:
        path = folder / f"gpt2-random-{name}.gguf"
        start = time.perf_counter()
        if not path.exists():
            export_gguf(directory, path, name)
        files[name] = {"path": path, "export_s": round(time.perf_counter() - start, 2), "bytes": path.stat().st_size}
    return files


GNU_TIME = Path("/usr/bin/time")  # GNU time's %M: the command's own peak resident set


def run_process(command: list[str]) -> tuple[bytes, float, int | None]:
    """(stdout, wall seconds, peak resident bytes or None) of a command that must succeed.

    The peak comes from GNU time, which starts the command itself: a child forked straight from
    this process would report this process's peak (Linux carries the high-water mark of the
    forked copy across exec), so its own rusage would be wrong by the size of the benchmark."""
    peak_file = None
    if GNU_TIME.exists():
        fd, peak_file = tempfile.mkstemp(prefix="vs-llamacpp-", suffix=".peak")
        os.close(fd)
        command = [str(GNU_TIME), "-f", "%M", "-o", peak_file, *command]
    try:
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True)
        wall = time.perf_counter() - start
        if proc.returncode:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{Path(command[0]).name} failed ({proc.returncode}): {' | '.join(tail)}")
        peak = int(Path(peak_file).read_text().split()[-1]) * 1024 if peak_file else None
    finally:
        if peak_file:
            Path(peak_file).unlink(missing_ok=True)
    return proc.stdout, wall, peak


def greedy_parity(binaries: Path, directory: Path, f32: Path, n: int = 32) -> dict:
    """llama-simple's greedy continuation of PROMPT on the f32 file against minigpt's, as bytes."""
    tok = GPT2Tokenizer()
    model = from_pretrained(directory)
    ids = torch.tensor([tok.encode(PROMPT)])
    out = Decoder(model, 1, ids.size(1) + n + 1).generate(ids, n, temperature=0, eos_id=tok.eot_id)
    ours = out[0, ids.size(1) :].tolist()
    ours_bytes = tok.encoding.decode_bytes(ours)
    stdout, _, _ = run_process([str(binaries / "llama-simple"), "-m", str(f32), "-n", str(n), PROMPT])
    theirs = stdout.removeprefix(PROMPT.encode()).removesuffix(b"\n")
    return {
        "prompt": PROMPT,
        "new_tokens": n,
        "minigpt_tokens": ours,
        "distinct_tokens": len(set(ours)),
        "equal": theirs == ours_bytes,
        "llama_cpp_text": theirs.decode(errors="replace"),
        "minigpt_text": ours_bytes.decode(errors="replace"),
    }


def quantize_parity(binaries: Path, files: dict, folder: Path) -> dict:
    """Our q8_0 file against llama-quantize's q8_0 of our f32 file: tensors byte for byte."""
    import gguf

    theirs = folder / "gpt2-random-q8_0-llama-quantize.gguf"
    theirs.unlink(missing_ok=True)
    run_process([str(binaries / "llama-quantize"), str(files["f32"]["path"]), str(theirs), "q8_0", "2"])
    a = {t.name: t for t in gguf.GGUFReader(str(files["q8_0"]["path"])).tensors}
    b = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
    same = [n for n in a if n in b and a[n].tensor_type == b[n].tensor_type and bytes(a[n].data) == bytes(b[n].data)]
    differ = {n: f"{a[n].tensor_type.name} vs {b[n].tensor_type.name}" for n in a if n in b and n not in same}
    theirs.unlink(missing_ok=True)
    return {"tensors": len(a), "identical": len(same), "names_equal": set(a) == set(b), "differ": differ}


# ----------------------------------------------------------------------------------------------
# Measurements


def bandwidth(mib: int = 512, repeats: int = 5) -> dict:
    """Memory bandwidth of a large tensor copy (bytes read + written per second), median of repeats."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return {"copy_mib": mib, "bytes_per_s": 2 * src.numel() * 4 / statistics.median(times), "times_s": times}


def gguf_read_bytes(path: Path) -> int:
    """Weight bytes one decode step reads from a GGUF file: every tensor but the position table
    (one row of it; the token embedding is read whole as the output matrix when tied)."""
    import gguf

    tensors = gguf.GGUFReader(str(path)).tensors
    return sum(int(t.n_bytes) for t in tensors if t.name != "position_embd.weight")


def minigpt_model(directory: Path, pair: tuple[str, str | None]) -> tuple[GPT, int]:
    """The model for one row, and the weight bytes it reads per decoded token (as bench/run.py counts them)."""
    dtype, quant = pair
    model = from_pretrained(directory, dtype=getattr(torch, dtype))
    if quant is not None:
        quantize_model(model, quant, group_size=32)  # q4_0's and q8_0's blocks are 32 wide
    tensors = [
        t
        for name, t in [*model.named_parameters(), *model.named_buffers()]
        if not name.startswith("transformer.wpe.") and not (quant and name.startswith("transformer.wte."))
    ]
    return model, sum(t.numel() * t.element_size() for t in tensors)


def llama_bench(binaries: Path, path: Path, prompt: int, new: int, threads: int) -> float:
    """tokens/s of one llama-bench run (after its own warm-up): pp<prompt> or tg<new>."""
    command = [str(binaries / "llama-bench"), "-m", str(path), "-p", str(prompt), "-n", str(new)]
    stdout, _, _ = run_process([*command, "-t", str(threads), "-r", "1", "-o", "json"])
    rows = json.loads(stdout)
    return float(rows[0]["avg_ts"])


def minigpt_decode(model: GPT, new: int) -> tuple[float, str]:
    """Decode tokens/s at batch 1: (new tokens) / (time for 1 + new tokens - time for 1), prompt of one token;
    and the CPU linears the Decoder's timed trial chose (made here whatever the decode's length, as a
    long-running server would: once per model shape, dtype, batch size and thread count)."""
    idx = torch.zeros(1, 1, dtype=torch.long)
    decoder = Decoder(model, 1, new + 2)
    decoder.choose_cpu_linear()
    decoder.generate(idx, new + 1, temperature=0)  # warm-up
    start = time.perf_counter()
    decoder.generate(idx, 1, temperature=0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    decoder.generate(idx, new + 1, temperature=0)
    return new / (time.perf_counter() - start - first), decoder.cpu_linear


def minigpt_prefill(model: GPT, prompt: int) -> float:
    idx = torch.randint(0, model.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(1))
    decoder = Decoder(model, 1, prompt + 1)
    decoder.generate(idx, 1, temperature=0)  # warm-up
    start = time.perf_counter()
    decoder.generate(idx, 1, temperature=0)
    return prompt / (time.perf_counter() - start)


def start_up(binaries: Path, directory: Path, path: Path, pair: tuple[str, str | None]) -> dict:
    """Seconds from starting each program to its first generated token (the whole process, one new
    token) and its peak resident memory: llama-simple, and sample.py on the same weights."""
    _, llama_s, llama_rss = run_process([str(binaries / "llama-simple"), "-m", str(path), "-n", "1", PROMPT])
    dtype, quant = pair
    command = [sys.executable, str(REPO / "sample.py"), "--init", str(directory), "--prompt", PROMPT]
    command += ["--max-new-tokens", "1", "--temperature", "0", "--device", "cpu", "--dtype", dtype]
    if quant:
        command += ["--quantize", quant] + (["--quantize-group-size", "32"] if quant == "int4" else [])
    _, ours_s, ours_rss = run_process(command)
    return {
        "llama_cpp_s": llama_s,
        "llama_cpp_peak_bytes": llama_rss,
        "minigpt_s": ours_s,
        "minigpt_peak_bytes": ours_rss,
    }


def measure(binaries: Path, directory: Path, files: dict, rounds: int, threads: int, new: int, prompt: int) -> list:
    """For each type: decode, prefill and start-up, the two engines alternating A B A B."""
    rows = []
    for name, pair in PAIRS:
        path = files[name]["path"]
        log(f"{name}: llama.cpp {name} against minigpt {pair[0]}{' ' + pair[1] if pair[1] else ''}")
        model, our_bytes = minigpt_model(directory, pair)
        their_bytes = gguf_read_bytes(path)
        r = {k: [] for k in ("llama_decode", "minigpt_decode", "llama_prefill", "minigpt_prefill", "start_up")}
        paths = set()
        for _ in range(rounds):
            r["llama_decode"].append(llama_bench(binaries, path, 0, new, threads))
            speed, cpu_linear = minigpt_decode(model, new)
            r["minigpt_decode"].append(speed)
            paths.add(cpu_linear)
            r["llama_prefill"].append(llama_bench(binaries, path, prompt, 0, threads))
            r["minigpt_prefill"].append(minigpt_prefill(model, prompt))
            r["start_up"].append(start_up(binaries, directory, path, pair))
        del model
        med = {k: statistics.median(v) for k, v in r.items() if k != "start_up"}
        starts = {k: statistics.median(s[k] for s in r["start_up"]) for k in r["start_up"][0]}
        rows.append(
            {
                "llama_cpp_type": name,
                "minigpt": {"dtype": pair[0], "quantize": pair[1], "group_size": 32 if pair[1] == "int4" else None},
                "minigpt_cpu_linear": sorted(paths),  # the Decoder's measured choice (one, unless rounds disagreed)
                "decode_tokens_per_s": {"llama_cpp": med["llama_decode"], "minigpt": med["minigpt_decode"]},
                "decode_weight_bytes_per_token": {"llama_cpp": their_bytes, "minigpt": our_bytes},
                "prefill_tokens_per_s": {"llama_cpp": med["llama_prefill"], "minigpt": med["minigpt_prefill"]},
                "start_up_to_first_token_s": {"llama_cpp": starts["llama_cpp_s"], "minigpt": starts["minigpt_s"]},
                "peak_memory_bytes": {
                    "llama_cpp": starts["llama_cpp_peak_bytes"],
                    "minigpt": starts["minigpt_peak_bytes"],
                },
                "rounds": {k: v for k, v in r.items()},
            }
        )
        log(
            f"{name}: decode {med['llama_decode']:.1f} vs {med['minigpt_decode']:.1f} tok/s, "
            f"prefill {med['llama_prefill']:.0f} vs {med['minigpt_prefill']:.0f} tok/s, "
            f"first token {starts['llama_cpp_s']:.2f} vs {starts['minigpt_s']:.2f} s"
        )
    return rows


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def table(rows: list[dict], bytes_per_s: float) -> str:
    """The Markdown table of the results (decode also as a fraction of the measured copy bandwidth)."""
    lines = [
        "| llama.cpp / minigpt | decode tok/s (of bandwidth) | prefill 512 tok/s | first token s | peak MiB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        d, b = r["decode_tokens_per_s"], r["decode_weight_bytes_per_token"]
        frac = {k: d[k] * b[k] / bytes_per_s for k in d}
        m = r["minigpt"]
        ours = m["dtype"] + (f" {m['quantize']}" if m["quantize"] else "")
        p, s, mem = r["prefill_tokens_per_s"], r["start_up_to_first_token_s"], r["peak_memory_bytes"]
        lines.append(
            f"| {r['llama_cpp_type']} / {ours} | {d['llama_cpp']:.1f} ({frac['llama_cpp']:.0%}) / "
            f"{d['minigpt']:.1f} ({frac['minigpt']:.0%}) | {p['llama_cpp']:.0f} / {p['minigpt']:.0f} | "
            f"{s['llama_cpp']:.2f} / {s['minigpt']:.2f} | "
            f"{mib(mem['llama_cpp'])} / {mib(mem['minigpt'])} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(description="minigpt against llama.cpp on the CPU (GPT-2 124M, random weights).")
    p.add_argument("--build-only", action="store_true", help="build llama.cpp (cached) and stop")
    p.add_argument("--rounds", type=int, default=3, help="A B rounds per figure (default 3)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama-bench threads (default: every core)")
    p.add_argument("--new-tokens", type=int, default=128, help="decoded tokens (default 128)")
    p.add_argument("--prompt-tokens", type=int, default=512, help="prefill length (default 512)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: a new bench/runs/ folder)")
    p.add_argument("--update-results", action="store_true", help="write bench/results/vs-llamacpp-cpu.json")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.new_tokens < 1 or args.prompt_tokens < 1 or args.threads < 1:
        p.error("--rounds, --threads, --new-tokens and --prompt-tokens must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    try:
        out = output_dir(args.out, args.update_results, "vs-llamacpp")
        builds = {name: build(name) for name in builds_wanted()}
    except (subprocess.CalledProcessError, RuntimeError, ValueError) as e:
        print(f"error: the llama.cpp build failed: {e}", file=sys.stderr)
        return 1
    if args.build_only:
        print("\n".join(str(b) for b in builds.values()))
        return 0
    torch.set_num_threads(args.threads)
    work = CACHE / "bench-model"
    directory = make_model(work)
    log("exporting f32, f16, q8_0 and q4_0 with minigpt.export")
    files = export_all(directory, work)
    binaries = builds["native"]
    parity_dir = make_model(work, PARITY_BLOCK_SCALE)
    parity_f32 = work / f"{parity_dir.name}-f32.gguf"
    if not parity_f32.exists():
        export_gguf(parity_dir, parity_f32, "f32")
    parity = {"block_scale": PARITY_BLOCK_SCALE, **greedy_parity(binaries, parity_dir, parity_f32)}
    log(f"greedy tokens equal on the f32 file: {parity['equal']}")
    if not parity["equal"]:
        print(f"error: llama.cpp's greedy tokens differ from minigpt's: {parity}", file=sys.stderr)
        return 1
    q8 = quantize_parity(binaries, files, work)
    log(f"q8_0: {q8['identical']} of {q8['tensors']} tensors identical to llama-quantize's")
    load_before = list(os.getloadavg())
    bw = bandwidth()
    rows = measure(binaries, directory, files, args.rounds, args.threads, args.new_tokens, args.prompt_tokens)
    bw_after = bandwidth()
    bytes_per_s = statistics.median([bw["bytes_per_s"], bw_after["bytes_per_s"]])
    noamx = None
    if "noamx" in builds:  # quantized prefill without AMX's tile kernels
        noamx = {
            name: statistics.median(
                llama_bench(builds["noamx"], files[name]["path"], args.prompt_tokens, 0, args.threads)
                for _ in range(args.rounds)
            )
            for name in ("q8_0", "q4_0")
        }
    result = {
        "benchmark": "vs-llamacpp",
        "environment": environment("cpu"),
        "cpu_model": cpu_model(),
        "cpu_has_amx": any(f.startswith("amx") for f in cpu_flags()),
        "llama_cpp": {
            "source": f"llama-cpp-python {LLAMA_CPP_PYTHON} sdist (PyPI), vendored llama.cpp",
            "sdist_sha256": sdist_sha256(),
            "builds": {name: list(COMMON_CMAKE + BUILDS[name]) for name in builds},
        },
        "model": "GPT-2 124M shape, random init (seed 0), exported by minigpt.export.gguf",
        "files": {k: {"bytes": v["bytes"], "export_s": v["export_s"]} for k, v in files.items()},
        "settings": {
            "rounds": args.rounds,
            "threads": args.threads,
            "new_tokens": args.new_tokens,
            "prompt_tokens": args.prompt_tokens,
        },
        "greedy_parity_f32": parity,
        "q8_0_vs_llama_quantize": q8,
        "bandwidth": {"before": bw, "after": bw_after, "bytes_per_s": bytes_per_s},
        "rows": rows,
        "prefill_without_amx_tokens_per_s": noamx,
        "load_average": {"before": load_before, "after": list(os.getloadavg())},
        "notes": [
            "The machine may be shared with other work (load_average: 1, 5 and 15 minutes); rounds are short.",
            "decode: llama-bench tg (no prompt) against minigpt's Decoder after a one-token prompt; a fraction is "
            "weight bytes read per token x tokens/s over the copy bandwidth measured in this run.",
            "start-up: llama-simple (its fixed 4 threads) and sample.py, each a fresh process to its first token.",
            "f16 against float16 (the same weights) and bfloat16; minigpt has no q8_0/q4_0 CPU path: those rows "
            "are bfloat16 with int8 per channel or int4 in groups of 32 weight-only quantization.",
            "minigpt's decode runs its Decoder with the CPU linears its timed trial chose (minigpt_cpu_linear).",
        ],
    }
    path = write_json(out / "vs-llamacpp-cpu.json", result)
    print(table(rows, bytes_per_s))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
