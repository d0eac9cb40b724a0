"""AdamW with weight decay on the matrices only, and the learning-rate schedule.

The schedule is a pure function of the step and, for a run with a budget, of the fraction of
the budget used (tokens: a function of the step again; time: the recorded training time, which
a checkpoint saves), so a resumed run gets the learning rates of an uninterrupted one.
"""
from __future__ import annotations

import math

import torch

from minigpt.train_config import TrainConfig


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW that decays matrices (embeddings, linear weights) but not biases or LayerNorm gains.

    Decay pulls weights towards zero, which is a useful prior for the matrices that mix
    features, but for a gain or a bias it only fights the value the layer needs.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel does the whole update in one pass over each tensor instead of ~10: fewer
    # launches on CUDA, and on a CPU no thread synchronisation per small op.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                             fused=device_type in ("cuda", "cpu"))


def lr_at(step: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Learning rate of update number `step` (0-based): linear warmup over warmup_steps, then
    cfg.schedule_kind's decay from lr to min_lr.

    The decay runs over `progress`, the fraction of the budget used before this update, for a
    run with a budget; else over the steps after the warmup, to max_steps. cosine: half a cosine
    wave from lr to min_lr; wsd (warmup-stable-decay): lr, then a straight line to min_lr over
    the last decay_frac of the progress. Past the end (progress >= 1) it is min_lr.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if progress is None:
        if step >= cfg.max_steps:
            return cfg.min_lr
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if progress >= 1.0:
        return cfg.min_lr
    progress = max(progress, 0.0)
    if cfg.schedule_kind == "cosine":
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
    into_decay = progress - (1.0 - cfg.decay_frac)
    if into_decay <= 0:
        return cfg.lr
    return cfg.lr - into_decay / cfg.decay_frac * (cfg.lr - cfg.min_lr)
