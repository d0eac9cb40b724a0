"""The pieces of pretraining that train.py puts together, each usable on its own.

- `TrainConfig`: every setting of a run, one dataclass; `RECIPES` name complete runs.
- `configure_optimizer` and `lr_at`: AdamW with weight decay on matrices only, and
  linear warmup + cosine decay as a pure function of the step (so a resumed run
  gets exactly the learning rates of an uninterrupted one).
- `flops_per_token`, `PEAK_FLOPS`, `device_peak_flops`: model FLOPs utilisation.
- `unigram_entropy`: the loss a model that ignores context cannot beat.
- `save_checkpoint`, `load_checkpoint`, `prune_checkpoints`: the checkpoint layout below.
- `RunLog` and `plot_losses`: log.jsonl, optional wandb/tensorboard, loss.png.

A checkpoint is a directory `out_dir/ckpt_<step:08d>/`:

    model.safetensors, config.json   the weights, as GPT.save_pretrained writes them, so
                                     GPT.from_pretrained(out_dir) loads the latest one
    train_state.safetensors          tensors: AdamW moments ("optimizer.<param>.<name>")
                                     and each rank's torch RNG states ("rng.<rank>.<name>")
    train_state.json                 the rest: step, TrainConfig, data-loader position,
                                     optimizer hyper-parameters, python/numpy RNG states

It is written into `out_dir/.tmp_ckpt_<step>/` and renamed to `ckpt_<step>` only when
complete, so every `ckpt_*` directory is whole even if the process is killed mid-write.
Nothing is ever unpickled: tensors go through safetensors and the rest through JSON.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minigpt.config import GPTConfig
from minigpt.weights import CHECKPOINT_PREFIX, CheckpointError

STATE_FORMAT_VERSION = 1
TMP_PREFIX = ".tmp_" + CHECKPOINT_PREFIX  # a checkpoint being written; never loaded
OLD_PREFIX = ".old_" + CHECKPOINT_PREFIX  # a checkpoint being replaced by one of the same step


class TrainError(Exception):
    """A run that cannot start or go on; train.py prints the message as `error: ...`."""

    exit_code = 2


class ConfigError(TrainError, ValueError):
    """Settings that contradict each other or are out of range."""


class Diverged(TrainError):
    """The loss or the gradient norm stopped being finite."""

    exit_code = 1


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    recipe: str = "cpu"  # the recipe these values started from (recorded, not re-applied)
    # data and output
    data: str = "stdlib"  # a prepared data directory, or a source for minigpt.data.prepare
    out_dir: str = "out"
    # model: from scratch with these sizes, or the weights of `init`
    init: str | None = None  # None: random init; else a preset name or a from_pretrained path
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 256  # tokens per row; with `init`, at most the model's context window
    dropout: float = 0.0
    # batch
    batch_size: int = 2  # rows per micro-batch, per process
    total_batch_size: int | None = None  # tokens per optimizer step; None: one micro-batch per process
    # optimisation
    max_steps: int = 600
    lr: float = 3e-3
    min_lr: float | None = None  # None: lr / 10
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    # evaluation, samples, checkpoints (an interval of 0 means only at the end)
    eval_interval: int = 150
    eval_steps: int = 20  # optimizer-step-sized batches of val tokens per evaluation
    sample_interval: int = 300
    sample_tokens: int = 200
    sample_prompt: str = "def"
    ckpt_interval: int = 300
    keep_checkpoints: int = 2  # 0 keeps them all
    stop_at_step: int | None = None  # stop (with a checkpoint) here; the schedule still ends at max_steps
    # system
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"  # "auto": bfloat16 autocast on CUDA, float32 elsewhere
    compile: bool = False
    attn_backend: str = "auto"
    ln_backend: str = "auto"
    peak_flops: float | None = None  # per device, for MFU when the device is not in PEAK_FLOPS
    wandb: bool = False
    tensorboard: bool = False

    def __post_init__(self):
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_steps", "eval_steps",
                    "sample_tokens")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_interval", "sample_interval", "ckpt_interval", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.total_batch_size is not None and self.total_batch_size < 1:
            raise ConfigError(f"total_batch_size must be positive, got {self.total_batch_size}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ConfigError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("weight_decay and grad_clip must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"betas must be in [0, 1), got ({self.beta1}, {self.beta2})")
        if self.stop_at_step is not None and not 0 < self.stop_at_step <= self.max_steps:
            raise ConfigError(f"stop_at_step must be in [1, max_steps={self.max_steps}], got {self.stop_at_step}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ConfigError(f"peak_flops must be positive, got {self.peak_flops}")
        self.model_config()  # the model sizes must make a valid GPTConfig

    def model_config(self) -> GPTConfig:
        """The GPTConfig of a model trained from scratch with these settings."""
        try:
            return GPTConfig(block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head,
                             n_embd=self.n_embd, dropout=self.dropout)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.batch_size * self.block_size

    @property
    def end_step(self) -> int:
        """The step this invocation stops at."""
        return self.stop_at_step if self.stop_at_step is not None else self.max_steps

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step and process, so the global batch is total_batch_size."""
        per_pass = self.tokens_per_micro_batch * world_size
        if self.total_batch_size is None:
            return 1
        if self.total_batch_size % per_pass != 0:
            raise ConfigError(
                f"total_batch_size {self.total_batch_size} is not a multiple of batch_size * block_size * "
                f"processes = {self.batch_size} * {self.block_size} * {world_size} = {per_pass}"
            )
        return self.total_batch_size // per_pass

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
        return cls(**d)


# Named runs: each is a set of TrainConfig values; explicit flags override them.
RECIPES: dict[str, dict] = {
    # At most about 5 minutes on 2 CPU cores, data preparation included: a 4-layer model on the
    # Python standard library. Measured with another job busy on one of the 2 cores: 4m07s,
    # val loss 3.69 nats/token against a unigram entropy of 4.51, and samples with Python's
    # indentation, keywords and attribute calls.
    # Most of a step's time goes to the 50257-way output layer, so the body is cheap and the
    # budget is tokens: ~300k of them. Small batches learned more from those tokens than big
    # ones (val loss after 256k tokens: 3.93 with 8 x 128 per step, 3.66 with 4 x 128, 3.70
    # with 2 x 256; lr 2e-3..4e-3 were alike). A 256-token context leaves room for 200-token
    # samples.
    "cpu": dict(
        data="stdlib", n_layer=4, n_head=4, n_embd=128, block_size=256, batch_size=2,
        total_batch_size=None, max_steps=600, lr=3e-3, min_lr=3e-4, warmup_steps=30, weight_decay=0.1,
        eval_interval=150, eval_steps=20, sample_interval=300, sample_tokens=200, sample_prompt="def",
        ckpt_interval=300, keep_checkpoints=2,
    ),
    # GPT-2 124M on 10B tokens of FineWeb-Edu: the build-nanogpt / llm.c recipe for GPUs.
    # 2**19 tokens per step in micro-batches of 64 x 1024 (gradient accumulation makes up the
    # rest on fewer than 8 GPUs); 19073 steps is one pass over the 10B-token sample.
    "gpt2-124m": dict(
        data="fineweb-edu", n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=64,
        total_batch_size=2**19, max_steps=19073, lr=6e-4, min_lr=6e-5, warmup_steps=715,
        weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, eval_interval=250, eval_steps=20,
        sample_interval=1000, sample_tokens=64, sample_prompt="Hello, I'm a language model,",
        ckpt_interval=2000, keep_checkpoints=3,
    ),
}


def make_config(recipe: str, overrides: dict) -> TrainConfig:
    """TrainConfig from a recipe with some values replaced."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    values = {"recipe": recipe, **RECIPES[recipe], **overrides}
    if "lr" in overrides and "min_lr" not in overrides:
        values["min_lr"] = None  # follow the new lr (10% of it) rather than the recipe's number
    return TrainConfig.from_dict(values)


# ----------------------------------------------------------------------------------------------
# Optimizer and schedule


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
    # The fused kernel does the whole update in one pass over each tensor instead of ~10. On
    # CUDA that saves launches; on 2 CPU cores it halved the update of the 6.4M-entry token
    # embedding (and avoids the thread synchronisation of every small op).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                             fused=device_type in ("cuda", "cpu"))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of update number `step` (0-based): linear warmup, then cosine to min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# ----------------------------------------------------------------------------------------------
# FLOPs and MFU


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls of forward + backward, plus attention.

    N counts every parameter that takes part in a matmul per token: all of them except the
    position embedding (a lookup). The token embedding is counted once, for the tied lm_head
    matmul (its lookup on the way in is free). Biases and LayerNorm gains ride along at 6
    FLOPs each, which is negligible. Attention adds 12 * n_layer * n_embd * T (PaLM's
    appendix B, as in nanoGPT): q @ k^T and att @ v over all T positions, x3 for backward,
    counted without the causal half-saving. The padded vocabulary rows are not counted:
    this is the model's work, not the hardware's.
    """
    n = config.num_params() - config.block_size * config.n_embd
    return 6 * n + 12 * config.n_layer * config.n_embd * seq_len


# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, by a substring of
# torch.cuda.get_device_name(). The first match wins, so longer names come first.
PEAK_FLOPS: list[tuple[str, float]] = [
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("A6000", 155e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
    ("T4", 65e12),  # fp16
]


def device_peak_flops(device: torch.device, override: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where the figure comes from); peak None when unknown."""
    if override is not None:
        return override, "--peak-flops"
    if device.type != "cuda":
        return None, f"no peak known for {device.type}; pass --peak-flops to get an MFU"
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS:
        if key in name:
            return flops, f"{name}: {flops / 1e12:.0f} TFLOPS bf16 dense"
    return None, f"{name} is not in the peak-FLOPS table; pass --peak-flops to get an MFU"


# ----------------------------------------------------------------------------------------------
# CPU memory


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    A CPU training step allocates and frees several B x T x vocab tensors (logits, their
    log-softmax, their gradients) of ~100 MB each. glibc serves blocks that big with a fresh
    mmap and unmaps them on free, so every step page-faults and zeroes a gigabyte in the
    kernel: on 2 cores that was 40% of a 4 x 128 step (0.68 s -> 0.40 s with this). The cost
    is that the process keeps its peak memory, as CUDA's caching allocator does. Returns
    whether the setting took (only glibc has it).
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    largest = 2**31 - 1  # mallopt takes an int
    return bool(mallopt(M_MMAP_THRESHOLD, largest)) and bool(mallopt(M_TRIM_THRESHOLD, largest))


# ----------------------------------------------------------------------------------------------
# The unigram baseline


def unigram_entropy(data_dir: str | Path, meta: dict, split: str = "train",
                    max_tokens: int = 2**28) -> tuple[float, int]:
    """(entropy in nats/token of the split's token frequencies, tokens counted).

    A model that predicts every token from these frequencies alone, ignoring the context,
    has exactly this cross-entropy on the split; learning anything about context goes below
    it. Counts the first max_tokens tokens (all of them for corpora up to 268M tokens).
    """
    counts = np.zeros(meta["vocab_size"], dtype=np.int64)
    seen = 0
    chunk = 2**24  # bincount widens to int64: count a shard in pieces to bound the memory
    for shard in meta["splits"][split]["shards"]:
        tokens = np.load(Path(data_dir) / shard["file"], mmap_mode="r")[: max_tokens - seen]
        for start in range(0, len(tokens), chunk):
            counts += np.bincount(tokens[start : start + chunk], minlength=len(counts))[: len(counts)]
        seen += len(tokens)
        if seen >= max_tokens:
            break
    p = counts[counts > 0] / seen
    return float(-(p * np.log(p)).sum()), seen


# ----------------------------------------------------------------------------------------------
# RNG states


def rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG states: (torch ones as uint8 tensors, python/numpy ones as JSON)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict, device: torch.device) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if device.type == "cuda" and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"], device)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def save_checkpoint(out_dir: str | Path, step: int, model, optimizer: torch.optim.Optimizer,
                    state: dict, rng: list[tuple[dict, dict]]) -> Path:
    """Write out_dir/ckpt_<step>/ atomically (see the module doc) and return its path.

    `state` holds the JSON-able rest (TrainConfig, data-loader state, ...); `rng` is each
    rank's rng_state(), in rank order.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    final = out_dir / checkpoint_name(step)
    tmp = out_dir / (TMP_PREFIX + final.name[len(CHECKPOINT_PREFIX):])
    if tmp.exists():  # left by a run killed while writing this step
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    opt = optimizer.state_dict()
    for pid, entries in opt["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in opt["param_groups"]]
    for rank, (rng_tensors, _) in enumerate(rng):
        for key, value in rng_tensors.items():
            tensors[f"rng.{rank}.{key}"] = value.cpu().contiguous()
    save_file(tensors, str(tmp / "train_state.safetensors"))
    payload = {
        "format_version": STATE_FORMAT_VERSION,
        "step": step,
        **state,
        "optimizer": {"param_groups": groups, "state": scalars},
        "rng": [plain for _, plain in rng],
    }
    (tmp / "train_state.json").write_text(json.dumps(payload, indent=1) + "\n")

    if final.exists():  # e.g. resumed from an older checkpoint and reached this step again
        old = out_dir / (OLD_PREFIX + final.name[len(CHECKPOINT_PREFIX):])
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    return final


def prune_checkpoints(out_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (0 keeps all) and stale temporaries."""
    out_dir = Path(out_dir)
    ckpts = sorted(
        (int(p.name[len(CHECKPOINT_PREFIX):]), p) for p in out_dir.glob(CHECKPOINT_PREFIX + "*")
        if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()
    )
    doomed = [p for _, p in ckpts[:-keep]] if keep > 0 else []
    doomed += [p for prefix in (TMP_PREFIX, OLD_PREFIX) for p in out_dir.glob(prefix + "*") if p.is_dir()]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


@dataclass
class Checkpoint:
    """A checkpoint read back and checked; its parts are applied by the trainer."""

    path: Path
    model: torch.nn.Module  # a GPT on the CPU
    state: dict  # train_state.json
    tensors: dict[str, torch.Tensor]  # train_state.safetensors

    @property
    def step(self) -> int:
        return self.state["step"]

    @property
    def train_config(self) -> dict:
        return self.state["train_config"]

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer state, checked against `optimizer`'s parameters."""
        saved = self.state["optimizer"]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        state: dict[int, dict] = {}
        for key, value in self.tensors.items():
            if key.startswith("optimizer."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value
        for pid, entries in saved["state"].items():
            state.setdefault(int(pid), {}).update(entries)
        for pid, entries in state.items():
            if not 0 <= pid < len(params):
                raise CheckpointError(f"{self.path}: optimizer state for parameter {pid}, the model has {len(params)}")
            for name in ("exp_avg", "exp_avg_sq"):
                if name in entries and entries[name].shape != params[pid].shape:
                    raise CheckpointError(
                        f"{self.path}: optimizer {name} of parameter {pid} has shape {tuple(entries[name].shape)}, "
                        f"the parameter {tuple(params[pid].shape)}"
                    )
        groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in saved["param_groups"]]
        return {"state": state, "param_groups": groups}

    def rng_state(self, rank: int) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The RNG states rank `rank` saved, or None if the saving run had fewer ranks."""
        if rank >= len(self.state["rng"]):
            return None
        prefix = f"rng.{rank}."
        tensors = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        return tensors, self.state["rng"][rank]


def read_train_state(path: str | Path) -> dict:
    """train_state.json of a checkpoint directory, checked for the keys a resume needs."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    missing = [f for f in ("model.safetensors", "config.json", "train_state.json", "train_state.safetensors")
               if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path} is not a complete training checkpoint: missing {', '.join(missing)}")
    try:
        state = json.loads((path / "train_state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path / 'train_state.json'}: {e}") from None
    if not isinstance(state, dict) or state.get("format_version") != STATE_FORMAT_VERSION:
        raise CheckpointError(f"{path / 'train_state.json'} is not training-state format {STATE_FORMAT_VERSION}")
    expected = {"step": int, "train_config": dict, "world_size": int, "data_loader": dict,
                "optimizer": dict, "rng": list}
    for key, kind in expected.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path / 'train_state.json'}: '{key}' is missing or not a {kind.__name__}")
    if not all(k in state["optimizer"] for k in ("param_groups", "state")):
        raise CheckpointError(f"{path / 'train_state.json'}: the optimizer entry is incomplete")
    return state


def load_checkpoint(path: str | Path, attn_backend: str = "auto", ln_backend: str = "auto") -> Checkpoint:
    """Read and check a training checkpoint; CheckpointError (one line) if it is not usable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from minigpt.model import GPT

    path = Path(path)
    state = read_train_state(path)
    model = GPT.from_pretrained(path, attn_backend=attn_backend, ln_backend=ln_backend)
    try:
        tensors = load_file(str(path / "train_state.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path / 'train_state.safetensors'} is not readable: {e}") from None
    return Checkpoint(path=path, model=model, state=state, tensors=tensors)


# ----------------------------------------------------------------------------------------------
# Logs


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
        tmp = self.path.with_name("log.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        os.replace(tmp, self.path)
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
    import importlib.util

    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--wandb needs the wandb package: pip install wandb")
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard")


def plot_losses(records: list[dict], path: str | Path, baseline: float | None = None) -> None:
    """Train and val loss against step, written atomically to `path` (PNG)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, lw=0.6, alpha=0.35, color="C0")
        w = max(1, len(losses) // 40)  # a moving average shows the trend through batch-to-batch noise
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smooth, lw=1.2, color="C0", label=f"train loss ({w}-step mean)")
    if val:
        ax.plot(*zip(*val), "o-", ms=3, color="C1", label="val loss")
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=0.8, label=f"unigram entropy ({baseline:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
