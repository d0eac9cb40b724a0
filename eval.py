"""Score a GPT-2 on the benchmarks the field reports: OpenAI's weights, a checkpoint, a train.py run.

    python eval.py --init gpt2 --task hellaswag --task lambada
    python eval.py --init out --task bpb:valid.txt --stride 512
    python eval.py --init out --task mc:quiz.jsonl --output results.json
    python eval.py --init gpt2 --task lm-eval:arc_easy,piqa --include-path my_tasks/
    python eval.py --init gpt2 --adapter out-lora/ --task bpb:valid.txt   # a LoRA adapter, merged

The results table goes to stdout; progress and load time to stderr.
"""

from __future__ import annotations

from minigpt import entrypoint

if __name__ == "__main__":
    entrypoint.start()  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C

import argparse
import os
import sys
import time

from minigpt.cli import (
    OneLineParser,
    adapter_directory,
    add_adapter_flag,
    add_attn_backend_flag,
    add_device_flags,
    add_quantize_flags,
    load_model,
    quantize_settings,
    resolve_device,
    resolve_dtype,
)
from minigpt.eval.evaluate import evaluate, format_table, load_task, results_json, run_info, tasks_help
from minigpt.files import atomic_write, check_not_input
from minigpt.rundir import CheckpointError


def parse_args(argv=None) -> argparse.Namespace:
    tasks = "\n".join("  " + line for line in tasks_help(lines=True).splitlines())
    p = OneLineParser(
        description=__doc__, epilog=f"tasks:\n{tasks}", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--init",
        default="gpt2",
        help="a preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl; downloaded once), a Hugging Face style "
        "directory, a .safetensors file, or a train.py --out-dir (its latest checkpoint)",
    )
    add_adapter_flag(p)
    p.add_argument(
        "--task",
        action="append",
        required=True,
        help="a task to score (see the list below); may be given several times",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="score only the first N examples of each task (bpb: the first N characters)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="rows (context + choice) per forward pass")
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="bpb: tokens of context per window (default: the model's context length)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="bpb: new tokens scored per window (default: half the window; the window itself gives disjoint windows)",
    )
    p.add_argument("--include-path", default=None, help="lm-eval: a directory of custom task YAMLs")
    p.add_argument("--num-fewshot", type=int, default=None, help="lm-eval: few-shot examples (default: the task's)")
    add_device_flags(p)
    add_attn_backend_flag(p)
    add_quantize_flags(p)
    p.add_argument("--output", default=None, help="also write the results, device, versions and commit as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (entrypoint.Interrupted), e.g. while scoring
        print("error: interrupted; nothing was written", file=sys.stderr)
        return entrypoint.exit_code(e)
    except (CheckpointError, ValueError, RuntimeError, OSError) as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        print(f"error: {lines[0]}", file=sys.stderr)
        return 2


def input_paths(args: argparse.Namespace) -> list[str]:
    """The files and directories the command reads: --init, --adapter, each task's PATH, --include-path."""
    return [args.init, args.adapter, args.include_path, *(t.partition(":")[2] for t in args.task)]


def run(args: argparse.Namespace) -> int:
    from minigpt.eval.tasks import Task
    from minigpt.tokenizers.lookup import check_vocab, tokenizer_for

    for name, value in (
        ("--batch-size", args.batch_size),
        ("--limit", args.limit),
        ("--window", args.window),
        ("--stride", args.stride),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if args.output:  # refused before any work: the results must never overwrite what they score
        if os.path.isdir(args.output):
            raise ValueError(f"--output {args.output} is a directory; name a file")
        check_not_input(args.output, input_paths(args))
    quantization = quantize_settings(args)
    adapter_directory(args)  # a bad --adapter fails before the task data is read
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    # Task data is read (and downloaded) first, so bad data fails before the model loads.
    tasks = [load_task(Task.parse(t), args.limit, args.include_path) for t in args.task]

    t0 = time.perf_counter()
    model = load_model(args, device, dtype, quantization)
    tokenizer = tokenizer_for(args.init)  # the one saved with a train.py checkpoint, else GPT-2's
    check_vocab(tokenizer, model.config.vocab_size, args.init)
    print(
        f"loaded {args.init} ({model.num_params() / 1e6:.1f}M parameters, {dtype}, {device}, "
        f"{tokenizer.kind} tokenizer"
        + (f", {args.quantize}" if args.quantize else "")
        + (f", adapter {args.adapter} merged" if args.adapter else "")
        + ") "
        f"in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )

    t0 = time.perf_counter()
    results = evaluate(
        model,
        tokenizer,
        tasks,
        limit=args.limit,
        batch_size=args.batch_size,
        window=args.window,
        stride=args.stride,
        include_path=args.include_path,
        num_fewshot=args.num_fewshot,
        progress=not args.no_progress,
    )
    print(f"scored in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print(format_table(results))
    if args.output:
        payload = {
            "model": str(args.init),
            **({"adapter": str(args.adapter)} if args.adapter else {}),
            "dtype": str(dtype).removeprefix("torch."),
            "results": results,
            **run_info(device),
        }
        atomic_write(args.output, results_json(payload))  # a device or symlink is written through
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
