"""End-to-end measurements: training throughput and MFU, and sampling throughput next to
transformers' GPT2LMHeadModel.generate on the same weights. Run by bench/run.py (--suite train,
sample, cpu-targets) and bench/gpu_suite.py (the train and decode stages).

Timing (STYLE.md): warm-up excluded, the device synchronised only at the edges of a timed
region, the median of repeats reported. On a CPU that other work shares, every repeat
also records the fraction of the machine's CPU time that *other* processes used while
it ran (`contention`, from /proc/stat minus this process's own CPU time); a repeat above
`max_contention` is thrown away and run again, up to a limit, and what was kept is in the
record either way.

Peak memory is torch.cuda.max_memory_allocated on a GPU (reset before each case) and
the peak resident set size on a CPU (VmHWM, reset through /proc/self/clear_refs before
each case), so it includes the Python process, the libraries and every model alive at
the time; `memory_added_bytes` is the peak less what was in use when the case began
(the cache, activations, gradients and optimizer state the case itself needed).
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

from bench.common import log
from minigpt.generate.decoder import Decoder
from minigpt.model.backends import set_backends
from minigpt.model.config import GPTConfig
from minigpt.model.families import GPT2
from minigpt.model.model import GPT
from minigpt.model.weights import hf_state_dict
from minigpt.train.config import TrainConfig
from minigpt.train.flops import device_peak_flops, flops_per_token
from minigpt.train.optim import configure_optimizer

# ----------------------------------------------------------------------------------------------
# Timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def time_once(fn: Callable[[], object], device: torch.device) -> tuple[float, float | None]:
    """(seconds, contention) of one call: the fraction of all CPUs that other processes used."""
    synchronize(device)
    busy0, own0, t0 = _machine_busy_seconds(), _own_cpu_seconds(), time.perf_counter()
    fn()
    synchronize(device)
    seconds = time.perf_counter() - t0
    busy1, own1 = _machine_busy_seconds(), _own_cpu_seconds()
    if busy0 is None or busy1 is None:
        return seconds, None
    others = (busy1 - busy0) - (own1 - own0)
    return seconds, max(0.0, others) / (seconds * (os.cpu_count() or 1))


def time_repeats(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    max_contention: float = 1.0,
    max_tries: int | None = None,
) -> dict:
    """Median time of `repeats` calls after `warmup` untimed ones; see the module docstring."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    max_tries = max_tries or 3 * repeats
    tries: list[tuple[float, float | None]] = []
    while len(tries) < max_tries:
        tries.append(time_once(fn, device))
        if sum(1 for _, c in tries if c is None or c <= max_contention) >= repeats:
            break
    # The `repeats` least contended tries: all below max_contention unless the machine never was.
    used = sorted(tries, key=lambda tc: tc[1] or 0.0)[:repeats]
    return {
        "median_s": statistics.median(t for t, _ in used),
        "times_s": [t for t, _ in used],
        "contention": [None if c is None else round(c, 3) for _, c in used],
        "rejected_for_contention": len(tries) - len(used),
    }


# ----------------------------------------------------------------------------------------------
# Memory


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict that holds, on exit, the peak memory of the block (see the module docstring)."""
    record: dict = {}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield record
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        record.update(
            peak_memory_bytes=peak, memory_added_bytes=peak - start, memory_kind="torch.cuda.max_memory_allocated"
        )
        return
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        kind = "peak RSS of the process (VmHWM, reset before the case)"
    except OSError:
        kind = "peak RSS of the process since it started (ru_maxrss; no /proc/self/clear_refs)"
    start = _rss_bytes("VmRSS:")
    yield record
    peak = _rss_bytes("VmHWM:")
    record.update(peak_memory_bytes=peak, memory_added_bytes=None if start is None else peak - start, memory_kind=kind)


def _release_free_heap() -> None:
    """Hand memory that earlier cases freed back to the OS (glibc's malloc_trim), so that it
    does not count as resident when the next case starts."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: the peak then also holds what the allocator kept
        return
    libc.malloc_trim(0)


def _rss_bytes(field: str) -> int | None:
    """VmRSS (now) or VmHWM (peak) from /proc/self/status; ru_maxrss for the peak elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if field == "VmHWM:" else None


# ----------------------------------------------------------------------------------------------
# Peaks


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> dict:
    """FLOP/s of an (n, n) @ (n, n) matmul: the ceiling that MFU is measured against on a CPU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_repeats(lambda: a @ b, device, repeats=repeats, warmup=2, max_contention=0.05)
    flops = 2 * n**3 / t["median_s"]
    log(f"matmul {n}x{n}x{n} {str(dtype).removeprefix('torch.')}: {flops / 1e9:.1f} GFLOP/s")
    return {"flops": flops, "n": n, "dtype": str(dtype).removeprefix("torch."), **t}


def peak_flops(device: torch.device, train_dtype: torch.dtype, measured: dict) -> tuple[float, str]:
    """The peak an MFU is quoted against: the datasheet's on a known GPU, else the measured matmul."""
    if device.type == "cuda":
        flops, note = device_peak_flops(device)
        if flops is not None and train_dtype == torch.bfloat16:
            return flops, f"datasheet (minigpt.train.flops.PEAK_FLOPS): {note}"
    return measured["flops"], (
        f"measured in this run: {measured['dtype']} {measured['n']}^3 matmul, median of {len(measured['times_s'])}"
    )


# ----------------------------------------------------------------------------------------------
# Training throughput


TRAIN_IMPLEMENTATIONS = ("minigpt", "minigpt-plain-loss", "transformers")


def bench_train(
    config: GPTConfig,
    *,
    batch_size: int,
    block_size: int,
    attn: str,
    ln: str,
    compile: bool,
    device: torch.device,
    dtype: torch.dtype,
    steps: int,
    repeats: int,
    warmup: int,
    peak: float,
    max_contention: float = 1.0,
    seed: int = 0,
    implementation: str = "minigpt",
) -> dict:
    """Tokens/s of forward + backward + AdamW step (with gradient clipping, as train.py does).

    `implementation` runs the same step on a baseline instead: "minigpt-plain-loss" is this
    model with F.cross_entropy over the whole logits tensor (as nanoGPT computes its loss), and
    "transformers" is GPT2LMHeadModel (its default attention) with the same optimizer, taking
    the loss from `labels` as its users do.
    """
    if implementation not in TRAIN_IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; choose from {TRAIN_IMPLEMENTATIONS}")
    torch.manual_seed(seed)
    model = set_backends(GPT(config).to(device), attn, ln).train()
    data = torch.randint(0, config.vocab_size, (batch_size, block_size + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]
    loss_fn = model  # model(x, y) is the loss
    if implementation == "minigpt-plain-loss":

        def loss_fn(x, y):
            logits = model(x)
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
    elif implementation == "transformers":
        model = hf_twin(model).train()
        model.config.use_cache = False

        def loss_fn(x, y):
            return model(input_ids=x, labels=x).loss

    optimizer = configure_optimizer(model, TrainConfig(), device.type)
    params = [p for p in model.parameters()]
    if compile:
        loss_fn = torch.compile(loss_fn)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def train_steps():
        for _ in range(steps):
            with autocast:
                loss = loss_fn(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    with peak_memory(device) as memory:
        t = time_repeats(train_steps, device, repeats=repeats, warmup=warmup, max_contention=max_contention)
    tokens = steps * batch_size * block_size
    tok_s = tokens / t["median_s"]
    fpt = flops_per_token(config, block_size)
    backends = model.backends if isinstance(model, GPT) else (model.config._attn_implementation, "torch")
    record = {
        "implementation": implementation,
        "params": config.num_params(),
        "batch_size": batch_size,
        "block_size": block_size,
        "attn": backends[0],
        "ln": backends[1],
        "compile": compile,
        "dtype": str(dtype).removeprefix("torch."),
        "steps_per_repeat": steps,
        "step_ms": 1e3 * t["median_s"] / steps,
        "tokens_per_s": tok_s,
        "flops_per_token": fpt,
        "mfu": fpt * tok_s / peak,
        **memory,
        **{k: v for k, v in t.items() if k != "median_s"},
    }
    return record


# ----------------------------------------------------------------------------------------------
# Sampling throughput, ours against transformers


def hf_twin(model: GPT):
    """transformers' GPT2LMHeadModel holding the same weights as `model` (same device and dtype)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    param = next(model.parameters())
    cfg = GPT2.config_to_hf(model.config)
    cfg.pop("architectures")
    with torch.device(param.device):
        hf = GPT2LMHeadModel(GPT2Config(**cfg))
    result = hf.load_state_dict(hf_state_dict(model.state_dict(), model.config), strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise RuntimeError(f"weights do not map onto GPT2LMHeadModel: {result}")
    hf = hf.to(dtype=param.dtype).eval()
    hf.generation_config.eos_token_id = None  # always generate exactly max_new_tokens
    hf.generation_config.pad_token_id = 0
    return hf


def bench_sample(
    model: GPT,
    *,
    batch_size: int,
    prompt_len: int,
    new_tokens: int,
    repeats: int,
    with_hf: bool = True,
    max_contention: float = 1.0,
    seed: int = 0,
    hf=None,
) -> dict:
    """Prefill tokens/s, time to first token and decode tokens/s (greedy), ours and transformers'.

    Prefill: one forward of the prompt into an empty cache, logits of the last position only.
    TTFT: generate(1 token), prompt in, token out. Decode: time(generate N + 1 tokens) -
    time(generate 1 token), N decode steps with the load, the prefill and the first token
    excluded, measured the same way on both sides. The two sides are timed in alternation,
    round by round, so that a machine whose speed drifts (a shared VM's memory bandwidth
    does) slows both alike; `ratio` holds the medians of the per-round ratios. `hf` is the
    transformers model to compare with (default: hf_twin(model), the same weights).
    """
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    B, P, N = batch_size, prompt_len, new_tokens
    g = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randint(0, model.config.vocab_size, (B, P), generator=g).to(device)
    decoder = Decoder(model, B, P + N + 1)
    record = {
        "batch_size": B,
        "prompt_len": P,
        "new_tokens": N,
        "dtype": str(dtype).removeprefix("torch."),
        "decode_mode": decoder.mode,
    }

    def prefill_ours():
        with torch.inference_mode():
            decoder.prefill(idx)

    sides = {
        "ours": {
            "prefill": prefill_ours,
            "generate_1": lambda: decoder.generate(idx, 1, temperature=0),
            "generate_full": lambda: decoder.generate(idx, N + 1, temperature=0),
        }
    }
    outputs = {}
    if with_hf:
        hf = hf if hf is not None else hf_twin(model)
        mask = torch.ones_like(idx)

        def hf_generate(n: int):
            with torch.inference_mode():
                return hf.generate(idx, attention_mask=mask, max_new_tokens=n, do_sample=False)

        def prefill_hf():  # as its generate() runs it: logits of the last position only
            with torch.inference_mode():
                hf(input_ids=idx, attention_mask=mask, use_cache=True, logits_to_keep=1)

        sides["transformers"] = {
            "prefill": prefill_hf,
            "generate_1": lambda: hf_generate(1),
            "generate_full": lambda: hf_generate(N + 1),
        }
    memory = {}
    for side, fns in sides.items():  # an untimed run each, for the peak memory (and a warm-up)
        with peak_memory(device) as memory[side]:
            outputs[side] = fns["generate_full"]()
    timings = time_interleaved(
        {(side, name): fn for side, fns in sides.items() for name, fn in fns.items()},
        device,
        repeats=repeats,
        max_contention=max_contention,
    )
    for side in sides:
        t = {name: timings[(side, name)] for name in sides[side]}
        record[side] = _sample_figures(B, P, N, t["prefill"], t["generate_1"], t["generate_full"]) | memory[side]
    if not with_hf:
        log(f"  ours: decode {record['ours']['decode_tokens_per_s']:.1f} tok/s")
        return record

    def per_round(side: str, name: str) -> list[float]:
        return timings[(side, name)]["times_s"]

    def decode_rates(side: str) -> list[float]:
        return [
            B * N / (full - first)
            for full, first in zip(per_round(side, "generate_full"), per_round(side, "generate_1"), strict=True)
        ]

    record["greedy_tokens_equal"] = bool(torch.equal(outputs["ours"], outputs["transformers"]))
    record["ratio"] = {
        "decode": statistics.median(
            o / h for o, h in zip(decode_rates("ours"), decode_rates("transformers"), strict=True)
        ),
        "prefill": statistics.median(
            h / o for o, h in zip(per_round("ours", "prefill"), per_round("transformers", "prefill"), strict=True)
        ),
        "ttft": statistics.median(
            h / o for o, h in zip(per_round("ours", "generate_1"), per_round("transformers", "generate_1"), strict=True)
        ),
        "method": "median over rounds of ours / transformers (rates) or transformers / ours (times)",
    }
    o, h = record["ours"], record["transformers"]
    log(
        f"  decode {o['decode_tokens_per_s']:.1f} tok/s (transformers {h['decode_tokens_per_s']:.1f}, "
        f"paired ratio {record['ratio']['decode']:.2f}x); ttft {1e3 * o['ttft_s']:.1f} ms "
        f"(transformers {1e3 * h['ttft_s']:.1f} ms)"
    )
    return record


def time_interleaved(
    fns: dict, device: torch.device, repeats: int, max_contention: float = 1.0, max_tries: int = 3
) -> dict:
    """Time each of fns once per round, for `repeats` rounds (after one warm-up call each).

    A call that ran while other processes used more than max_contention of the CPUs is
    run again, up to max_tries times, and the least contended try kept.
    """
    for fn in fns.values():
        fn()
    results = {key: {"times_s": [], "contention": [], "rejected_for_contention": 0} for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            tries = []
            while len(tries) < max_tries:
                tries.append(time_once(fn, device))
                if tries[-1][1] is None or tries[-1][1] <= max_contention:
                    break
            seconds, other = min(tries, key=lambda tc: tc[1] or 0.0)
            r = results[key]
            r["times_s"].append(seconds)
            r["contention"].append(None if other is None else round(other, 3))
            r["rejected_for_contention"] += len(tries) - 1
    for r in results.values():
        r["median_s"] = statistics.median(r["times_s"])
    return results


def _sample_figures(B: int, P: int, N: int, prefill: dict, first: dict, full: dict) -> dict:
    decode_s = full["median_s"] - first["median_s"]
    return {
        "prefill_s": prefill["median_s"],
        "prefill_tokens_per_s": B * P / prefill["median_s"],
        "ttft_s": first["median_s"],
        "decode_s": decode_s,
        "decode_tokens_per_s": B * N / decode_s if decode_s > 0 else math.nan,
        "timings": {"prefill": prefill, "generate_1": first, f"generate_{N + 1}": full},
    }
