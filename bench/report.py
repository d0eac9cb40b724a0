"""Results of bench/run.py as files: JSON (everything), Markdown tables and PNG plots."""

from __future__ import annotations

from pathlib import Path

from bench.common import write_json, write_text


def _mib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:.0f}"


def _memory(r: dict) -> str:
    """ "peak (added)" in MiB: see bench/e2e.py's docstring."""
    added = r.get("memory_added_bytes")
    return _mib(r["peak_memory_bytes"]) + ("" if added is None else f" ({_mib(added)})")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _contention(record: dict) -> str:
    values = [c for c in record.get("contention", []) if c is not None]
    return f"{max(values):.2f}" if values else ""


def train_table(results: list[dict]) -> str:
    header = [
        "model",
        "B",
        "T",
        "attn",
        "ln",
        "compile",
        "dtype",
        "tok/s",
        "MFU",
        "of matmul",
        "step ms",
        "peak (added) MiB",
        "max contention",
    ]
    rows = []
    for r in results:
        if "skipped" in r:
            rows.append(
                [
                    r["model"],
                    r["batch_size"],
                    r["block_size"],
                    r["attn"],
                    r["ln"],
                    r["compile"],
                    "",
                    f"skipped: {r['skipped']}",
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        rows.append(
            [
                r["model"],
                r["batch_size"],
                r["block_size"],
                r["attn"],
                r["ln"],
                r["compile"],
                r["dtype"],
                f"{r['tokens_per_s']:,.0f}",
                f"{r['mfu']:.3f}",
                f"{r.get('matmul_fraction', r['mfu']):.3f}",
                f"{r['step_ms']:.1f}",
                _memory(r),
                _contention(r),
            ]
        )
    return _table(header, rows)


def sample_table(results: list[dict]) -> str:
    header = [
        "model",
        "B",
        "prompt",
        "new",
        "dtype",
        "decode tok/s",
        "HF decode tok/s",
        "decode x",
        "TTFT ms",
        "HF TTFT ms",
        "prefill tok/s",
        "HF prefill tok/s",
        "peak (added) MiB",
        "HF peak (added) MiB",
        "greedy = HF",
    ]
    rows = []
    for r in results:
        if "skipped" in r:
            rows.append([r["model"], r["batch_size"]] + [""] * 3 + [f"skipped: {r['skipped']}"] + [""] * 9)
            continue
        o, h = r["ours"], r.get("transformers")
        rows.append(
            [
                r["model"],
                r["batch_size"],
                r["prompt_len"],
                r["new_tokens"],
                r["dtype"],
                f"{o['decode_tokens_per_s']:,.1f}",
                f"{h['decode_tokens_per_s']:,.1f}" if h else "",
                f"{r['ratio']['decode']:.2f}" if h else "",
                f"{1e3 * o['ttft_s']:.1f}",
                f"{1e3 * h['ttft_s']:.1f}" if h else "",
                f"{o['prefill_tokens_per_s']:,.0f}",
                f"{h['prefill_tokens_per_s']:,.0f}" if h else "",
                _memory(o),
                _memory(h) if h else "",
                r.get("greedy_tokens_equal", ""),
            ]
        )
    return _table(header, rows)


def _header(payload: dict) -> str:
    env = payload["environment"]
    return (
        f"{env['device']} · torch {env['torch']} · triton {env['triton']} · transformers {env['transformers']} "
        f"· commit {env['commit']} · {env['date']}"
    )


def _progress(payload: dict) -> list[str]:
    """A note at the top of a partial report (bench/run.py writes one as each part finishes)."""
    if payload.get("complete", True):
        return []
    done = payload.get("parts_done", [])
    left = [p for p in payload.get("parts", []) if p not in done]
    return [
        f"**Partial results**: the run has not finished (or was interrupted). Done: {', '.join(done) or 'none'}; "
        f"not done: {', '.join(left) or 'none'}.",
        "",
    ]


def _wall(payload: dict) -> list[str]:
    wall = payload.get("wall_s")
    if not wall:
        return []
    return ["Wall time per part: " + ", ".join(f"{name} {s:.1f} s" for name, s in wall.items()) + ".", ""]


def markdown(payload: dict) -> str:
    parts = [
        f"# End-to-end benchmarks ({payload['settings']['size']})",
        "",
        _header(payload),
        "",
        *_progress(payload),
        f"Load average at the start: {payload['settings'].get('loadavg_at_start')}. "
        "Peak memory: torch.cuda.max_memory_allocated on a GPU, peak RSS of the process on a CPU; in "
        "brackets, the part the case itself added. 'max contention': the largest share of the CPUs "
        "other processes used during a kept repeat.",
        "",
        *_wall(payload),
    ]
    if "matmul" in payload:
        m = payload["matmul"]
        parts += [
            f"Matmul ceiling measured in this run: {m['flops'] / 1e9:,.1f} GFLOP/s ({m['dtype']}, {m['n']}^3).",
            "",
        ]
    if "train" in payload:
        parts += [
            "## Training: forward + backward + AdamW step",
            "",
            f"MFU against: {payload['peak']['source']} ({payload['peak']['flops'] / 1e12:.3g} TFLOP/s); "
            "'of matmul' against the measured matmul.",
            "",
            train_table(payload["train"]),
            "",
        ]
    if "sample" in payload:
        parts += [
            "## Sampling: minigpt.generate.decoder against transformers' generate (greedy, same weights)",
            "",
            f"Decode: {payload['settings']['decode_method']}.",
            "",
            sample_table(payload["sample"]),
            "",
        ]
    if "kernels" in payload:
        k = payload["kernels"]
        parts += ["## Kernels", ""]
        parts += [
            f"skipped: {k['skipped']}"
            if "skipped" in k
            else f"See bench/kernel_speed.py; copy bandwidth {k['copy']['gbps']:.1f} GB/s, "
            f"{len(k['attention'])} attention and {len(k['layer_norm'])} LayerNorm cases in the JSON.",
            "",
        ]
    return "\n".join(parts)


def stdout_table(payload: dict) -> str:
    out = []
    if "train" in payload:
        out.append("train")
        for r in payload["train"]:
            if "tokens_per_s" in r:
                out.append(
                    f"  {r['model']:9s} B={r['batch_size']:<3d} T={r['block_size']:<5d} {r['attn']:6s} "
                    f"{r['ln']:6s} compile={str(r['compile']):5s} {r['tokens_per_s']:>10,.0f} tok/s "
                    f"MFU {r['mfu']:.3f}"
                )
    if "sample" in payload:
        out.append("sample (decode tok/s: ours / transformers)")
        for r in payload["sample"]:
            if "ours" in r:
                h = r.get("transformers")
                theirs = f" / {h['decode_tokens_per_s']:,.1f} = {r['ratio']['decode']:.2f}x" if h else ""
                out.append(
                    f"  {r['model']:9s} B={r['batch_size']:<3d} {r['ours']['decode_tokens_per_s']:,.1f}"
                    f"{theirs}  ttft {1e3 * r['ours']['ttft_s']:.1f} ms"
                )
    if "kernels" in payload:
        k = payload["kernels"]
        if "skipped" in k:
            out.append(f"kernels: skipped ({k['skipped']})")
        else:
            try:
                from bench.kernel_speed import format_table
            except ImportError:
                out.append("kernels: see the JSON")
            else:
                out.append(format_table(k))
    return "\n".join(out)


def plot(payload: dict, path: Path) -> Path | None:
    """Decode throughput against batch size (ours, transformers); training MFU by backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [r for r in payload.get("sample", []) if "ours" in r]
    trains = [r for r in payload.get("train", []) if "mfu" in r]
    if not samples and not trains:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ax = axes[0]
    for model in dict.fromkeys(r["model"] for r in samples):
        rows = sorted((r for r in samples if r["model"] == model), key=lambda r: r["batch_size"])
        bs = [r["batch_size"] for r in rows]
        ax.plot(bs, [r["ours"]["decode_tokens_per_s"] for r in rows], marker="o", label=f"{model} minigpt")
        if all("transformers" in r for r in rows):
            ax.plot(
                bs,
                [r["transformers"]["decode_tokens_per_s"] for r in rows],
                marker="s",
                linestyle="--",
                label=f"{model} transformers",
            )
    ax.set(xlabel="batch size", ylabel="decode tokens/s", title="sampling: decode throughput")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if samples:
        ax.legend(fontsize=8)
    ax = axes[1]
    best: dict[str, float] = {}
    for r in trains:  # the best MFU of each backend combination over the sizes tried
        key = f"{r['model']} {r['attn']}/{r['ln']}{' +compile' if r['compile'] else ''}"
        best[key] = max(best.get(key, 0.0), r["mfu"])
    ax.barh(list(best), list(best.values()))
    ax.set(xlabel="MFU (best over batch and block sizes)", title="training: MFU by backend")
    ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"{payload['environment']['device']} · torch {payload['environment']['torch']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(payload: dict, stem: Path, plot_png: bool = True) -> list[Path]:
    paths = [write_json(stem.with_suffix(".json"), payload)]
    md = stem.with_suffix(".md")
    write_text(md, markdown(payload) + "\n")
    paths.append(md)
    if plot_png:
        png = plot(payload, stem.with_suffix(".png"))
        if png is not None:
            paths.append(png)
    return paths


# ----------------------------------------------------------------------------------------------
# The CPU targets


def cpu_targets_markdown(payload: dict) -> str:
    m = payload.get("matmul_fp32")  # None in a partial report written before it was measured
    parts = [
        "# CPU targets: GPT-2 124M shape, random init",
        "",
        _header(payload),
        "",
        *_progress(payload),
        f"{payload['settings']['threads']} threads; load average at the start "
        f"{payload['settings'].get('loadavg_at_start')}."
        + (
            ""
            if m is None
            else f" fp32 matmul ceiling measured in this run: {m['flops'] / 1e9:.1f} GFLOP/s ({m['n']}^3, median of "
            f"{len(m['times_s'])}; the higher of "
            + ", ".join(f"{f / 1e9:.1f}" for f in payload.get("matmul_fp32_measurements", [m["flops"]]))
            + " GFLOP/s measured at the start and beside the training step)."
        ),
        "",
        *_wall(payload),
    ]
    if not payload.get("decode"):  # the train half only, or nothing measured yet
        parts += _cpu_train_markdown(payload)
        return "\n".join(parts)
    parts += ["## Decode, batch 1 (greedy; " + payload["settings"]["decode_method"] + ")", ""]
    rows = []
    for r in payload["decode"]:
        o, h = r["ours"], r["transformers"]
        rows.append(
            [
                r["dtype"],
                r["new_tokens"],
                f"{o['decode_tokens_per_s']:.1f}",
                f"{h['decode_tokens_per_s']:.1f}",
                f"{r['ratio']['decode']:.2f}",
                f"≥ {r['target_ratio']}" if r["target_ratio"] else "none",
                {True: "yes", False: "no", None: ""}[r["meets_target"]],
                f"{r['weight_gb_per_s']:.1f}",
                r["greedy_tokens_equal"],
                _contention(o["timings"][f"generate_{r['new_tokens'] + 1}"]),
            ]
        )
    parts += [
        _table(
            [
                "dtype",
                "new tokens",
                "minigpt tok/s",
                "transformers tok/s",
                "ratio",
                "target",
                "met",
                "weights GB/s",
                "greedy = HF",
                "max contention",
            ],
            rows,
        ),
        "",
    ]
    quantized = [r for r in payload["decode"] if r.get("baseline")]
    if quantized:
        parts += [
            "int8 / int4: weight-only quantized (minigpt.model.quantize; int4 in groups of "
            f"{quantized[-1].get('group_size') or 64}) bf16 model, against transformers in "
            "float32 on the same float weights (so greedy tokens may differ).",
            "",
        ]
    simple = [r for r in payload["decode"] if r.get("auto_vs_simple")]
    if simple:
        parts += [
            "sample.py's `--decode auto` (minigpt.generate.decoder.Decoder) against `--decode simple` (one "
            "model(token, cache=cache) call per token), timed in alternation:",
            "",
            _table(
                [
                    "dtype",
                    "auto tok/s",
                    "simple tok/s",
                    "auto / simple",
                    "cpu_linear chosen",
                    "same tokens",
                    "max contention",
                ],
                [
                    [
                        r["dtype"],
                        f"{a['auto_decode_tokens_per_s']:.1f}",
                        f"{a['simple_decode_tokens_per_s']:.1f}",
                        f"{a['ratio']:.2f}",
                        a["cpu_linear"],
                        a["greedy_tokens_equal"],
                        f"{a['max_contention']:.2f}",
                    ]
                    for r in simple
                    for a in [r["auto_vs_simple"]]
                ],
            ),
            "",
        ]
    return "\n".join(parts + _cpu_train_markdown(payload))


def _cpu_train_markdown(payload: dict) -> list[str]:
    t = payload.get("train")
    if t is None:  # the decode half only, or not measured yet
        return []
    parts = [
        "## Training step (B=4, T=256, fp32, AdamW)",
        "",
        _table(
            [
                "tok/s",
                "target",
                "met",
                "step s",
                "FLOPs/token",
                "fraction of matmul ceiling",
                "ceiling tok/s",
                "peak (added) MiB",
                "max contention",
            ],
            [
                [
                    f"{t['tokens_per_s']:.1f}",
                    f"≥ {t['target_tokens_per_s']}",
                    "yes" if t["meets_target"] else "no",
                    f"{t['step_ms'] / 1e3:.2f}",
                    f"{t['flops_per_token'] / 1e6:.0f} M",
                    f"{t['fraction_of_matmul_ceiling']:.3f}",
                    f"{t['ceiling_tokens_per_s']:.0f}",
                    _memory(t),
                    _contention(t),
                ]
            ],
        ),
        "",
    ]
    if payload.get("train_baselines"):
        parts += [
            "The same step in the same run, run the usual other ways (minigpt-plain-loss: this model "
            "with F.cross_entropy over the whole logits tensor, as nanoGPT computes its loss; "
            "transformers: GPT2LMHeadModel with `labels`, same optimizer):",
            "",
            _table(
                ["implementation", "attention", "tok/s", "minigpt is", "step s", "peak (added) MiB", "max contention"],
                [
                    [
                        b["implementation"],
                        b["attn"],
                        f"{b['tokens_per_s']:.1f}",
                        f"{b['minigpt_speedup']:.2f}x",
                        f"{b['step_ms'] / 1e3:.2f}",
                        _memory(b),
                        _contention(b),
                    ]
                    for b in payload["train_baselines"]
                ],
            ),
            "",
        ]
    return parts


def cpu_targets_table(payload: dict) -> str:
    out = [f"fp32 matmul ceiling {payload['matmul_fp32']['flops'] / 1e9:.1f} GFLOP/s"]
    for r in payload["decode"]:
        out.append(
            f"decode {r['dtype']:9s} minigpt {r['ours']['decode_tokens_per_s']:6.1f} tok/s  transformers "
            f"{r['transformers']['decode_tokens_per_s']:6.1f} tok/s  {r['ratio']['decode']:.2f}x "
            f"(target {str(r['target_ratio']) + 'x' if r['target_ratio'] else 'none'}; "
            f"against {r.get('baseline', 'transformers ' + r['dtype'])})"
        )
    t = payload["train"]
    if t is None:
        return "\n".join(out)
    out.append(
        f"train 124M B=4 T=256 fp32: {t['tokens_per_s']:.1f} tok/s (target {t['target_tokens_per_s']}), "
        f"{t['fraction_of_matmul_ceiling']:.2f} of the matmul ceiling"
    )
    for b in payload.get("train_baselines", []):
        out.append(f"train {b['implementation']}: {b['tokens_per_s']:.1f} tok/s (minigpt {b['minigpt_speedup']:.2f}x)")
    return "\n".join(out)


def write_cpu_targets(payload: dict, stem: Path) -> list[Path]:
    paths = [write_json(stem.with_suffix(".json"), payload)]
    md = stem.with_suffix(".md")
    write_text(md, cpu_targets_markdown(payload) + "\n")
    return paths + [md]
