"""A 20B model on a 24 GB CPU machine: peak memory and speed of a quantized load of gpt-neox-20b's shape.

For each model shape (gpt-neox-20b, abeja's 2.7B GPT-NeoX-Japanese, rinna's 3.6B GPT-NeoX) this
writes a random-init checkpoint of the real shape in the transformers layout (config.json, fp16
safetensors shards and their model.safetensors.index.json; the values made a band at a time and
the shards written one at a time, so the writer holds little memory) into a scratch folder, then
in a fresh process per precision loads it with

    from_pretrained(dir, dtype=torch.bfloat16, quantize="int4")      # or "int8", or None (bf16)

on 2 threads and records the peak resident memory (VmHWM), the load time, the time to the first
token of a short prompt and the greedy decode speed at batch 1. The checkpoint is deleted
afterwards (also on an error or Ctrl-C) unless --keep. Results: bench/results/big-model-cpu.json.

    python bench/big_model.py                                  # all three, ~41 + 5 + 7 GB of disk in turn
    python bench/big_model.py --models 2.7b --precisions int4
    python bench/big_model.py --tiny --out /tmp/big.json       # the same path on tiny shapes, seconds

The weights are random, so the figures are of memory and speed only: the text is meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

import torch  # noqa: E402

from bench.common import RESULTS_DIR, RUNS_DIR, environment, log, status_bytes, write_json  # noqa: E402
from minigpt.cli import OneLineParser  # noqa: E402
from minigpt.model.families import family_of  # noqa: E402
from minigpt.model.load import build_on_meta  # noqa: E402
from minigpt.model.weights import PADDED  # noqa: E402
from minigpt.provenance import cpu_model  # noqa: E402

GB = 10**9
MARGIN_BYTES = 5 * GB  # free disk space asked for beyond the checkpoint itself
SHARD_BYTES = 2 * 2**30  # the largest shard written
BAND_ELEMENTS = 1 << 24  # random values made (and written) at a time
THREADS = 2
PROMPT_TOKENS = 16
NEW_TOKENS = 16
PRECISIONS = {"bf16": None, "int8": "int8", "int4": "int4"}  # name -> from_pretrained's quantize
# for the 20B at int4: name -> (field of its record, limit)
GOALS = {
    "peak_rss_under_14_gb": ("peak_rss_bytes", 14 * GB),
    "first_token_within_2_min": ("launch_to_first_token_s", 120),
}


@dataclass(frozen=True)
class Shape:
    title: str
    config: dict  # config.json, as the published checkpoint's (transformers' spelling)
    precisions: tuple[str, ...]  # loaded by default (bf16 only where it fits in 24 GB beside the system)


MODELS = {
    "20b": Shape(
        "EleutherAI/gpt-neox-20b",
        {
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "hidden_size": 6144,
            "num_hidden_layers": 44,
            "num_attention_heads": 64,
            "intermediate_size": 24576,
            "vocab_size": 50432,
            "max_position_embeddings": 2048,
            "rotary_pct": 0.25,
            "rotary_emb_base": 10000,
            "use_parallel_residual": True,
            "tie_word_embeddings": False,
            "hidden_act": "gelu_fast",
            "layer_norm_eps": 1e-5,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "torch_dtype": "float16",
        },
        ("int4",),
    ),
    "2.7b": Shape(
        "abeja/gpt-neox-japanese-2.7b",
        {
            "architectures": ["GPTNeoXJapaneseForCausalLM"],
            "model_type": "gpt_neox_japanese",
            "hidden_size": 2560,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "intermediate_multiple_size": 4,
            "vocab_size": 32000,
            "max_position_embeddings": 2048,
            "rotary_pct": 1.0,
            "rotary_emb_base": 10000,
            "tie_word_embeddings": True,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
            "bos_token_id": 31996,
            "eos_token_id": 31999,
            "torch_dtype": "float16",
        },
        ("bf16", "int8", "int4"),
    ),
    "3.6b": Shape(
        "rinna/japanese-gpt-neox-3.6b",
        {
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "hidden_size": 2816,
            "num_hidden_layers": 36,
            "num_attention_heads": 22,
            "intermediate_size": 11264,
            "vocab_size": 32000,
            "max_position_embeddings": 2048,
            "rotary_pct": 1.0,
            "rotary_emb_base": 10000,
            "use_parallel_residual": False,
            "tie_word_embeddings": False,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
            "bos_token_id": 2,
            "eos_token_id": 3,
            "torch_dtype": "float16",
        },
        ("bf16", "int8", "int4"),
    ),
}

# --tiny: the same families and switches at widths the int4 kernels take, for a test of the whole path
TINY = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512}
TINY_EXTRA = {"gpt_neox": {"intermediate_size": 512}, "gpt_neox_japanese": {}}


def tiny(shape: Shape) -> Shape:
    config = {**shape.config, **TINY, **TINY_EXTRA[shape.config["model_type"]], "bos_token_id": 0, "eos_token_id": 1}
    return Shape(shape.title + " (tiny)", config, shape.precisions)


# ----------------------------------------------------------------------------------------------
# Writing the checkpoint


def checkpoint_tensors(hf_config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(checkpoint key, stored shape) of every tensor of the family's checkpoints, in the model's order.
    The names and layouts come from minigpt.model.families (tests/bench/test_big_model.py checks a
    tiny one against transformers); the vocabulary rows are stored unpadded."""
    family = family_of(hf_config)
    config = family.config_from_hf(hf_config)
    out = []
    for name, t in build_on_meta(config).state_dict().items():
        shape = tuple(t.shape)
        if name in PADDED:
            shape = (config.vocab_size, *shape[1:])
        out.append((family.checkpoint_name(name), family.stored_shape(name, shape)))
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def checkpoint_bytes(hf_config: dict) -> int:
    return sum(2 * _numel(shape) for _, shape in checkpoint_tensors(hf_config))


def _shards(tensors: list[tuple[str, tuple[int, ...]]]) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards, size = [[]], 0
    for key, shape in tensors:
        nbytes = 2 * _numel(shape)
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((key, shape))
        size += nbytes
    return shards


def _write_values(f, key: str, shape: tuple[int, ...], seed: int) -> None:
    """A tensor's fp16 values, a band at a time: LayerNorm gains 1, other vectors 0, matrices N(0, 0.02)."""
    n = _numel(shape)
    if len(shape) == 1:
        value = 1.0 if key.endswith("layernorm.weight") or key.endswith("layer_norm.weight") else 0.0
        f.write(torch.full((n,), value, dtype=torch.float16).numpy().tobytes())
        return
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n, BAND_ELEMENTS):
        band = torch.randn(min(BAND_ELEMENTS, n - start), generator=gen).mul_(0.02).to(torch.float16)
        f.write(band.numpy().tobytes())


def write_checkpoint(hf_config: dict, directory: Path) -> int:
    """config.json, model-0000i-of-0000n.safetensors and model.safetensors.index.json; returns the bytes written.

    The safetensors format is an 8-byte little-endian header length, a JSON header (each tensor's
    dtype, shape and byte range, padded with spaces to 8 bytes), then the tensors' bytes in order;
    written by hand so that no tensor need be whole in memory (safetensors' save_file takes whole ones).
    """
    shards = _shards(checkpoint_tensors(hf_config))
    weight_map, total, seed = {}, 0, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for key, shape in shard:
            header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + 2 * _numel(shape)]}
            offset += 2 * _numel(shape)
            weight_map[key] = name
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(directory / name, "wb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            for key, shape in shard:
                seed += 1
                _write_values(f, key, shape, seed)
        total += offset
        log(f"  wrote {name} ({offset / GB:.2f} GB)")
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return total


# ----------------------------------------------------------------------------------------------
# Loading and decoding, in a fresh process per precision


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used (/proc/stat), to tell how much others used meanwhile."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def others_share(busy0: float, own0: float, seconds: float) -> float:
    """The share of all CPUs that other processes used over the last `seconds`."""
    others = (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0)
    return round(max(0.0, others) / (seconds * (os.cpu_count() or 1)), 3)


def child(path: str, precision: str) -> dict:
    """Load, then decode NEW_TOKENS greedy tokens after a PROMPT_TOKENS-token prompt at batch 1."""
    from minigpt.generate.simple import stream
    from minigpt.model.load import from_pretrained

    torch.set_num_threads(THREADS)
    busy0, own0, t0 = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    model = from_pretrained(path, dtype=torch.bfloat16, quantize=PRECISIONS[precision])
    load_s = time.perf_counter() - t0
    load_cpu_s = own_cpu_seconds() - own0  # this process's CPU time: what the load costs without contention
    load_others = others_share(busy0, own0, load_s)
    after_load = {f: status_bytes(f) for f in ("VmHWM", "RssAnon", "RssFile")}
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    busy0, own0, t0 = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    times, tokens, first_token_time = [], [], None
    for token in stream(model, prompt, NEW_TOKENS, temperature=0):
        tokens.append(int(token[0]))  # a CPU tensor: reading it waits for nothing
        times.append(time.perf_counter())
        first_token_time = first_token_time or time.time()
    decode_s = times[-1] - times[0]
    return {
        "precision": precision,
        "load_s": round(load_s, 2),
        "load_cpu_s": round(load_cpu_s, 1),
        "load_others_cpu_share": load_others,
        "first_token_s": round(times[0] - t0, 3),  # the prompt's forward after the load
        "first_token_unix_time": first_token_time,
        "decode_tokens_per_s": round((len(times) - 1) / decode_s, 3),
        "decode_others_cpu_share": others_share(busy0, own0, times[-1] - t0),
        "new_tokens": len(tokens),
        "tokens": tokens,
        "peak_rss_bytes": status_bytes("VmHWM"),
        "peak_rss_after_load_bytes": after_load["VmHWM"],
        "rss_anon_after_load_bytes": after_load["RssAnon"],
        "rss_file_after_load_bytes": after_load["RssFile"],
        "model_bytes": model_bytes,
    }


def run_child(directory: Path, precision: str) -> dict:
    """One load in a fresh process; its record, with the time from launch to its first token."""
    launched = time.time()
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(directory), precision], capture_output=True, text=True
    )
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        return {"precision": precision, "error": f"exit status {out.returncode}: {last}"}
    record = json.loads(out.stdout.strip().splitlines()[-1])
    record["launch_to_first_token_s"] = round(record.pop("first_token_unix_time") - launched, 2)
    return record


# ----------------------------------------------------------------------------------------------
# The run


def mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def estimated_bytes(hf_config: dict, precision: str) -> int:
    """About what the loaded model holds: 2 bytes a weight in bf16, 1 in int8, 0.5 + 1/16 (scales
    and zeros) in int4; the embedding stays bf16."""
    per_weight = {"bf16": 2.0, "int8": 1.0, "int4": 0.5625}[precision]
    n = checkpoint_bytes(hf_config) // 2
    embedding = hf_config["vocab_size"] * hf_config["hidden_size"]
    return int((n - embedding) * per_weight + 2 * embedding)


def parse_list(text: str, allowed, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise ValueError(f"--{what} {text!r}: expected a comma-separated list of {', '.join(allowed)}")
    return items


def bench_model(key: str, shape: Shape, precisions: list[str], scratch: Path, keep: bool) -> dict:
    size = checkpoint_bytes(shape.config)
    record = {"model": key, "shape_of": shape.title, "config": shape.config, "checkpoint_bytes": size, "runs": []}
    directory = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=scratch))
    try:
        log(f"{key}: writing a random {shape.title}-shaped checkpoint ({size / GB:.1f} GB) to {directory}")
        t0 = time.perf_counter()
        write_checkpoint(shape.config, directory)
        record["write_s"] = round(time.perf_counter() - t0, 1)
        for precision in precisions:
            needed, available = estimated_bytes(shape.config, precision), mem_available_bytes()
            if available is not None and needed > available:
                note = f"skipped: needs ~{needed / GB:.1f} GB, {available / GB:.1f} GB available"
                log(f"{key} {precision}: {note}")
                record["runs"].append({"precision": precision, "skipped": note})
                continue
            log(f"{key} {precision}: loading in a fresh process ...")
            run = run_child(directory, precision)
            record["runs"].append(run)
            if "error" in run:
                log(f"{key} {precision}: {run['error']}")
            else:
                log(
                    f"{key} {precision}: peak RSS {run['peak_rss_bytes'] / GB:.2f} GB, load {run['load_s']:.1f} s, "
                    f"first token {run['launch_to_first_token_s']:.1f} s after launch, "
                    f"{run['decode_tokens_per_s']:.2f} tokens/s"
                )
    finally:
        if keep:
            log(f"{key}: kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return record


def goals(records: list[dict]) -> dict | None:
    """Whether the 20B at int4 met the goals (peak RSS under 14 GB, first token within 2 minutes)."""
    run = next(
        (
            r
            for m in records
            if m["model"] == "20b"
            for r in m["runs"]
            if r["precision"] == "int4" and "peak_rss_bytes" in r
        ),
        None,
    )
    if run is None:
        return None
    return {name: run[field] < limit for name, (field, limit) in GOALS.items()}


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument(
        "--precisions",
        default=None,
        help=f"comma-separated, of {', '.join(PRECISIONS)} (default: bf16,int8,int4 for 2.7b and 3.6b, int4 for 20b)",
    )
    p.add_argument(
        "--scratch",
        type=Path,
        default=Path.home() / ".cache" / "minigpt" / "bench-big",
        help="where the checkpoints are written (a new folder inside it per model), on local disk",
    )
    p.add_argument("--keep", action="store_true", help="keep the checkpoints (default: delete each after its loads)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes of the same families: a check of the whole path")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default: bench/results/big-model-cpu.json)")
    p.add_argument("--child", nargs=2, metavar=("DIR", "PRECISION"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    try:
        keys = parse_list(args.models, MODELS, "models")
        precisions = None if args.precisions is None else parse_list(args.precisions, PRECISIONS, "precisions")
    except ValueError as e:
        p.error(str(e))
    shapes = {k: tiny(MODELS[k]) if args.tiny else MODELS[k] for k in keys}

    try:
        args.scratch.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(args.scratch).free
    except OSError as e:
        print(f"error: --scratch {args.scratch}: {e.strerror or e}", file=sys.stderr)
        return 1
    largest = max(checkpoint_bytes(s.config) for s in shapes.values())  # written one at a time
    if free < largest + MARGIN_BYTES:
        print(
            f"error: {args.scratch} has {free / GB:.1f} GB free; the largest checkpoint needs "
            f"{largest / GB:.1f} GB + {MARGIN_BYTES / GB:.0f} GB to spare (give another --scratch)",
            file=sys.stderr,
        )
        return 1
    out = args.out or (RUNS_DIR / "big-model-tiny.json" if args.tiny else RESULTS_DIR / "big-model-cpu.json")

    torch.set_num_threads(THREADS)
    started = {"loadavg_before": list(os.getloadavg()), "mem_available_before_bytes": mem_available_bytes()}
    records = []
    for key, shape in shapes.items():
        records.append(bench_model(key, shape, precisions or list(shape.precisions), args.scratch, args.keep))
        payload = {
            "environment": environment("cpu"),
            "cpu": cpu_model(),
            "threads": THREADS,
            "nice": os.nice(0),  # the children's scheduling priority (started with `nice -n 10`: 10)
            "note": (
                "random-init checkpoints of the published shapes (fp16 safetensors shards), each loaded with "
                "from_pretrained(dir, dtype=torch.bfloat16, quantize=...) in a fresh process on 2 threads; the "
                "machine was shared with other work while this ran (see the *_others_cpu_share fields and loadavg)"
            ),
            "tiny": args.tiny,
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": NEW_TOKENS,
            **started,
            "loadavg_after": list(os.getloadavg()),
            "goals_20b_int4": None if args.tiny else goals(records),
            "models": records,
        }
        write_json(out, payload)  # after each model: a long run's finished models are kept
    log(f"wrote {out}")
    failed = [f"{m['model']} {r['precision']}" for m in records for r in m["runs"] if "error" in r]
    if failed:
        print(f"error: a load failed ({', '.join(failed)}): see its error in {out}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
