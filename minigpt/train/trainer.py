"""The training loop: one run, from its TrainConfig to its last checkpoint (Trainer, run_config)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from minigpt.data.corpus import (
    bytes_per_token,
    data_tokenizer,
    default_data_dir,
    load_meta,
    prepare,
    tokenizer_key,
)
from minigpt.data.loader import DataLoader, check_token_ids, unigram_entropy
from minigpt.eval.evaluate import LoadedTask, load_task
from minigpt.eval.evaluate import evaluate as evaluate_tasks
from minigpt.files import atomic_write
from minigpt.generate.simple import complete, prompt_ids
from minigpt.model.backends import set_backends
from minigpt.model.config import GPTConfig
from minigpt.model.load import build_on_meta, from_pretrained
from minigpt.model.lora import add_lora, load_adapter, lora_layers, merge_lora, save_adapter
from minigpt.model.model import GPT
from minigpt.model.weights import find_weights, resolve_directory
from minigpt.rundir import (
    CheckpointError,
    CheckpointWriteError,
    check_unlocked,
    latest_checkpoint,
    lock_run_dir,
    release_run_dir,
    run_checkpoints,
)
from minigpt.tokenizers import Tokenizer, load_tokenizer, parse_tokenizer_kind, tokenizer_hash
from minigpt.tokenizers.lookup import check_vocab, tokenizer_for
from minigpt.train import parallel
from minigpt.train.checkpoint import (
    SHARDED,
    Checkpoint,
    load_checkpoint,
    prune_checkpoints,
    read_train_state,
    remove_leftovers,
    rng_state,
    save_checkpoint,
    set_rng_state,
    start_branch,
    start_checkpoint,
    temp_dir,
    write_failed,
)
from minigpt.train.config import ConfigError, Diverged, TrainConfig, TrainError, make_config
from minigpt.train.flops import device_peak_flops, flops_per_token
from minigpt.train.optim import configure_optimizer, lr_at, set_hyperparameters
from minigpt.train.runlog import RunLog, check_loggers_installed, info, open_tensorboard, open_wandb, plot_losses
from minigpt.train.runtime import start_runtime
from minigpt.train.sft import SFTData, sft_format, write_chat_format
from minigpt.train.sizing import fit_to_deadline

MODEL_SHAPE = ("n_layer", "n_head", "n_embd")
# The settings of a run that are the model's own (GPTConfig fields, all but the context window,
# which a run may set below the model's): a checkpoint or an --init model keeps its values, and a
# flag asking for another is refused (a new field of both dataclasses joins by itself).
MODEL_SETTINGS = tuple(
    f.name
    for f in dataclasses.fields(GPTConfig)
    if f.name in {t.name for t in dataclasses.fields(TrainConfig)} and f.name != "block_size"
)
# The settings that say where a run ends.
RUN_LENGTH = {"max_steps", "time_budget", "token_budget"}
# A checkpoint's weights had a sane loss if the loss they gave (the next step's) was finite, at
# most this many nats above the lowest train loss logged up to then, and at most this many above
# a uniform guess (ln vocab_size).
SANE_LOSS_MARGIN = 1.0
# What times a training step for --time-budget (tests replace it with a fake clock).
clock = time.perf_counter
# The --eval-task metrics printed at each evaluation (log.jsonl has them all).
HEADLINE_METRICS = ("acc", "acc_norm", "bpb")


def check_out_dir(out_dir: Path) -> None:
    """ConfigError unless out_dir is, or can be created as, a writable directory (nothing is written)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out-dir {out_dir} is a file, not a directory")
    existing = next(p for p in [out_dir, *out_dir.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--out-dir {out_dir} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out-dir {out_dir} is not writable ({existing} is read-only)")


def run_config(recipe: str | None, overrides: dict, resume: str | None = None) -> tuple[TrainConfig, Path | None]:
    """(config, checkpoint to resume or None) of a run.

    A new run takes the recipe's values (default "cpu") with `overrides` replacing some. With
    `resume` ("latest": the newest checkpoint in out_dir; else a checkpoint or an out_dir) it
    takes the checkpoint's saved values instead, with `overrides` still winning.
    """
    if resume is None:
        return make_config(recipe or "cpu", overrides), None

    if resume == "latest":
        out_dir = Path(overrides.get("out_dir", TrainConfig.out_dir))
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None:
            raise TrainError(f"--resume: no checkpoint in {out_dir} (pass --out-dir, or --resume CKPT_DIR)")
    else:
        ckpt = Path(resume)
        if ckpt.is_dir() and not (ckpt / "train_state.json").exists() and latest_checkpoint(ckpt):
            ckpt = latest_checkpoint(ckpt)  # an out_dir was given: its latest checkpoint
    state = read_train_state(ckpt)
    saved = dict(state["train_config"])
    newest = latest_checkpoint(ckpt.parent)
    if newest is not None and newest != ckpt and not RUN_LENGTH & set(overrides):
        # An older checkpoint starts a branch that trains to the run's end: the newest
        # checkpoint's, as the run may have been extended since this one was written.
        try:
            newest_state = read_train_state(newest)
        except CheckpointError:  # a damaged newest checkpoint: the older one's own end
            newest_state = {"step": -1}
        if newest_state["step"] > state["step"]:
            saved.update({k: newest_state["train_config"].get(k, saved.get(k)) for k in RUN_LENGTH})
    if recipe is not None and recipe != saved.get("recipe"):
        raise TrainError(
            f"{ckpt} was trained with recipe {saved.get('recipe')!r}; --recipe {recipe} "
            "cannot change that (override single flags instead)"
        )
    saved["stop_at_step"] = None  # a stop belongs to the invocation that asked for it
    saved.setdefault("data_order", "sequential")  # the only order before there was a choice
    saved["out_dir"] = str(ckpt.parent)  # unless --out-dir says otherwise: go on where it was
    try:
        return make_config(saved.get("recipe", "cpu"), overrides, saved=saved), ckpt
    except TypeError as e:
        raise CheckpointError(f"{ckpt}: the saved training config is not valid ({e})") from None


class Trainer:
    """One training run: set up in __init__ (nothing is written before every check passed), run by fit().

    `explicit` names the settings the user gave (they must match the model of `cfg.init`).
    `deadline` (time.monotonic()) ends a run sized by minigpt.train.sizing: its training steps get
    the wall clock left once the run is set up (sizing.fit_to_deadline).

    Each optimizer step sees total_batch_size tokens however many processes run it: every
    process reads its own slice of the batch (DataLoader rank/world_size) and accumulates
    batch_size x block_size micro-batches until the step's tokens are covered. Under torchrun
    the model is wrapped in DistributedDataParallel; gradients are all-reduced only on the last
    micro-step of a step (`no_sync` before it), the logged loss is the mean over ranks, and only
    rank 0 writes logs and checkpoints. With --parallel fsdp the model is sharded with FSDP2
    instead (minigpt.train.parallel): gradient sync is switched off but on the last micro-step,
    every rank writes its shards into the checkpoint and rank 0 the gathered full weights. The
    other ranks wait for rank 0 at a barrier while it prepares the data (NCCL gives up on a
    barrier after 10 minutes: prepare a large corpus first).

    A run ends at max_steps, or at a budget: --token-budget (tokens of whole steps) or
    --time-budget (seconds spent in train_step, rank 0's clock, broadcast so that every rank stops
    after the same step; evaluation, samples and checkpoints do not count). The training time used
    is saved in each checkpoint's train state, and the LR schedule is a function of the fraction
    of the budget used (optim.lr_at). --eval-task tasks are read in __init__ and scored on rank 0
    at each evaluation (the other ranks wait for it at their next step's all-reduce).

    Outputs in out_dir: log.jsonl (one JSON object per step and per evaluation), loss.png,
    run.json (config, parameter count, unigram baseline), checkpoints ckpt_<step>/ and the
    `latest` pointer (minigpt.rundir). Resuming from a checkpoint older than others in
    out_dir starts a new branch: the later checkpoints are moved to out_dir/superseded/, never
    deleted (checkpoint.start_branch). SIGINT or SIGTERM finishes the current step, writes a
    checkpoint and returns; a second one raises KeyboardInterrupt at once.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        resume: str | Path | None = None,
        explicit: frozenset[str] = frozenset(),
        deadline: float | None = None,
    ):
        self.cfg = cfg
        check_loggers_installed(cfg)
        self.runtime = runtime = start_runtime(
            cfg.device, cfg.dtype, cfg.attn_backend, cfg.ln_backend, cfg.dist_timeout
        )
        with runtime.collective_timeouts():  # a rank that stops answering during set-up: one line too
            self._set_up(cfg, resume, explicit, deadline)

    def _set_up(
        self, cfg: TrainConfig, resume: str | Path | None, explicit: frozenset[str], deadline: float | None
    ) -> None:
        """Everything __init__ does once the process group is joined (its collectives included)."""
        runtime = self.runtime
        self.fsdp = cfg.parallel == "fsdp"
        if self.fsdp and not runtime.distributed:
            raise ConfigError(
                "--parallel fsdp shards the model across processes: launch it with torchrun "
                "(torchrun --nproc-per-node=1 train.py ... runs it in one)"
            )
        self.device = runtime.device
        self.grad_accum = cfg.grad_accum_steps(runtime.world_size)
        self.out_dir = Path(cfg.out_dir)
        self.lock = None  # out_dir/.lock, held by rank 0 from _start_outputs to close()
        check_out_dir(self.out_dir)
        # Another run writing into out_dir: refused before anything is read or written (rank 0
        # checks, every rank stops). _start_outputs takes the lock itself.
        self._raise_on_all_ranks(self._lock_error() if runtime.master else None, TrainError)
        if resume is None and latest_checkpoint(self.out_dir) is not None:
            raise TrainError(
                f"{self.out_dir} already holds checkpoints (latest {latest_checkpoint(self.out_dir).name}); "
                "pass --resume to continue it, or choose another --out-dir"
            )
        if (
            resume is not None
            and Path(resume).parent.resolve() != self.out_dir.resolve()
            and latest_checkpoint(self.out_dir) is not None
        ):
            raise TrainError(
                f"{self.out_dir} holds checkpoints of another run (latest "
                f"{latest_checkpoint(self.out_dir).name}); resume {resume} into another --out-dir"
            )
        ckpt = load_checkpoint(resume) if resume is not None else None
        self.resumed_from = ckpt.path if ckpt is not None else None
        self.train_time = 0.0  # seconds spent in training steps (rank 0's clock), the time budget's measure
        if ckpt is not None:
            self.train_time = self._saved_train_time(ckpt)
            self._check_resume_model(ckpt, explicit)
        self.complete = ckpt is not None and self._check_resume_step(ckpt)
        if self.complete:  # nothing to do: nothing is built or written
            self.step = ckpt.step
            return
        self.eval_tasks = self._load_eval_tasks()
        torch.manual_seed(cfg.seed + runtime.rank)
        self.sft = None  # --sft: the conversations (minigpt.train.sft) instead of a prepared corpus
        if cfg.sft is None:
            self.data_dir, self.tokenizer = self._data_and_tokenizer(ckpt, explicit)
            self.meta = load_meta(self.data_dir)
        else:
            self.data_dir, self.tokenizer = Path(cfg.sft), self._init_tokenizer(ckpt)
        self.tokenizer_sha1 = tokenizer_hash(self.tokenizer)
        model = self._build_model(ckpt, explicit)
        cfg = self.cfg  # _build_model takes the model sizes of --init
        if cfg.sft is not None:
            self.sft = self._sft_data(ckpt)
            self.meta = self.sft.meta

        if self.meta["vocab_size"] > model.config.vocab_size:
            raise ConfigError(
                f"the data has {self.meta['vocab_size']} token ids, the model only {model.config.vocab_size}"
            )
        if self.tokenizer.vocab_size > model.config.vocab_size:  # fewer is padding (Pythia: 50304 rows, 50277 ids)
            raise ConfigError(
                f"the {self.tokenizer.kind} tokenizer of {self.data_dir} has {self.tokenizer.vocab_size} "
                f"ids, the model only {model.config.vocab_size}"
            )
        if self.sft is not None:
            self.train_loader, self.val_loader = self.sft.train_loader, self.sft.val_loader
        else:
            check_token_ids(self.data_dir, self.meta)
            loader_args = dict(rank=runtime.rank, world_size=runtime.world_size, seed=cfg.seed)
            self.train_loader = DataLoader(
                self.data_dir, "train", cfg.batch_size, cfg.block_size, order=cfg.data_order, **loader_args
            )
            self.val_loader = DataLoader(self.data_dir, "val", cfg.batch_size, cfg.block_size, **loader_args)

        self.raw_model = set_backends(model.to(self.device), cfg.attn_backend, cfg.ln_backend)
        self.raw_model.train()
        self._prepare(self.raw_model)
        self.optimizer = configure_optimizer(self.raw_model, cfg, self.device.type)
        self.step = 0  # optimizer steps done
        self.last_loss: float | None = None  # of the latest step, recorded in its checkpoint
        if ckpt is not None:
            self._restore(ckpt)

        self.loss_module, self.train_module = self._wrap(self.raw_model)
        self.flops_per_token = flops_per_token(self.raw_model.config, cfg.block_size)
        self.peak_flops, peak_note = device_peak_flops(self.device, cfg.peak_flops)
        if deadline is not None and cfg.sizing is not None and cfg.time_budget is not None:
            self.cfg = fit_to_deadline(cfg, deadline)  # the data and model are ready: the steps get what is left
        if runtime.master:
            self._start_outputs(ckpt, peak_note)

    # --- set-up -----------------------------------------------------------------------------------
    def _check_resume_step(self, ckpt: Checkpoint) -> bool:
        """True if the checkpoint ends the run (nothing left to do); ConfigError if the
        steps asked for are behind it."""
        cfg = self.cfg
        if cfg.stop_at_step is not None and cfg.stop_at_step <= ckpt.step:
            raise ConfigError(f"--stop-at-step {cfg.stop_at_step} is not after {ckpt.path}'s step {ckpt.step}")
        if cfg.budgeted:
            return self._progress(ckpt.step) >= 1.0
        if ckpt.step > cfg.max_steps:
            raise ConfigError(f"{ckpt.path} is at step {ckpt.step}, past --max-steps {cfg.max_steps}")
        return ckpt.step == cfg.max_steps

    def _lock_error(self) -> str | None:
        try:
            check_unlocked(self.out_dir)
        except CheckpointError as e:
            return str(e)
        return None

    def _raise_on_all_ranks(self, error: str | None, kind: type[Exception]) -> None:
        """Raise kind(error) on every rank if rank 0's error is not None."""
        if self.runtime.distributed:
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise kind(error)

    def _saved_train_time(self, ckpt: Checkpoint) -> float:
        value = ckpt.state.get("train_time")
        if value is None:
            if self.cfg.time_budget is not None:
                raise CheckpointError(
                    f"{ckpt.path} does not record its training time, which --time-budget "
                    "needs; continue it with --max-steps or --token-budget"
                )
            return 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise CheckpointError(f"{ckpt.path}: train_time must be a number of seconds, got {value!r}")
        return float(value)

    def _load_eval_tasks(self) -> list[LoadedTask]:
        """The --eval-task data, read on rank 0 (which scores them); a bad task stops every rank."""
        loaded, error = [], None
        if self.runtime.master:
            try:
                loaded = [load_task(spec) for spec in self.cfg.eval_task or []]
            except ValueError as e:  # TaskError, and lm-eval's unknown tasks
                error = f"--eval-task: {e}"
        if self.runtime.distributed:
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise ConfigError(error)
        return loaded

    def _data_and_tokenizer(self, ckpt: Checkpoint | None, explicit: frozenset[str]) -> tuple[Path, Tokenizer]:
        """(prepared data directory, the run's tokenizer).

        A new run from scratch prepares its data with --tokenizer (char and bpe are trained on the
        train split); a run from --init tokenizes with the model's own tokenizer (asking for
        another kind is an error); a resumed run does what it did at first, and its data's
        tokenizer must be the one saved in the checkpoint.
        """
        cfg = self.cfg
        saved = None
        if ckpt is not None:
            try:
                saved = load_tokenizer(ckpt.path)
                _, config, _ = find_weights(ckpt.path)
                if config is not None:
                    check_vocab(saved, config.vocab_size, ckpt.path)
            except ValueError as e:  # CheckpointError is one; the message names the checkpoint
                raise CheckpointError(f"cannot resume: {e}") from None
        wanted: str | Tokenizer = cfg.tokenizer
        if cfg.init is not None:
            # A fine-tuning run keeps the tokenizer of its weights (a resumed one: the checkpoint's copy).
            if saved is not None:
                wanted = saved
            else:
                try:
                    wanted = tokenizer_for(cfg.init)
                except ValueError as e:  # CheckpointError is one
                    raise CheckpointError(f"--init {cfg.init}: {e}") from None
            if "tokenizer" in explicit and parse_tokenizer_kind(cfg.tokenizer)[0] != wanted.kind.partition(":")[0]:
                raise ConfigError(
                    f"--tokenizer {cfg.tokenizer}: --init {cfg.init} comes with its own {wanted.kind} "
                    "tokenizer, which fine-tuning keeps; leave --tokenizer out"
                )
            try:  # a kind only read from a checkpoint's files (hf, sentencepiece, abeja) is no --tokenizer value
                parse_tokenizer_kind(wanted.kind)
            except ValueError:
                pass  # the checkpoints carry the tokenizer itself
            else:
                self.cfg = cfg = dataclasses.replace(cfg, tokenizer=wanted.kind)
        data_dir = self._prepared_data_dir(cfg.data, wanted, "tokenizer" in explicit)
        tokenizer = data_tokenizer(data_dir)
        prepared_with = load_meta(data_dir).get("tokenizer", "gpt2")
        if cfg.init is None and prepared_with != tokenizer_key(cfg.tokenizer) and "@" not in prepared_with:
            self.cfg = dataclasses.replace(cfg, tokenizer=prepared_with)  # a --data directory's own tokenizer
        if saved is not None and tokenizer_hash(saved) != tokenizer_hash(tokenizer):
            raise CheckpointError(
                f"{ckpt.path} was trained with another {saved.kind} tokenizer than the one of "
                f"its data in {data_dir} ({tokenizer.kind}); was the data prepared again?"
            )
        return data_dir, tokenizer

    def _prepared_data_dir(self, spec: str, tokenizer: str | Tokenizer, explicit: bool) -> Path:
        """A prepared directory as given, or the default directory of a source and tokenizer,
        prepared on rank 0.

        A directory given as --data keeps the tokenizer it was prepared with, unless the run
        needs another (an explicit --tokenizer, the --init model's): that is an error, as
        training on ids of another tokenizer would silently learn nonsense.
        """
        path = Path(spec).expanduser()
        if (path / "meta.json").is_file():
            meta = load_meta(path)
            if isinstance(tokenizer, Tokenizer):
                mismatch = tokenizer_hash(data_tokenizer(path, meta)) != tokenizer_hash(tokenizer)
            else:
                mismatch = explicit and meta.get("tokenizer") != tokenizer_key(tokenizer)
            if mismatch:
                need = tokenizer.kind if isinstance(tokenizer, Tokenizer) else tokenizer
                raise ConfigError(
                    f"--data {path} was prepared with the {meta.get('tokenizer')} tokenizer, this run "
                    f"needs {need}; pass the source instead of the prepared directory, and it is "
                    "prepared with that tokenizer"
                )
            return path
        out = default_data_dir(spec, tokenizer)
        if self.runtime.master:
            prepare(spec, out, tokenizer=tokenizer)
        if self.runtime.distributed:
            dist.barrier()
        return out

    def _build_model(self, ckpt: Checkpoint | None, explicit: frozenset[str]) -> GPT:
        """The model on the CPU: from the checkpoint, from pretrained weights, or from scratch."""
        cfg = self.cfg
        lora_resume = ckpt is not None and cfg.lora_rank is not None  # the --init base, then the adapters
        if ckpt is not None and not lora_resume:
            model = from_pretrained(ckpt.path)
            self._check_model(model.config, ckpt.path, self._resume_keys(explicit))
        elif cfg.init is not None:
            model = from_pretrained(cfg.init)
            self._check_model(model.config, cfg.init, [k for k in MODEL_SETTINGS if k in explicit and k != "dropout"])
            if model.config.dropout != cfg.dropout:  # the released weights come with dropout 0
                state = model.state_dict()
                model = GPT(dataclasses.replace(model.config, dropout=cfg.dropout))
                model.load_state_dict(state)
            self.cfg = dataclasses.replace(cfg, **{k: getattr(model.config, k) for k in MODEL_SETTINGS})
        else:
            model = GPT(cfg.model_config(self.tokenizer.vocab_size))
        if cfg.lora_rank is not None:  # only the adapters train (minigpt.model.lora)
            try:
                if lora_resume:
                    load_adapter(model, ckpt.path, dropout=cfg.lora_dropout)
                else:
                    add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.lora_dropout)
            except ValueError as e:
                raise ConfigError(f"--lora-targets: {e}" if not lora_resume else f"cannot resume: {e}") from None
        if cfg.block_size > model.config.block_size:
            raise ConfigError(
                f"block_size {cfg.block_size} exceeds the model's context window of {model.config.block_size}"
            )
        return model

    def _init_tokenizer(self, ckpt: Checkpoint | None) -> Tokenizer:
        """--sft: the tokenizer of --init (of the checkpoint, resuming), which fine-tuning keeps."""
        try:
            return load_tokenizer(ckpt.path) if ckpt is not None else tokenizer_for(self.cfg.init)
        except ValueError as e:  # CheckpointError is one
            raise CheckpointError(f"--init {self.cfg.init}: {e}") from None

    def _sft_data(self, ckpt: Checkpoint | None) -> SFTData:
        """--sft: the conversations in the chat format of the model (a resumed run: the one its checkpoint records)."""
        cfg = self.cfg
        try:
            directory = ckpt.path if ckpt is not None else resolve_directory(cfg.init)
            fmt = sft_format(directory, cfg.chat_format)
        except ValueError as e:
            raise ConfigError(f"--sft: {e}") from None
        data = SFTData(
            cfg.sft,
            self.tokenizer,
            fmt,
            cfg.block_size,
            cfg.batch_size,
            packed=cfg.pack,
            val_fraction=cfg.sft_val_fraction,
            seed=cfg.seed,
            rank=self.runtime.rank,
            world_size=self.runtime.world_size,
        )
        if self.runtime.master:
            info(f"sft: {cfg.sft}: {data.describe()}")
        return data

    def _prepare(self, model: GPT) -> None:
        """Activation checkpointing and FSDP sharding, both in place and before the optimizer is
        built: under FSDP it must hold the sharded parameters."""
        if self.cfg.activation_checkpointing:
            parallel.checkpoint_activations(model)
        if self.fsdp:
            bf16 = self.device.type == "cuda" and self.runtime.dtype == "bfloat16"
            parallel.shard(model, self.device, self.runtime.world_size, bf16)

    def _wrap(self, model: GPT) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(module for evaluation, module for training steps): compiled if asked, and the latter
        under DDP with several processes (DDP must see the compiled module's parameters). An
        FSDP model was sharded in place by _prepare: it is compiled, never wrapped."""
        loss_module = torch.compile(model) if self.cfg.compile else model  # module(idx, targets) is the loss
        if not self.runtime.distributed or self.fsdp:
            return loss_module, loss_module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return loss_module, DDP(loss_module, device_ids=device_ids)

    @staticmethod
    def _resume_keys(explicit: frozenset[str]) -> list[str]:
        """The model settings a resumed run must match: the sizes and dropout always (as saved),
        the others where a flag asks (an --init run saved before they were recorded holds the
        defaults there, not its model's values)."""
        return [k for k in MODEL_SETTINGS if k in MODEL_SHAPE or k == "dropout" or k in explicit]

    def _check_resume_model(self, ckpt: Checkpoint, explicit: frozenset[str]) -> None:
        """CheckpointError if a flag asks for another model than the checkpoint's (otherwise the flag
        would be recorded as applied while the checkpoint's model trains unchanged)."""
        saved_init = ckpt.train_config.get("init")
        if "init" in explicit and self.cfg.init != saved_init:
            started = "from scratch" if saved_init is None else f"from --init {saved_init}"
            raise CheckpointError(
                f"{ckpt.path} was trained {started}; --resume goes on with its weights, "
                f"--init {self.cfg.init} cannot change them (start a new run in another --out-dir)"
            )
        try:
            _, config, _ = find_weights(ckpt.path)
        except ValueError as e:  # CheckpointError is one
            raise CheckpointError(f"cannot resume: {e}") from None
        if config is not None:
            self._check_model(config, ckpt.path, self._resume_keys(explicit))

    def _check_model(self, config: GPTConfig, source, keys: list[str]) -> None:
        """The model at `source` (its config) must have the `keys` settings (MODEL_SETTINGS) the run asks for."""
        different = [k for k in keys if getattr(config, k) != getattr(self.cfg, k)]
        if different:
            have = ", ".join(f"{k}={getattr(config, k)}" for k in different)
            want = ", ".join(f"{k}={getattr(self.cfg, k)}" for k in different)
            raise CheckpointError(f"{source} holds a model with {have}, but the flags ask for {want}")

    def _restore(self, ckpt: Checkpoint) -> None:
        """Optimizer, data position, RNG and step from a checkpoint (all checked before any is used)."""
        rank, world_size = self.runtime.rank, self.runtime.world_size
        saved_world = ckpt.state["world_size"]
        if saved_world != world_size:
            raise CheckpointError(
                f"{ckpt.path} was written by {saved_world} process(es), this run has {world_size}; "
                "resume with the same number of processes"
            )
        saved_optimizer = ckpt.train_config.get("optimizer", "adamw")
        if saved_optimizer != self.cfg.optimizer:
            raise CheckpointError(
                f"{ckpt.path} was trained with --optimizer {saved_optimizer}; resume it with the same"
            )
        sharded = (ckpt.path / SHARDED).is_dir()
        if sharded != self.fsdp:
            raise CheckpointError(
                f"{ckpt.path} was written with --parallel {'fsdp' if sharded else 'ddp'}; resume it with the same"
            )
        try:
            if self.fsdp:
                parallel.load_shards(
                    ckpt.path / SHARDED, self.raw_model, self.optimizer, ckpt.state["optimizer"]["param_groups"]
                )
            else:
                self.optimizer.load_state_dict(ckpt.optimizer_state_dict(self.optimizer))
            set_hyperparameters(self.optimizer, self.cfg)  # flags given now win over the saved ones
            self.train_loader.load_state_dict(ckpt.state["data_loader"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:  # DataError is a ValueError
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot resume from {ckpt.path}: {reason}") from None
        rng = ckpt.rng_state(rank)
        if rng is None or "torch_cpu" not in rng[0]:
            raise CheckpointError(f"{ckpt.path} holds no RNG state for rank {rank}")
        set_rng_state(*rng, self.device)
        self.step = ckpt.step

    def _start_outputs(self, ckpt: Checkpoint | None, peak_note: str) -> None:
        """Create and lock out_dir, then write the log and run.json; only called once every check has passed.

        The lock (out_dir/.lock, minigpt.rundir.lock_run_dir) is taken before anything else is
        written there and held until close(); a second run into the same out_dir stops here in
        one line naming the first one's PID.
        """
        if self.sft is not None:
            entropy, counted = self.sft.unigram_entropy()
        else:
            entropy, counted = unigram_entropy(self.data_dir, self.meta, "train")
        self.unigram = entropy
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create --out-dir {self.out_dir}: {e.strerror or e}") from None
        try:
            self.lock = lock_run_dir(self.out_dir)  # before anything else is written there
        except CheckpointError as e:
            raise TrainError(str(e)) from None
        except OSError as e:
            raise ConfigError(f"cannot lock --out-dir {self.out_dir}: {e.strerror or e}") from None
        try:
            if ckpt is None and latest_checkpoint(self.out_dir) is not None:  # a run that ended since __init__
                raise TrainError(
                    f"{self.out_dir} already holds checkpoints (latest {latest_checkpoint(self.out_dir).name}); "
                    "pass --resume to continue it, or choose another --out-dir"
                )
            self._write_outputs(ckpt, peak_note, entropy, counted)
        except BaseException:
            release_run_dir(self.lock)
            self.lock = None
            raise

    def _write_outputs(self, ckpt: Checkpoint | None, peak_note: str, entropy: float, counted: int) -> None:
        cfg, runtime = self.cfg, self.runtime
        remove_leftovers(self.out_dir)
        moved, where = start_branch(self.out_dir, ckpt.step) if ckpt else ([], None)
        wandb_run = open_wandb(cfg) if cfg.wandb else None
        tb_writer = open_tensorboard(cfg) if cfg.tensorboard else None
        self.log = RunLog(self.out_dir, ckpt.step if ckpt else None, wandb_run, tb_writer)

        config = self.raw_model.config
        n_params = config.num_params()
        run = {
            "train_config": cfg.to_dict(),
            "model_config": config.to_dict(),
            "num_params": n_params,
            "flops_per_token": self.flops_per_token,
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "dtype": runtime.dtype,
            "backends": list(runtime.backends),
            "world_size": runtime.world_size,
            "grad_accum_steps": self.grad_accum,
            "data_dir": str(self.data_dir),
            "tokenizer": self.tokenizer.kind,
            "train_tokens": self.meta["splits"]["train"]["tokens"],
            "val_tokens": self.meta["splits"]["val"]["tokens"],
            "val_bytes_per_token": bytes_per_token(self.meta, "val"),
            "unigram_entropy": entropy,
            "unigram_tokens_counted": counted,
            "resumed_from": str(ckpt.path) if ckpt else None,
            "torch": torch.__version__,
        }
        atomic_write(self.out_dir / "run.json", (json.dumps(run, indent=2) + "\n").encode())

        attn, ln = runtime.backends
        info(
            f"model: {n_params / 1e6:.2f}M parameters ({config.n_layer} layers, {config.n_head} heads, "
            f"{config.n_embd} wide, context {config.block_size})" + (f", from {cfg.init}" if cfg.init else "")
        )
        info(
            f"device: {run['device']} x {runtime.world_size}, {runtime.dtype}, attention {attn}, "
            f"LayerNorm {ln}{', compiled' if cfg.compile else ''}"
            f"{', FSDP' if self.fsdp else ''}{', activation checkpointing' if cfg.activation_checkpointing else ''}"
        )
        info(
            f"data: {self.data_dir} ({run['train_tokens']:,} train / {run['val_tokens']:,} val tokens, "
            f"{run['val_bytes_per_token']:.2f} bytes/token, {self.tokenizer.kind} tokenizer of "
            f"{self.tokenizer.vocab_size} ids)"
        )
        if cfg.time_budget is not None:
            length = f"a budget of {cfg.time_budget:g} s of training steps"
        elif cfg.token_budget is not None:
            length = f"a budget of {cfg.token_budget:,} tokens ({self._budget_steps()} steps)"
        else:
            length = f"{cfg.max_steps} steps"
        info(
            f"batch: {cfg.batch_size} x {cfg.block_size} tokens x {self.grad_accum} micro-steps x "
            f"{runtime.world_size} process(es) = {self.tokens_per_step:,} tokens/step, {length}; "
            f"{cfg.schedule_kind} schedule, {cfg.data_order} data order"
        )
        if self.eval_tasks:
            info(f"eval tasks: {', '.join(t.task.name for t in self.eval_tasks)} (at each evaluation)")
        info(
            f"baseline: unigram entropy of the train tokens {entropy:.4f} nats/token "
            f"(a model that ignores context cannot do better)"
        )
        if self.peak_flops is None:
            info(f"MFU: not reported; {peak_note}")
        if ckpt is not None:
            info(f"resumed from {ckpt.path} at step {ckpt.step}")
        if moved:
            info(
                f"a new branch of the run: {len(moved)} later checkpoint(s) ({moved[0].name}"
                f"{f' .. {moved[-1].name}' if len(moved) > 1 else ''}) and the old log moved to {where}"
            )

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.tokens_per_micro_batch * self.grad_accum * self.runtime.world_size

    # --- the budget -------------------------------------------------------------------------------
    def _progress(self, step: int | None = None) -> float | None:
        """Fraction of the budget used after `step` steps (default: those done); None without a budget."""
        cfg = self.cfg
        if cfg.time_budget is not None:
            return self.train_time / cfg.time_budget
        if cfg.token_budget is not None:
            return (self.step if step is None else step) * self.tokens_per_step / cfg.token_budget
        return None

    def _budget_steps(self) -> int:
        """Steps of a token budget: the last one may go past it."""
        return -(-self.cfg.token_budget // self.tokens_per_step)

    def _finished(self) -> bool:
        """True once the run's schedule is over: at max_steps, or with its budget used."""
        progress = self._progress()
        return self.step >= self.cfg.max_steps if progress is None else progress >= 1.0

    # --- one step ---------------------------------------------------------------------------------
    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def train_step(self, stop_requested: bool = False) -> dict:
        """One optimizer step over total_batch_size tokens; returns its log record (+ "stop")."""
        cfg, runtime = self.cfg, self.runtime
        t0 = clock()
        lr = lr_at(self.step, cfg, self._progress())
        set_hyperparameters(self.optimizer, cfg, lr)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            x, y, *docs = (self._to_device(t) for t in self.train_loader.next_batch())  # docs: packed --sft rows
            last = micro == self.grad_accum - 1
            # Only the last micro-step all-reduces (FSDP: reduce-scatters) the gradients that the
            # others accumulated.
            sync = contextlib.nullcontext()
            if self.fsdp:
                self.raw_model.set_requires_gradient_sync(last)
            elif runtime.distributed and not last:
                sync = self.train_module.no_sync()
            with sync:
                with runtime.autocast():
                    loss = self.train_module(x, y, doc_ids=docs[0] if docs else None)
                (loss / self.grad_accum).backward()
            loss_sum += loss.detach()
        # max_norm inf measures the norm without clipping (the factor is clamped to 1).
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm)
        grad_norm = parallel.local_value(grad_norm)  # FSDP: a DTensor, the norm over all shards
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        # One reduction carries the loss, the norm and the stop request (> 0 if any rank asked).
        stats = torch.stack(
            [
                loss_sum / self.grad_accum,
                grad_norm.float().to(self.device),
                torch.tensor(float(stop_requested), device=self.device),
            ]
        )
        loss, norm, stop = runtime.mean_over_ranks(stats).tolist()  # waits for the step to finish
        dt = clock() - t0
        if runtime.distributed and cfg.time_budget is not None:
            dt = self._rank0_value(dt)  # so that every rank stops after the same step
        self.train_time += dt
        self.step += 1
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise Diverged(
                f"the loss became {loss} (grad norm {norm}) at step {self.step}; training "
                f"stopped without saving this state; {self._where_to_resume(loss)}"
            )
        self.last_loss = loss
        tokens_per_sec = self.tokens_per_step / dt
        mfu = None
        if self.peak_flops is not None:
            mfu = self.flops_per_token * tokens_per_sec / (self.peak_flops * runtime.world_size)
        record = {
            "step": self.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": norm,
            "dt": dt,
            "tokens_per_sec": tokens_per_sec,
            "mfu": mfu,
            "tokens": self.step * self.tokens_per_step,
            "train_time": self.train_time,
        }
        if cfg.budgeted:
            record["progress"] = self._progress()
        return {**record, "stop": stop > 0}

    def _rank0_value(self, value: float) -> float:
        box = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(box, src=0)
        return box.item()

    def _where_to_resume(self, loss: float) -> str:
        """After step self.step gave `loss` (not finite): the last checkpoint whose weights had a
        sane loss, or why none did.

        The loss logged at step k is that of the weights before step k's update, those of
        checkpoint k-1; so a checkpoint's weights are judged by the next step's loss. The
        checkpoint just before this step is then never named: resuming from it would meet the
        same weights and the same batch again, whatever the learning rate.
        """
        found = run_checkpoints(self.out_dir)
        if not found:
            return "no checkpoint was written"
        uniform = math.log(self.raw_model.config.vocab_size)
        records = self.log.records if self.runtime.master else []
        train_loss = {r["step"]: r["loss"] for r in records if "loss" in r}
        train_loss[self.step] = loss
        for step, path in reversed(found):
            after = train_loss.get(step + 1)
            seen = [v for s, v in train_loss.items() if s <= step + 1 and math.isfinite(v)]
            if after is not None and math.isfinite(after) and after <= min(seen + [uniform]) + SANE_LOSS_MARGIN:
                return (
                    f"the last checkpoint with a sane loss is {path} (the next step's loss was "
                    f"{after:.4g}); resume from it with a lower --lr"
                )
        best = min((v for v in train_loss.values() if math.isfinite(v)), default=math.nan)
        return (
            f"no checkpoint has a sane loss (the latest is {found[-1][1]}; the lowest loss logged was "
            f"{best:.4g}, a uniform guess scores {uniform:.4g}); start again with a lower --lr"
        )

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean val loss over eval_steps batches of total_batch_size tokens (the same ones every time)."""
        self.raw_model.eval()
        self.val_loader.reset()
        n = self.cfg.eval_steps * self.grad_accum
        total = torch.zeros((), device=self.device)
        for _ in range(n):
            x, y, *docs = (self._to_device(t) for t in self.val_loader.next_batch())
            with self.runtime.autocast():
                total += self.loss_module(x, y, doc_ids=docs[0] if docs else None)
        total /= n
        self.runtime.mean_over_ranks(total)
        self.raw_model.train()
        return total.item()

    @torch.no_grad()
    def sample(self) -> str | None:
        """A continuation of sample_prompt, with a fixed seed so that it never touches the training RNG.

        Under FSDP every rank must call it (the weights are gathered); rank 0 samples from a
        full copy and the others get None.
        """
        cfg, model = self.cfg, self.raw_model
        if self.fsdp:
            model = parallel.full_copy(self.raw_model)
            if model is None:
                return None
            set_backends(model.to(self.device), cfg.attn_backend, cfg.ln_backend)
        prompt_len = len(prompt_ids(self.tokenizer, cfg.sample_prompt))
        n = min(cfg.sample_tokens, model.config.block_size - prompt_len)
        model.eval()
        # In the weights' own precision: the KV cache is kept in that dtype, and a few hundred
        # tokens cost nothing next to a training step.
        [completion] = complete(
            model, self.tokenizer, [cfg.sample_prompt], n, temperature=0.8, top_k=200, seed=cfg.seed
        )
        self.raw_model.train()
        return cfg.sample_prompt + completion.text

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank contributes its RNG state and,
        under FSDP, writes its shards)."""
        runtime = self.runtime
        rng = rng_state(self.device)
        if runtime.distributed:
            states = [None] * runtime.world_size
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        model, optimizer_state = self.raw_model, None
        if lora_layers(model):  # the weights as they now compute: base + adapters
            model = merged_copy(model)
        if self.fsdp:
            model, optimizer_state = self._save_shards()
        path, error = None, None
        if runtime.master:
            state = {
                "train_config": self.cfg.to_dict(),
                "world_size": runtime.world_size,
                "data_loader": self.train_loader.state_dict(),
                "tokens_seen": self.step * self.tokens_per_step,
                "loss": self.last_loss,
                "train_time": self.train_time,
                "tokenizer_sha1": self.tokenizer_sha1,  # what sample.py and eval.py check the saved files against
            }
            try:
                if optimizer_state is None:
                    optimizer_state = self.optimizer.state_dict()
                if not self.fsdp:  # (FSDP: _save_shards started it)
                    start_checkpoint(self.out_dir, self.step)
                self._save_tokenizer(temp_dir(self.out_dir, self.step))
                if self.cfg.lora_rank is not None:  # PEFT's adapter files; --resume reads them back
                    save_adapter(self.raw_model, temp_dir(self.out_dir, self.step), base_model=self.cfg.init)
                path = save_checkpoint(self.out_dir, self.step, model, optimizer_state, state, states, started=True)
                prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints, protect=self.resumed_from)
            except CheckpointWriteError as e:
                error = str(e)
            except OSError as e:  # pruning: the new checkpoint is complete
                error = f"saved {path} but could not delete an old checkpoint ({e.strerror or e})"
        if runtime.distributed:  # every rank stops if rank 0 could not write
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise CheckpointWriteError(error)
        return path

    def _save_tokenizer(self, directory: Path) -> None:
        """The run's tokenizer beside the weights, so sample.py, eval.py and --resume find it."""
        try:
            self.tokenizer.save(directory)
            if self.sft is not None:  # chat.py --init on the run then writes prompts as it was trained
                write_chat_format(directory, self.sft.format)
        except OSError as e:
            raise write_failed(self.out_dir, self.step, e) from None

    def _save_shards(self) -> tuple[GPT | None, dict]:
        """FSDP: every rank writes its shards into the checkpoint's temporary directory. Returns
        (on rank 0 the gathered full model, else None; the optimizer state for train_state.json,
        whose moments are in the shards)."""
        runtime = self.runtime
        box = [None]
        if runtime.master:
            try:
                start_checkpoint(self.out_dir, self.step)
            except CheckpointWriteError as e:
                box = [str(e)]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise CheckpointWriteError(box[0])
        try:
            groups = parallel.save_shards(temp_dir(self.out_dir, self.step) / SHARDED, self.raw_model, self.optimizer)
        except OSError as e:  # raised on every rank, as each rank's write is a collective's part
            error = write_failed(self.out_dir, self.step, e)
            dist.barrier()
            raise error from None
        return parallel.full_copy(self.raw_model), {"state": {}, "param_groups": groups}

    # --- the loop ---------------------------------------------------------------------------------
    def _due(self, interval: int) -> bool:
        return (interval > 0 and self.step % interval == 0) or self._finished()

    def score_eval_tasks(self) -> dict[str, float]:
        """{"eval/TASK/METRIC": value} of the --eval-task tasks (rank 0 only)."""
        with self.runtime.autocast():
            results = evaluate_tasks(self.raw_model, self.tokenizer, self.eval_tasks)
        return {
            f"eval/{task}/{metric}": value
            for task, metrics in results.items()
            for metric, value in metrics.items()
            if metric != "n" and isinstance(value, (int, float)) and not isinstance(value, bool)
        }

    def _at_stop(self) -> bool:
        """True once this invocation is done: the run is finished, or --stop-at-step reached."""
        cfg = self.cfg
        return self._finished() or (cfg.stop_at_step is not None and self.step >= cfg.stop_at_step)

    def _evaluate_and_log(self) -> None:
        val_loss = self.evaluate()
        if self.runtime.master:
            val_bpb = val_loss / math.log(2) / bytes_per_token(self.meta, "val")
            scores = self.score_eval_tasks() if self.eval_tasks else {}
            self.log.log({"step": self.step, "val_loss": val_loss, "val_bpb": val_bpb, **scores})
            shown = "".join(
                f", {k.removeprefix('eval/')} {v:.4f}"
                for k, v in scores.items()
                if k.rsplit("/", 1)[1] in HEADLINE_METRICS
            )
            info(
                f"step {self.step}: val loss {val_loss:.4f}, val bpb {val_bpb:.4f} "
                f"(unigram baseline {self.unigram:.4f}){shown}"
            )
            plot_losses(self.log.records, self.out_dir / "loss.png", self.unigram)

    def _loop(self, bar: tqdm, received: list[int]) -> bool:
        """fit()'s steps, evaluations, samples and checkpoints; True if stopped by a signal."""
        cfg, master = self.cfg, self.runtime.master
        if self.step == 0 and cfg.eval_interval > 0:
            self._evaluate_and_log()
        stopped = False
        while not self._at_stop() and not stopped:
            record = self.train_step(stop_requested=bool(received))
            stopped = record.pop("stop")
            if master:
                self.log.log(record)
                mfu = f" | mfu {record['mfu']:.1%}" if record["mfu"] is not None else ""
                used = f"{record['progress']:.0%} of budget | " if cfg.budgeted else ""
                bar.set_postfix_str(
                    f"{used}loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
                    f"{record['tokens_per_sec']:,.0f} tok/s{mfu}",
                    refresh=False,
                )
                bar.update(1)
            if self._due(cfg.eval_interval):
                self._evaluate_and_log()
            if (master or self.fsdp) and self._due(cfg.sample_interval):
                text = self.sample()
                if master:
                    info(f"--- sample at step {self.step} ---\n{text}\n---")
            if self._due(cfg.ckpt_interval) or self._at_stop() or stopped:
                path = self.save()
                if master:
                    info(f"step {self.step}: saved {path}")
        return stopped

    def fit(self) -> int:
        """Train to stop_at_step, max_steps or the budget; returns the exit code (128 + signal if
        interrupted)."""
        cfg, master = self.cfg, self.runtime.master
        if self.complete:
            if master:
                if cfg.budgeted:
                    flag = "--time-budget" if cfg.time_budget is not None else "--token-budget"
                    info(
                        f"the run is already complete: {self.resumed_from} used its budget; nothing to do "
                        f"(pass a larger {flag} to train on)"
                    )
                else:
                    info(
                        f"the run is already complete: {self.resumed_from} is at step {self.step} of "
                        f"--max-steps {cfg.max_steps}; nothing to do (pass a larger --max-steps to train on)"
                    )
            return 0
        received: list[int] = []

        def on_signal(signum, frame):
            if received:  # a second request: stop now, without a checkpoint
                raise KeyboardInterrupt
            received.append(signum)
            if master:
                info(
                    f"{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
                    "(press Ctrl-C again to quit without saving)"
                )

        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        total = None if cfg.time_budget is not None else self._budget_steps() if cfg.budgeted else cfg.max_steps
        bar = tqdm(
            total=total,
            initial=self.step,
            desc="train",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
            disable=not master,
        )
        try:
            with self.runtime.collective_timeouts():
                stopped = self._loop(bar, received)
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if master:
                if self.log.records:
                    plot_losses(self.log.records, self.out_dir / "loss.png", self.unigram)
                self.log.close()

        last = latest_checkpoint(self.out_dir)
        if stopped:
            if master:
                info(f"interrupted: saved {last}; continue with --resume")
            # Under DDP the signal may have reached another rank only.
            return 128 + (received[0] if received else signal.SIGINT)
        if master:
            evals = [r for r in self.log.records if "val_loss" in r]
            summary = {"step": self.step, "checkpoint": str(last), "unigram_entropy": self.unigram}
            if evals:
                summary.update(val_loss=evals[-1]["val_loss"], val_bpb=evals[-1]["val_bpb"])
            if not self._finished():
                of = "" if cfg.budgeted else f" of {cfg.max_steps}"
                info(f"stopped at step {self.step}{of} (--stop-at-step); continue with --resume")
            print(json.dumps(summary))
        return 0

    def close(self) -> None:
        """Release the out dir and leave the process group (every exit path of train.py calls it)."""
        release_run_dir(getattr(self, "lock", None))
        self.lock = None
        # DDP's reducer holds the process group: let it go first, so that the group is torn down
        # by destroy_process_group on every rank (a gloo group left to the reducer's destructor
        # could wait forever in it for threads of a group already destroyed).
        self.train_module = self.loss_module = None
        gc.collect()
        self.runtime.close()


def merged_copy(model: GPT) -> GPT:
    """A model computing what a LoRA-adapted `model` computes, with plain layers (merge_lora), for a
    checkpoint: it shares every tensor but the merged layers' with `model`, which keeps its adapters."""
    copy = build_on_meta(model.config)
    state = {k: v for k, v in model.state_dict().items() if ".lora_" not in k and ".base." not in k}
    copy.load_state_dict(state, strict=False, assign=True)
    for name, layer in lora_layers(model).items():
        holder = copy.get_submodule(name.rpartition(".")[0]) if "." in name else copy
        setattr(holder, name.rpartition(".")[2], layer)
    merge_lora(copy)
    return copy
