"""Measure OpenAI's GPT-2 with eval.py beside the figures published for it (needs network).

    python bench/published.py                       # gpt2 (124M), every task below
    python bench/published.py --model gpt2-xl --device cuda
    python bench/published.py --model out --tasks hellaswag,lambada   # a minigpt run, same tasks

Downloads once (into ~/.cache/minigpt/eval): LAMBADA (OpenAI's test jsonl), HellaSwag
(validation), WikiText-2 / WikiText-103 raw test (Hugging Face `Salesforce/wikitext`, through
`datasets`, which the `eval` extra installs) and enwik8 (the last 5M bytes, the usual test
split). Each task then runs through `eval.py --output`, and the script writes
bench/results/published-<model>.json and .md: every metric with its published value and source
beside what was measured here.

The GPT-2 paper scored WikiText with invertible de-tokenizers over the tokenized text; the raw
files scored here are close to but not the same text, so expect a gap of a few perplexity
points there. enwik8 bits per byte and LAMBADA are the same data the paper used.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

from bench.common import RESULTS_DIR, environment, log, write_json, write_text  # noqa: E402

PAPER = "Radford et al. 2019, Language Models are Unsupervised Multitask Learners, Table 3 (zero-shot)"
HARNESS = "lm-evaluation-harness, as quoted in karpathy/build-nanogpt hellaswag.py (multiple-choice style)"
NANOGPT = "karpathy/build-nanogpt hellaswag.py (completion style, normalised by tokens)"

# (task, metric) -> {preset: published value}. Percentages as fractions.
PUBLISHED = {
    ("lambada", "ppl"): ({"gpt2": 35.13, "gpt2-medium": 15.60, "gpt2-large": 10.87, "gpt2-xl": 8.63}, PAPER),
    ("lambada", "acc"): ({"gpt2": 0.4599, "gpt2-medium": 0.5548, "gpt2-large": 0.6012, "gpt2-xl": 0.6324}, PAPER),
    ("wikitext2", "word_ppl"): ({"gpt2": 29.41, "gpt2-medium": 22.76, "gpt2-large": 19.93, "gpt2-xl": 18.34}, PAPER),
    ("wikitext103", "word_ppl"): ({"gpt2": 37.50, "gpt2-medium": 26.37, "gpt2-large": 22.05, "gpt2-xl": 17.48}, PAPER),
    ("enwik8", "bpb"): ({"gpt2": 1.16, "gpt2-medium": 1.01, "gpt2-large": 0.97, "gpt2-xl": 0.93}, PAPER),
    ("hellaswag", "acc_norm"): ({"gpt2": 0.3114, "gpt2-xl": 0.5089}, HARNESS),
    ("hellaswag", "acc"): ({"gpt2": 0.2892, "gpt2-xl": 0.4004}, HARNESS),
    ("hellaswag", "acc_norm (completion style)"): ({"gpt2": 0.2955, "gpt2-xl": 0.4893}, NANOGPT),
}
ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"


def wikitext(config: str, path: Path) -> Path:
    if not path.is_file():
        from datasets import load_dataset

        test = load_dataset("Salesforce/wikitext", config, split="test")
        path.write_text("".join(test["text"]), encoding="utf-8")
    return path


def enwik8(path: Path) -> Path:
    if not path.is_file():
        with urllib.request.urlopen(ENWIK8_URL, timeout=300) as r:
            data = zipfile.ZipFile(io.BytesIO(r.read())).read("enwik8")
        test = data[-5_000_000:]  # 90M train / 5M valid / 5M test
        # The cut may fall inside a UTF-8 character: drop the partial one at the start.
        path.write_text(test.decode("utf-8", errors="ignore"), encoding="utf-8")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", help="what eval.py --init takes (a preset, a directory, ...)")
    p.add_argument(
        "--tasks",
        default="lambada,hellaswag,wikitext2,wikitext103,enwik8",
        help="comma-separated: lambada, hellaswag, wikitext2, wikitext103, enwik8",
    )
    p.add_argument("--device", default="auto", help="passed to eval.py")
    p.add_argument("--dtype", default="float32", help="passed to eval.py (the published figures are fp32)")
    p.add_argument("--batch-size", type=int, default=16, help="passed to eval.py")
    p.add_argument("--limit", type=int, default=None, help="passed to eval.py (a quick partial run)")
    args = p.parse_args(argv)

    from minigpt.eval.tasks import cache_dir

    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    specs = {"lambada": "lambada", "hellaswag": "hellaswag"}
    wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if "wikitext2" in wanted:
        specs["wikitext2"] = f"bpb:{wikitext('wikitext-2-raw-v1', cache / 'wikitext-2-raw-test.txt')}"
    if "wikitext103" in wanted:
        specs["wikitext103"] = f"bpb:{wikitext('wikitext-103-raw-v1', cache / 'wikitext-103-raw-test.txt')}"
    if "enwik8" in wanted:
        specs["enwik8"] = f"bpb:{enwik8(cache / 'enwik8-test.txt')}"

    measured, device = {}, None
    for name in wanted:
        if name not in specs:
            p.error(f"unknown task {name!r}")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            cmd = [
                sys.executable,
                str(ROOT / "eval.py"),
                "--init",
                args.model,
                "--task",
                specs[name],
                "--device",
                args.device,
                "--dtype",
                args.dtype,
                "--batch-size",
                str(args.batch_size),
                "--output",
                str(out),
            ]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            log(" ".join(cmd))
            if subprocess.run(cmd).returncode != 0:
                return 1
            payload = json.loads(out.read_text(encoding="utf-8"))
        measured[name] = next(iter(payload["results"].values()))
        device = payload["device"]

    rows = []
    for (task, metric), (values, source) in PUBLISHED.items():
        if task not in measured:
            continue
        ours = measured[task].get(metric.split(" ")[0]) if "(" not in metric else None
        rows.append(
            {
                "task": task,
                "metric": metric,
                "published": values.get(args.model),
                "source": source,
                "measured": ours,
                "n": measured[task].get("n"),
            }
        )
    stem = f"published-{Path(args.model).name}"
    write_json(
        RESULTS_DIR / f"{stem}.json",
        {
            "model": args.model,
            "dtype": args.dtype,
            "limit": args.limit,
            "rows": rows,
            "measured": measured,
            **environment(args.device if args.device != "auto" else "cpu"),
            "eval_device": device,
        },
    )
    lines = [
        f"# {args.model}: published vs measured with eval.py ({device}, {args.dtype})",
        "",
        "| task | metric | published | measured | source |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        show = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
        lines.append(
            f"| {r['task']} | {r['metric']} | {show(r['published'])} | {show(r['measured'])} | {r['source']} |"
        )
    write_text(RESULTS_DIR / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
