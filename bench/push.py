"""A small model on a fixed CPU budget: nanoGPT's Shakespeare recipe beside minigpt's.

    python bench/push.py              # nanoGPT's CPU recipe, then minigpt's at the same wall clock
    python bench/push.py --ab         # the recipe A/Bs, each pair at equal wall clock
    python bench/push.py --study      # val bpb against parameters and FLOPs, the compute-optimal frontier
    python bench/push.py --sizing     # a sized budget run beside the cpu defaults and nanoGPT's recipe
    python bench/push.py --nanogpt DIR  # nanoGPT's own train.py from DIR, then a sized minigpt run in its time

The text is tinyshakespeare (--text; default shared/data/tinyshakespeare.txt beside the
repository or its parent folder, else `train.py --data shakespeare`'s download). It is split as
nanoGPT splits it, by position: the first 90% trains, the last 10% is held out (minigpt.data.corpus
starts the held-out part at a line, a few characters from nanoGPT's cut). Every run is a `train.py` process on one
thread, and every score is minigpt.eval.evaluate.bits_per_byte (what `eval.py --task bpb:FILE`
computes) over those same held-out bytes, each model with its own context window.

Runs that are compared go side by side, two processes at once, each on one thread, so that they
share whatever else the machine is doing; the CPU time other processes took while they ran is
recorded as the load. The wall clock that a budget means is train.py's: seconds spent in
training steps, without data preparation, evaluation and checkpoints.

The nanoGPT arm restates nanoGPT's README command for a CPU (config/train_shakespeare_char.py
with --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0) in train.py's settings: characters, AdamW (0.9, 0.99) with weight decay 0.1 on
the matrices, lr 1e-3 with 100 warmup steps and a cosine to 1e-4 at step 2000, gradient
clipping at 1, learned positions, tied head, no biases (nanoGPT's train.py default). minigpt's
character tokenizer adds 257 ids (byte fallback, end of text) to the 65 characters, which costs
a 128 x 322 head instead of 128 x 65.

--nanogpt DIR runs nanoGPT's own code instead of that restatement (bench/nanogpt.py: a copy of
DIR's train.py, model.py, configurator.py and config in --work, its data prepared as its
prepare.py does, its README CPU command with --always_save_checkpoint=True so that the final
model is scored; --nanogpt-max-iters shortens it). Then `train.py --data D --out-dir O
--time-budget T`, T nanoGPT's training seconds (the sum of its per-iteration times), sizes a
minigpt run on the same split, tokenized with the BPE its rule picks for the corpus (512 for
Shakespeare; prepared beforehand, as a second run finds it cached), train.py's defaults for
everything else; its budget is its whole process's wall clock. Both run one after the other with the machine's
threads, in the environment push.py was started with, and both final models are scored on the
same held-out bytes: nanoGPT's val part (held out by both). Results: nanogpt-real-<stem>-cpu.json.

Results go to bench/results/ (--out DIR for elsewhere): push.json/.md/.png, push-ab.json/.md,
push-study.json/.md/.png, each with the machine, versions and commit (bench/common.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository's package, not an installed one
    sys.path.insert(0, str(ROOT))

LAUNCH_ENV = dict(os.environ)  # as the user started push.py, before entrypoint.start() adds to it

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

from bench import nanogpt  # noqa: E402
from bench.common import RESULTS_DIR, environment, log, slug, write_json, write_text  # noqa: E402
from minigpt.cli import OneLineParser  # noqa: E402
from minigpt.provenance import cpu_model  # noqa: E402
from minigpt.train.config import TrainConfig, make_config  # noqa: E402

# The shared copy of the text, beside a checkout or beside the folder of its worktrees.
SHARED_TEXTS = [
    ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
    ROOT.parent.parent / "shared" / "data" / "tinyshakespeare.txt",
]
VAL_FRACTION = 0.1  # nanoGPT's data/shakespeare_char/prepare.py: the last 10% is val

# nanoGPT's CPU recipe (README, "I only have a macbook"), as train.py settings.
NANOGPT = dict(
    tokenizer="char",
    n_layer=4,
    n_head=4,
    n_embd=128,
    block_size=64,
    batch_size=12,
    dropout=0.0,
    lr=1e-3,
    min_lr=1e-4,
    max_steps=2000,
    warmup_steps=100,
    schedule="cosine",
    optimizer="adamw",
    beta1=0.9,
    beta2=0.99,
    weight_decay=0.1,
    grad_clip=1.0,
    position="learned",
    bias=False,
    activation="gelu_new",
    tie_word_embeddings=True,
    qk_norm=False,
)

# minigpt's recipe for one CPU thread on Shakespeare: nanoGPT's with what won the A/Bs by more
# than their spread (bench/results/push-ab.md: lr 3e-3, the wsd schedule, Muon for the blocks'
# matrices, a 512-token BPE with a 32-token context, about the same bytes). It runs to a --time-budget.
MINIGPT = dict(
    tokenizer="bpe:512",
    n_layer=4,
    n_head=4,
    n_embd=128,
    block_size=32,
    batch_size=12,
    dropout=0.0,
    lr=3e-3,
    min_lr=3e-4,
    warmup_steps=100,
    schedule="wsd",
    decay_frac=0.2,
    optimizer="muon",
    muon_lr=0.02,
    beta1=0.9,
    beta2=0.99,
    weight_decay=0.1,
    grad_clip=1.0,
    position="learned",
    bias=False,
    activation="gelu_new",
    tie_word_embeddings=True,
    qk_norm=False,
)

# What every run of this benchmark sets the same way: no samples to speak of, one evaluation at
# the end (the scores come from the checkpoints), all checkpoints kept.
# The A/Bs and the study score a run by its closing evaluation over this many val batches
# (40 x 12 x 64 characters: about a quarter of the held-out text).
VAL_STEPS = 40
QUIET = dict(
    data_order="random",
    eval_interval=0,
    eval_steps=20,
    sample_interval=0,
    sample_tokens=32,
    sample_prompt="\n",
    keep_checkpoints=0,
    seed=1337,
)


# ----------------------------------------------------------------------------------------------
# Data


# A second corpus that every machine has offline: Python's standard library source, its *.py files in
# sorted path order (test packages left out), until as many characters as tinyshakespeare has.
STDLIB_CHARS = 1_115_394


def stdlib_text(work: Path, chars: int = STDLIB_CHARS) -> Path:
    """The standard-library corpus as one text file in `work` (see STDLIB_CHARS)."""
    from minigpt.data.corpus import _stdlib_files

    parts, total = [], 0
    for key, path in _stdlib_files():
        if key.split("/")[0] in ("test", "idlelib", "lib2to3") or "/tests/" in f"/{key}":
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        parts.append(text)
        total += len(text)
        if total >= chars:
            break
    out = work / "stdlib.txt"
    out.write_text("".join(parts)[:chars], encoding="utf-8")
    return out


def find_text(path: Path | None, work: Path | None = None) -> Path:
    """The Shakespeare text: the path given, the shared copy, or train.py's download; the path
    `stdlib` is the standard-library corpus (stdlib_text), written into `work`."""
    if path is not None and str(path) == "stdlib" and not path.exists():
        return stdlib_text(work or Path("."))
    if path is not None:
        if not path.is_file():
            raise SystemExit(f"error: --text {path} is not a file")
        return path
    for shared in SHARED_TEXTS:
        if shared.is_file():
            return shared
    from minigpt.data.corpus import DataError, default_data_dir, prepare

    out = default_data_dir("shakespeare")
    try:
        prepare("shakespeare", out)  # downloads the text once into `out` (network needed)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    return out / "shakespeare.txt"


def prepare_data(text: Path, work: Path, tokenizer: str) -> Path:
    """The text tokenized with `tokenizer` (trained on the train part), split 90/10 by position."""
    from minigpt.data.corpus import prepare

    out = work / "data" / tokenizer.replace(":", "")
    prepare(str(text), out, val_fraction=VAL_FRACTION, workers=1, quiet=True, tokenizer=tokenizer)
    return out


def held_out_text(data_dir: Path) -> str:
    """The held-out part of the text, decoded from the val shards (their leading end of text dropped)."""
    from minigpt.data.corpus import data_tokenizer, load_meta

    meta = load_meta(data_dir)
    tok = data_tokenizer(data_dir, meta)
    ids = np.concatenate([np.load(data_dir / s["file"]) for s in meta["splits"]["val"]["shards"]])
    ids = ids[1:] if len(ids) and ids[0] == tok.eot_id else ids
    return tok.decode(ids.tolist())


# ----------------------------------------------------------------------------------------------
# Runs


@dataclasses.dataclass
class Arm:
    """One train.py run: a name and its settings (TrainConfig fields)."""

    name: str
    settings: dict
    recipe: str | None = None  # --recipe (a run without one and without a model shape sizes itself)

    def config(self, data_dir: Path, out_dir: Path) -> TrainConfig:
        """The TrainConfig train.py builds from these settings (checks them before any run)."""
        return make_config("cpu", {**QUIET, **self.settings, "data": str(data_dir), "out_dir": str(out_dir)})

    def argv(self, data_dir: Path, out_dir: Path) -> list[str]:
        argv = ["--data", str(data_dir), "--out-dir", str(out_dir)]
        argv += ["--recipe", self.recipe] if self.recipe else []
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        for key, value in {**QUIET, **self.settings}.items():
            if key == "tokenizer":  # the prepared directory holds it
                continue
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                if value != defaults[key]:
                    argv.append(flag if value else "--no-" + key.replace("_", "-"))
            elif value is not None:
                argv += [flag, str(value)]
        return argv


def _busy_seconds() -> float | None:
    """CPU seconds every process on the machine has spent busy since boot (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _others_share(busy0: float | None, own0: float, wall: float) -> float | None:
    """The machine's busy CPU time since the readings busy0 (_busy_seconds) and own0 (_children_cpu)
    that this process's children did not spend, as a fraction of all its CPUs over `wall` seconds."""
    busy1, own1 = _busy_seconds(), _children_cpu()
    if busy0 is None or busy1 is None:
        return None
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall * (os.cpu_count() or 1))


def run_side_by_side(arms: list[Arm], work: Path, data_dirs: dict[str, Path]) -> dict:
    """Run the arms' train.py processes at the same time, one thread each; returns
    {"wall_s", "others_cpu_share" (the machine's busy CPU time not spent by these runs, as a
    fraction of all its CPUs over the wall time), "load_avg"} and writes each arm's out_dir."""
    for arm in arms:
        arm.config(data_dirs[arm.name], work / arm.name)  # a bad setting fails before anything runs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    busy0, own0, t0 = _busy_seconds(), _children_cpu(), time.perf_counter()
    procs = []
    for arm in arms:
        out = work / arm.name
        cmd = [sys.executable, str(ROOT / "train.py"), *arm.argv(data_dirs[arm.name], out)]
        stderr = open(work / f"{arm.name}.stderr", "w")
        procs.append((arm, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr), stderr))
    failed, arm_wall = [], {}
    for arm, proc, stderr in procs:
        proc.wait()
        arm_wall[arm.name] = time.perf_counter() - t0  # (an upper bound for all but the last to end)
        stderr.close()
        if proc.returncode != 0:
            tail = (work / f"{arm.name}.stderr").read_text().strip().splitlines()[-3:]
            failed.append(f"{arm.name} (exit {proc.returncode}): {' | '.join(tail)}")
    wall = time.perf_counter() - t0
    if failed:
        raise RuntimeError("train.py failed: " + "; ".join(failed))
    share = _others_share(busy0, own0, wall)
    return {"wall_s": wall, "arm_wall_s": arm_wall, "others_cpu_share": share, "load_avg": list(os.getloadavg())}


def read_run(out_dir: Path) -> dict:
    """What a finished run wrote: run.json's facts, the last train record, the checkpoints."""
    from minigpt.train.checkpoint import checkpoints, read_train_state

    run = json.loads((out_dir / "run.json").read_text())
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    ckpts = []
    for step, path in checkpoints(out_dir):
        state = read_train_state(path)
        ckpts.append({"step": step, "train_time": state["train_time"], "path": str(path)})
    return {
        "num_params": run["num_params"],
        "flops_per_token": run["flops_per_token"],
        "steps": steps[-1]["step"],
        "tokens": steps[-1]["tokens"],
        "train_time": steps[-1]["train_time"],
        "tokens_per_sec": steps[-1]["tokens"] / steps[-1]["train_time"],
        "final_train_loss": steps[-1]["loss"],
        "log_val_bpb": evals[-1]["val_bpb"] if evals else None,
        "checkpoints": ckpts,
    }


def score(ckpt: str | Path, text: str) -> float:
    """Bits per byte of `text` under a checkpoint (its own tokenizer and context window)."""
    import torch

    from minigpt.eval.evaluate import bits_per_byte
    from minigpt.model.load import from_pretrained
    from minigpt.tokenizers import load_tokenizer

    model = from_pretrained(ckpt)
    model.eval()
    with torch.no_grad():
        return bits_per_byte(model, load_tokenizer(ckpt), text, batch_size=32)["bpb"]


def train_flops(run: dict) -> float:
    return run["flops_per_token"] * run["tokens"]


# ----------------------------------------------------------------------------------------------
# Analysis


def time_to_reach(trajectory: list[dict], target: float) -> dict | None:
    """When a run's held-out bpb first reached `target`: the first checkpoint at or below it
    ("checkpoint_s") and the time linearly interpolated from the one before ("interpolated_s");
    None if it never did."""
    before = None
    for point in trajectory:
        if point["bpb"] <= target:
            interp = point["train_time"]
            if before is not None and before["bpb"] > point["bpb"]:
                f = (before["bpb"] - target) / (before["bpb"] - point["bpb"])
                interp = before["train_time"] + f * (point["train_time"] - before["train_time"])
            return {"checkpoint_s": point["train_time"], "step": point["step"], "interpolated_s": interp}
        before = point
    return None


def pareto_frontier(points: list[dict], x: str = "flops", y: str = "bpb") -> list[dict]:
    """The points that no other point beats with at most the same x and a lower y (the lower
    envelope of y against x), in increasing x."""
    frontier, best = [], math.inf
    for p in sorted(points, key=lambda p: (p[x], p[y])):
        if p[y] < best:
            frontier.append(p)
            best = p[y]
    return frontier


def fit_power_law(xs: list[float], ys: list[float]) -> dict:
    """y = k * x^a by least squares in log-log: {"k", "a", "r2"}."""
    lx, ly = np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float))
    a, logk = np.polyfit(lx, ly, 1)
    pred = logk + a * lx
    ss = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float(((ly - pred) ** 2).sum()) / ss if ss > 0 else 1.0
    return {"k": float(math.exp(logk)), "a": float(a), "r2": r2}


def compute_optimal(points: list[dict], group: str = "budget_s") -> dict:
    """Chinchilla's IsoFLOP analysis (its approach 2) over runs grouped by budget.

    In each group, bpb against log(parameters) is fitted with a parabola; its vertex is the
    compute-optimal size (the best run's size when the parabola does not open upwards or the
    vertex falls outside the sizes tried), and the group's FLOPs there are interpolated in
    log-log from its runs. Then N_opt = k * C^a over the groups. Returns {"optima": [...],
    "fit": {"k", "a", "r2"} or None with fewer than two optima, "frontier": pareto_frontier}.
    """
    optima = []
    for key in sorted({p[group] for p in points}):
        runs = sorted((p for p in points if p[group] == key), key=lambda p: p["params"])
        logn = np.log([p["params"] for p in runs])
        bpb = np.array([p["bpb"] for p in runs])
        best = runs[int(bpb.argmin())]
        n_opt, how = best["params"], "best run"
        if len(runs) >= 3:
            c2, c1, c0 = np.polyfit(logn, bpb, 2)
            if c2 > 0 and logn.min() <= -c1 / (2 * c2) <= logn.max():
                n_opt, how = float(math.exp(-c1 / (2 * c2))), "parabola vertex"
        logc = np.interp(math.log(n_opt), logn, np.log([p["flops"] for p in runs]))
        optima.append(
            {
                group: key,
                "params": float(n_opt),
                "flops": float(math.exp(logc)),
                "best_bpb": float(bpb.min()),
                "how": how,
            }
        )
    fit = None
    if len(optima) >= 2:
        fit = fit_power_law([o["flops"] for o in optima], [o["params"] for o in optima])
    return {"optima": optima, "fit": fit, "frontier": pareto_frontier(points)}


# ----------------------------------------------------------------------------------------------
# The three benchmarks


def score_in(work: Path, ckpt: str | Path, text: str) -> float:
    """score(), remembered in work/scores.json: a checkpoint is scored once, whenever asked."""
    path = work / "scores.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    key = str(Path(ckpt).resolve())
    if key not in known:
        known[key] = score(ckpt, text)
        write_json(path, known)
    return known[key]


def trajectory(run: dict, text: str, work: Path) -> list[dict]:
    """Held-out bpb of every checkpoint of a run, with the training time it had used."""
    return [
        {"step": c["step"], "train_time": c["train_time"], "bpb": score_in(work, c["path"], text)}
        for c in run["checkpoints"]
    ]


def push(
    text_path: Path,
    work: Path,
    nanogpt: dict = NANOGPT,
    minigpt: dict = MINIGPT,
    pilot_steps: int = 150,
    points: int = 8,
    pilot_budget: float = 20.0,
) -> dict:
    """nanoGPT's recipe beside minigpt's at nanoGPT's wall clock, then minigpt's at a third of it.

    A pilot first runs pilot_steps of nanoGPT's beside pilot_budget seconds of minigpt's, to
    predict how long nanoGPT's run will take and how many steps minigpt's makes in that time."""
    dirs = {tok: prepare_data(text_path, work, tok) for tok in sorted({nanogpt["tokenizer"], minigpt["tokenizer"]})}

    # 1. A pilot, side by side: nanoGPT's steps per second under this load, for minigpt's budget.
    n_steps = nanogpt["max_steps"]
    pilot = [
        Arm("pilot-nanogpt", {**nanogpt, "stop_at_step": pilot_steps, "ckpt_interval": 0}),
        Arm("pilot-minigpt", {**minigpt, "time_budget": pilot_budget, "ckpt_interval": 0}),
    ]
    log(f"pilot: {pilot_steps} steps of the nanoGPT recipe beside {pilot_budget:g} s of minigpt's")
    run_side_by_side(
        pilot, work, {"pilot-nanogpt": dirs[nanogpt["tokenizer"]], "pilot-minigpt": dirs[minigpt["tokenizer"]]}
    )
    p_nano, p_mini = read_run(work / "pilot-nanogpt"), read_run(work / "pilot-minigpt")
    budget = p_nano["train_time"] / p_nano["steps"] * n_steps
    mini_steps = p_mini["steps"] / p_mini["train_time"] * budget
    log(
        f"pilot: nanoGPT's {n_steps} steps should take {budget:.1f} s; minigpt's recipe does "
        f"~{mini_steps:.0f} steps in that time"
    )

    # 2. The two recipes side by side, minigpt's to nanoGPT's (predicted) wall clock.
    arms = [
        Arm("nanogpt", {**nanogpt, "ckpt_interval": max(1, n_steps // points)}),
        Arm(
            "minigpt",
            {**minigpt, "time_budget": max(0.1, round(budget, 1)), "ckpt_interval": max(1, round(mini_steps / points))},
        ),
    ]
    log(f"the two recipes side by side ({budget:.0f} s each)")
    load = run_side_by_side(arms, work, {"nanogpt": dirs[nanogpt["tokenizer"]], "minigpt": dirs[minigpt["tokenizer"]]})

    # 3. minigpt's recipe with a third of nanoGPT's time, beside the start of nanoGPT's run again.
    load3 = run_third(work, nanogpt, minigpt, dirs)
    return summarize_push(text_path, work, nanogpt, minigpt, {"main": load, "third": load3})


def run_third(work: Path, nanogpt: dict, minigpt: dict, dirs: dict[str, Path]) -> dict:
    third = read_run(work / "nanogpt")["train_time"] / 3
    arms = [
        Arm("nanogpt-again", {**nanogpt, "stop_at_step": max(1, nanogpt["max_steps"] // 3), "ckpt_interval": 0}),
        Arm("minigpt-third", {**minigpt, "time_budget": max(0.1, round(third, 1)), "ckpt_interval": 0}),
    ]
    log(f"minigpt's recipe in a third of the time ({third:.0f} s)")
    return run_side_by_side(
        arms, work, {"nanogpt-again": dirs[nanogpt["tokenizer"]], "minigpt-third": dirs[minigpt["tokenizer"]]}
    )


def summarize_push(text_path: Path, work: Path, nanogpt: dict, minigpt: dict, loads: dict) -> dict:
    """The comparison from the runs in `work`: each checkpoint scored on the held-out text."""
    text = held_out_text(work / "data" / nanogpt["tokenizer"].replace(":", ""))
    p_nano = read_run(work / "pilot-nanogpt")
    runs = {name: read_run(work / name) for name in ("nanogpt", "minigpt")}
    log("scoring the checkpoints on the held-out text")
    for run in runs.values():
        run["trajectory"] = trajectory(run, text, work)
        run["bpb"] = run["trajectory"][-1]["bpb"]
    nano, mini = runs["nanogpt"], runs["minigpt"]
    # If minigpt's budget came out longer than nanoGPT's run took, its checkpoint at or before
    # nanoGPT's time (not yet annealed) is the fair, and pessimistic, figure.
    within = [p for p in mini["trajectory"] if p["train_time"] <= nano["train_time"] * 1.001]
    at_nano_time = within[-1] if within else None
    third = None
    if (work / "minigpt-third" / "run.json").is_file():
        third = read_run(work / "minigpt-third")
        third["bpb"] = score_in(work, third["checkpoints"][-1]["path"], text)
        again = read_run(work / "nanogpt-again")
        third.update(
            reaches_nanogpt_bpb=third["bpb"] <= nano["bpb"],
            nanogpt_again_s_per_step=again["train_time"] / again["steps"],
        )
        third.pop("checkpoints")
    reach = time_to_reach(mini["trajectory"], nano["bpb"])
    for run in runs.values():
        run.pop("checkpoints")
    return {
        "text": {
            "path": str(text_path),
            "sha256": hashlib.sha256(text_path.read_bytes()).hexdigest(),
            "bytes": text_path.stat().st_size,
            "held_out_bytes": len(text.encode("utf-8")),
        },
        "settings": {"nanogpt": nanogpt, "minigpt": minigpt, "common": QUIET},
        "pilot": {
            "nanogpt_s_per_step": p_nano["train_time"] / p_nano["steps"],
            "predicted_budget_s": json.loads((work / "minigpt" / "run.json").read_text())["train_config"][
                "time_budget"
            ],
        },
        "load": loads,
        "arms": runs,
        "budget_match": mini["train_time"] / nano["train_time"],
        "bpb_ratio": mini["bpb"] / nano["bpb"],
        "bpb_reduction": 1.0 - mini["bpb"] / nano["bpb"],
        "minigpt_at_nanogpt_time": at_nano_time,
        "bpb_ratio_at_nanogpt_time": None if at_nano_time is None else at_nano_time["bpb"] / nano["bpb"],
        "time_to_nanogpt_bpb": reach,
        "time_to_nanogpt_bpb_fraction": None if reach is None else reach["interpolated_s"] / nano["train_time"],
        "third_budget": third,
        "targets": {"bpb_reduction_at_least": 0.10, "time_fraction_at_most": 1 / 3},
    }


# The A/Bs in order: each changes one thing from the recipe that won so far (a dict of
# settings, or None to keep the winner), B beside A at equal wall clock. The first holds the
# nanoGPT recipe's settings at a budget.
# Model size for the budget is the study's question (--study), so it is not among them.
def ab_plan() -> list[tuple[str, dict | None]]:
    return [
        ("lr 1e-3 -> 3e-3", dict(lr=3e-3, min_lr=3e-4)),
        ("schedule cosine -> wsd", dict(schedule="wsd", decay_frac=0.2)),
        ("optimizer adamw -> muon", dict(optimizer="muon", muon_lr=0.02)),
        ("batch 12 -> 32 rows", dict(batch_size=32)),
        ("block 64 -> 256, rows / 4", None),  # from the winner: the same tokens per step
        ("position learned -> rope", dict(position="rope")),
        ("qk_norm", dict(qk_norm=True)),
        ("activation gelu -> relu2", dict(activation="relu2")),
        ("head tied -> untied", dict(tie_word_embeddings=False)),
        ("bias off -> on", dict(bias=True)),
        ("tokenizer char -> bpe:512, block / 2", None),  # about the same bytes of context
        ("tokenizer -> gpt2, block / 2", None),
    ]


def ab_change(name: str, change: dict | None, base: dict) -> dict:
    """The settings an A/B changes; those of a None entry depend on the winner so far."""
    if change is not None:
        return change
    if name.startswith("block"):
        return dict(block_size=base["block_size"] * 4, batch_size=max(1, base["batch_size"] // 4))
    tokenizer = name.split("-> ")[1].split(",")[0]
    from_chars = base["tokenizer"] == "char" and tokenizer != "char"  # half the tokens: about the same bytes
    block = base["block_size"] // 2 if from_chars else base["block_size"]
    return dict(tokenizer=tokenizer, block_size=max(16, block))


def run_ab(text_path: Path, work: Path, budget: float, base: dict, plan: list[tuple[str, dict | None]]) -> dict:
    """Each A/B side by side at `budget` seconds; B's change is kept when its val bpb is lower.

    The score is train.py's closing evaluation (val_bpb over the first VAL_STEPS batches of the
    held-out part): the same text for every run, and no scoring pass of its own."""
    dirs: dict[str, Path] = {}
    results = []
    for i, (name, change) in enumerate(plan):
        change = ab_change(name, change, base)
        cand = {**base, **change}
        for tok in {base["tokenizer"], cand["tokenizer"]}:
            if tok not in dirs:
                dirs[tok] = prepare_data(text_path, work, tok)
        arms = [
            Arm(f"ab{i:02d}-a", {**base, "time_budget": budget, "eval_steps": VAL_STEPS}),
            Arm(f"ab{i:02d}-b", {**cand, "time_budget": budget, "eval_steps": VAL_STEPS}),
        ]
        log(f"A/B {i + 1}/{len(plan)}: {name}")
        try:
            load = run_side_by_side(
                arms, work, {arms[0].name: dirs[base["tokenizer"]], arms[1].name: dirs[cand["tokenizer"]]}
            )
        except (RuntimeError, ValueError) as e:  # a run that failed, or settings train.py refuses
            log(f"  failed: {e}")
            results.append({"name": name, "change": change, "error": str(e)})
            continue
        a, b = (read_run(work / arm.name) for arm in arms)
        for run in (a, b):
            run["bpb"] = run["log_val_bpb"]
            run.pop("checkpoints")
        won = b["bpb"] < a["bpb"]
        log(
            f"  A {a['bpb']:.4f} bpb ({a['steps']} steps), B {b['bpb']:.4f} ({b['steps']} steps): "
            f"{'keep' if won else 'drop'}"
        )
        results.append(
            {
                "name": name,
                "change": change,
                "a": a,
                "b": b,
                "kept": won,
                "bpb_ratio": b["bpb"] / a["bpb"],
                "bpb_source": f"train.py's closing val_bpb over the first {VAL_STEPS} val batches",
                "load": load,
                "base": dict(base),
            }
        )
        if won:
            base = cand
    return {"budget_s": budget, "results": results, "winner": base}


STUDY_SIZES = [  # (n_layer, n_head, n_embd): 0.12M to 3.7M parameters with a char vocabulary
    (2, 2, 64),
    (3, 3, 96),
    (4, 4, 160),
    (6, 4, 224),
]
STUDY_BUDGETS = [30.0, 60.0, 120.0]


def budget_list(text: str) -> list[float]:
    """--study-budgets: seconds, comma-separated, each at least 1."""
    try:
        budgets = [float(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds separated by commas, e.g. 30,60,120") from None
    if not budgets or any(not math.isfinite(b) or b < 1 for b in budgets):
        raise argparse.ArgumentTypeError(f"{text!r}: every budget must be a number of seconds >= 1")
    return budgets


def size_list(text: str) -> list[tuple[int, int, int]]:
    """--study-sizes: LAYERSxWIDTH, comma-separated, as (n_layer, n_head, n_embd) with heads of 32
    channels (16 where 32 does not divide the width)."""
    sizes = []
    for item in text.split(","):
        try:
            layers, width = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: give LAYERSxWIDTH, e.g. 4x128") from None
        if layers < 1 or width < 16 or width % 16:
            raise argparse.ArgumentTypeError(f"{item!r}: at least 1 layer, a width that is a multiple of 16")
        sizes.append((layers, width // 32 if width % 32 == 0 else width // 16, width))
    return sizes


def study(text_path: Path, work: Path, base: dict, sizes=STUDY_SIZES, budgets=STUDY_BUDGETS) -> dict:
    """Every size at every budget (two runs at a time, one thread each), scored as the A/Bs are."""
    data_dir = prepare_data(text_path, work, base["tokenizer"])
    jobs = [(L, H, C, t) for t in budgets for (L, H, C) in sizes]
    # Pair runs of the same budget, so that the two processes of a pair end together.
    points = []
    for i in range(0, len(jobs), 2):
        pair = jobs[i : i + 2]
        arms = [
            Arm(
                f"study-{L}x{C}-{int(t)}s",
                {**base, "n_layer": L, "n_head": H, "n_embd": C, "time_budget": t, "eval_steps": VAL_STEPS},
            )
            for L, H, C, t in pair
        ]
        log(f"study: {', '.join(a.name for a in arms)}")
        load = run_side_by_side(arms, work, {a.name: data_dir for a in arms})
        for arm, (L, H, C, t) in zip(arms, pair, strict=True):
            run = read_run(work / arm.name)
            points.append(
                {
                    "n_layer": L,
                    "n_head": H,
                    "n_embd": C,
                    "budget_s": t,
                    "params": run["num_params"],
                    "steps": run["steps"],
                    "tokens": run["tokens"],
                    "train_time": run["train_time"],
                    "flops": train_flops(run),
                    "bpb": run["log_val_bpb"],
                    "others_cpu_share": load["others_cpu_share"],
                }
            )
    optimal = compute_optimal(points)
    from minigpt.train import sizing

    constants = {"k": sizing.COMPUTE_OPTIMAL_K, "a": sizing.COMPUTE_OPTIMAL_A}  # the rule as this run found it
    return {
        "base": base,
        "points": points,
        **optimal,
        "rule_constants": constants,
        "rule": rule_error(optimal["optima"], points, **constants),
    }


def rule_error(optima: list[dict], points: list[dict], k: float, a: float) -> list[dict]:
    """A sizing rule N = k * C^a (minigpt.train.sizing's constants) beside each budget's measured
    optimum: the parameters it picks at that optimum's FLOPs, their ratio to the measured optimum's,
    and what picking them costs in bpb (the budget's parabola in log-parameters at the rule's size,
    less at its vertex; None where the budget has fewer than three sizes or no upward parabola)."""
    out = []
    for o in optima:
        rule_n = k * o["flops"] ** a
        runs = [p for p in points if p["budget_s"] == o["budget_s"]]
        cost = None
        if len(runs) >= 3:
            c2, c1, c0 = np.polyfit(np.log([p["params"] for p in runs]), [p["bpb"] for p in runs], 2)
            if c2 > 0:  # the parabola's value at the rule's size, less its value at its vertex
                x = math.log(rule_n) + c1 / (2 * c2)
                cost = float(c2 * x * x)
        out.append(
            {
                "budget_s": o["budget_s"],
                "measured_params": o["params"],
                "rule_params": float(rule_n),
                "ratio": float(rule_n / o["params"]),
                "bpb_cost": cost,
            }
        )
    return out


def sizing_comparison(text_path: Path, work: Path, budget: float = 60.0) -> dict:
    """A budget run that sizes itself (minigpt.train.sizing) beside the `cpu` defaults and nanoGPT's
    recipe, the same budget each, side by side on one thread each, scored on the same held-out text.

    The sized run's budget is its whole wall clock (start-up, probe, evaluations and checkpoints
    included); the other two arms' is seconds of training steps only, so the comparison is
    conservative for the sized run. It gets the BPE-512 data of nanoGPT's 90/10 split, the tokenizer
    the rule picks for this 1 MB text, so that no arm trains on the held-out part; the rest it sizes.
    """
    dirs = {tok: prepare_data(text_path, work, tok) for tok in ("bpe:512", "char", "gpt2")}
    arms = [
        Arm("sized", {"time_budget": budget}),
        Arm("cpu-defaults", {"time_budget": budget}, recipe="cpu"),
        Arm("nanogpt", {**NANOGPT, "time_budget": budget}),
    ]
    data = {"sized": dirs["bpe:512"], "cpu-defaults": dirs["gpt2"], "nanogpt": dirs["char"]}
    log(f"sizing: the three arms side by side, {budget:g} s each")
    load = run_side_by_side(arms, work, data)
    text = held_out_text(dirs["char"])
    runs = {}
    for arm in arms:
        run = read_run(work / arm.name)
        run["bpb"] = score(run["checkpoints"][-1]["path"], text)
        run["process_wall_s"] = load["arm_wall_s"][arm.name]
        saved = json.loads((work / arm.name / "run.json").read_text())["train_config"]
        run["settings"] = {k: saved[k] for k in ("tokenizer", "n_layer", "n_head", "n_embd", "block_size", "lr")}
        run["sizing"] = saved.get("sizing")
        run.pop("checkpoints")
        runs[arm.name] = run
        log(f"  {arm.name}: {run['bpb']:.4f} bpb, {run['num_params'] / 1e6:.2f}M parameters, {run['steps']} steps")
    return {
        "budget_s": budget,
        "text": {"path": str(text_path), "held_out_bytes": len(text.encode("utf-8"))},
        "load": load,
        "arms": runs,
        "bpb_ratio_sized_to_nanogpt": runs["sized"]["bpb"] / runs["nanogpt"]["bpb"],
        "bpb_ratio_cpu_defaults_to_nanogpt": runs["cpu-defaults"]["bpb"] / runs["nanogpt"]["bpb"],
        "budget_meaning": {
            "sized": "wall clock of the whole train.py process",
            "cpu-defaults": "seconds of training steps",
            "nanogpt": "seconds of training steps",
        },
    }


def run_measured(cmd: list[str], cwd: Path, env: dict, stdout: Path, stderr: Path) -> dict:
    """One process, its output to files: {"returncode", "wall_s", "others_cpu_share" (as in
    run_side_by_side), "load_avg"}."""
    busy0, own0, t0 = _busy_seconds(), _children_cpu(), time.perf_counter()
    with open(stdout, "w") as out, open(stderr, "w") as err:
        returncode = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=err).returncode
    wall = time.perf_counter() - t0
    share = _others_share(busy0, own0, wall)
    return {"returncode": returncode, "wall_s": wall, "others_cpu_share": share, "load_avg": list(os.getloadavg())}


def nanogpt_real(
    text_path: Path, work: Path, source: Path, max_iters: int = nanogpt.README_MAX_ITERS, env: dict | None = None
) -> dict:
    """nanoGPT's own train.py (a scratch copy of `source`, bench/nanogpt.py), then minigpt's
    train.py sized to nanoGPT's training seconds, one after the other with the machine's threads;
    both final models scored on the same held-out bytes. Raises NanoGPTError (one line)."""
    import torch

    env = dict(LAUNCH_ENV if env is None else env)
    nanogpt.check_dir(source)
    text = nanogpt.read_text(text_path)
    copy = nanogpt.scratch_copy(source, work / "nanogpt")
    data = nanogpt.prepare(text, copy / "data" / nanogpt.DATASET)
    # The BPE the sizing rule picks for this corpus (bpe:512 for Shakespeare's 1 MB), prepared once
    # before the run as a user's second run finds it cached; the rule sizes everything else.
    from minigpt.train.sizing import vocab_for_corpus

    vocab = vocab_for_corpus(len(text[: data["cut"]].encode("utf-8")))
    mini_data = prepare_data(text_path, work, f"bpe:{vocab}")
    held = held_out_text(mini_data)
    if not text.endswith(held):
        raise nanogpt.NanoGPTError(f"minigpt's held-out part of {text_path} is not the end of the text")
    # Scored: what both held out (minigpt's split starts at a line, at or before nanoGPT's cut).
    start = max(data["cut"], len(text) - len(held))
    scored = text[start:]

    args = nanogpt.train_args(copy, max_iters)
    log(f"nanoGPT: python train.py {' '.join(args)} (in {copy})")
    nano_load = run_measured(
        [sys.executable, "train.py", *args], copy, env, work / "nanogpt.stdout", work / "nanogpt.stderr"
    )
    if nano_load["returncode"] != 0:
        raise nanogpt.NanoGPTError(
            "nanoGPT's train.py failed (" + nanogpt.failure(work / "nanogpt.stderr", nano_load["returncode"]) + ")"
        )
    printed = nanogpt.parse_log((work / "nanogpt.stdout").read_text(errors="replace"))
    model, ckpt = nanogpt.load_model(copy, nanogpt.out_dir(copy, args) / "ckpt.pt")
    log(f"nanoGPT: {printed['iterations']} iterations in {printed['train_s']:.1f} s of training; scoring")
    nano_score = nanogpt.score(model, data["stoi"], scored, text[start - 1])
    nano = {
        "bpb": nano_score["bpb"],
        "num_params": nanogpt.num_params(model),
        "num_params_nanogpt": model.get_num_params() if hasattr(model, "get_num_params") else None,
        "steps": ckpt["iter_num"],
        "iterations_printed": printed["iterations"],
        "train_s": printed["train_s"],
        "median_iter_s": printed["median_iter_s"],
        "process_wall_s": nano_load["wall_s"],
        "final_train_loss": printed["final_train_loss"],
        "evals": printed["evals"],
        "vocab_size": data["vocab_size"],
        "model_args": ckpt["model_args"],
        "load": {k: nano_load[k] for k in ("others_cpu_share", "load_avg")},
    }
    del model

    budget = round(printed["train_s"], 2)
    # As a user would ask for it: the data, where to write, the budget; train.py's defaults for the rest.
    argv = [str(ROOT / "train.py"), "--data", str(mini_data), "--out-dir", str(work / "minigpt")]
    argv += ["--time-budget", f"{budget:g}"]
    mini_env = {**env, "PYTHONPATH": str(ROOT)}
    log(f"minigpt: train.py --time-budget {budget:g}, sized by itself")
    mini_load = run_measured([sys.executable, *argv], ROOT, mini_env, work / "minigpt.stdout", work / "minigpt.stderr")
    if mini_load["returncode"] != 0:
        raise nanogpt.NanoGPTError(
            "minigpt's train.py failed (" + nanogpt.failure(work / "minigpt.stderr", mini_load["returncode"]) + ")"
        )
    mini = read_run(work / "minigpt")
    mini["bpb"] = score(mini["checkpoints"][-1]["path"], scored)
    saved = json.loads((work / "minigpt" / "run.json").read_text())["train_config"]
    mini.update(
        process_wall_s=mini_load["wall_s"],
        budget_s=budget,
        settings={k: saved[k] for k in ("tokenizer", "n_layer", "n_head", "n_embd", "block_size", "batch_size", "lr")},
        sizing=saved.get("sizing"),
        load={k: mini_load[k] for k in ("others_cpu_share", "load_avg")},
    )
    mini.pop("checkpoints")
    log(f"nanoGPT {nano['bpb']:.4f} bpb, minigpt {mini['bpb']:.4f} bpb")
    return {
        "nanogpt": nanogpt.source_id(source),
        "text": {
            "path": str(text_path),
            "sha256": hashlib.sha256(text_path.read_bytes()).hexdigest(),
            "chars": len(text),
            "bytes": len(text.encode("utf-8")),
            "nanogpt_val_from": data["cut"],
            "minigpt_val_from": len(text) - len(held),
            "scored_from": start,
            "held_out_chars": len(scored),
            "held_out_bytes": nano_score["bytes"],
        },
        "settings": {
            "nanogpt_command": ["python", "train.py", *args],
            "nanogpt_max_iters": max_iters,
            "minigpt_command": ["python", "train.py", *argv[1:]],
            "torch_threads": torch.get_num_threads(),
            "env": {k: env.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")},
            "scoring": {"window": nano_score["window"], "stride": nano_score["stride"], "batch_size": 32},
        },
        "arms": {"nanogpt": nano, "minigpt": mini},
        "minigpt_budget_s": budget,
        "bpb_ratio_minigpt_to_nanogpt": mini["bpb"] / nano["bpb"],
        "budget_meaning": {
            "nanogpt": "train_s: the sum of train.py's printed per-iteration times (its training loop, with the "
            "evaluations and checkpoint writes inside it; no imports or set-up)",
            "minigpt": "the --time-budget given (nanoGPT's train_s) is the wall clock of the whole train.py process",
        },
        "scored_model": {
            "nanogpt": "ckpt.pt saved at the evaluation of iteration max_iters (--always_save_checkpoint=True), "
            "after max_iters optimizer steps; its first scored character conditioned on the one before it",
            "minigpt": "the last checkpoint; its first scored token conditioned on its end-of-text id",
        },
    }


def nanogpt_markdown(r: dict) -> str:
    nano, mini = r["arms"]["nanogpt"], r["arms"]["minigpt"]
    lines = [
        f"nanoGPT ({r['nanogpt']['commit'][:19]}) beside minigpt sized to its time; "
        f"held-out: {r['text']['held_out_bytes']:,} bytes",
        "",
        "| arm | parameters | steps | training s | process s | held-out bpb |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| nanoGPT train.py | {nano['num_params'] / 1e6:.3f}M | {nano['steps']:,} | {nano['train_s']:.1f} | "
        f"{nano['process_wall_s']:.1f} | {nano['bpb']:.4f} |",
        f"| minigpt, --time-budget {r['minigpt_budget_s']:g} | {mini['num_params'] / 1e6:.3f}M | {mini['steps']:,} | "
        f"{mini['train_time']:.1f} | {mini['process_wall_s']:.1f} | {mini['bpb']:.4f} |",
        "",
        f"bpb ratio minigpt / nanoGPT: {r['bpb_ratio_minigpt_to_nanogpt']:.3f}",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Reports


def notes(r: dict) -> list[str]:
    """A results file's "notes" (what to know about that run), as Markdown paragraphs."""
    return [line for note in r.get("notes", []) for line in ("", note)]


def push_markdown(r: dict, env: dict) -> str:
    nano, mini, third = r["arms"]["nanogpt"], r["arms"]["minigpt"], r["third_budget"]
    reach = r["time_to_nanogpt_bpb"]
    lines = [
        "# nanoGPT's Shakespeare CPU recipe beside minigpt's, at the same wall clock",
        "",
        f"{env['cpu_model']}, {env['cpu_count']} cores shared with other work; each run on one thread, "
        f"the two arms side by side. torch {env['torch']}, commit {env['commit']}, {env['date']}.",
        f"Held-out text: the last 10% of tinyshakespeare ({r['text']['held_out_bytes']:,} bytes), "
        "scored with minigpt.eval.evaluate.bits_per_byte.",
        "",
        "| arm | parameters | steps | tokens | training time | held-out bpb |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows = [("nanoGPT recipe", nano), ("minigpt recipe", mini)]
    rows += [("minigpt recipe, 1/3 of the time", third)] if third else []
    for label, run in rows:
        lines.append(
            f"| {label} | {run['num_params'] / 1e6:.2f}M | {run['steps']:,} | {run['tokens']:,} | "
            f"{run['train_time']:.0f} s | {run['bpb']:.4f} |"
        )
    when = (
        "never"
        if reach is None
        else (
            f"{reach['interpolated_s']:.0f} s (checkpoint at "
            f"{reach['checkpoint_s']:.0f} s), "
            f"{r['time_to_nanogpt_bpb_fraction']:.2f} of nanoGPT's time"
        )
    )
    load = r["load"].get("main") or {}
    at = r["minigpt_at_nanogpt_time"]
    lines += [
        "",
        f"- bpb ratio minigpt / nanoGPT at equal wall clock: **{r['bpb_ratio']:.3f}** "
        f"({r['bpb_reduction']:.1%} lower; target >= 10%)",
        f"- minigpt's budget / nanoGPT's time: {r['budget_match']:.3f} (the budget was predicted from a pilot); "
        + (
            "its last checkpoint within nanoGPT's time: " + f"{at['bpb']:.4f} bpb at {at['train_time']:.0f} s, "
            f"ratio {r['bpb_ratio_at_nanogpt_time']:.3f}"
            if at
            else "no checkpoint within nanoGPT's time"
        ),
        f"- minigpt's run reached nanoGPT's final bpb after **{when}** (target <= 1/3)",
    ]
    if third:
        lines.append(
            f"- minigpt's recipe with a third of nanoGPT's time: {third['bpb']:.4f} bpb "
            f"({'reaches' if third['reaches_nanogpt_bpb'] else 'does not reach'} nanoGPT's {nano['bpb']:.4f})"
        )
    share = load.get("others_cpu_share")
    lines += [
        f"- load: other processes used {share:.0%} of the machine's CPU time during the runs "
        f"(load average {load['load_avg'][0]:.2f})"
        if share is not None
        else "- load: not recorded",
        "",
        "Settings (train.py flags): nanoGPT " + json.dumps(r["settings"]["nanogpt"]),
        "",
        "minigpt " + json.dumps(r["settings"]["minigpt"]),
        *notes(r),
    ]
    return "\n".join(lines) + "\n"


def ab_markdown(r: dict, env: dict) -> str:
    lines = [
        f"# Recipe A/Bs on Shakespeare, {r['budget_s']:.0f} s of training each, side by side",
        "",
        f"{env['cpu_model']}, {env['cpu_count']} cores shared with other work, one thread per run; "
        f"torch {env['torch']}, commit {env['commit']}, {env['date']}. bpb: train.py's closing val_bpb over the first "
        f"{VAL_STEPS} val batches (of the last 10% of the text). "
        "Each row changes one thing (B) from the recipe that had won so far (A); B is kept if its bpb is lower.",
        "",
        "| A/B | A bpb (steps) | B bpb (steps) | B / A | kept | others' CPU share |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for x in r["results"]:
        if "error" in x:
            lines.append(f"| {x['name']} | | failed: {x['error'][:80]} | | | |")
            continue
        share = (x.get("load") or {}).get("others_cpu_share")
        lines.append(
            f"| {x['name']} | {x['a']['bpb']:.4f} ({x['a']['steps']}) | {x['b']['bpb']:.4f} "
            f"({x['b']['steps']}) | {x['bpb_ratio']:.3f} | {'yes' if x['kept'] else 'no'} | "
            f"{'-' if share is None else f'{share:.0%}'} |"
        )
    sources = sorted({x["bpb_source"] for x in r["results"] if "bpb_source" in x})
    if sources:
        lines += ["", "Scored on: " + "; ".join(sources) + "."]
    if r.get("not_run"):
        lines += ["", "Not run: " + ", ".join(r["not_run"]) + "."]
    lines += ["", "Winner: " + json.dumps(r["winner"]), *notes(r)]
    return "\n".join(lines) + "\n"


def study_markdown(r: dict, env: dict) -> str:
    corpus = r.get("corpus", "Shakespeare")
    lines = [
        f"# Val bpb against model size and training budget ({corpus}, one CPU thread per run)",
        "",
        f"{env['cpu_model']}, {env['cpu_count']} cores shared with other work; torch {env['torch']}, commit "
        f"{env['commit']}, {env['date']}. FLOPs: minigpt.train.flops.flops_per_token x tokens trained. bpb: "
        f"train.py's closing val_bpb over the first {VAL_STEPS} val batches (of the last 10% of the text).",
        "",
        "| budget | layers x width | parameters | steps | train FLOPs | val bpb | on the frontier | others' CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    front = {(p["params"], p["budget_s"]) for p in r["frontier"]}
    for p in sorted(r["points"], key=lambda p: (p["budget_s"], p["params"])):
        load = p.get("others_cpu_share")
        lines.append(
            f"| {p['budget_s']:.0f} s | {p['n_layer']} x {p['n_embd']} | {p['params'] / 1e6:.2f}M | "
            f"{p['steps']:,} | {p['flops']:.2e} | {p['bpb']:.4f} | "
            f"{'yes' if (p['params'], p['budget_s']) in front else ''} | {'' if load is None else f'{load:.0%}'} |"
        )
    lines += [
        "",
        "| budget | compute-optimal parameters | at FLOPs | best bpb | from |",
        "| --- | --- | --- | --- | --- |",
    ]
    for o in r["optima"]:
        lines.append(
            f"| {o['budget_s']:.0f} s | {o['params'] / 1e6:.2f}M | {o['flops']:.2e} | {o['best_bpb']:.4f} "
            f"| {o['how']} |"
        )
    if r["fit"]:
        f = r["fit"]
        lines += [
            "",
            f"Fit: N_opt = {f['k']:.3g} * C^{f['a']:.3f} (r^2 {f['r2']:.3f} over {len(r['optima'])} budgets).",
        ]
    if r.get("rule"):
        lines += [
            "",
            f"A sizing rule, N = {r['rule_constants']['k']:.3g} * C^{r['rule_constants']['a']:.3f} (the results' "
            "rule_constants), at each measured optimum's FLOPs:",
            "",
            "| budget | measured optimum | the rule's size | rule / measured | bpb cost of the rule's size |",
            "| --- | --- | --- | --- | --- |",
        ]
        for e in r["rule"]:
            cost = "" if e["bpb_cost"] is None else f"{e['bpb_cost']:+.4f}"
            lines.append(
                f"| {e['budget_s']:.0f} s | {e['measured_params'] / 1e6:.3f}M | {e['rule_params'] / 1e6:.3f}M | "
                f"{e['ratio']:.2f}x | {cost} |"
            )
    return "\n".join(lines + notes(r)) + "\n"


def plot_push(r: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    for name, label in (("nanogpt", "nanoGPT recipe"), ("minigpt", "minigpt recipe")):
        t = r["arms"][name]["trajectory"]
        ax.plot([p["train_time"] for p in t], [p["bpb"] for p in t], marker="o", ms=3, label=label)
    ax.axhline(r["arms"]["nanogpt"]["bpb"], color="gray", lw=0.8, ls="--")
    ax.set_xlabel("training time (s, one thread)")
    ax.set_ylabel("held-out bits per byte")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def plot_study(r: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 4.5), dpi=100)
    ax1, ax2, ax3 = fig.add_subplot(1, 3, 1), fig.add_subplot(1, 3, 2), fig.add_subplot(1, 3, 3)
    budgets = sorted({p["budget_s"] for p in r["points"]})
    for i, t in enumerate(budgets):
        pts = sorted((p for p in r["points"] if p["budget_s"] == t), key=lambda p: p["params"])
        ax1.plot([p["params"] for p in pts], [p["bpb"] for p in pts], marker="o", color=f"C{i}", label=f"{t:.0f} s")
        ax2.scatter([p["flops"] for p in pts], [p["bpb"] for p in pts], color=f"C{i}", s=18, label=f"{t:.0f} s")
    for o in r["optima"]:
        ax1.axvline(o["params"], color="gray", lw=0.5, ls=":")
    front = r["frontier"]
    ax2.plot([p["flops"] for p in front], [p["bpb"] for p in front], color="black", lw=1, label="frontier")
    ax1.set_xscale("log")
    ax2.set_xscale("log")
    ax1.set_xlabel("parameters")
    ax2.set_xlabel("training FLOPs")
    for ax in (ax1, ax2):
        ax.set_ylabel("val bits per byte")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if r["fit"]:
        f = r["fit"]
        ax1.set_title(f"compute-optimal N = {f['k']:.3g} C^{f['a']:.2f} (dotted: optimum per budget)", fontsize=9)
    if r.get("rule"):  # the measured optima beside the sizing rule's line
        flops = [o["flops"] for o in r["optima"]]
        ax3.scatter(flops, [o["params"] for o in r["optima"]], color="black", zorder=3, label="measured optimum")
        xs = np.geomspace(min(flops) / 2, max(flops) * 2, 50)
        k, a = r["rule_constants"]["k"], r["rule_constants"]["a"]
        ax3.plot(xs, k * xs**a, color="C3", label=f"sizing rule {k:.3g} C^{a:.3f}")
        if r["fit"]:
            ax3.plot(xs, r["fit"]["k"] * xs ** r["fit"]["a"], color="gray", ls="--", label="this study's fit")
        for e, o in zip(r["rule"], r["optima"], strict=True):
            ax3.annotate(
                f"{e['ratio']:.2f}x", (o["flops"], o["params"]), fontsize=8, xytext=(4, -10), textcoords="offset points"
            )
        ax3.set_xscale("log")
        ax3.set_yscale("log")
        ax3.set_xlabel("training FLOPs")
        ax3.set_ylabel("parameters")
        ax3.set_title("compute-optimal size: measured and the rule (labels: rule / measured)", fontsize=9)
        ax3.grid(alpha=0.3)
        ax3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def record_environment() -> dict:
    env = environment("cpu")
    env["cpu_model"] = cpu_model()
    env["threads_per_run"] = 1
    return env


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--ab", action="store_true", help="run the recipe A/Bs instead of the comparison")
    mode.add_argument("--study", action="store_true", help="run the model-size x budget study instead")
    mode.add_argument(
        "--sizing", action="store_true", help="a sized budget run beside the cpu defaults and nanoGPT's recipe"
    )
    mode.add_argument(
        "--nanogpt",
        type=Path,
        metavar="DIR",
        help="run nanoGPT's own train.py from a copy of it in DIR, then minigpt sized to its training time",
    )
    parser.add_argument(
        "--nanogpt-max-iters",
        type=int,
        default=nanogpt.README_MAX_ITERS,
        help=f"--nanogpt: nanoGPT's max_iters and lr_decay_iters (default {nanogpt.README_MAX_ITERS}, its README's)",
    )
    parser.add_argument(
        "--text",
        type=Path,
        default=None,
        help="the text (default: the shared copy of Shakespeare; `stdlib`: the standard library's source)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the results go (default: bench/results)")
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / "bench" / "runs" / "push",
        help="scratch directory for the runs (default bench/runs/push, ignored by git)",
    )
    parser.add_argument("--ab-budget", type=float, default=60.0, help="seconds of training per A/B run")
    parser.add_argument("--sizing-budget", type=float, default=60.0, help="--sizing: each arm's budget, seconds")
    parser.add_argument(
        "--study-budgets",
        type=budget_list,
        default=STUDY_BUDGETS,
        help="--study: the budgets, seconds, comma-separated (default "
        + ",".join(f"{b:g}" for b in STUDY_BUDGETS)
        + ")",
    )
    parser.add_argument(
        "--study-sizes",
        type=size_list,
        default=STUDY_SIZES,
        help="--study: the shapes, LAYERSxWIDTH comma-separated (default "
        + ",".join(f"{L}x{C}" for L, _, C in STUDY_SIZES)
        + "; heads of 32 channels)",
    )
    parser.add_argument("--note", action="append", default=[], help="a note recorded with the results (repeatable)")
    args = parser.parse_args(argv)
    if args.nanogpt is not None:
        try:
            nanogpt.check_dir(args.nanogpt)
        except nanogpt.NanoGPTError as e:
            parser.error(str(e))
        if args.nanogpt_max_iters < 1:
            parser.error(f"--nanogpt-max-iters must be at least 1, got {args.nanogpt_max_iters}")
    if args.work.exists() and any(args.work.iterdir()):
        parser.error(f"--work {args.work} is not empty; remove it or pass another")
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    text = find_text(args.text, args.work)
    env = record_environment()
    if args.ab:
        result = run_ab(text, args.work, args.ab_budget, {**NANOGPT, "max_steps": 600}, ab_plan())
        write_json(args.out / "push-ab.json", {"environment": env, **result})
        write_text(args.out / "push-ab.md", ab_markdown(result, env))
        print(ab_markdown(result, env))
    elif args.sizing:
        result = sizing_comparison(text, args.work, args.sizing_budget)
        write_json(args.out / "budget-sizing-cpu.json", {"environment": env, **result, "notes": args.note})
        print(json.dumps({k: result[k] for k in ("bpb_ratio_sized_to_nanogpt", "bpb_ratio_cpu_defaults_to_nanogpt")}))
    elif args.nanogpt is not None:
        from minigpt.data.corpus import DataError

        try:
            result = nanogpt_real(text, args.work, args.nanogpt, args.nanogpt_max_iters)
        except (nanogpt.NanoGPTError, DataError) as e:
            raise SystemExit(f"error: {e}") from None
        env["threads_per_run"] = result["settings"]["torch_threads"]  # the machine's, not one
        write_json(args.out / f"nanogpt-real-{text.stem}-cpu.json", {"environment": env, **result, "notes": args.note})
        print(nanogpt_markdown(result))
    elif args.study:
        result = study(text, args.work, MINIGPT, args.study_sizes, args.study_budgets)
        shakespeare = args.text is None or text.name == "tinyshakespeare.txt"
        result["corpus"] = "Shakespeare" if shakespeare else text.stem
        name = "push-study" if shakespeare else f"push-study-{slug(text.stem)}"
        write_json(args.out / f"{name}.json", {"environment": env, **result, "notes": args.note})
        write_text(args.out / f"{name}.md", study_markdown(result, env))
        plot_study(result, args.out / f"{name}.png")
        print(study_markdown(result, env))
    else:
        result = push(text, args.work)
        write_json(args.out / "push.json", {"environment": env, **result})
        write_text(args.out / "push.md", push_markdown(result, env))
        plot_push(result, args.out / "push.png")
        print(push_markdown(result, env))
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
