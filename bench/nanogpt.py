"""nanoGPT's own train.py and model.py, run from a copy of nanoGPT the user points to.

`python bench/push.py --nanogpt DIR` uses this module: DIR is a checkout of nanoGPT (never part of
this repository). Its train.py, model.py, configurator.py and config/train_shakespeare_char.py are
copied to a scratch folder (`scratch_copy`; DIR is never written), and everything runs there:

- `prepare`: the data as nanoGPT's data/shakespeare_char/prepare.py makes it, restated (that script
  downloads): the text's sorted distinct characters are the vocabulary, the first int(0.9 n)
  characters are train.bin and the rest val.bin (uint16 ids), and meta.pkl is a pickled plain dict
  {vocab_size, itos, stoi}, because nanoGPT's train.py reads it. minigpt never unpickles it.
- `train_args`: nanoGPT's README command for a CPU, plus --always_save_checkpoint=True: the recipe's
  config saves ckpt.pt only when its val loss improves, and the final model is the one scored.
- `parse_log`: its `iter N: loss X, time Yms` lines. The training seconds are the sum of those
  per-iteration times (iterations 0 to max_iters, max_iters + 1 of them): train.py's clock from
  just before its loop to the end of its last step, so they cover every step, the fetching of
  batches, the logging, and the evaluations (eval_iters batches of each split) and checkpoint
  writes inside the loop (at iterations 0, 250, ..., max_iters); not the imports, the data and
  model set-up, or the process's start and exit.
- `load_model` / `score`: ckpt.pt read with torch.load(weights_only=True) into the GPT of the
  copy's own model.py, and scored with minigpt.eval.evaluate.bits_per_byte itself (the same
  rolling windows as for a minigpt model with that context: the first `block_size` characters,
  then half a window of new ones per window). nanoGPT's characters have no end-of-text id, so
  the first scored character is conditioned on the character before it in the text (the last of
  the training part) where a minigpt model gets its end-of-text id.

train.py saves ckpt.pt at the evaluation of iteration max_iters, before that iteration's step,
and then takes the step and exits: the scored model has had max_iters optimizer steps.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUIRED = ("train.py", "model.py", "configurator.py")
CONFIG = "config/train_shakespeare_char.py"
DATASET = "shakespeare_char"  # the config's `dataset`: train.py reads data/<dataset>/ from its working directory
TRAIN_FRACTION = 0.9  # prepare.py: data[:int(n*0.9)] trains, the rest is val

# nanoGPT's README, "I only have a macbook": the Shakespeare character model on a CPU.
README_FLAGS = (
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters={max_iters}",
    "--lr_decay_iters={max_iters}",
    "--dropout=0.0",
)
README_MAX_ITERS = 2000

ITER_LINE = re.compile(r"^iter (\d+): loss (\S+), time ([0-9.]+)ms", re.MULTILINE)
EVAL_LINE = re.compile(r"^step (\d+): train loss (\S+), val loss (\S+)", re.MULTILINE)


class NanoGPTError(Exception):
    """nanoGPT's copy, data or run cannot be used; the message says why in one line."""


# ----------------------------------------------------------------------------------------------
# The copy


def check_dir(path: Path) -> Path:
    """path, if it holds nanoGPT's train.py, model.py, configurator.py and the Shakespeare config."""
    if not path.is_dir():
        raise NanoGPTError(f"--nanogpt {path}: no such directory")
    missing = [name for name in (*REQUIRED, CONFIG) if not (path / name).is_file()]
    if missing:
        raise NanoGPTError(f"--nanogpt {path} is not a copy of nanoGPT: it has no {', '.join(missing)}")
    return path


def source_id(path: Path) -> dict:
    """Which nanoGPT ran: its git commit if `path` is a git checkout, and a sha256 of train.py + model.py
    (of those there)."""
    digest = hashlib.sha256()
    for name in ("train.py", "model.py"):
        if (path / name).is_file():
            digest.update((path / name).read_bytes())
    git = None
    with contextlib.suppress(OSError):
        done = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
        if done.returncode == 0:
            git = done.stdout.strip()
    sha = digest.hexdigest()
    return {"dir": str(path.resolve()), "commit": git or f"sha256:{sha}", "git_commit": git, "sha256": sha}


def scratch_copy(source: Path, dest: Path) -> Path:
    """train.py, model.py, configurator.py and the config copied into dest (a new folder)."""
    for name in (*REQUIRED, CONFIG):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, dest / name)
    return dest


def config_value(path: Path, name: str, default):
    """The literal a config file assigns to `name` (its last assignment), read without running it."""
    value = default
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            with contextlib.suppress(ValueError):
                value = ast.literal_eval(node.value)
    return value


# ----------------------------------------------------------------------------------------------
# The data


def read_text(path: Path) -> str:
    """The text, as prepare.py reads it and as minigpt's data reads it: UTF-8 without carriage
    returns (prepare.py's text mode translates them, minigpt.data keeps them, so the two splits
    would differ)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise NanoGPTError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise NanoGPTError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if "\r" in text:
        raise NanoGPTError(f"{path} has carriage returns, which nanoGPT's prepare.py and minigpt.data read differently")
    return text


def prepare(text: str, data_dir: Path) -> dict:
    """train.bin, val.bin and meta.pkl of `text` in data_dir, as prepare.py writes them;
    returns {"cut" (the first val character), "vocab_size", "stoi", "train_tokens", "val_tokens"}."""
    chars = sorted(set(text))
    if len(chars) > 2**16:
        raise NanoGPTError(f"the text has {len(chars):,} distinct characters; nanoGPT's uint16 ids hold 65,536")
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    cut = int(len(text) * TRAIN_FRACTION)
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    data_dir.mkdir(parents=True, exist_ok=True)
    ids[:cut].tofile(data_dir / "train.bin")
    ids[cut:].tofile(data_dir / "val.bin")
    with open(data_dir / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    return {"cut": cut, "vocab_size": len(chars), "stoi": stoi, "train_tokens": cut, "val_tokens": len(text) - cut}


# ----------------------------------------------------------------------------------------------
# The run


def train_args(copy: Path, max_iters: int = README_MAX_ITERS) -> list[str]:
    """The README command's arguments to train.py with max_iters and lr_decay_iters set to max_iters.

    When max_iters is not a multiple of the config's eval_interval, eval_interval becomes
    max_iters, so that the last iteration still evaluates and saves (a shortened run)."""
    if max_iters < 1:
        raise NanoGPTError(f"--nanogpt-max-iters must be at least 1, got {max_iters}")
    args = [CONFIG, *(flag.format(max_iters=max_iters) for flag in README_FLAGS), "--always_save_checkpoint=True"]
    if max_iters % config_value(copy / CONFIG, "eval_interval", 2000):
        args.append(f"--eval_interval={max_iters}")
    return args


def out_dir(copy: Path, args: list[str]) -> Path:
    """Where train.py writes ckpt.pt: its --out_dir, else the config's, else train.py's default."""
    value = config_value(copy / CONFIG, "out_dir", "out")
    for arg in args:
        if arg.startswith("--out_dir="):
            value = arg.split("=", 1)[1]
    return copy / value


def parse_log(stdout: str) -> dict:
    """What train.py printed: {"iterations" (iter lines), "last_iter", "train_s" (the sum of their
    times), "final_train_loss", "evals" [{"step", "train_loss", "val_loss"}]}."""
    iters = [(int(m[1]), float(m[2]), float(m[3]) / 1000) for m in ITER_LINE.finditer(stdout)]
    if not iters:
        raise NanoGPTError("nanoGPT's train.py printed no `iter N: loss X, time Yms` lines")
    evals = [
        {"step": int(m[1]), "train_loss": float(m[2]), "val_loss": float(m[3])} for m in EVAL_LINE.finditer(stdout)
    ]
    return {
        "iterations": len(iters),
        "last_iter": iters[-1][0],
        "train_s": sum(t for _, _, t in iters),
        "median_iter_s": float(np.median([t for _, _, t in iters])),
        "final_train_loss": iters[-1][1],
        "evals": evals,
    }


def failure(stderr: Path, returncode: int, lines: int = 3) -> str:
    tail = stderr.read_text(errors="replace").strip().splitlines()[-lines:] if stderr.is_file() else []
    return f"exit {returncode}: {' | '.join(line.strip() for line in tail) or 'no output on stderr'}"


# ----------------------------------------------------------------------------------------------
# The model and its score


def import_model(copy: Path):
    """The copy's model.py as a module (nanogpt_model; not `model`, which minigpt's own code could shadow)."""
    name = "nanogpt_model"
    spec = importlib.util.spec_from_file_location(name, copy / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass looks its module up while it is defined
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def load_model(copy: Path, ckpt_path: Path):
    """(nanoGPT's GPT with ckpt.pt's weights, in eval mode; {"iter_num", "model_args", "best_val_loss"})."""
    import torch

    if not ckpt_path.is_file():
        raise NanoGPTError(f"nanoGPT's train.py wrote no checkpoint at {ckpt_path}")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling refusal or a damaged file: one line either way
        raise NanoGPTError(f"cannot read {ckpt_path} with weights_only=True: {str(e).splitlines()[0]}") from None
    module = import_model(copy)
    with contextlib.redirect_stdout(sys.stderr):  # GPT() prints its parameter count; stdout holds the results
        model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
    # A compiled model's weights carry this prefix (train.py strips it when it resumes, too).
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    info = {"iter_num": int(ckpt["iter_num"]), "model_args": dict(ckpt["model_args"])}
    info["best_val_loss"] = float(ckpt["best_val_loss"]) if "best_val_loss" in ckpt else None
    return model.eval(), info


def num_params(model) -> int:
    """Every parameter once (the tied wte / lm_head once), minigpt's GPTConfig.num_params count."""
    return sum(p.numel() for p in model.parameters())


def full_logits(gpt):
    """nanoGPT's GPT as bits_per_byte calls a model: logits (B, T, vocab) at every position.

    Its forward gives every position's logits only when given targets (without them, only the
    last position's), so the inputs go in as targets and the loss is dropped."""
    import torch

    class FullLogits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gpt, self.config = gpt, gpt.config

        def forward(self, idx):
            return self.gpt(idx, idx)[0]

    return FullLogits().eval()


@dataclass(frozen=True)
class CharIds:
    """nanoGPT's character ids (prepare.py's stoi) as bits_per_byte reads a tokenizer. `eot_id`,
    the id a text is conditioned on, is that of the character before the text in the corpus."""

    stoi: dict[str, int]
    eot_id: int
    kind: str = "nanogpt-char"

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise NanoGPTError(f"character {e.args[0]!r} is not in nanoGPT's vocabulary") from None


def score(model, stoi: dict[str, int], text: str, before: str, batch_size: int = 32) -> dict:
    """minigpt.eval.evaluate.bits_per_byte of `text` under nanoGPT's model, its first character
    conditioned on `before` (the character preceding it)."""
    import torch

    from minigpt.eval.evaluate import bits_per_byte

    with torch.no_grad():
        return bits_per_byte(full_logits(model), CharIds(stoi, stoi[before]), text, batch_size=batch_size)
