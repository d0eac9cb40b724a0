"""Pretrain a GPT-2 (or fine-tune one) on a prepared token corpus.

    python train.py                                  # recipe "cpu": ~5 minutes on 2 cores, offline
    python train.py --recipe gpt2-124m               # GPT-2 124M on FineWeb-Edu (GPUs)
    python train.py --init gpt2 --data notes/ --max-steps 200 --lr 3e-5   # fine-tune OpenAI's weights
    python train.py --resume                         # continue the latest checkpoint in --out-dir
    torchrun --nproc_per_node=8 train.py --recipe gpt2-124m               # 8 GPUs, DDP

A recipe names a complete run (minigpt.training.RECIPES); flags override single values.
Each optimizer step sees --total-batch-size tokens however many processes run it:
every process reads its own slice of the batch (DataLoader rank/world_size) and
accumulates batch_size x block_size micro-batches until the step's tokens are covered.

Outputs in --out-dir: log.jsonl (one JSON object per step and per evaluation),
loss.png, run.json (config, parameter count, unigram baseline), and checkpoints
ckpt_<step>/ (layout in minigpt/training.py) that `GPT.from_pretrained(out_dir)` loads.
Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and exits;
a second Ctrl-C quits at once without saving.

Data parallel. Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set) the model is wrapped in
DistributedDataParallel (NCCL on CUDA, gloo on CPU). Gradients are all-reduced only on
the last micro-step of a step (`no_sync` before it), the logged loss is the mean over
ranks, and only rank 0 writes logs and checkpoints. Prepare a large corpus before a
multi-process run (`python -m minigpt.data fineweb-edu`): the other ranks wait for rank 0
at a barrier, and NCCL gives up on a barrier after 10 minutes.

Beyond DDP: the 1.5B model with FSDP2. DDP keeps the whole training state on every
GPU: for gpt2-xl (1.56B parameters) fp32 weights, gradients and two AdamW moments are
16 bytes per parameter, 25 GB, before any activation. FSDP2 shards that state instead:
call `torch.distributed.fsdp.fully_shard(block)` on every transformer Block, then
`fully_shard(model)` on the GPT (it takes wte, wpe and ln_f), before building the
optimizer. Each parameter becomes a DTensor split along dim 0 over the N ranks, so a
rank holds 16/N bytes per parameter (3 GB on 8 GPUs); forward all-gathers one block's
weights just before it runs (prefetching the next) and frees them after, backward
gathers them again and reduce-scatters the gradients. `MixedPrecisionPolicy(
param_dtype=torch.bfloat16, reduce_dtype=torch.float32)` makes the gathers bf16 while the
sharded master weights and AdamW stay fp32; AdamW and clip_grad_norm_ work on DTensors
unchanged. Gradient accumulation calls `model.set_requires_gradient_sync(False)` on the
non-final micro-steps in place of `no_sync()`, activation checkpointing of each block
buys back activation memory at T=1024, and checkpoints go through
torch.distributed.checkpoint (every rank writes its shards), or are gathered to rank 0
with `get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
cpu_offload=True))` for `save_pretrained`. This script implements DDP only.
"""
from __future__ import annotations

import os

if __name__ == "__main__":
    # Read by OpenMP when torch loads it, so it must come before `import torch`. Idle OpenMP
    # threads then sleep instead of spinning: on a CPU shared with other jobs a spinning
    # thread starves its own sibling, and a 2-thread step took 3.3 s instead of 1.3 s.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from minigpt.data import DataError, DataLoader, bytes_per_token, default_data_dir, load_meta, prepare
from minigpt.model import ATTN_BACKENDS, GPT, LN_BACKENDS, resolve_backends
from minigpt.tokenizer import TokenizerUnavailable, get_encoding
from minigpt.training import (
    RECIPES,
    Checkpoint,
    ConfigError,
    Diverged,
    RunLog,
    TrainConfig,
    TrainError,
    check_loggers_installed,
    configure_optimizer,
    device_peak_flops,
    flops_per_token,
    keep_freed_memory,
    load_checkpoint,
    lr_at,
    make_config,
    open_tensorboard,
    open_wandb,
    plot_losses,
    prune_checkpoints,
    read_train_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unigram_entropy,
)
from minigpt.weights import CheckpointError, latest_checkpoint

MODEL_SHAPE = ("n_layer", "n_head", "n_embd")


def say(message: str) -> None:
    """Information on stderr, without breaking the progress bar."""
    tqdm.write(message, file=sys.stderr)


class Trainer:
    """One training run: set up in __init__ (nothing is written before every check passed), run by fit()."""

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None, explicit: frozenset[str] = frozenset()):
        self.cfg = cfg
        check_loggers_installed(cfg)
        self._setup_processes()
        self.grad_accum = cfg.grad_accum_steps(self.world_size)
        self.out_dir = Path(cfg.out_dir)
        if resume is None and latest_checkpoint(self.out_dir) is not None:
            raise TrainError(
                f"{self.out_dir} already holds checkpoints (latest {latest_checkpoint(self.out_dir).name}); "
                "pass --resume to continue it, or choose another --out-dir"
            )
        ckpt = load_checkpoint(resume, cfg.attn_backend, cfg.ln_backend) if resume is not None else None

        # Data (rank 0 prepares it if needed, the others wait).
        self.data_dir = self._data_dir(cfg.data)
        self.meta = load_meta(self.data_dir)
        loader_args = dict(rank=self.rank, world_size=self.world_size, seed=cfg.seed)
        self.train_loader = DataLoader(self.data_dir, "train", cfg.batch_size, cfg.block_size, **loader_args)
        self.val_loader = DataLoader(self.data_dir, "val", cfg.batch_size, cfg.block_size, **loader_args)

        # Model: from the checkpoint, from pretrained weights, or from scratch.
        torch.manual_seed(cfg.seed + self.rank)
        if ckpt is not None:
            model = ckpt.model
            self._check_model(model, ckpt.path, list(MODEL_SHAPE) + ["dropout"])
        elif cfg.init is not None:
            model = GPT.from_pretrained(cfg.init, attn_backend=cfg.attn_backend, ln_backend=cfg.ln_backend)
            self._check_model(model, cfg.init, [k for k in MODEL_SHAPE if k in explicit])
            if model.config.dropout != cfg.dropout:  # the released weights come with dropout 0
                state = model.state_dict()
                model = GPT(dataclasses.replace(model.config, dropout=cfg.dropout), cfg.attn_backend, cfg.ln_backend)
                model.load_state_dict(state)
            self.cfg = cfg = dataclasses.replace(cfg, **{k: getattr(model.config, k) for k in MODEL_SHAPE})
        else:
            model = GPT(cfg.model_config(), attn_backend=cfg.attn_backend, ln_backend=cfg.ln_backend)
        if cfg.block_size > model.config.block_size:
            raise ConfigError(f"block_size {cfg.block_size} exceeds the model's context window of {model.config.block_size}")
        if self.meta["vocab_size"] > model.config.vocab_size:
            raise ConfigError(f"the data has {self.meta['vocab_size']} token ids, the model only {model.config.vocab_size}")
        self.raw_model = model.to(self.device)
        self.raw_model.train()
        self.optimizer = configure_optimizer(self.raw_model, cfg, self.device.type)

        self.step = 0  # optimizer steps done
        if ckpt is not None:
            self._restore(ckpt)

        # Wrappers: compile, then DDP (which must see the compiled module's parameters).
        self.loss_module: torch.nn.Module = self.raw_model  # model(idx, targets) is the loss
        if cfg.compile:
            self.loss_module = torch.compile(self.loss_module)
        self.train_module = self.loss_module
        if self.ddp:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_module = DDP(self.loss_module, device_ids=device_ids)

        self.flops_per_token = flops_per_token(self.raw_model.config, cfg.block_size)
        self.peak_flops, peak_note = device_peak_flops(self.device, cfg.peak_flops)
        if self.master:
            self._start_outputs(ckpt, peak_note)

    # --- set-up -----------------------------------------------------------------------------------
    def _setup_processes(self) -> None:
        cfg = self.cfg
        self.ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.master = self.rank == 0

        if cfg.device == "auto":
            device = torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        else:
            try:
                device = torch.device(cfg.device)
            except RuntimeError as e:
                raise ConfigError(f"--device {cfg.device!r}: {e}") from None
            if device.type == "cuda" and device.index is None:
                device = torch.device("cuda", self.local_rank)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {cfg.device} asks for CUDA, but no CUDA GPU is available")
        self.device = device
        if device.type == "cpu":
            keep_freed_memory()
        if device.type == "cuda":
            torch.cuda.set_device(device)
            # TF32 for the fp32 matmuls that autocast leaves (and for --dtype float32).
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.set_float32_matmul_precision("high")

        dtype = cfg.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
        self.dtype = dtype
        if dtype == "bfloat16":
            self.autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        else:
            self.autocast = contextlib.nullcontext
        try:
            self.backends = resolve_backends(cfg.attn_backend, cfg.ln_backend, device)
        except RuntimeError as e:
            raise ConfigError(str(e)) from None

        if self.ddp:
            if device.type == "cuda":
                dist.init_process_group(backend="nccl", device_id=device)
            else:
                dist.init_process_group(backend="gloo")

    def _data_dir(self, spec: str) -> Path:
        """A prepared directory as given, or the default directory of a source, prepared on rank 0."""
        path = Path(spec).expanduser()
        if (path / "meta.json").is_file():
            return path
        out = default_data_dir(spec)
        if self.master:
            prepare(spec, out)
        if self.ddp:
            dist.barrier()
        return out

    def _check_model(self, model: GPT, source, keys: list[str]) -> None:
        """The model at `source` must have the sizes the config asks for."""
        different = [k for k in keys if getattr(model.config, k) != getattr(self.cfg, k)]
        if different:
            have = ", ".join(f"{k}={getattr(model.config, k)}" for k in different)
            want = ", ".join(f"{k}={getattr(self.cfg, k)}" for k in different)
            raise CheckpointError(f"{source} holds a model with {have}, but the flags ask for {want}")

    def _restore(self, ckpt: Checkpoint) -> None:
        """Optimizer, data position, RNG and step from a checkpoint (all checked before any is used)."""
        saved_world = ckpt.state["world_size"]
        if saved_world != self.world_size:
            raise CheckpointError(
                f"{ckpt.path} was written by {saved_world} process(es), this run has {self.world_size}; "
                "resume with the same number of processes"
            )
        try:
            optimizer_state = ckpt.optimizer_state_dict(self.optimizer)
            self.optimizer.load_state_dict(optimizer_state)
            # load_state_dict brings back the saved hyper-parameters; flags given now win
            # (lr is set every step from the schedule).
            decay, no_decay = self.optimizer.param_groups
            decay["weight_decay"] = self.cfg.weight_decay
            for group in (decay, no_decay):
                group["betas"] = (self.cfg.beta1, self.cfg.beta2)
            self.train_loader.load_state_dict(ckpt.state["data_loader"])
        except (ValueError, KeyError, TypeError) as e:  # DataError is a ValueError
            raise CheckpointError(f"cannot resume from {ckpt.path}: {e}") from None
        rng = ckpt.rng_state(self.rank)
        if rng is None or "torch_cpu" not in rng[0]:
            raise CheckpointError(f"{ckpt.path} holds no RNG state for rank {self.rank}")
        set_rng_state(*rng, self.device)
        self.step = ckpt.step

    def _start_outputs(self, ckpt: Checkpoint | None, peak_note: str) -> None:
        """Create out_dir, the log and run.json; only called once every check has passed."""
        cfg = self.cfg
        entropy, counted = unigram_entropy(self.data_dir, self.meta, "train")
        self.unigram = entropy
        self.out_dir.mkdir(parents=True, exist_ok=True)
        wandb_run = open_wandb(cfg) if cfg.wandb else None
        tb_writer = open_tensorboard(cfg) if cfg.tensorboard else None
        self.log = RunLog(self.out_dir, ckpt.step if ckpt else None, wandb_run, tb_writer)
        self.enc = get_encoding("gpt2")  # for the samples

        config = self.raw_model.config
        n_params = config.num_params()
        run = {
            "train_config": cfg.to_dict(),
            "model_config": config.to_dict(),
            "num_params": n_params,
            "flops_per_token": self.flops_per_token,
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "dtype": self.dtype,
            "backends": list(self.backends),
            "world_size": self.world_size,
            "grad_accum_steps": self.grad_accum,
            "data_dir": str(self.data_dir),
            "train_tokens": self.meta["splits"]["train"]["tokens"],
            "val_tokens": self.meta["splits"]["val"]["tokens"],
            "val_bytes_per_token": bytes_per_token(self.meta, "val"),
            "unigram_entropy": entropy,
            "unigram_tokens_counted": counted,
            "resumed_from": str(ckpt.path) if ckpt else None,
            "torch": torch.__version__,
        }
        tmp = self.out_dir / "run.json.tmp"
        tmp.write_text(json.dumps(run, indent=2) + "\n")
        os.replace(tmp, self.out_dir / "run.json")

        say(f"model: {n_params / 1e6:.2f}M parameters ({config.n_layer} layers, {config.n_head} heads, "
            f"{config.n_embd} wide, context {config.block_size})" + (f", from {cfg.init}" if cfg.init else ""))
        say(f"device: {run['device']} x {self.world_size}, {self.dtype}, attention {self.backends[0]}, "
            f"LayerNorm {self.backends[1]}{', compiled' if cfg.compile else ''}")
        say(f"data: {self.data_dir} ({run['train_tokens']:,} train / {run['val_tokens']:,} val tokens, "
            f"{run['val_bytes_per_token']:.2f} bytes/token)")
        say(f"batch: {cfg.batch_size} x {cfg.block_size} tokens x {self.grad_accum} micro-steps x "
            f"{self.world_size} process(es) = {self.tokens_per_step:,} tokens/step, {cfg.max_steps} steps")
        say(f"baseline: unigram entropy of the train tokens {entropy:.4f} nats/token "
            f"(a model that ignores context cannot do better)")
        if self.peak_flops is None:
            say(f"MFU: not reported; {peak_note}")
        if ckpt is not None:
            say(f"resumed from {ckpt.path} at step {ckpt.step}")

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.tokens_per_micro_batch * self.grad_accum * self.world_size

    # --- one step ---------------------------------------------------------------------------------
    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def train_step(self, stop_requested: bool = False) -> dict:
        """One optimizer step over total_batch_size tokens; returns its log record (+ "stop")."""
        cfg = self.cfg
        t0 = time.perf_counter()
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            x, y = self.train_loader.next_batch()
            x, y = self._to_device(x), self._to_device(y)
            last = micro == self.grad_accum - 1
            # Only the last micro-step all-reduces the gradients that the others accumulated.
            sync = contextlib.nullcontext() if last or not self.ddp else self.train_module.no_sync()
            with sync:
                with self.autocast():
                    loss = self.train_module(x, y)
                (loss / self.grad_accum).backward()
            loss_sum += loss.detach()
        # max_norm inf measures the norm without clipping (the factor is clamped to 1).
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        # One reduction carries the loss (averaged over ranks below) and any rank's stop request.
        stats = torch.stack([loss_sum / self.grad_accum, grad_norm.float().to(self.device),
                             torch.tensor(float(stop_requested), device=self.device)])
        if self.ddp:
            dist.all_reduce(stats)
            stats[:2] /= self.world_size
        loss, norm, stop = stats.tolist()  # waits for the step to finish
        dt = time.perf_counter() - t0
        self.step += 1
        if not (math.isfinite(loss) and math.isfinite(norm)):
            last_ckpt = latest_checkpoint(self.out_dir)
            where = (f"the last good checkpoint is {last_ckpt} (resume from it with a lower --lr)"
                     if last_ckpt else "no checkpoint was written")
            raise Diverged(f"the loss became {loss} (grad norm {norm}) at step {self.step}; training "
                           f"stopped without saving this state; {where}")
        tokens_per_sec = self.tokens_per_step / dt
        mfu = None
        if self.peak_flops is not None:
            mfu = self.flops_per_token * tokens_per_sec / (self.peak_flops * self.world_size)
        return {"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm, "dt": dt,
                "tokens_per_sec": tokens_per_sec, "mfu": mfu, "tokens": self.step * self.tokens_per_step,
                "stop": stop > 0}

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean val loss over eval_steps batches of total_batch_size tokens (the same ones every time)."""
        self.raw_model.eval()
        self.val_loader.reset()
        n = self.cfg.eval_steps * self.grad_accum
        total = torch.zeros((), device=self.device)
        for _ in range(n):
            x, y = self.val_loader.next_batch()
            with self.autocast():
                total += self.loss_module(self._to_device(x), self._to_device(y))
        total /= n
        if self.ddp:
            dist.all_reduce(total)
            total /= self.world_size
        self.raw_model.train()
        return total.item()

    @torch.no_grad()
    def sample(self) -> str:
        """A continuation of sample_prompt, with a fixed seed so that it never touches the training RNG."""
        from minigpt.generate import complete

        cfg = self.cfg
        prompt_len = len(self.enc.encode(cfg.sample_prompt))
        n = min(cfg.sample_tokens, self.raw_model.config.block_size - prompt_len)
        self.raw_model.eval()
        # In the weights' own precision: the KV cache is kept in that dtype, and a few hundred
        # tokens cost nothing next to a training step.
        [completion] = complete(self.raw_model, self.enc, [cfg.sample_prompt], n, temperature=0.8,
                                top_k=200, seed=cfg.seed)
        self.raw_model.train()
        return cfg.sample_prompt + completion.text

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank contributes its RNG state)."""
        rng = rng_state(self.device)
        if self.ddp:
            states = [None] * self.world_size
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        path = None
        if self.master:
            state = {"train_config": self.cfg.to_dict(), "world_size": self.world_size,
                     "data_loader": self.train_loader.state_dict(),
                     "tokens_seen": self.step * self.tokens_per_step}
            path = save_checkpoint(self.out_dir, self.step, self.raw_model, self.optimizer, state, states)
            prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints)
        if self.ddp:
            dist.barrier()
        return path

    # --- the loop ---------------------------------------------------------------------------------
    def _due(self, interval: int) -> bool:
        return (interval > 0 and self.step % interval == 0) or self.step == self.cfg.max_steps

    def _evaluate_and_log(self) -> None:
        val_loss = self.evaluate()
        if self.master:
            val_bpb = val_loss / math.log(2) / bytes_per_token(self.meta, "val")
            self.log.log({"step": self.step, "val_loss": val_loss, "val_bpb": val_bpb})
            say(f"step {self.step}: val loss {val_loss:.4f}, val bpb {val_bpb:.4f} "
                f"(unigram baseline {self.unigram:.4f})")
            plot_losses(self.log.records, self.out_dir / "loss.png", self.unigram)

    def fit(self) -> int:
        """Train to stop_at_step or max_steps; returns the exit code (128 + signal if interrupted)."""
        cfg = self.cfg
        received: list[int] = []

        def on_signal(signum, frame):
            if received:  # a second request: stop now, without a checkpoint
                raise KeyboardInterrupt
            received.append(signum)
            if self.master:
                say(f"{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
                    "(press Ctrl-C again to quit without saving)")

        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5, disable=not self.master)
        try:
            if self.step == 0 and cfg.eval_interval > 0:
                self._evaluate_and_log()
            stopped = False
            while self.step < cfg.end_step and not stopped:
                record = self.train_step(stop_requested=bool(received))
                stopped = record.pop("stop")
                if self.master:
                    self.log.log(record)
                    mfu = f" | mfu {record['mfu']:.1%}" if record["mfu"] is not None else ""
                    bar.set_postfix_str(f"loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
                                        f"{record['tokens_per_sec']:,.0f} tok/s{mfu}", refresh=False)
                    bar.update(1)
                if self._due(cfg.eval_interval):
                    self._evaluate_and_log()
                if self.master and self._due(cfg.sample_interval):
                    say(f"--- sample at step {self.step} ---\n{self.sample()}\n---")
                if self._due(cfg.ckpt_interval) or self.step == cfg.end_step or stopped:
                    path = self.save()
                    if self.master:
                        say(f"step {self.step}: saved {path}")
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.master:
                if self.log.records:
                    plot_losses(self.log.records, self.out_dir / "loss.png", self.unigram)
                self.log.close()

        last = latest_checkpoint(self.out_dir)
        if stopped:
            if self.master:
                say(f"interrupted: saved {last}; continue with --resume")
            # Under DDP the signal may have reached another rank only.
            return 128 + (received[0] if received else signal.SIGINT)
        if self.master:
            evals = [r for r in self.log.records if "val_loss" in r]
            summary = {"step": self.step, "checkpoint": str(last), "unigram_entropy": self.unigram}
            if evals:
                summary.update(val_loss=evals[-1]["val_loss"], val_bpb=evals[-1]["val_bpb"])
            if self.step < cfg.max_steps:
                say(f"stopped at step {self.step} of {cfg.max_steps} (--stop-at-step); continue with --resume")
            print(json.dumps(summary))
        return 0

    def close(self) -> None:
        if self.ddp and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    recipes = "\n".join(
        f"  {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()) for name, values in RECIPES.items()
    )
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Pretrain or fine-tune a GPT-2. Every flag left out takes the recipe's value "
                    "(or, with --resume, the checkpoint's).",
        epilog=f"recipes (other settings: the TrainConfig defaults in minigpt/training.py):\n{recipes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--recipe", choices=list(RECIPES), default=None,
        help="named set of settings: 'cpu' (~5 min on 2 cores, Python stdlib) or 'gpt2-124m' "
             "(GPT-2 124M on FineWeb-Edu, for GPUs); default cpu on every device, as it needs no download")
    add("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
        help="continue from the latest checkpoint in --out-dir, or from the checkpoint directory CKPT; "
             "its settings are kept unless a flag overrides them")
    g = p.add_argument_group("data and output")
    g.add_argument("--data", help="a prepared data directory (with meta.json), or a source for "
                                  "minigpt.data: stdlib, shakespeare, fineweb-edu, openwebtext, a text file/dir/glob")
    g.add_argument("--out-dir", help="where logs and checkpoints go (default: out)")
    g = p.add_argument_group("model")
    g.add_argument("--init", help="start from these weights (gpt2, gpt2-medium, ... or a from_pretrained "
                                  "path) instead of a random init")
    g.add_argument("--n-layer", type=int, help="transformer blocks")
    g.add_argument("--n-head", type=int, help="attention heads")
    g.add_argument("--n-embd", type=int, help="embedding width")
    g.add_argument("--block-size", type=int, help="tokens per training row (and the context of a new model)")
    g.add_argument("--dropout", type=float, help="dropout on embeddings and residual branches")
    g.add_argument("--attn-backend", choices=ATTN_BACKENDS, help="attention implementation (auto: triton on CUDA)")
    g.add_argument("--ln-backend", choices=LN_BACKENDS, help="LayerNorm implementation (auto: triton on CUDA)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--max-steps", type=int, help="optimizer steps; the LR schedule ends here")
    g.add_argument("--batch-size", type=int, help="rows per micro-batch, per process")
    g.add_argument("--total-batch-size", type=int,
                   help="tokens per optimizer step, across processes; must be a multiple of "
                        "batch-size * block-size * processes (gradient accumulation makes up the rest)")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--min-lr", type=float, help="final learning rate of the cosine decay (default: lr / 10)")
    g.add_argument("--warmup-steps", type=int, help="steps of linear warmup")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay of the matrices")
    g.add_argument("--beta1", type=float, help="AdamW beta1")
    g.add_argument("--beta2", type=float, help="AdamW beta2")
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm to this (0: no clipping)")
    g.add_argument("--seed", type=int, help="seed of the init, dropout and the data's epoch offsets")
    g = p.add_argument_group("evaluation, samples and checkpoints (an interval of 0: only at the end)")
    g.add_argument("--eval-interval", type=int, help="evaluate every this many steps")
    g.add_argument("--eval-steps", type=int, help="val batches (of total-batch-size tokens) per evaluation")
    g.add_argument("--sample-interval", type=int, help="print a sample every this many steps")
    g.add_argument("--sample-tokens", type=int, help="tokens per sample")
    g.add_argument("--sample-prompt", help="text the samples continue")
    g.add_argument("--ckpt-interval", type=int, help="write a checkpoint every this many steps")
    g.add_argument("--keep-checkpoints", type=int, help="keep the newest this many checkpoints (0: all)")
    g.add_argument("--stop-at-step", type=int,
                   help="stop with a checkpoint after this step, keeping the schedule of --max-steps "
                        "(split a run across jobs; continue with --resume)")
    g = p.add_argument_group("system")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (auto: CUDA if available)")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16"],
                   help="autocast precision (auto: bfloat16 on CUDA, float32 on CPU)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the model")
    g.add_argument("--peak-flops", type=float, help="peak FLOP/s of one device, for MFU when it is not in the table")
    g.add_argument("--wandb", action=argparse.BooleanOptionalAction, help="also log to Weights & Biases")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction,
                   help="also log to TensorBoard (in out-dir/tensorboard)")
    return p


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, Path | None, frozenset[str]]:
    """(config, checkpoint to resume or None, names of the settings given as flags)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"recipe"}
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    explicit = frozenset(overrides)
    recipe = args.recipe or "cpu"
    if args.resume is None:
        return make_config(recipe, overrides), None, explicit

    if args.resume == "latest":
        out_dir = Path(overrides.get("out_dir", TrainConfig.out_dir))
        ckpt = latest_checkpoint(out_dir) if out_dir.is_dir() else None
        if ckpt is None:
            raise TrainError(f"--resume: no checkpoint in {out_dir} (pass --out-dir, or --resume CKPT_DIR)")
    else:
        ckpt = Path(args.resume)
        if ckpt.is_dir() and not (ckpt / "train_state.json").exists() and latest_checkpoint(ckpt):
            ckpt = latest_checkpoint(ckpt)  # an out_dir was given: its latest checkpoint
    saved = dict(read_train_state(ckpt)["train_config"])
    if args.recipe is not None and args.recipe != saved.get("recipe"):
        raise TrainError(f"{ckpt} was trained with recipe {saved.get('recipe')!r}; --recipe {args.recipe} "
                         "cannot change that (override single flags instead)")
    saved["stop_at_step"] = None  # a stop belongs to the invocation that asked for it
    saved["out_dir"] = str(ckpt.parent)  # unless --out-dir says otherwise: go on where it was
    values = {**saved, **overrides}
    if "lr" in overrides and "min_lr" not in overrides:
        values["min_lr"] = None
    try:
        return TrainConfig.from_dict(values), ckpt, explicit
    except TypeError as e:
        raise CheckpointError(f"{ckpt}: the saved training config is not valid ({e})") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    master = int(os.environ.get("RANK", 0)) == 0
    trainer = None
    try:
        cfg, resume, explicit = resolve_config(args)
        trainer = Trainer(cfg, resume, explicit)
        return trainer.fit()
    except (TrainError, CheckpointError, DataError, TokenizerUnavailable) as e:
        if master:
            print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        if master:
            if trainer is None:
                print("error: interrupted before training started", file=sys.stderr)
            else:
                last = latest_checkpoint(Path(trainer.cfg.out_dir))
                print(f"error: interrupted without saving; the last checkpoint is {last}", file=sys.stderr)
        return 130
    finally:
        if trainer is not None:
            trainer.close()
        elif dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
