"""The small-model chat showcase: a tiny GPT-2 pretrained here on Shakespeare, then fine-tuned into a
(Shakespearean) chatbot in full and with LoRA; the held-out reply loss before and after, and chat.py
transcripts of each. A demonstration of the pipeline on a CPU, not a good chatbot.

The dialogue set is made offline from ../shared/data/tinyshakespeare.txt (or --text): the play's
speeches, where two speakers alternate, become conversations (the first speaker the user, the second
the assistant; 2 or 4 messages). The text is cut at --heldout-share: the model is pretrained on the
part before the cut and fine-tuned on conversations from it, and the held-out conversations come from
after it, so neither stage has seen them. Without the text file, a dialogue set is generated offline
(questions about numbers and their answers) and pretraining reads the same kind of text.

Every stage runs the project's own commands in subprocesses: train.py (pretraining; --sft in full;
--sft --lora-rank), and chat.py --messages - for the transcripts (greedy; the LoRA model as
--init PRETRAINED --adapter LORA_RUN, checked to reply as the LoRA run's merged checkpoint does).
The held-out loss is the mean cross-entropy of the assistant tokens only (minigpt.train.sft's
masking), the same conversations for every model.

    python bench/sft_showcase.py --update-results     # bench/results/sft-showcase-cpu.json, ~12 min on 2 cores
    python bench/sft_showcase.py --pretrain-s 30 --sft-s 20 --conversations 120   # a quick look, in bench/runs/
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from bench.common import RUNS_DIR, environment, log, output_dir, write_json  # noqa: E402
from minigpt.chat.formats import MINIGPT  # noqa: E402
from minigpt.model.load import from_pretrained  # noqa: E402
from minigpt.model.lora import WEIGHTS_FILE, load_adapter, merge_lora  # noqa: E402
from minigpt.provenance import cpu_model  # noqa: E402
from minigpt.rundir import latest_checkpoint  # noqa: E402
from minigpt.tokenizers.lookup import tokenizer_for  # noqa: E402
from minigpt.train.sft import IGNORE, encode, example  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
RESULTS_NAME = "sft-showcase-cpu.json"
SPEECH = re.compile(r"^([A-Z][A-Za-z' ]+):\n(.+)$", re.DOTALL)  # "Speaker:\nthe speech"

# The model and its training: a 4-layer GPT-2 shape with a small BPE of the play's own text.
PRETRAIN = dict(
    tokenizer="bpe:1024", n_layer=4, n_head=4, n_embd=128, block_size=256, batch_size=8,
    optimizer="muon", lr=3e-3, warmup_steps=50,
)  # fmt: skip
SFT_FULL = dict(lr=1e-3, warmup_steps=20, batch_size=8, optimizer="adamw")
SFT_LORA = dict(
    lr=1e-2, warmup_steps=20, batch_size=8, optimizer="adamw", lora_rank=8, lora_alpha=16, lora_targets="c_attn,c_proj"
)
CHAT_FLAGS = ["--temperature", "0", "--repetition-penalty", "1.2", "--no-repeat-ngram-size", "3"]


# ----------------------------------------------------------------------------------------------
# The dialogue set


def speeches(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) of every "Speaker:\\n..." block (blocks are separated by blank lines)."""
    found = []
    for block in re.split(r"\n\s*\n", text):
        m = SPEECH.match(block.strip())
        if m:
            found.append((m.group(1).strip(), " ".join(m.group(2).split())))
    return found


def dialogues(found: list[tuple[str, str]], max_chars: int) -> list[list[dict]]:
    """Conversations from consecutive speeches of two speakers: A, B, A, B (4 messages) where the four
    fit in max_chars, else A, B (each speech at most max_chars // 2); A is the user, B the assistant."""
    out, i = [], 0
    while i + 1 < len(found):
        (a, first), (b, second) = found[i], found[i + 1]
        if a == b or max(len(first), len(second)) > max_chars // 2:
            i += 1
            continue
        run = found[i : i + 4]
        if [who for who, _ in run] != [a, b, a, b] or sum(len(text) for _, text in run) > max_chars:
            run = run[:2]
        out.append(
            [{"role": role, "content": text} for role, (_, text) in zip(("user", "assistant") * 2, run, strict=False)]
        )
        i += len(run)
    return out


def synthetic_text(n: int, seed: int) -> tuple[str, list[list[dict]]]:
    """Offline stand-in for the play: questions about numbers and their answers, as text and as conversations."""
    rng = random.Random(seed)
    ops = {"plus": lambda a, b: a + b, "times": lambda a, b: a * b, "minus": lambda a, b: a - b}
    convs = []
    for _ in range(n):
        a, b, op = rng.randint(0, 20), rng.randint(0, 20), rng.choice(list(ops))
        q = f"What is {a} {op} {b}?"
        convs.append(
            [{"role": "user", "content": q}, {"role": "assistant", "content": f"{a} {op} {b} is {ops[op](a, b)}."}]
        )
    text = "\n\n".join(f"Asker:\n{c[0]['content']}\n\nAnswerer:\n{c[1]['content']}" for c in convs)
    return text, convs


def build_data(args: argparse.Namespace, work: Path) -> dict:
    """pretrain.txt, sft-train.jsonl and sft-heldout.jsonl in work; a description of them."""
    source = args.text if args.text is not None else SHAKESPEARE
    if source.is_file():
        text = source.read_text(encoding="utf-8")
        cut = text.rfind("\n\n", 0, int(len(text) * (1 - args.heldout_share)))  # on a speech boundary
        before, after = text[:cut], text[cut:]
        train = dialogues(speeches(before), args.max_chars)
        heldout = dialogues(speeches(after), args.max_chars)
        kind = f"{source.name}: the first {1 - args.heldout_share:.0%} for pretraining and SFT, the rest held out"
    else:
        before, convs = synthetic_text(args.conversations * 4, args.seed)
        n = len(convs) // 10
        train, heldout, after = convs[n:], convs[:n], ""
        kind = f"generated offline ({source} is missing): number questions and answers"
    rng = random.Random(args.seed)
    rng.shuffle(train)
    rng.shuffle(heldout)
    train, heldout = train[: args.conversations], heldout[: args.heldout]
    (work / "pretrain.txt").write_text(before, encoding="utf-8")
    for name, convs in (("sft-train.jsonl", train), ("sft-heldout.jsonl", heldout)):
        lines = [json.dumps({"messages": c}, ensure_ascii=False) for c in convs]
        (work / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {
        "source": kind,
        "pretrain_chars": len(before),
        "heldout_chars": len(after),
        "train_conversations": len(train),
        "heldout_conversations": len(heldout),
        "messages_per_conversation": sorted({len(c) for c in train + heldout}),
        "max_chars": args.max_chars,
    }


# ----------------------------------------------------------------------------------------------
# Running the project's commands


def flags(settings: dict) -> list[str]:
    return [f for key, value in settings.items() for f in (f"--{key.replace('_', '-')}", str(value))]


def run(argv: list, work: Path, what: str, stdin: str | None = None) -> tuple[str, float]:
    """A command of the project in a subprocess (its data cache under work); (stdout, seconds). Exits on failure."""
    env = {**os.environ, "MINIGPT_DATA_DIR": str(work / "data")}
    argv = [sys.executable, *map(str, argv)]
    log(f"{what}: {' '.join(argv[1:])}")
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"error: {what} failed (exit code {done.returncode})")
    return done.stdout, seconds


def train_budget(args: argparse.Namespace, extra: list, out: Path, budget: float, work: Path, what: str) -> float:
    argv = ["train.py", *extra, "--out-dir", out, "--time-budget", budget, "--device", "cpu", "--seed", args.seed]
    argv += ["--eval-interval", "0", "--sample-interval", "0", "--ckpt-interval", "0", "--keep-checkpoints", "1"]
    return run(argv, work, what)[1]


@torch.no_grad()
def heldout_loss(model, tokenizer, conversations: list[list[dict]], block_size: int) -> dict:
    """Mean cross-entropy (nats) of the assistant tokens of the conversations (minigpt.train.sft's mask)."""
    total, count = 0.0, 0
    for messages in conversations:
        ex = example(*encode(messages, MINIGPT, tokenizer), block_size)
        if ex is None:
            continue
        logits = model(torch.tensor([ex.inputs]))
        targets = torch.tensor(ex.targets)
        total += F.cross_entropy(logits[0].float(), targets, ignore_index=IGNORE, reduction="sum").item()
        count += int((targets != IGNORE).sum())
    return {"loss": total / count, "tokens": count}


def chat_reply(init: Path, messages: list[dict], work: Path, what: str, extra=()) -> str:
    argv = [
        "chat.py",
        "--init",
        init,
        "--messages",
        "-",
        "--device",
        "cpu",
        "--max-new-tokens",
        48,
        *CHAT_FLAGS,
        *extra,
    ]
    return run(argv, work, what, stdin=json.dumps(messages))[0].strip()


# ----------------------------------------------------------------------------------------------
# What README.md shows of the results (tests/bench/test_readme_figures.py holds it to them)

MODELS = {"pretrained": "pretrained, before SFT", "sft_full": "full fine-tuning", "sft_lora": "LoRA"}


def one_line(text: str) -> str:
    """A reply on one line, its line breaks written " / "."""
    return " / ".join(line.strip() for line in text.splitlines() if line.strip())


def readme_figures(result: dict) -> list[str]:
    """The lines README.md's showcase shows: the loss table's rows, the figures of its text, the transcripts' lines."""
    trainable = {"pretrained": "(none)", "sft_full": f"{result['sft_full']['trainable_params']:,}"}
    trainable["sft_lora"] = f"{result['sft_lora']['trainable_params']:,}"
    lines = [f"| {MODELS[m]} | {trainable[m]} | {result['heldout_loss'][m]:.3f} |" for m in MODELS]
    data = result["data"]
    lines += [
        f"{result['wall_s'] / 60:.1f} minutes in all",
        f"{data['train_conversations']} for fine-tuning",
        f"{data['heldout_conversations']} held out",
        f"at most {data['max_chars']} characters",
        f"({result['pretrain']['params']:,} parameters",
        f"for {result['pretrain']['time_budget_s']:.0f} s on that first",
        f"for {result['sft_full']['time_budget_s']:.0f} s in full",
        f"for {result['sft_lora']['time_budget_s']:.0f} s with LoRA",
        f"the {result['heldout_tokens']:,} reply tokens",
        re.search(r"load average [\d.]+ at the start, [\d.]+ at the end", result["shared_machine"]).group(0),
    ]
    labels = {
        "user": "user",
        "play": "the play",
        "pretrained": "pretrained",
        "sft_full": "full SFT",
        "sft_lora": "LoRA",
    }
    for t in result["transcripts"]:
        lines += [f"{label + ':':<12}{one_line(t[key])}" for key, label in labels.items()]
    return lines


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, default=None, help=f"the play (default {SHAKESPEARE}, if present)")
    p.add_argument("--pretrain-s", type=float, default=180.0, help="pretraining budget in seconds (train.py's)")
    p.add_argument("--sft-s", type=float, default=120.0, help="each fine-tuning run's budget in seconds")
    p.add_argument("--conversations", type=int, default=400, help="SFT training conversations")
    p.add_argument("--heldout", type=int, default=60, help="held-out conversations scored")
    p.add_argument("--heldout-share", type=float, default=0.1, help="share of the text (its end) held out")
    p.add_argument("--max-chars", type=int, default=600, help="most characters of a conversation")
    p.add_argument("--transcripts", type=int, default=3, help="held-out conversations chatted with per model")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--reuse-pretrained", action="store_true", help="keep a pretrained run found in the work folder")
    p.add_argument("--work", type=Path, default=RUNS_DIR / "sft-showcase", help="runs and data (ignored by git)")
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON (default: a new bench/runs folder)")
    p.add_argument("--update-results", action="store_true", help=f"write bench/results/{RESULTS_NAME}")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data = build_data(args, work)
    log(f"data: {data}")
    pretrained, full, lora = work / "pretrain", work / "sft-full", work / "sft-lora"
    seconds = {}
    if not (args.reuse_pretrained and latest_checkpoint(pretrained)):
        extra = ["--data", work / "pretrain.txt", *flags(PRETRAIN)]
        seconds["pretrain"] = train_budget(args, extra, pretrained, args.pretrain_s, work, "pretrain")
    sft = ["--init", pretrained, "--sft", work / "sft-train.jsonl", "--sft-val-fraction", "0.05"]
    seconds["sft_full"] = train_budget(args, [*sft, *flags(SFT_FULL)], full, args.sft_s, work, "sft full")
    seconds["sft_lora"] = train_budget(args, [*sft, *flags(SFT_LORA)], lora, args.sft_s, work, "sft lora")

    heldout = [json.loads(line)["messages"] for line in (work / "sft-heldout.jsonl").read_text().splitlines()]
    tokenizer = tokenizer_for(pretrained)
    models = {
        "pretrained": from_pretrained(pretrained),
        "sft_full": from_pretrained(full),
        "sft_lora": from_pretrained(lora),
    }
    adapted = from_pretrained(pretrained)  # the LoRA run's adapter on the pretrained weights, merged
    load_adapter(adapted, latest_checkpoint(lora))
    merge_lora(adapted)
    block = models["pretrained"].config.block_size
    losses = {name: heldout_loss(m, tokenizer, heldout, block) for name, m in models.items()}
    adapter_loss = heldout_loss(adapted, tokenizer, heldout, block)["loss"]
    log(f"held-out reply loss: {json.dumps(losses)}; pretrained + adapter, merged: {adapter_loss:.4f}")

    transcripts = []
    for messages in heldout[: args.transcripts]:
        prompt = messages[:1]
        entry = {"user": prompt[0]["content"], "play": messages[1]["content"]}
        entry["pretrained"] = chat_reply(pretrained, prompt, work, "chat pretrained", ["--format", "minigpt"])
        entry["sft_full"] = chat_reply(full, prompt, work, "chat sft full")
        entry["sft_lora"] = chat_reply(pretrained, prompt, work, "chat lora", ["--adapter", lora])
        entry["sft_lora_checkpoint_agrees"] = entry["sft_lora"] == chat_reply(lora, prompt, work, "chat lora ckpt")
        transcripts.append(entry)

    lora_params = sum(t.numel() for t in load_file(str(latest_checkpoint(lora) / WEIGHTS_FILE)).values())
    payload = {
        "environment": environment("cpu"),
        "cpu": cpu_model(),
        "shared_machine": "the CPU was shared with other work while this ran (load average "
        f"{load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} cores)",
        "note": "a 4-layer, 128-wide GPT-2 trained for minutes on a CPU: the figures show the pipeline works "
        "(the loss on held-out replies falls), not that the model chats well",
        "data": data,
        "pretrain": {**PRETRAIN, "time_budget_s": args.pretrain_s, "params": models["pretrained"].num_params()},
        "sft_full": {**SFT_FULL, "time_budget_s": args.sft_s, "trainable_params": models["sft_full"].num_params()},
        "sft_lora": {**SFT_LORA, "time_budget_s": args.sft_s, "trainable_params": lora_params},
        "heldout_loss": {name: round(v["loss"], 4) for name, v in losses.items()},
        "heldout_tokens": losses["pretrained"]["tokens"],
        "heldout_loss_pretrained_plus_adapter": round(adapter_loss, 4),
        "chat_flags": ["--max-new-tokens", "48", *CHAT_FLAGS],
        "transcripts": transcripts,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = output_dir(args.out, args.update_results, "sft-showcase")
    path = write_json(out / RESULTS_NAME, payload)
    log(f"wrote {path} in {payload['wall_s']:.0f}s")
    print("\n".join(readme_figures(payload)))
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
