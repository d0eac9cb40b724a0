"""README.md's figures of the first command (bench/first_run.py) and of OpenMP passive waiting
(bench/omp_wait.py) are those of the committed results, and both scripts run and write every field."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import load_script

from minigpt.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
README = (ROOT / "README.md").read_text(encoding="utf-8")
FIRST_RUN = load_script(ROOT / "bench" / "first_run.py")
OMP_WAIT = load_script(ROOT / "bench" / "omp_wait.py")
ENVIRONMENT = {"device", "device_type", "cpu_count", "torch", "python", "commit", "date"}


def committed(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def missing_from_readme(figures: list[str]) -> list[str]:
    text = " ".join(README.split())  # a figure may be wrapped across lines
    return [figure for figure in figures if " ".join(figure.split()) not in text]


def run_tiny(script: str, out: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    """A bench script's --tiny run writing to `out` (it must succeed): the process and the results."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--tiny", *flags, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    return proc, result


def assert_well_formed(result: dict, like: dict) -> None:
    """Every field of the committed file is there, set, and a finite number where it is one."""
    assert set(result) == set(like), set(result) ^ set(like)
    assert ENVIRONMENT <= set(result["environment"])
    assert result["environment"]["device_type"] == "cpu"
    assert result["cpu_model"] and result["cpu_model"] in result["environment"]["device"]
    for key, value in result.items():
        if isinstance(value, float):
            assert math.isfinite(value) and value >= 0, key


# ----------------------------------------------------------------------------------------------
# The first command: train.py with its defaults, then sample.py


def test_committed_first_run_is_the_default_run():
    result = committed("first-run-cpu.json")
    assert not result["tiny"] and result["train_flags"] == ["--out-dir", "<temporary folder>"]
    assert result["recipe"] == "cpu" and result["steps"] == TrainConfig().max_steps
    assert result["early_eval"]["step"] == FIRST_RUN.EARLY_STEP
    assert result["evals"][-1]["step"] == result["steps"]


def test_readme_states_the_first_run_figures():
    result = committed("first-run-cpu.json")
    assert not missing_from_readme(FIRST_RUN.readme_figures(result))


def test_readme_shows_the_start_of_the_sample_train_py_printed_at_the_end():
    result = committed("first-run-cpu.json")
    shown = re.search(r"sample\s+it\s+printed\s+at\s+the\s+end\s+began:\s*```\n(.*?)\n```", README, re.S).group(1)
    assert shown.strip() and result["final_sample"].startswith(shown)
    assert result["final_sample_step"] == result["steps"]


def test_first_run_tiny_writes_every_field(tmp_path):
    proc, result = run_tiny("first_run.py", tmp_path / "first.json")
    assert_well_formed(result, committed("first-run-cpu.json"))
    assert result["tiny"] and result["steps"] == 3 and result["early_eval"] is None
    assert result["final_sample"].startswith(TrainConfig().sample_prompt)
    assert "tok/s" in result["sample_py_speed"] and result["sample_py_stdout"].startswith("def ")
    assert proc.stdout.splitlines() == FIRST_RUN.readme_figures(result)


def test_first_run_tiny_will_not_overwrite_the_committed_results():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "first_run.py"), "--tiny"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "--out" in proc.stderr


def test_minutes_is_how_the_readme_writes_a_wall_time():
    assert FIRST_RUN.minutes(169.4) == "2 min 49 s"
    assert FIRST_RUN.minutes(179.6) == "3 min 0 s"


# ----------------------------------------------------------------------------------------------
# OpenMP waiting: sample.py with PASSIVE (the entrypoint's), a bounded spin, and ACTIVE


def test_committed_omp_wait_is_a_full_measurement():
    result = committed("omp-wait-cpu.json")
    assert not result["tiny"] and result["rounds"] >= 3
    assert result["shapes"] == list(OMP_WAIT.SHAPES)
    assert result["checkpoints"]["124m"]["n_embd"] == 768 and result["checkpoints"]["124m"]["n_layer"] == 12
    for shape in OMP_WAIT.SHAPES:
        for condition in OMP_WAIT.CONDITIONS:
            for policy in OMP_WAIT.POLICIES:
                speeds = result["tokens_per_s"][shape][condition][policy]
                assert len(speeds) == result["rounds"]
                median = result["median_tokens_per_s"][shape][condition][policy]
                assert median == pytest.approx(sorted(speeds)[len(speeds) // 2])

    assert result["policies"] == OMP_WAIT.POLICY_ENV


def test_readme_states_the_omp_wait_figures():
    result = committed("omp-wait-cpu.json")
    assert not missing_from_readme(OMP_WAIT.readme_figures(result))


def test_omp_wait_tiny_writes_every_field(tmp_path):
    proc, result = run_tiny("omp_wait.py", tmp_path / "omp.json", "--load", "1")
    assert_well_formed(result, committed("omp-wait-cpu.json"))
    assert result["tiny"] and result["rounds"] == 1 and result["load_processes"] == 1
    assert result["shapes"] == ["small"]
    for condition in OMP_WAIT.CONDITIONS:
        for policy in OMP_WAIT.POLICIES:
            (speed,) = result["tokens_per_s"]["small"][condition][policy]
            assert speed > 0
    assert proc.stdout.splitlines() == OMP_WAIT.readme_figures(result)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shapes", "bogus"], "--shapes: choose from small, 124m"),
        (["--shapes", "small,"], "--shapes: choose from small, 124m"),
        (["--tiny"], "--tiny writes no committed results: give --out"),
    ],
)
def test_omp_wait_bad_flags_are_one_line(flags, message, tmp_path):
    committed_before = (RESULTS / "omp-wait-cpu.json").read_bytes()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "omp_wait.py"), *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr and "Traceback" not in proc.stderr
    assert (RESULTS / "omp-wait-cpu.json").read_bytes() == committed_before


def test_rate_is_how_the_readme_writes_a_speed():
    assert OMP_WAIT.rate(131.7) == "132"
    assert OMP_WAIT.rate(7.06) == "7.1"


# ----------------------------------------------------------------------------------------------
# Chat and fine-tuning: bench/chat_latency.py, bench/lora_memory.py and bench/sft_showcase.py

SHOWCASE = load_script(ROOT / "bench" / "sft_showcase.py")


def section(title: str) -> str:
    """README.md's section under `## title`, up to the next one."""
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_states_the_chat_latency_figures():
    result = committed("chat-latency-cpu.json")
    median, tokens = result["median_ttft_s"], result["turn_20_prompt_tokens"]
    cached, uncached = result["turn_20_prefilled_tokens"]
    turns = result["turns"]
    assert uncached == tokens and cached < tokens
    figures = [
        f"| 1 | the whole prompt | {median['turn_1']:.2f} s |",
        f"| {turns}, with the cache | {cached} of {tokens} | {median['turn_20_cached']:.2f} s |",
        f"| {turns}, cache emptied (as a stateless server) | {uncached} of {tokens} "
        f"| {median['turn_20_uncached']:.2f} s |",
        f"greedy {result['reply_tokens']}-token replies, medians of {result['repeats']}",
        f"load average of {result['loadavg_before'][0]:.2f} before, {result['loadavg_after'][0]:.2f} after",
    ]
    assert not missing_from_readme(figures)


def test_readme_states_the_lora_memory_figures_and_their_arithmetic():
    result = committed("lora-memory-cpu.json")
    runs = {(r["method"], r["preset"]): r for r in result["runs"]}
    rows, gb = [], lambda n: f"{n / 1e9:.2f} GB"
    for (method, preset), r in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        frozen = r["params"] - r["trainable_params"]
        held = 16 * r["trainable_params"] + 4 * frozen  # full: frozen is 0
        name = "full" if method == "full" else "LoRA"
        rows.append(f"| {preset} | {name} | {r['trainable_params']:,} | {gb(held)} | {gb(r['peak_rss_bytes'])} |")
    xl = runs[("lora", "gpt2-xl")]
    base, adapters = xl["params"] - xl["trainable_params"], xl["trainable_params"]
    settings = result["settings"]
    figures = [
        *rows,
        f"gpt2-xl ({base:,} parameters; rank {settings['lora_rank']} on `{settings['lora_targets']}` "
        f"adds {adapters:,})",
        f"full fine-tuning holds {16 * base / 1e9:.1f} GB before activations",
        f"LoRA holds {gb(4 * base + 16 * adapters)} with an fp32 base and {gb(2 * base + 16 * adapters)} "
        "with a bf16 one",
        f"{settings['steps']} AdamW steps of batch {settings['batch']} x {settings['context']} tokens",
    ]
    assert not missing_from_readme(figures)


def test_committed_showcase_is_the_default_run():
    result = committed("sft-showcase-cpu.json")
    defaults = SHOWCASE.parse_args([])
    assert result["pretrain"]["time_budget_s"] == defaults.pretrain_s
    assert result["sft_full"]["time_budget_s"] == result["sft_lora"]["time_budget_s"] == defaults.sft_s
    assert result["data"]["train_conversations"] == defaults.conversations
    assert result["data"]["heldout_conversations"] == defaults.heldout
    assert len(result["transcripts"]) == defaults.transcripts
    assert all(t["sft_lora_checkpoint_agrees"] for t in result["transcripts"])
    assert result["heldout_loss_pretrained_plus_adapter"] == pytest.approx(result["heldout_loss"]["sft_lora"], abs=2e-3)
    assert result["cpu"] and result["cpu"] in result["environment"]["device"] and "shared" in result["shared_machine"]
    loss = result["heldout_loss"]
    assert loss["sft_full"] < loss["pretrained"] and loss["sft_lora"] < loss["pretrained"]  # as the README says


def test_readme_states_the_showcase_figures_and_transcripts():
    result = committed("sft-showcase-cpu.json")
    assert not missing_from_readme(SHOWCASE.readme_figures(result))


def test_showcase_dialogues_alternate_two_speakers_within_the_limit():
    text = "\n\n".join(
        [
            "ROMEO:\nShort one.",
            "JULIET:\nA reply.",
            "ROMEO:\nAgain.",
            "JULIET:\nAnd again.",
            "NURSE:\nAnon!",
            "NURSE:\nAnon, I say!",  # the same speaker twice: no pair
            "ROMEO:\n" + "long " * 80,  # too long for a 200-character conversation
            "JULIET:\nNo.",
            "Not a speech at all",
            "TYBALT:\nBoy.",
            "ROMEO:\nI do protest.",
        ]
    )
    found = SHOWCASE.speeches(text)
    assert found[0] == ("ROMEO", "Short one.") and ("Not a speech at all" not in str(found))
    convs = SHOWCASE.dialogues(found, max_chars=200)
    assert [[m["content"] for m in c] for c in convs] == [
        ["Short one.", "A reply.", "Again.", "And again."],
        ["No.", "Boy."],
    ]
    for c in convs:
        assert [m["role"] for m in c] == ["user", "assistant"] * (len(c) // 2)


def test_showcase_without_the_play_generates_its_dialogues_offline():
    text, convs = SHOWCASE.synthetic_text(5, seed=0)
    assert len(convs) == 5 and all(c[0]["content"] in text and c[1]["content"] in text for c in convs)
    for user, reply in ((c[0]["content"], c[1]["content"]) for c in convs):
        a, op, b = user.removeprefix("What is ").removesuffix("?").split()
        value = {"plus": int(a) + int(b), "times": int(a) * int(b), "minus": int(a) - int(b)}[op]
        assert reply == f"{a} {op} {b} is {value}."


def test_readme_lists_exactly_the_chat_formats_and_lora_targets():
    from minigpt.chat.formats import FORMATS
    from minigpt.model.lora import TARGETS

    chat = section("Chat")
    formats = re.findall(r"^- `--format ([\w-]+)`: ", chat.split("**Formats.**", 1)[1].split("\n\n", 1)[1], flags=re.M)
    assert formats == list(FORMATS)
    lora = next(p for p in section("Fine-tuning a chatbot: SFT and LoRA").split("\n- ") if p.startswith("**LoRA**"))
    listed = " ".join(lora.split()).split("names (comma-separated suffixes of layer names, ", 1)[1].split(". ", 1)[0]
    named = [n for n in re.findall(r"`([\w.]+)`", listed.split("): ", 1)[1]) if n != "wte"]  # after the default
    assert sorted(named) == sorted(TARGETS)


# ----------------------------------------------------------------------------------------------
# Serving, llama.cpp and the decoding paths


def test_readme_states_the_serving_load_figures():
    result = committed("serve-load-cpu.json")
    rows = []
    for level in result["levels"]:
        speedup = result["speedup_vs_one_client"][str(level["clients"])]
        rows.append(
            f"| {level['clients']} | {level['tokens_per_s']:.1f} | {speedup:.1f}x | "
            f"{level['ttft_p50_s']:.2f} s / {level['ttft_p99_s']:.2f} s |"
        )
    assert not missing_from_readme(rows)


def test_readme_states_the_llama_cpp_figures():
    result = committed("vs-llamacpp-cpu.json")
    assert result["greedy_parity_f32"]["equal"]
    rows = []
    for row in result["rows"]:
        decode, prefill, start = (
            row["decode_tokens_per_s"],
            row["prefill_tokens_per_s"],
            row["start_up_to_first_token_s"],
        )
        ratio, prefill_ratio = decode["minigpt"] / decode["llama_cpp"], prefill["minigpt"] / prefill["llama_cpp"]
        rows.append(
            f"| {decode['llama_cpp']:.1f} | {decode['minigpt']:.1f} | {ratio:.2f}x | {prefill_ratio:.2f}x | "
            f"{start['llama_cpp']:.2f} s / {start['minigpt']:.2f} s |"
        )
    assert not missing_from_readme(rows + [f"copy bandwidth {result['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s"])


def test_readme_states_the_decoding_path_figures():
    result = committed("fast-decode-cpu.json")
    figures = []
    for row in result["rows"]:
        for variant in row["variants"]:
            figures.append(f"| {variant['decode_vs_llama_cpp']:.2f}x |")
            if variant.get("prefill_vs_llama_cpp") is not None:
                figures.append(f"| {variant['decode_vs_llama_cpp']:.2f}x | {variant['prefill_vs_llama_cpp']:.2f}x |")
    compiled = next(
        v
        for r in result["rows"]
        for v in r["variants"]
        if v["name"].startswith("int8-dynamic") and v["decode_mode"] == "compiled"
    )
    waited = f"its first decode waited {compiled['first_decode_s']:.0f} s"
    figures.append(f"({compiled['decode_vs_first']:.2f}x its eager step); {waited}")
    dynamic = next(q for q in result["quality"] if q["model"] == "int8-dynamic")
    figures.append(f"int8-dynamic cost +{dynamic['bpb_vs_float32']:.5f} bits per byte")
    start = result["start_up"]["median_s"]
    figures.append(
        f"`import torch` alone took {start['import_torch']:.2f} s against sample.py's {start['sample_py']:.2f} s"
    )
    assert not missing_from_readme(figures)


# ----------------------------------------------------------------------------------------------
# Benchmarks: the cpu-targets decode and training tables (bench/run.py --suite cpu-targets)


def test_readme_states_the_cpu_targets_figures():
    result = committed("cpu-targets.json")
    env, train, matmul = result["environment"], result["train"], result["matmul_fp32"]
    decode = {d["dtype"]: d for d in result["decode"]}
    baselines = {b["implementation"]: b for b in result["train_baselines"]}
    hf, plain = baselines["transformers"], baselines["minigpt-plain-loss"]
    fp32, bf16 = decode["float32"], decode["bfloat16"]
    assert fp32["greedy_tokens_equal"] and bf16["greedy_tokens_equal"]

    def row(d: dict) -> str:
        ours, theirs = d["ours"]["decode_tokens_per_s"], d["transformers"]["decode_tokens_per_s"]
        return f"| {ours:.1f} tok/s | {theirs:.1f} tok/s | {d['ratio']['decode']:.2f}x |"

    figures = [
        f"measured {env['date'][:10]} on a 2-core x86-64 CPU machine (AMD EPYC, {result['settings']['threads']} "
        f"threads, torch {env['torch']}, transformers {env['transformers']})",
        f"| decode, batch 1, fp32 ({fp32['new_tokens']} new tokens, prefill excluded) {row(fp32)}",
        f"| decode, batch 1, bf16 {row(bf16)}",
        f"| training step, B={train['batch_size']}, T={train['block_size']}, fp32, AdamW "
        f"| {train['tokens_per_s']:.0f} tok/s | {hf['tokens_per_s']:.0f} tok/s | {hf['minigpt_speedup']:.2f}x |",
        f"The training step ran at {train['fraction_of_matmul_ceiling']:.0%} of the fp32 matmul ceiling measured in "
        f"the same run ({matmul['flops'] / 1e9:.1f} GFLOP/s, a {matmul['n']}^3 product)",
        f"did {plain['tokens_per_s']:.0f} tok/s in that run",
    ]
    assert not missing_from_readme(figures)


def test_readme_states_the_cpu_targets_decode_figures_and_auto_against_simple():
    result = committed("cpu-targets-decode.json")
    env, settings = result["environment"], result["settings"]
    group = settings["targets"]["decode"]["int4_group_size"]
    assert settings["parts"] == ["decode"] and result["train"] is None
    names = {
        "float32": ("fp32", "fp32"),
        "bfloat16": ("bf16", "bf16"),
        "int8": ("int8 (`--quantize int8`)", "fp32"),
        "int4": (f"int4 (`--quantize int4`, groups of {group})", "fp32"),
    }
    decode = {d["dtype"]: d for d in result["decode"]}
    assert list(decode) == list(names)
    rows = []
    for dtype, (ours_name, theirs_name) in names.items():
        d = decode[dtype]
        target = "" if d["target_ratio"] is None else f">= {d['target_ratio']:.1f}x"
        rows.append(
            f"| {ours_name} | {d['ours']['decode_tokens_per_s']:.1f} | {theirs_name} "
            f"| {d['transformers']['decode_tokens_per_s']:.1f} | {d['ratio']['decode']:.2f}x | {target} |"
        )
        assert d["new_tokens"] == decode["float32"]["new_tokens"] and d["batch_size"] == 1
        assert d["auto_vs_simple"]["greedy_tokens_equal"]  # "both give the same tokens"
    assert decode["float32"]["greedy_tokens_equal"] and decode["bfloat16"]["greedy_tokens_equal"]
    auto = {dtype: d["auto_vs_simple"] for dtype, d in decode.items()}
    chosen = {dtype: a["cpu_linear"] for dtype, a in auto.items()}
    assert chosen == {"float32": "onednn", "bfloat16": "onednn-packed", "int8": "torch", "int4": "torch"}
    figures = [
        *rows,
        f"Decoding, measured again {env['date'][:10]} on an idle 2-core AMD EPYC (torch {env['torch']}, "
        f"transformers {env['transformers']};",
        f"batch 1, {decode['float32']['new_tokens']} new tokens, load and prefill excluded",
        f"{auto['float32']['ratio']:.2f}x (fp32, it chose oneDNN), {auto['bfloat16']['ratio']:.2f}x (bf16, oneDNN "
        f"with packed weights), {auto['int8']['ratio']:.2f}x (int8) and {auto['int4']['ratio']:.2f}x (int4, both "
        "plain F.linear beside the packed kernels)",
    ]
    assert not missing_from_readme(figures)


# ----------------------------------------------------------------------------------------------
# Small models on a budget: bench/push.py (the recipes side by side, the A/Bs, the size x budget study)


def millions(n: float, digits: int = 2) -> str:
    return f"{n / 1e6:.{digits}f}M"


def test_readme_states_the_push_figures():
    result = committed("push.json")
    nano, mini, third = result["arms"]["nanogpt"], result["arms"]["minigpt"], result["third_budget"]
    reached = result["time_to_nanogpt_bpb"]
    assert third["reaches_nanogpt_bpb"] and third["bpb"] < nano["bpb"] and mini["bpb"] < nano["bpb"]
    assert result["bpb_reduction"] == pytest.approx(1 - mini["bpb"] / nano["bpb"])

    def cells(arm: dict) -> str:
        return f"| {millions(arm['num_params'])} | {arm['steps']:,} | {arm['train_time']:.0f} s |"

    reduction = f"{result['bpb_reduction']:.1%} lower"
    figures = [
        f"the same held-out last 10% ({result['text']['held_out_bytes']:,} bytes)",
        f"| nanoGPT's {cells(nano)} {nano['bpb']:.4f} |",
        f"| minigpt `cpu-push` {cells(mini)} **{mini['bpb']:.4f}** ({reduction}) |",
        f"| minigpt `cpu-push`, a third of the time {cells(third)} {third['bpb']:.4f} |",
        f"The nanoGPT arm's {nano['bpb']:.4f} bits per byte is {nano['bpb'] * math.log(2):.2f} nats per character",
        f"minigpt's recipe had only {result['budget_match']:.2f} of nanoGPT's time",
        f"and still reached {reduction} bits per byte",
        f"passed nanoGPT's final bpb at {reached['interpolated_s']:.0f} s, "
        f"{result['time_to_nanogpt_bpb_fraction']:.2f} of nanoGPT's time",
    ]
    assert not missing_from_readme(figures)


def test_readme_states_the_push_ab_figures():
    result = committed("push-ab.json")
    ab = {r["name"]: r for r in result["results"]}
    bpe, lr, muon = ab["tokenizer char -> bpe:512, block / 2"], ab["lr 1e-3 -> 3e-3"], ab["optimizer adamw -> muon"]
    assert bpe["bpb_ratio"] == min(r["bpb_ratio"] for r in result["results"])  # "won most"
    lost = ["batch 12 -> 32 rows", "block 64 -> 256, rows / 4", "tokenizer -> gpt2, block / 2", "head tied -> untied"]
    assert not any(ab[name]["kept"] for name in [*lost, "bias off -> on"])
    assert all(ab[name]["bpb_ratio"] > 1 for name in [*lost, "bias off -> on"])
    small = ["position learned -> rope", "qk_norm", "activation gelu -> relu2"]
    assert all(ab[name]["bpb_ratio"] < 1 for name in small)
    figures = [
        f"the BPE tokenizer won most ({bpe['bpb_ratio']:.3f}x bpb against characters), then lr 3e-3 "
        f"({lr['bpb_ratio']:.3f}x) and Muon ({muon['bpb_ratio']:.3f}x)"
    ]
    assert not missing_from_readme(figures)


def test_readme_states_the_push_study_figures():
    result, stdlib = committed("push-study.json"), committed("push-study-stdlib.json")
    points, optima, fit = result["points"], result["optima"], result["fit"]
    params = [p["params"] for p in points]
    budgets = sorted({p["budget_s"] for p in points})
    assert [o["budget_s"] for o in optima] == budgets and len(budgets) == 5  # "over five budgets"
    assert max(p["params"] for p in points) not in {p["params"] for p in result["frontier"]}  # "stay off the frontier"
    fewest = min(p["tokens"] / p["params"] for p in result["frontier"])
    b = [f"{s:.0f}" for s in budgets]
    rule, constants = {e["budget_s"]: e for e in result["rule"]}, result["rule_constants"]
    stdlib_ratios = [e["ratio"] for e in stdlib["rule"]]
    assert stdlib["rule_constants"] == constants
    figures = [
        f"a grid of sizes ({millions(min(params))} to {millions(max(params), 1)} parameters, the `cpu-push` recipe "
        f"otherwise) at budgets of {', '.join(b[:-1])} and {b[-1]} s",
        f"from {millions(optima[0]['params'])} parameters at {b[0]} s to about {millions(optima[-1]['params'])} "
        f"at {b[-1]} s",
        f"(N_opt ∝ C^{fit['a']:.2f}, r² {fit['r2']:.2f} over five budgets)",
        f"(N = {constants['k']:.3f} · C^{constants['a']:.3f}), picked {rule[300.0]['ratio']:.2f}x the measured "
        f"optimum's size at 300 s and {rule[600.0]['ratio']:.2f}x at 600 s, each costing about "
        f"{max(rule[300.0]['bpb_cost'], rule[600.0]['bpb_cost']):.4f} bits per byte",
        f"N_opt ∝ C^{stdlib['fit']['a']:.2f} and that rule picked {min(stdlib_ratios):.2f}x to "
        f"{max(stdlib_ratios):.2f}x of them",
        f"N = {fit['k']:.3g} · C^{fit['a']:.3f} parameters for C training FLOPs",
        f"at least {fewest:.1f} tokens a parameter (the fewest on the study's frontier)",
    ]
    assert not missing_from_readme(figures)


# ----------------------------------------------------------------------------------------------
# What quantization costs (bench/quantize_quality.py) and what loading gpt2-xl holds (bench/load_memory.py)


def test_readme_states_the_quantize_quality_table():
    from minigpt.model.config import GPTConfig

    result = committed("quantize-quality.json")
    texts = result["settings"]["texts"]
    stdlib, shakespeare = list(texts)
    assert stdlib == "stdlib val" and shakespeare == "tinyshakespeare.txt"
    scores = {(r["model"], r["text"]): r for r in result["results"]}
    models = list(dict.fromkeys(r["model"] for r in result["results"]))
    assert models[0] == "float32" and all(r["bytes"] == texts[r["text"]] for r in result["results"])

    def name(model: str) -> str:
        return {"bfloat16": "bf16"}.get(model, model.replace("int4-g", "int4, group "))

    def change(delta: float) -> str:
        return f"{delta:+.4f}".replace("-", "−")

    rows = [f"| float32 | {scores['float32', stdlib]['bpb']:.4f} | {scores['float32', shakespeare]['bpb']:.4f} |"]
    for model in models[1:]:
        a, b = scores[model, stdlib]["bpb_vs_float32"], scores[model, shakespeare]["bpb_vs_float32"]
        assert a == pytest.approx(scores[model, stdlib]["bpb"] - scores["float32", stdlib]["bpb"])
        rows.append(f"| {name(model)} | {change(a)} | {change(b)} |")
    n = GPTConfig(**result["config"]).num_params()
    figures = [
        *rows,
        f"on the default `train.py` model ({millions(n, 1)} parameters)",
        f"bits per byte of held-out text ({texts[stdlib]:,} bytes of stdlib val, {texts[shakespeare]:,} of "
        "Shakespeare)",
    ]
    assert not missing_from_readme(figures)


def test_readme_states_the_load_memory_figures():
    result = committed("load-memory-gpt2-xl.json")
    summary = {(s["reader"], s["dtype"]): s for s in result["summary"]}
    plain, library = summary["plain-reads", "bfloat16"], summary["library", "bfloat16"]
    loads = [r for r in result["runs"] if (r["reader"], r["dtype"]) == ("plain-reads", "bfloat16")]
    assert len({len([r for r in result["runs"] if (r["reader"], r["dtype"]) == k]) for k in summary}) == 1
    before = sorted(r["rss_before_load_bytes"] for r in loads)[0]
    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    figures = [
        f"a random-init {result['preset']}-shaped fp32 checkpoint ({result['checkpoint_bytes'] / 1e9:.1f} GB)",
        f"medians of {['one', 'two', 'three'][len(loads) - 1]} loads each",
        f"peaks at **{gib(plain['peak_rss_bytes_median'])}** resident for a {gib(plain['model_bytes'])} bf16 model",
        f"(about {before / 2**30:.1f} GiB of that is the interpreter and torch before loading)",
        f"peaks at {gib(library['peak_rss_bytes_median'])} resident",
        f"took {library['load_s_median']:.0f} s against {plain['load_s_median']:.0f} s for the plain reads",
    ]
    assert result["checkpoint_dtype"] == "float32" and result["cpu"] == "AMD EPYC"
    assert not missing_from_readme(figures)


def test_readme_states_the_budget_sizing_figures():
    result = committed("budget-sizing-cpu.json")
    arms, load = result["arms"], result["load"]
    sized, defaults, nano = arms["sized"], arms["cpu-defaults"], arms["nanogpt"]
    shape = sized["sizing"]
    assert sized["bpb"] < defaults["bpb"] < nano["bpb"] and defaults["sizing"] is None and nano["sizing"] is None
    assert defaults["process_wall_s"] == pytest.approx(nano["process_wall_s"], abs=0.5)  # "each process took"
    figures = [
        f"One {result['budget_s']:.0f} s comparison",
        f"where other jobs took {load['others_cpu_share']:.0%} of the CPU",
        f"the sized run ({shape['n_layer']} x {shape['n_embd']}, {shape['tokenizer']}; its process ended after "
        f"{sized['process_wall_s']:.0f} s) reached **{sized['bpb']:.3f}** bits per byte",
        f"the `cpu` defaults {defaults['bpb']:.3f} and nanoGPT's recipe {nano['bpb']:.3f} (their "
        f"{result['budget_s']:.0f} s are training steps only; each process took {defaults['process_wall_s']:.0f} s)",
    ]
    assert not missing_from_readme(figures)


def test_readme_states_the_tokenizer_cache_figure():
    result = committed("startup-cpu.json")
    assert not missing_from_readme([f"reading it takes {result['tokenizer']['get_encoding_s']:.3f} s"])


def test_readme_states_the_quantized_cache_figures():
    result = committed("quantized-cache-cpu.json")
    assert not result["tiny"] and result["mode"] == "int4"
    cold, warm = result["median"]["cold"], result["median"]["warm"]
    figures = [
        f"medians of {result['rounds']}",
        f"a cold start took {cold['wall_s']:.2f} s (loading and quantizing {cold['load_s']:.1f} s, "
        f"peak {cold['peak_rss_bytes'] / 1e6:.0f} MB)",
        f"a warm one {warm['wall_s']:.2f} s (loading {warm['load_s']:.1f} s, "
        f"peak {warm['peak_rss_bytes'] / 1e6:.0f} MB)",
    ]
    assert not missing_from_readme(figures)


def test_quantized_cache_bench_runs_tiny(tmp_path):
    _, result = run_tiny("quantized_cache.py", tmp_path / "q.json")
    assert_well_formed(result, committed("quantized-cache-cpu.json"))
    for kind in ("cold", "warm"):
        assert all(
            run["wall_s"] > 0 and run["load_s"] >= 0 and run["peak_rss_bytes"] > 0 for run in result["runs"][kind]
        )


# ----------------------------------------------------------------------------------------------
# nanoGPT's own code: its recipe beside a sized run (bench/push.py --nanogpt) and its training step
# beside minigpt's (bench/train_step.py --nanogpt)


@pytest.mark.parametrize(
    "name, corpus",
    [("nanogpt-real-tinyshakespeare-cpu.json", "Shakespeare"), ("nanogpt-real-stdlib-cpu.json", "Python's stdlib")],
)
def test_readme_states_the_nanogpt_real_figures(name, corpus):
    r = committed(name)
    nano, mini = r["arms"]["nanogpt"], r["arms"]["minigpt"]
    assert nano["steps"] == 2000 and r["settings"]["nanogpt_max_iters"] == 2000  # the README's recipe, whole
    assert mini["budget_s"] == r["minigpt_budget_s"] == round(nano["train_s"], 2)
    assert mini["sizing"] is not None and r["bpb_ratio_minigpt_to_nanogpt"] == pytest.approx(mini["bpb"] / nano["bpb"])
    assert mini["process_wall_s"] <= 1.1 * r["minigpt_budget_s"] + 5  # the budget is the wall clock
    settings = mini["settings"]
    row = (
        f"| {corpus}{' (`--text stdlib`)' if 'stdlib' in name else ''} | {nano['train_s']:.1f} s | {nano['bpb']:.3f} | "
        f"{r['minigpt_budget_s']:g} s | {mini['process_wall_s']:.1f} s | "
        f"{settings['n_layer']} x {settings['n_embd']}, {settings['tokenizer']} | **{mini['bpb']:.3f}** | "
        f"{1 - r['bpb_ratio_minigpt_to_nanogpt']:.1%} |"
    )
    assert not missing_from_readme([row])


def test_readme_states_the_train_step_figures():
    r = committed("train-step-cpu.json")
    arms = r["arms"]
    assert set(arms) == {"minigpt", "minigpt-plain-loss", "nanogpt"} and r["nanogpt"] is not None
    assert r["shape"]["batch_size"] == 4 and r["shape"]["block_size"] == 256 and r["shape"]["n_layer"] == 12
    rounds = len(arms["minigpt"]["rounds_s"])

    def matmul_share(arm):
        return sum(o["share"] for o in arm["top_ops"] if o["op"] in ("aten::mm", "aten::addmm", "aten::addmm_"))

    figures = [
        f"({rounds} rounds of 2 steps, B=4, T=256, fp32",
        f"minigpt did {arms['minigpt']['tokens_per_s']:.1f} tok/s, nanoGPT's model.py "
        f"{arms['nanogpt']['tokens_per_s']:.1f} and minigpt with `F.cross_entropy` over the whole logits "
        f"{arms['minigpt-plain-loss']['tokens_per_s']:.1f}",
        f"the median of the per-round ratios against nanoGPT is only {arms['nanogpt']['minigpt_speedup']:.2f}x",
        f"The matrix products are {matmul_share(arms['minigpt']):.0%} of minigpt's step and "
        f"{matmul_share(arms['nanogpt']):.0%} of nanoGPT's",
    ]
    assert not missing_from_readme(figures)


def test_readme_states_the_startup_figures():
    r = committed("startup-cpu.json")
    ft, hf, m = r["first_token"]["sample.py"], r["first_token"]["transformers script"], r["load"]["minigpt"]
    ft0, m0 = r["first_token"]["sample.py without huge pages"], r["load"]["minigpt without huge pages"]
    assert ft["first_output_s"] <= ft["process_s"] and hf["first_output_s"] <= hf["process_s"]
    assert r["settings"]["environment"]["THP_MEM_ALLOC_ENABLE"] == "1"
    figures = [
        f"load average {r['loadavg_at_start'][0]:.1f} at the start, medians of {r['settings']['repeats']} alternated",
        f"sample.py's first token of the 124M model reaches stdout {ft['first_output_s']:.2f} s after launch and its "
        f"process ends at {ft['process_s']:.2f} s (transformers' script: {hf['first_output_s']:.2f} s and "
        f"{hf['process_s']:.2f} s); importing torch takes {m['import_s']:.2f} s of it and loading the weights "
        f"{m['load_s']:.2f} s",
        f"without them the load took {m0['load_s']:.2f} s and the first token {ft0['first_output_s']:.2f} s",
    ]
    assert not missing_from_readme(figures)
