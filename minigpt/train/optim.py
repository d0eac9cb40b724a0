"""The optimizers (AdamW, or Muon for the blocks' matrices with AdamW for the rest) and the
learning-rate schedule.

The schedule is a pure function of the step and, for a run with a budget, of the fraction of
the budget used (tokens: a function of the step again; time: the recorded training time, which
a checkpoint saves), so a resumed run gets the learning rates of an uninterrupted one.
"""

from __future__ import annotations

import torch

from minigpt.train.config import SCHEDULES, TrainConfig


class Optimizers:
    """Several torch optimizers stepped together and seen as one.

    `param_groups` lists every optimizer's groups in order (the same dicts, so setting a group's
    lr reaches the optimizer that owns it), and `state_dict()` has torch's own layout, the
    parameter ids numbered across the optimizers in that order: a checkpoint stores and checks
    it as it does a single optimizer's.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for o in self.optimizers:
            sd = o.state_dict()
            state.update({pid + offset: s for pid, s in sd["state"].items()})
            groups += [{**g, "params": [pid + offset for pid in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in o.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"the saved optimizer state has {len(groups)} parameter groups, this "
                f"optimizer {len(self.param_groups)} (was it saved with another --optimizer?)"
            )
        offset, first = 0, 0
        for o in self.optimizers:
            n_groups, n_params = len(o.param_groups), sum(len(g["params"]) for g in o.param_groups)
            mine = groups[first : first + n_groups]
            state = {
                int(pid) - offset: s for pid, s in state_dict["state"].items() if offset <= int(pid) < offset + n_params
            }
            o.load_state_dict(
                {"state": state, "param_groups": [{**g, "params": [pid - offset for pid in g["params"]]} for g in mine]}
            )
            offset, first = offset + n_params, first + n_groups


def muon_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters Muon updates: the 2-D matrices inside the blocks (c_attn, c_proj,
    c_fc weights). Embeddings and the head take single rows per token rather than mixing
    features, and gains and biases are not matrices: AdamW keeps those, as modded-nanogpt does."""
    return [name for name, p in model.named_parameters() if p.requires_grad and p.dim() == 2 and ".h." in f".{name}"]


def group_kinds(cfg: TrainConfig) -> list[str]:
    """What each of configure_optimizer's param groups holds, in order."""
    return ["muon", "decay", "no_decay"] if cfg.optimizer == "muon" else ["decay", "no_decay"]


def configure_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device_type: str
) -> torch.optim.Optimizer | Optimizers:
    """AdamW that decays matrices (embeddings, linear weights) but not biases or LayerNorm gains;
    with cfg.optimizer "muon", torch.optim.Muon at cfg.muon_lr for the blocks' matrices first
    (muon_parameters) and that AdamW for the rest.

    Decay pulls weights towards zero, which is a useful prior for the matrices that mix
    features, but for a gain or a bias it only fights the value the layer needs.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    to_muon = set(muon_parameters(model)) if cfg.optimizer == "muon" else set()
    rest = [p for n, p in named if n not in to_muon]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel does the whole update in one pass over each tensor instead of ~10: fewer
    # launches on CUDA, and on a CPU no thread synchronisation per small op.
    adamw = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=device_type in ("cuda", "cpu")
    )
    if not to_muon:
        return adamw
    # Muon orthogonalises each matrix's momentum (Newton-Schulz, in bf16), so every direction of
    # the update moves by about the same amount; its lr scale is that of the update's RMS
    # (Keller Jordan's "original" adjustment for non-square matrices).
    muon = torch.optim.Muon(
        [p for n, p in named if n in to_muon], lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum
    )
    return Optimizers(muon, adamw)


def set_hyperparameters(optimizer, cfg: TrainConfig, lr: float | None = None) -> None:
    """Give every param group this run's settings: after load_state_dict (which brings back the
    saved ones; flags given now win) and, with `lr` (lr_at's value), before each step. The
    schedule scales every group alike: Muon's lr is muon_lr * lr / cfg.lr."""
    for group, kind in zip(optimizer.param_groups, group_kinds(cfg), strict=True):
        if kind == "muon":
            group["weight_decay"], group["momentum"] = cfg.weight_decay, cfg.muon_momentum
        else:
            group["weight_decay"] = cfg.weight_decay if kind == "decay" else 0.0
            group["betas"] = (cfg.beta1, cfg.beta2)
        if lr is not None:
            group["lr"] = lr * (cfg.muon_lr / cfg.lr if kind == "muon" else 1.0)


def lr_at(step: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Learning rate of update number `step` (0-based): linear warmup over warmup_steps, then
    the decay of cfg.schedule_kind (looked up in minigpt.train.config.SCHEDULES) from lr to min_lr.

    The decay runs over `progress`, the fraction of the budget used before this update, for a
    run with a budget; else over the steps after the warmup, to max_steps. Past the end
    (progress >= 1) it is min_lr.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if progress is None:
        if step >= cfg.max_steps:
            return cfg.min_lr
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if progress >= 1.0:
        return cfg.min_lr
    return SCHEDULES[cfg.schedule_kind].lr(max(progress, 0.0), cfg)
