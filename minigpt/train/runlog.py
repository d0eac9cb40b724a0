"""What a run reports: log.jsonl (mirrored to wandb/tensorboard if asked), loss.png, and
messages on stderr."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend state
from tqdm import tqdm

from minigpt.files import atomic_write
from minigpt.train.config import ConfigError, TrainConfig


def info(message: str) -> None:
    """A message on stderr that does not break the progress bar."""
    tqdm.write(message, file=sys.stderr)


class RunLog:
    """One JSON object per line in out_dir/log.jsonl, mirrored to wandb/tensorboard if asked."""

    def __init__(self, out_dir: str | Path, resume_step: int | None = None, wandb_run=None, tb_writer=None):
        self.path = Path(out_dir) / "log.jsonl"
        self.records: list[dict] = []
        if resume_step is not None and self.path.is_file():
            # Keep what led up to the checkpoint; later lines belong to a run that was cut short.
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("step", math.inf) <= resume_step:
                    self.records.append(record)
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode())
        self.file = open(self.path, "a")
        self.wandb_run, self.tb_writer = wandb_run, tb_writer

    def log(self, record: dict) -> None:
        self.records.append(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = record["step"]
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self.wandb_run is not None:
            self.wandb_run.log(numbers, step=step)
        if self.tb_writer is not None:
            for key, value in numbers.items():
                self.tb_writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.tb_writer is not None:
            self.tb_writer.close()


def open_wandb(cfg: TrainConfig):
    try:
        import wandb
    except ImportError:
        raise ConfigError("--wandb needs the wandb package: pip install wandb") from None
    return wandb.init(project="minigpt", name=Path(cfg.out_dir).name, config=cfg.to_dict())


def open_tensorboard(cfg: TrainConfig):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(log_dir=str(Path(cfg.out_dir) / "tensorboard"))


def check_loggers_installed(cfg: TrainConfig) -> None:
    """Fail before training starts, not at the first log line, if a requested logger is missing."""
    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--wandb needs the wandb package: pip install wandb")
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard")


# The metric loss.png plots for an --eval-task, the first of these it has (lm-eval's are
# "acc,none", ...: the part before the comma counts).
PLOTTED_METRICS = ("acc_norm", "acc", "bpb")


def eval_curves(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{"TASK METRIC": [(step, value), ...]}: one metric of each task in the records' "eval/TASK/METRIC"."""
    metrics: dict[str, set[str]] = {}
    for r in records:
        for key in r:
            if key.startswith("eval/"):
                task, _, metric = key[len("eval/") :].rpartition("/")
                metrics.setdefault(task, set()).add(metric)
    curves = {}
    for task, names in metrics.items():
        rank = {m: next((i for i, p in enumerate(PLOTTED_METRICS) if m.split(",")[0] == p), None) for m in names}
        ranked = sorted((i, m) for m, i in rank.items() if i is not None)
        if ranked:
            metric = ranked[0][1]
            key = f"eval/{task}/{metric}"
            curves[f"{task} {metric}"] = [(r["step"], r[key]) for r in records if key in r]
    return curves


def plot_losses(records: list[dict], path: str | Path, baseline: float | None = None) -> None:
    """Train and val loss against step, and beside them any --eval-task scores, written
    atomically to `path` (PNG)."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    curves = eval_curves(records)
    fig = Figure(figsize=(12, 4.5) if curves else (7, 4.5), dpi=100)
    ax = fig.add_subplot(1, 2, 1) if curves else fig.add_subplot()
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, lw=0.6, alpha=0.35, color="C0")
        w = max(1, len(losses) // 40)  # a moving average shows the trend through batch-to-batch noise
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, lw=1.2, color="C0", label=f"train loss ({w}-step mean)")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", ms=3, color="C1", label="val loss")
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=0.8, label=f"unigram entropy ({baseline:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    if curves:
        ax = fig.add_subplot(1, 2, 2)
        for label, points in curves.items():
            ax.plot(*zip(*points, strict=True), "o-", ms=3, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("eval task score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
