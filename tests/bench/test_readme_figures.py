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
    out = tmp_path / "first.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "first_run.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
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
# OpenMP passive waiting: sample.py with OMP_WAIT_POLICY=PASSIVE against ACTIVE


def test_committed_omp_wait_is_a_full_measurement():
    result = committed("omp-wait-cpu.json")
    assert not result["tiny"] and result["rounds"] >= 3
    for condition in OMP_WAIT.CONDITIONS:
        for policy in OMP_WAIT.POLICIES:
            speeds = result["tokens_per_s"][condition][policy]
            assert len(speeds) == result["rounds"]
            assert result["median_tokens_per_s"][condition][policy] == pytest.approx(sorted(speeds)[len(speeds) // 2])


def test_readme_states_the_omp_wait_figures():
    result = committed("omp-wait-cpu.json")
    assert not missing_from_readme(OMP_WAIT.readme_figures(result))


def test_omp_wait_tiny_writes_every_field(tmp_path):
    out = tmp_path / "omp.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "omp_wait.py"), "--tiny", "--load", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert_well_formed(result, committed("omp-wait-cpu.json"))
    assert result["tiny"] and result["rounds"] == 1 and result["load_processes"] == 1
    for condition in OMP_WAIT.CONDITIONS:
        for policy in OMP_WAIT.POLICIES:
            (speed,) = result["tokens_per_s"][condition][policy]
            assert speed > 0
    assert proc.stdout.splitlines() == OMP_WAIT.readme_figures(result)


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
