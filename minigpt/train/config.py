"""Every setting of a training run, in one dataclass, and the named runs (recipes) built from it.

Each field that train.py offers as a flag is declared with `setting(default, help)`: its help
text sits beside it and train.py builds `--kebab-case` flags from `dataclasses.fields`, so a
new setting is one line here. The defaults are the `cpu` recipe.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from minigpt.chat.formats import FORMATS
from minigpt.data.loader import ORDERS
from minigpt.eval.evaluate import tasks_help
from minigpt.model.backends import ATTN_BACKENDS, LN_BACKENDS
from minigpt.model.config import ACTIVATIONS, POSITIONS, GPTConfig
from minigpt.model.lora import check_settings, parse_targets, targets_help
from minigpt.tokenizers import kinds_help, parse_tokenizer_kind

AUTOCAST_DTYPES = ("auto", "float32", "bfloat16")  # what training runs its matmuls in
PARALLEL = ("ddp", "fsdp")


@dataclass(frozen=True)
class Schedule:
    """An LR schedule: the learning rate after the warmup (minigpt.train.optim.lr_at does the warmup
    and the step -> progress), as a function of the progress in [0, 1) and the run's settings."""

    description: str  # one line, for --schedule's help
    lr: Callable[[float, TrainConfig], float]  # (progress, cfg) -> learning rate, from cfg.lr to cfg.min_lr


def cosine_lr(progress: float, cfg: TrainConfig) -> float:
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def wsd_lr(progress: float, cfg: TrainConfig) -> float:
    into_decay = progress - (1.0 - cfg.decay_frac)
    if into_decay <= 0:
        return cfg.lr
    return cfg.lr - into_decay / cfg.decay_frac * (cfg.lr - cfg.min_lr)


# The LR schedules --schedule names; lr_at looks the run's up here. A new schedule is one entry.
SCHEDULES: dict[str, Schedule] = {
    "cosine": Schedule("half a cosine wave from lr to min-lr", cosine_lr),
    "wsd": Schedule(
        "warmup-stable-decay: hold lr, then decay linearly to min-lr over the last --decay-frac of the run", wsd_lr
    ),
}


def schedules_help() -> str:
    return "; ".join(f"{name} ({s.description})" for name, s in SCHEDULES.items())


OPTIMIZERS = ("adamw", "muon")  # minigpt.train.optim builds them


class TrainError(Exception):
    """A run that cannot start or go on; train.py prints the message as `error: ...`."""

    exit_code = 2


class ConfigError(TrainError, ValueError):
    """Settings that contradict each other or are out of range."""


class Diverged(TrainError):
    """The loss or the gradient norm stopped being finite."""

    exit_code = 1


def setting(default, help: str, **flag):
    """A TrainConfig field offered as a train.py flag: its default, its help, and any other
    argparse keywords (e.g. choices)."""
    return field(default=default, metadata={"help": help, **flag})


@dataclass
class TrainConfig:
    recipe: str = "cpu"  # the recipe these values started from (recorded, not re-applied)
    sizing: dict | None = None  # a budget run's own choice of model (minigpt.train.sizing): recorded, not re-applied
    # data and output
    data: str = setting(
        "stdlib",
        "a prepared data directory (with meta.json), or a source for "
        "minigpt.data: stdlib, shakespeare, fineweb-edu, openwebtext, a text file/dir/glob",
    )
    tokenizer: str = setting(
        "gpt2",
        f"{kinds_help()}; N <= 65536 (the data shards hold uint16 ids); saved with "
        "the data and every checkpoint. With --init the model's own tokenizer is used",
    )
    out_dir: str = setting("out", "where logs and checkpoints go")
    data_order: str = setting(
        "random",
        "order of the training windows: random (every window of the corpus, "
        "shuffled each epoch from --seed) or sequential (the corpus in file "
        "order); validation is always read in order",
        choices=ORDERS,
    )
    sft: str | None = setting(
        None,
        'supervised fine-tuning (needs --init): a JSONL file of conversations, {"messages": [{"role", "content"}, '
        '...]} or {"instruction", "input", "output"} per line; the loss is on the assistant replies only '
        "(minigpt.train.sft). Replaces --data",
    )
    sft_val_fraction: float = setting(0.1, "share of the --sft conversations held out for evaluation (at least one)")
    pack: bool = setting(
        True,
        "--sft: pack short conversations side by side into each row, attention kept inside each "
        "(--no-pack: one per row, padded)",
    )
    chat_format: str | None = setting(
        None,
        "--sft: the chat format the conversations are written in; default: the model's own template, "
        "else the format its tokenizer config names, else minigpt. Recorded in the checkpoints for chat.py",
        choices=tuple(FORMATS),
    )
    # model: from scratch with these sizes, or the weights of `init`
    init: str | None = setting(
        None, "start from these weights (gpt2, gpt2-medium, ... or a from_pretrained path) instead of a random init"
    )
    lora_rank: int | None = setting(
        None,
        "train LoRA adapters of this rank on --init's frozen weights instead of the weights themselves; "
        "each checkpoint holds the merged weights and the adapter in PEFT's format",
    )
    lora_alpha: float = setting(16.0, "LoRA's scale: the adapters' output is multiplied by lora-alpha / lora-rank")
    lora_targets: str = setting(
        "c_attn,c_proj", f"the layers LoRA adapts, comma-separated name suffixes: {targets_help()}"
    )
    lora_dropout: float = setting(0.0, "dropout on the LoRA adapters' input")
    n_layer: int = setting(4, "transformer blocks")
    n_head: int = setting(4, "attention heads")
    n_embd: int = setting(128, "embedding width")
    block_size: int = setting(
        256, "tokens per training row (and the context of a new model); with --init, at most the model's context window"
    )
    dropout: float = setting(0.0, "dropout on embeddings and residual branches")
    # switches of a new model (the defaults are GPT-2's); a checkpoint or --init model keeps its own
    position: str = setting(
        "learned", "positions: learned (GPT-2's table) or rope (rotary q and k, no table)", choices=POSITIONS
    )
    qk_norm: bool = setting(False, "RMS-normalise q and k per head before the attention scores")
    activation: str = setting("gelu_new", "the MLP's nonlinearity (relu2: ReLU squared)", choices=ACTIVATIONS)
    tie_word_embeddings: bool = setting(
        True, "the lm_head is the token embedding, as in GPT-2 (--no-tie-word-embeddings: a matrix of its own)"
    )
    bias: bool = setting(True, "biases in the Linear layers and LayerNorms, as in GPT-2 (--no-bias: none)")
    attn_backend: str = setting("auto", "attention implementation (auto: triton on CUDA)", choices=ATTN_BACKENDS)
    ln_backend: str = setting("auto", "LayerNorm implementation (auto: triton on CUDA)", choices=LN_BACKENDS)
    # optimisation
    max_steps: int = setting(600, "optimizer steps; the LR schedule ends here (not used with a budget)")
    time_budget: float | None = setting(
        None,
        "train for this many seconds, then stop with an evaluation and a checkpoint; the LR schedule "
        "runs over the budget. Only the training steps count: data preparation, evaluation, samples "
        "and checkpoints are excluded, except where train.py sizes the model itself (no --n-layer and "
        "--n-embd, no --recipe, --init or --resume): then the budget is the whole run's wall clock",
    )
    token_budget: int | None = setting(
        None, "train on this many tokens (whole steps, the last one may go past it), the LR schedule running over them"
    )
    batch_size: int = setting(2, "rows per micro-batch, per process")
    total_batch_size: int | None = setting(
        None,
        "tokens per optimizer step, across processes; must be a multiple of batch-size * block-size * "
        "processes (gradient accumulation makes up the rest; default: one micro-batch per process)",
    )
    lr: float = setting(3e-3, "peak learning rate")
    min_lr: float | None = setting(None, "final learning rate of the schedule (default: lr / 10)")
    warmup_steps: int = setting(30, "steps of linear warmup")
    schedule: str | None = setting(
        None,
        f"LR decay after the warmup: {schedules_help()}; default wsd with a budget, else cosine",
        choices=tuple(SCHEDULES),
    )
    decay_frac: float = setting(
        0.2, "fraction of the run (of its budget, or of the steps after warmup) that the wsd schedule decays over"
    )
    weight_decay: float = setting(0.1, "AdamW weight decay of the matrices")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    optimizer: str = setting(
        "adamw",
        "adamw, or muon: torch.optim.Muon for the blocks' matrices (attention and "
        "MLP weights), AdamW for embeddings, head, gains and biases",
        choices=OPTIMIZERS,
    )
    muon_lr: float = setting(0.02, "Muon's peak learning rate (the schedule scales it as it scales --lr)")
    muon_momentum: float = setting(0.95, "Muon's momentum")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0: no clipping)")
    seed: int = setting(1337, "seed of the init, dropout and the data's epoch offsets")
    # evaluation, samples, checkpoints (an interval of 0 means only at the end)
    eval_interval: int = setting(150, "evaluate every this many steps")
    eval_steps: int = setting(20, "val batches (of total-batch-size tokens) per evaluation")
    eval_task: list[str] | None = setting(
        None,
        "also score this eval.py task at each evaluation (repeatable; scored on rank 0 with the run's "
        f"tokenizer, logged as eval/TASK/METRIC and plotted in loss.png): {tasks_help()}",
        action="append",
    )
    sample_interval: int = setting(300, "print a sample every this many steps")
    sample_tokens: int = setting(200, "tokens per sample")
    sample_prompt: str = setting("def", "text the samples continue")
    ckpt_interval: int = setting(300, "write a checkpoint every this many steps")
    keep_checkpoints: int = setting(2, "keep the newest this many checkpoints, and the one resumed from (0: all)")
    stop_at_step: int | None = setting(
        None,
        "stop with a checkpoint after this step, keeping the schedule of "
        "--max-steps (split a run across jobs; continue with --resume)",
    )
    # system
    device: str = setting("auto", "auto, cpu, cuda or cuda:N (auto: CUDA if available)")
    dtype: str = setting("auto", "autocast precision (auto: bfloat16 on CUDA, float32 on CPU)", choices=AUTOCAST_DTYPES)
    compile: bool = setting(False, "torch.compile the model")
    # scaling out (README, Scaling out)
    parallel: str = setting(
        "ddp",
        "how torchrun's processes share the model: ddp (each holds all of it) or fsdp "
        "(FSDP2: parameters, gradients and AdamW state sharded across them)",
        choices=PARALLEL,
    )
    dist_timeout: float = setting(
        600.0,
        "seconds a process waits for the others at a collective (an all-reduce, a barrier) under torchrun "
        "before it stops with an error naming the rank that did not answer",
    )
    activation_checkpointing: bool = setting(
        False,
        "recompute each block's activations in the backward pass "
        "instead of keeping them (less memory, ~1/3 more compute)",
    )
    peak_flops: float | None = setting(None, "peak FLOP/s of one device, for MFU when it is not in the table")
    wandb: bool = setting(False, "also log to Weights & Biases")
    tensorboard: bool = setting(False, "also log to TensorBoard (in out-dir/tensorboard)")

    def __post_init__(self):
        # nan passes every `<` check and disables what it configures (nan clips nothing): refuse it first.
        for name in (
            "lr",
            "min_lr",
            "weight_decay",
            "beta1",
            "beta2",
            "grad_clip",
            "dropout",
            "peak_flops",
            "time_budget",
            "decay_frac",
            "muon_lr",
            "muon_momentum",
            "dist_timeout",
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if self.min_lr is None:  # the one place min_lr is derived
            self.min_lr = self.lr / 10
        positive = (
            "n_layer",
            "n_head",
            "n_embd",
            "block_size",
            "batch_size",
            "max_steps",
            "eval_steps",
            "sample_tokens",
        )
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
            raise ConfigError(f"weight_decay and grad_clip must be >= 0, got {self.weight_decay}, {self.grad_clip}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"betas must be in [0, 1), got ({self.beta1}, {self.beta2})")
        if self.time_budget is not None and self.token_budget is not None:
            raise ConfigError("give a time budget or a token budget, not both")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"time_budget must be positive, got {self.time_budget}")
        if self.token_budget is not None and (isinstance(self.token_budget, bool) or self.token_budget < 1):
            raise ConfigError(f"token_budget must be a positive integer, got {self.token_budget}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 < self.decay_frac <= 1:
            raise ConfigError(f"decay_frac must be in (0, 1], got {self.decay_frac}")
        try:
            _, size = parse_tokenizer_kind(self.tokenizer)
        except (AttributeError, TypeError, ValueError) as e:
            raise ConfigError(f"tokenizer: {e}") from None
        if size is not None and size > 2**16:
            raise ConfigError(f"tokenizer {self.tokenizer}: the data shards hold uint16 ids, at most 65536 tokens")
        if self.data_order not in ORDERS:
            raise ConfigError(f"data_order must be one of {', '.join(ORDERS)}, got {self.data_order!r}")
        if self.eval_task is not None and (
            not isinstance(self.eval_task, list) or not all(isinstance(t, str) for t in self.eval_task)
        ):
            raise ConfigError(f"eval_task must be a list of task specs, got {self.eval_task!r}")
        if self.stop_at_step is not None and self.budgeted and self.stop_at_step < 1:
            raise ConfigError(f"stop_at_step must be at least 1, got {self.stop_at_step}")
        if self.stop_at_step is not None and not self.budgeted and not 0 < self.stop_at_step <= self.max_steps:
            raise ConfigError(f"stop_at_step must be in [1, max_steps={self.max_steps}], got {self.stop_at_step}")
        if self.dtype not in AUTOCAST_DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.dtype!r}")
        if self.parallel not in PARALLEL:
            raise ConfigError(f"parallel must be one of {', '.join(PARALLEL)}, got {self.parallel!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (self.muon_lr > 0 and 0 <= self.muon_momentum < 1):
            raise ConfigError(f"need muon_lr > 0 and muon_momentum in [0, 1), got {self.muon_lr}, {self.muon_momentum}")
        if self.optimizer == "muon" and self.parallel == "fsdp":
            raise ConfigError(
                "--optimizer muon does not run under --parallel fsdp (torch.optim.Muon "
                "orthogonalises whole matrices, FSDP holds shards of them); use --parallel ddp"
            )
        if self.dist_timeout <= 0:
            raise ConfigError(f"dist_timeout must be a positive number of seconds, got {self.dist_timeout}")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ConfigError(f"peak_flops must be positive, got {self.peak_flops}")
        if self.lora_rank is not None:
            if self.init is None:
                raise ConfigError("--lora-rank adapts a trained model's weights: give --init")
            if self.parallel == "fsdp":
                raise ConfigError("--lora-rank does not run under --parallel fsdp (the adapters are small): use ddp")
            try:
                check_settings(self.lora_rank, self.lora_alpha, self.lora_dropout)
                parse_targets(self.lora_targets)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.sft is not None and self.init is None:
            raise ConfigError("--sft fine-tunes a trained model: give --init (a preset, hub id, directory or run)")
        if isinstance(self.sft_val_fraction, bool) or not 0 < self.sft_val_fraction < 1:
            raise ConfigError(f"sft_val_fraction must be in (0, 1), got {self.sft_val_fraction!r}")
        if self.chat_format is not None and self.chat_format not in FORMATS:
            raise ConfigError(f"chat_format must be one of {', '.join(FORMATS)}, got {self.chat_format!r}")
        self.model_config()  # the model sizes must make a valid GPTConfig

    def model_config(self, vocab_size: int = GPTConfig.vocab_size) -> GPTConfig:
        """The GPTConfig of a model trained from scratch with these settings and a tokenizer of
        vocab_size ids."""
        try:
            return GPTConfig(
                block_size=self.block_size,
                vocab_size=vocab_size,
                n_layer=self.n_layer,
                n_head=self.n_head,
                n_embd=self.n_embd,
                dropout=self.dropout,
                position=self.position,
                qk_norm=self.qk_norm,
                activation=self.activation,
                tie_word_embeddings=self.tie_word_embeddings,
                bias=self.bias,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def budgeted(self) -> bool:
        """True if the run ends at a time or token budget rather than at max_steps."""
        return self.time_budget is not None or self.token_budget is not None

    @property
    def schedule_kind(self) -> str:
        return self.schedule or ("wsd" if self.budgeted else "cosine")

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.batch_size * self.block_size

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


class Recipe(dict):
    """A named run: the TrainConfig values it changes (a dict; explicit flags override them), and
    a one-line description for --recipe's help."""

    def __init__(self, description: str = "", **values):
        super().__init__(values)
        self.description = description


# Named runs; --recipe's choices and help (recipes_help) come from this table.
RECIPES: dict[str, Recipe] = {
    # The defaults: a 4-layer model on the Python standard library, about 5 minutes on 2 CPU
    # cores with data preparation. Most of a step's time goes to the 50257-way output layer,
    # so the budget is tokens (~300k); small batches learned more from them than big ones
    # (README, Training). A 256-token context leaves room for 200-token samples.
    "cpu": Recipe("the defaults: a 4-layer model on the Python standard library, ~5 min on 2 CPU cores"),
    # Shakespeare on one CPU thread for a fixed time: nanoGPT's CPU recipe (4 layers, width 128,
    # 12 rows) with what won bench/push.py's A/Bs at equal wall clock: a 512-token BPE with a
    # 32-token context (about nanoGPT's 64 characters), lr 3e-3, the wsd schedule over the budget,
    # Muon for the blocks' matrices (bench/results/push.md). Not the `cpu` defaults: those train
    # on GPT-2 tokens of the standard library, where these were not measured (README, Training).
    "cpu-push": Recipe(
        "Shakespeare, a 512-token BPE and Muon for 5 minutes on a CPU: the best CPU recipe of bench/push.py",
        data="shakespeare",
        tokenizer="bpe:512",
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=32,
        batch_size=12,
        time_budget=300.0,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=100,
        schedule="wsd",
        decay_frac=0.2,
        optimizer="muon",
        muon_lr=0.02,
        beta2=0.99,
        bias=False,
        eval_interval=500,
        sample_interval=0,
        sample_prompt="\n",
        ckpt_interval=1000,
    ),
    # GPT-2 124M on 10B tokens of FineWeb-Edu: the build-nanogpt / llm.c recipe for GPUs.
    # 2**19 tokens per step in micro-batches of 64 x 1024 (gradient accumulation makes up the
    # rest on fewer than 8 GPUs); 19073 steps is one pass over the 10B-token sample.
    "gpt2-124m": Recipe(
        "GPT-2 124M on FineWeb-Edu, build-nanogpt's / llm.c's recipe (for GPUs)",
        data="fineweb-edu",
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=1024,
        batch_size=64,
        total_batch_size=2**19,
        max_steps=19073,
        lr=6e-4,
        min_lr=6e-5,
        warmup_steps=715,
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.95,
        grad_clip=1.0,
        eval_interval=250,
        eval_steps=20,
        sample_interval=1000,
        sample_tokens=64,
        sample_prompt="Hello, I'm a language model,",
        ckpt_interval=2000,
        keep_checkpoints=3,
    ),
}


def recipes_help() -> str:
    """--recipe's help: every recipe of RECIPES with its description."""
    named = "; ".join(f"{name}: {recipe.description}" for name, recipe in RECIPES.items())
    return f"named set of settings ({named}); default cpu on every device, as it needs no download"


def make_config(recipe: str, overrides: dict, saved: dict | None = None) -> TrainConfig:
    """TrainConfig from a recipe's values, or from a checkpoint's `saved` config, with some replaced.

    An lr given without a min_lr makes min_lr follow it (lr / 10) instead of keeping the
    recipe's or the checkpoint's number.
    """
    if saved is not None:
        values = {**saved, **overrides}
    elif recipe in RECIPES:
        values = {"recipe": recipe, **RECIPES[recipe], **overrides}
    else:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if "lr" in overrides and "min_lr" not in overrides:
        values["min_lr"] = None
    return TrainConfig.from_dict(values)
