"""Shared pieces of the training tests: a tiny corpus, tiny run settings, reading what a run wrote."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from pathlib import Path

from minigpt.data.corpus import prepare

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: Path):
    """A command-line script (not a package module) imported from its file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WORDS = (
    "the cat dog bird fish sat ran flew swam on under over near a red blue green small big "
    "mat tree pond house and then while because quickly slowly"
).split()


def tiny_settings(data_dir: Path, out_dir: Path, **overrides) -> dict:
    """A 2-layer, 32-wide model on 4 x 32-token micro-batches (a value of None: left out)."""
    settings = dict(
        data=data_dir,
        out_dir=out_dir,
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=32,
        batch_size=4,
        max_steps=8,
        lr=3e-3,
        warmup_steps=2,
        eval_interval=0,
        eval_steps=1,
        sample_interval=0,
        sample_tokens=8,
        ckpt_interval=0,
        keep_checkpoints=0,
        seed=7,
    )
    settings.update(overrides)
    return {
        key: str(value) if isinstance(value, Path) else value for key, value in settings.items() if value is not None
    }


def tiny_argv(data_dir: Path, out_dir: Path, **overrides) -> list[str]:
    """tiny_settings as train.py flags."""
    argv = []
    for key, value in tiny_settings(data_dir, out_dir, **overrides).items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def read_log(out_dir: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """(train records, eval records) of out_dir/log.jsonl, by step."""
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return ({r["step"]: r for r in records if "loss" in r}, {r["step"]: r for r in records if "val_loss" in r})


def tree_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def make_corpus(root: Path) -> Path:
    """About 40 KB of made-up sentences, tokenized (roughly 9k train / 1k val tokens) in root/prepared."""
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) + "." for _ in range(1500)]
    source = root / "corpus.txt"
    source.write_text("\n".join(lines) + "\n")
    prepare(str(source), root / "prepared", val_fraction=0.1, workers=1, quiet=True)
    return root / "prepared"
