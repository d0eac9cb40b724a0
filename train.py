"""Pretrain a GPT-2 (or fine-tune one) on a prepared token corpus; the loop is minigpt/trainer.py.

    python train.py                                  # recipe "cpu": ~5 minutes on 2 cores, offline
    python train.py --recipe gpt2-124m               # GPT-2 124M on FineWeb-Edu (GPUs)
    python train.py --init gpt2 --data notes/ --max-steps 200 --lr 3e-5   # fine-tune OpenAI's weights
    python train.py --time-budget 300                # 5 minutes of training steps, the LR schedule over them
    python train.py --tokenizer bpe:4096             # a BPE of 4096 tokens trained on the corpus's train split
    python train.py --eval-task mc:quiz.jsonl        # also score an eval.py task at each evaluation
    python train.py --resume                         # continue the latest checkpoint in --out-dir
    torchrun --nproc_per_node=8 train.py --recipe gpt2-124m               # 8 GPUs, DDP
    torchrun --nproc_per_node=8 train.py --init gpt2-xl --parallel fsdp   # 8 GPUs, FSDP2 (sharded)

A recipe names a complete run (minigpt.train.config.RECIPES); flags override single values.
Every flag but --recipe and --resume is a TrainConfig field. Ctrl-C (or SIGTERM) finishes the
current step, writes a checkpoint and exits; a second Ctrl-C quits at once without saving.
"""

from __future__ import annotations

import time

from minigpt import entrypoint

if __name__ == "__main__":
    STARTED = time.monotonic()  # a sized --time-budget counts the wall clock from here
    entrypoint.start()  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C

import argparse
import dataclasses
import os
import sys
import textwrap
import typing
from pathlib import Path

import torch.distributed as dist

from minigpt.cli import OneLineParser
from minigpt.data.corpus import DataError
from minigpt.files import check_not_input
from minigpt.model import weights
from minigpt.rundir import CheckpointError, latest_checkpoint
from minigpt.tokenizers import TokenizerUnavailable
from minigpt.train import sizing
from minigpt.train.config import RECIPES, TrainConfig, TrainError, recipes_help
from minigpt.train.trainer import Trainer, run_config

# What a run that cannot start or go on raises; each is printed as one line. (weights.py's
# CheckpointError is checkpoint.py's once weights.py imports it from there.)
ERRORS = (TrainError, CheckpointError, weights.CheckpointError, DataError, TokenizerUnavailable)

# The flag groups of --help, each starting at a TrainConfig field (the fields are in this order).
FLAG_GROUPS = {
    "data": "data and output",
    "init": "model",
    "max_steps": "optimisation",
    "eval_interval": "evaluation, samples and checkpoints (an interval of 0: only at the end)",
    "device": "system",
}

FLAG_FIELDS = [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]


def build_parser() -> argparse.ArgumentParser:
    recipes = "\n".join(
        textwrap.fill(
            ", ".join(f"{k}={v!r}" for k, v in settings.items()) or "the defaults",
            initial_indent=f"  {name}: ",
            subsequent_indent="    ",
        )
        for name, settings in RECIPES.items()
    )
    parser = OneLineParser(
        prog="train.py",
        description="Pretrain or fine-tune a GPT-2. Every flag left out takes the recipe's value "
        "(or, with --resume, the checkpoint's); the defaults shown are the cpu recipe.",
        epilog=f"recipes:\n{recipes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", choices=list(RECIPES), default=None, help=recipes_help())
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CKPT",
        help="continue from the latest checkpoint in --out-dir, or from the checkpoint "
        "directory CKPT; its settings are kept unless a flag overrides them. An older "
        "CKPT starts a new branch: later checkpoints move to OUT_DIR/superseded/",
    )
    types = typing.get_type_hints(TrainConfig)
    group = parser
    for f in FLAG_FIELDS:
        group = parser.add_argument_group(FLAG_GROUPS[f.name]) if f.name in FLAG_GROUPS else group
        extra = {k: v for k, v in f.metadata.items() if k != "help"}
        shown = f.default is not None and not isinstance(f.default, bool)
        text = f.metadata["help"] + (f" (default: {f.default})" if shown else "")
        flag = "--" + f.name.replace("_", "-")
        # None is the argparse default of every flag: a flag left out is then not an override.
        kind = next((t for t in typing.get_args(types[f.name]) if t is not type(None)), types[f.name])
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=text, **extra)
        elif typing.get_origin(kind) is list:  # a repeatable flag (action="append")
            group.add_argument(flag, type=typing.get_args(kind)[0], help=text, **extra)
        else:
            group.add_argument(flag, type=kind, help=text, **extra)
    return parser


def check_out_dir(cfg: TrainConfig) -> None:
    """--out-dir must not be what the run reads (--data, an --eval-task file): its logs and
    checkpoints would land among, or over, the inputs. A TrainError of one line."""
    inputs = [cfg.data, *(task.partition(":")[2] for task in cfg.eval_task or [])]
    try:
        check_not_input(cfg.out_dir, inputs, "--out-dir")
    except ValueError as e:
        raise TrainError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    started = STARTED if __name__ == "__main__" and argv is None else time.monotonic()  # the command's start
    args = build_parser().parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in FLAG_FIELDS if getattr(args, f.name) is not None}
    explicit = frozenset(overrides)
    master = int(os.environ.get("RANK", 0)) == 0
    trainer = None
    try:
        cfg, resume = run_config(args.recipe, overrides, args.resume)
        check_out_dir(cfg)
        deadline = None
        if sizing.applies(cfg, explicit, args.recipe, resume is not None):  # a budget and no model: size one
            cfg, choice = sizing.size_run(cfg, explicit, started)
            if master:
                print(choice.why, file=sys.stderr)
            deadline = None if cfg.token_budget is not None else started + cfg.sizing["budget_s"]
        trainer = Trainer(cfg, resume, explicit=explicit, deadline=deadline)
        return trainer.fit()
    except ERRORS as e:
        if master:
            print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except OSError as e:  # the disk or the file system failed under the run (a full disk, ...)
        if master:
            where = f" ({e.filename})" if e.filename else ""
            print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (entrypoint.Interrupted), before or between steps
        if master:
            if trainer is None:
                print("error: interrupted before training started", file=sys.stderr)
            else:
                last = latest_checkpoint(Path(trainer.cfg.out_dir))
                print(f"error: interrupted without saving; the last checkpoint is {last}", file=sys.stderr)
        return entrypoint.exit_code(e)
    finally:
        if trainer is not None:
            trainer.close()
        elif dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
