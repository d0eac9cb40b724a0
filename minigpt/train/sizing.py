"""A budget run that sizes itself: the model, tokenizer, context, batch and learning rate from the budget.

`train.py --time-budget T` (or `--token-budget D`) without the model's shape asks this module what
to train. Three parts, kept apart:

- `choose(...)`: the rule, a pure function of the budget, the corpus (`Corpus`) and the machine's
  measured training speed (`Speed`), returning a `Sizing`. The constants below come from
  bench/push.py's study (bench/results/push-study.json) and A/Bs (push-ab.json); where a value is
  an assumption rather than a measurement, its comment says so.
- `probe(...)`: a few training steps of a candidate shape on this machine, timed (`Speed`).
- `size_run(...)`: what train.py calls: reads the corpus, probes, chooses, and returns the run's
  TrainConfig with the choice filled in where the user gave no flag (`Sizing.why` is the one line
  train.py prints; `TrainConfig.sizing` records the choice, and a resumed run keeps it).

A sized --time-budget is the wall clock from train.py's start to its exit: start-up, data
preparation (cached after the first run), the probe, evaluations and checkpoints come out of it,
and `fit_to_deadline` gives the training steps what is left once the run is set up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from minigpt.data.corpus import default_data_dir, load_meta, prepare, source_bytes
from minigpt.device import resolve_device
from minigpt.model.backends import set_backends
from minigpt.model.config import GPTConfig
from minigpt.model.model import GPT
from minigpt.tokenizers import parse_tokenizer_kind
from minigpt.train.config import ConfigError, TrainConfig
from minigpt.train.flops import flops_per_token
from minigpt.train.optim import configure_optimizer

# --- the rule's constants --------------------------------------------------------------------------
# Compute-optimal size: N_opt = K * C^A parameters for C training FLOPs (flops_per_token x tokens),
# the IsoFLOP fit of bench/results/push-study.json (5 budgets of 30-600 s, r^2 0.994). The previous
# fit, over its 30-120 s budgets only (0.209 * C^0.495), predicted the 300 s and 600 s optima within
# 6% (the study's "rule" table).
COMPUTE_OPTIMAL_K = 0.0504
COMPUTE_OPTIMAL_A = 0.543
# Tokens per parameter at that study's five optima (6.2, 6.3, 4.5, 5.4, 4.5: their mean): a token
# budget of D tokens trains D / TOKENS_PER_PARAM parameters.
TOKENS_PER_PARAM = 5.4
# Never more parameters than the tokens seen can train: at least this many tokens per parameter,
# the fewest of any run on the study's frontier (4 x 160 at 600 s: 2.1).
MIN_TOKENS_PER_PARAM = 2.1
# Repeated data counts up to this many epochs (an assumption from Muennighoff et al. 2023, "Scaling
# data-constrained language models": up to ~4 epochs are worth nearly as much as new text).
MAX_EPOCHS = 4
# Tokenizer: a BPE of about sqrt(train bytes) / 2 tokens, as a power of two in [512, 32768]: 512 on
# tinyshakespeare's 1 MB, where bpe:512 beat characters by 6% and GPT-2's 50257 tokens by 5%
# (push-ab.json). The growth with the corpus is an assumption. A corpus of unknown size (streamed)
# keeps GPT-2's tokenizer.
MIN_VOCAB, MAX_VOCAB = 512, 32768
# ...and no larger than leaves the token embedding at most this share of the parameters (the
# measured winners had 8-25% there, GPT-2's vocabulary at 4 x 128, which lost, 88%).
MAX_EMBEDDING_SHARE = 1 / 3
# Context: 32 tokens up to 1M parameters (bpe:512 with 32 tokens, about nanoGPT's 64 characters,
# won; 256 characters lost: push-ab.json), doubling every 2.7x in parameters to GPT-2's 1024 at
# 124M (the doubling rate between those two points is an interpolation, not a measurement).
MIN_CONTEXT, MAX_CONTEXT, CONTEXT_DOUBLING = 32, 1024, 2.7
# Batch: at least 12 rows (12 beat 32 at equal wall clock: push-ab.json), and enough rows that the
# run takes about STEPS steps: GPT-2's recipe is 19073 steps of 2^19 tokens (the RECIPES entry).
MIN_ROWS, STEPS = 12, 20_000
MAX_MICRO_TOKENS = 2**16  # rows x context per micro-batch; gradient accumulation makes up the rest
# Learning rate (the AdamW groups; Muon's is MUON_LR): 3e-3 up to 0.86M parameters (it beat 1e-3:
# push-ab.json), falling as a power law to GPT-2's 6e-4 at 124M (an interpolation).
LR_SMALL, LR_SMALL_AT, LR_LARGE, LR_LARGE_AT = 3e-3, 0.86e6, 6e-4, 124e6
MUON_LR = 0.02  # bench/push.py's recipe; Muon, wsd and beta2 0.99 all won or came with it there
WARMUP_SHARE = 0.05  # of the planned steps (cpu-push: 100 of ~2000)
# Shape: depth L and width about 32 L (the study's 2 x 64, 3 x 96; nanoGPT's 4 x 128), widths in
# steps of 16 with heads of 32 (16 where 32 does not divide), from 512 wide in steps of 64 with
# heads of 64 (GPT-2's).
ASPECT, MAX_LAYERS = 32, 48
# The run's own time: the evaluations (5 of them: the start, each quarter) take this share of a
# time budget, and a checkpoint is written at each.
EVALS, EVAL_SHARE = 5, 0.03
CLOSE_S = 1.5  # the closing sample, plots and summary, seconds (measured: about 1 s on a 2-core CPU)
CKPT_BYTES_PER_S = 100e6  # a checkpoint's write speed (weights + optimizer state), a cautious guess
MIN_STEPS, MIN_TRAIN_S = 20, 1.0  # fewer steps or seconds of them than this is no training run: an error
PROBE_STEPS = 3  # timed steps of the probe, after one untimed


class SizingError(ConfigError):
    """A budget too small to train anything."""


@dataclass(frozen=True)
class Corpus:
    """What the rule knows about the training text."""

    train_bytes: int | None  # UTF-8 bytes of the train split; None: unknown (a streamed corpus)
    train_tokens: int | None = None  # exact, when the data is prepared with the run's tokenizer
    tokenizer: str | None = None  # fixed by the user or by a prepared --data directory; None: the rule picks
    vocab_size: int | None = None  # that tokenizer's size, when known
    prepared: tuple[int, ...] = ()  # bpe:N sizes already prepared for this source (reused if close)
    val_tokens: int | None = None  # exact, with train_tokens: a batch must fit in the val split


@dataclass(frozen=True)
class Speed:
    """What the probe measured on this machine."""

    flops_per_s: float  # training FLOP/s (flops_per_token x tokens / step time)
    eval_tokens_per_s: float  # tokens/s of a forward pass without gradients
    probed: str = ""  # the shape probed, for the record


@dataclass(frozen=True)
class Sizing:
    """The rule's choice: the TrainConfig values of `settings()`, the plan behind them, and why."""

    tokenizer: str
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    total_batch_size: int
    lr: float
    warmup_steps: int
    eval_interval: int
    eval_steps: int
    params: int
    tokens: int  # planned tokens to train on
    steps: int  # planned optimizer steps
    flops: float  # planned training FLOPs
    train_s: float | None  # planned seconds of training steps (time budgets)
    reserve_s: float  # planned seconds of evaluations, checkpoints and the close
    why: str

    def settings(self) -> dict:
        """The TrainConfig values the rule sets (train.py keeps the user's flags over them)."""
        values = dict(
            tokenizer=self.tokenizer,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            block_size=self.block_size,
            batch_size=self.batch_size,
            total_batch_size=self.total_batch_size,
            lr=self.lr,
            min_lr=self.lr / 10,
            warmup_steps=self.warmup_steps,
            schedule="wsd",
            decay_frac=0.2,
            optimizer="muon",
            muon_lr=MUON_LR,
            beta2=0.99,
            bias=False,
            eval_interval=self.eval_interval,
            eval_steps=self.eval_steps,
            sample_interval=0,
            ckpt_interval=self.eval_interval,
        )
        if self.train_s is not None:
            values["time_budget"] = self.train_s
        return values

    def record(self) -> dict:
        return dataclasses.asdict(self)


# --- the rule --------------------------------------------------------------------------------------


def heads_for(width: int) -> int:
    """Heads of 64 from 512 wide, else of 32, else of 16, else 1 head."""
    for size in (64, 32, 16) if width >= 512 else (32, 16):
        if width % size == 0:
            return width // size
    return 1


def width_step(width: float) -> int:
    return 64 if width >= 512 else 16


def _round_width(width: float) -> int:
    step = width_step(width)
    return max(step, int(round(width / step)) * step)


def model_config(n_layer: int, n_embd: int, n_head: int, vocab_size: int, block_size: int) -> GPTConfig:
    """The GPTConfig of a sized model: GPT-2's with no biases (push-ab.json: biases lost)."""
    return GPTConfig(
        block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, bias=False
    )


def context_for(params: float, train_tokens: float | None) -> int:
    """Tokens of context for a model of `params`, and at most an eighth of the train tokens."""
    doublings = max(0.0, math.log(params / 1e6) / math.log(CONTEXT_DOUBLING)) if params > 1e6 else 0.0
    context = min(MAX_CONTEXT, MIN_CONTEXT * 2 ** round(doublings))
    while train_tokens is not None and context > 8 and context * 8 > train_tokens:
        context //= 2
    return context


def lr_for(params: float) -> float:
    if params <= LR_SMALL_AT:
        return LR_SMALL
    slope = math.log(LR_LARGE / LR_SMALL) / math.log(LR_LARGE_AT / LR_SMALL_AT)
    return max(LR_LARGE, LR_SMALL * (params / LR_SMALL_AT) ** slope)


def vocab_for_corpus(train_bytes: int | None) -> int | None:
    """The BPE size the corpus alone asks for; None (GPT-2's) for a corpus of unknown size."""
    if train_bytes is None:
        return None
    target = math.sqrt(max(train_bytes, 1)) / 2
    return min(MAX_VOCAB, max(MIN_VOCAB, 2 ** round(math.log2(max(target, 1)))))


def estimate_tokens(train_bytes: int | None, vocab_size: int) -> float | None:
    """Train tokens of a corpus under a tokenizer of that size, roughly (2 bytes a token for 512 ids,
    as on tinyshakespeare, up to 4 for GPT-2's 50257, an assumption; only the epochs cap uses it)."""
    if train_bytes is None:
        return None
    per_token = 2.0 + 2.0 * max(0.0, math.log(vocab_size / 512)) / math.log(50257 / 512)
    return train_bytes / per_token


def candidate_shapes(given: dict) -> list[tuple[int, int, int]]:
    """(n_layer, n_embd, n_head) the rule picks from, honouring the given ones."""
    layers = [given["n_layer"]] if "n_layer" in given else range(1, MAX_LAYERS + 1)
    shapes = []
    for n_layer in layers:
        if "n_embd" in given:
            widths = [given["n_embd"]]
        elif "n_layer" in given:  # any width: from 16 up
            widths = sorted({_round_width(w) for w in (16 * 1.08**i for i in range(80))})
        else:
            widths = sorted({_round_width(ASPECT * n_layer * f) for f in (0.75, 0.875, 1.0, 1.125, 1.25)})
        for n_embd in widths:
            n_head = given.get("n_head") or heads_for(n_embd)
            if n_embd % n_head == 0:
                shapes.append((n_layer, n_embd, n_head))
    return shapes


@dataclass(frozen=True)
class _Plan:
    n_layer: int
    n_embd: int
    n_head: int
    params: int
    block_size: int
    flops_per_token: float
    tokens: float  # tokens it would see in the budget
    fits: bool  # the tokens it sees (the corpus's, repeats counted) can train its parameters
    corpus_bound: bool  # the corpus, not the budget, limits the tokens it learns from


def _plan(shape, vocab, budget_tokens, train_s, speed, unique_tokens, given) -> _Plan:
    n_layer, n_embd, n_head = shape
    params = model_config(n_layer, n_embd, n_head, vocab, MIN_CONTEXT).num_params()
    block = given.get("block_size") or context_for(params, unique_tokens)
    config = model_config(n_layer, n_embd, n_head, vocab, block)
    params, fpt = config.num_params(), flops_per_token(config, block)
    tokens = budget_tokens if budget_tokens is not None else speed.flops_per_s * train_s / fpt
    seen = tokens if unique_tokens is None else min(tokens, MAX_EPOCHS * unique_tokens)
    fits = seen >= MIN_TOKENS_PER_PARAM * params
    return _Plan(n_layer, n_embd, n_head, params, block, fpt, tokens, fits, seen < tokens)


def _best_plan(vocab, budget_tokens, train_s, speed, unique_tokens, given) -> tuple[_Plan, float, str]:
    """(plan, the compute-optimal parameters it aims at, what capped its size or "")."""
    plans = [_plan(s, vocab, budget_tokens, train_s, speed, unique_tokens, given) for s in candidate_shapes(given)]
    plans.sort(key=lambda p: p.params)

    # The target: compute-optimal for the run's FLOPs (the measured rate x the seconds); a token
    # budget trains TOKENS_PER_PARAM tokens a parameter.
    def target(p: _Plan) -> float:
        if budget_tokens is not None:
            return budget_tokens / TOKENS_PER_PARAM
        return COMPUTE_OPTIMAL_K * (p.tokens * p.flops_per_token) ** COMPUTE_OPTIMAL_A

    best = min(plans, key=lambda p: abs(math.log(p.params / target(p))))
    capped = ""
    if not best.fits:
        fitting = [p for p in plans if p.fits and p.params <= best.params]
        capped = "the corpus" if best.corpus_bound else "the tokens it sees"
        best = fitting[-1] if fitting else plans[0]
    return best, target(best), capped


def choose(
    corpus: Corpus,
    speed: Speed,
    *,
    time_budget: float | None = None,
    token_budget: int | None = None,
    setup_s: float = 0.0,
    given: dict | None = None,
) -> Sizing:
    """The run a budget buys: a pure function of the budget, the corpus and the measured speed.

    time_budget: wall-clock seconds, of which setup_s are spent before training (start-up, data,
    probe); token_budget: tokens to train on. `given` holds the user's flags among n_layer, n_head,
    n_embd, block_size, batch_size, tokenizer (with corpus.vocab_size): the rule sizes around them.
    SizingError (one line) when the budget cannot train the smallest model MIN_STEPS steps.
    """
    given = dict(given or {})
    if (time_budget is None) == (token_budget is None):
        raise ConfigError("size a run by a time budget or a token budget, one of them")
    fixed_vocab = corpus.vocab_size if corpus.tokenizer is not None else None
    if corpus.tokenizer is not None and fixed_vocab is None:
        raise ConfigError(f"the size of the {corpus.tokenizer} tokenizer is needed to size a run")

    # Time left for the steps, first with the smallest checkpoint; corrected for the chosen one below.
    def train_seconds(params: int) -> float | None:
        if time_budget is None:
            return None
        return time_budget * (1 - EVAL_SHARE) - setup_s - CLOSE_S - EVALS * _ckpt_s(params)

    def unique_tokens(vocab: int) -> float | None:
        if corpus.train_tokens is not None and (fixed_vocab is not None or vocab == corpus.vocab_size):
            return corpus.train_tokens
        return estimate_tokens(corpus.train_bytes, vocab)

    def sized(vocab: int) -> tuple[_Plan, float, str, float | None]:
        # (planned with at least a millisecond of steps: too little time is an error further down)
        train_s = train_seconds(0)
        plan, target, capped = _best_plan(vocab, token_budget, _at_least(train_s), speed, unique_tokens(vocab), given)
        if time_budget is not None:  # once more with the chosen model's checkpoint time
            train_s = train_seconds(plan.params)
            plan, target, capped = _best_plan(
                vocab, token_budget, _at_least(train_s), speed, unique_tokens(vocab), given
            )
        return plan, target, capped, train_s

    # The tokenizer: the largest power of two the corpus asks for whose embedding stays under
    # MAX_EMBEDDING_SHARE of the model it is sized with (else the smallest); a bpe:N prepared
    # already is taken instead of one within a factor of 2 of it.
    corpus_vocab = vocab_for_corpus(corpus.train_bytes)
    vocab_note = ""
    if fixed_vocab is not None:
        tokenizer, vocab = corpus.tokenizer, fixed_vocab
        plan, target, capped, train_s = sized(vocab)
        vocab_note = "given"
    elif corpus_vocab is None:
        tokenizer, vocab = "gpt2", 50257
        plan, target, capped, train_s = sized(vocab)
        vocab_note = "corpus of unknown size"
    else:
        vocab = corpus_vocab
        while True:
            plan, target, capped, train_s = sized(vocab)
            if vocab <= MIN_VOCAB or vocab * plan.n_embd <= MAX_EMBEDDING_SHARE * plan.params:
                break
            vocab //= 2
        near = [p for p in corpus.prepared if vocab / 2 <= p <= min(2 * vocab, corpus_vocab) and p != vocab]
        vocab_note = f"corpus {corpus.train_bytes / 1e6:.2g} MB"
        if near:
            vocab = min(near, key=lambda p: abs(math.log(p / vocab)))
            plan, target, capped, train_s = sized(vocab)
            vocab_note += ", prepared already"
        tokenizer = f"bpe:{vocab}"

    block = plan.block_size
    rows = given.get("batch_size")
    if rows is None:
        rows = max(MIN_ROWS, round(plan.tokens / (STEPS * block)))
    micro = min(rows, max(1, MAX_MICRO_TOKENS // block)) if "batch_size" not in given else rows
    if corpus.val_tokens is not None and "batch_size" not in given:  # a micro-batch must fit in val
        while "block_size" not in given and block > 8 and block + 1 > corpus.val_tokens:
            block //= 2
        micro = max(1, min(micro, (corpus.val_tokens - 1) // block))
    rows = max(micro, rows // micro * micro)
    step_tokens = rows * block
    steps = int(plan.tokens // step_tokens)
    if (train_s is not None and train_s < MIN_TRAIN_S) or steps < MIN_STEPS:
        raise SizingError(_too_small(time_budget, token_budget, setup_s, step_tokens, plan, speed))

    eval_interval = max(1, steps // (EVALS - 1))
    eval_steps = 20
    if time_budget is not None:  # the evaluations share EVAL_SHARE of the budget
        per_eval = EVAL_SHARE * time_budget / EVALS
        eval_steps = int(min(200, max(1, per_eval * speed.eval_tokens_per_s / step_tokens)))
    eval_s = EVALS * eval_steps * step_tokens / speed.eval_tokens_per_s
    reserve = eval_s + EVALS * _ckpt_s(plan.params) + CLOSE_S
    params, flops = plan.params, plan.tokens * plan.flops_per_token
    unique = unique_tokens(vocab)
    epochs = f", {plan.tokens / unique:.0f} epochs" if unique and plan.tokens > MAX_EPOCHS * unique else ""
    why = (
        f"sized for {_budget_text(time_budget, token_budget)}: {plan.n_layer} layers x {plan.n_embd} wide "
        f"({params / 1e6:.2f}M parameters; compute-optimal {target / 1e6:.2f}M for {flops:.2g} FLOPs"
        + (f", capped by {capped}" if capped else "")
        + (f", {speed.flops_per_s / 1e9:.3g} GFLOP/s measured" if time_budget is not None else "")
        + f"), {tokenizer} ({vocab_note}), context {block}, {rows} rows x {steps:,} steps "
        f"({plan.tokens / 1e6:.3g}M tokens{epochs}), lr {lr_for(params):.1e}, Muon, wsd"
        + (f"; {train_s:.0f} s of training steps, {setup_s:.1f} s set-up" if train_s is not None else "")
    )
    return Sizing(
        tokenizer=tokenizer,
        vocab_size=vocab,
        n_layer=plan.n_layer,
        n_head=plan.n_head,
        n_embd=plan.n_embd,
        block_size=block,
        batch_size=micro,
        total_batch_size=rows * block,
        lr=lr_for(params),
        warmup_steps=max(1, round(WARMUP_SHARE * steps)),
        eval_interval=eval_interval,
        eval_steps=eval_steps,
        params=params,
        tokens=int(plan.tokens),
        steps=steps,
        flops=flops,
        train_s=None if train_s is None else round(train_s, 1),
        reserve_s=round(reserve, 2),
        why=why,
    )


def _at_least(seconds: float | None) -> float | None:
    return None if seconds is None else max(seconds, 1e-3)


def _ckpt_s(params: int) -> float:
    """Seconds to write a checkpoint: weights and two moments in float32, plus a fixed cost."""
    return 0.05 + 12 * params / CKPT_BYTES_PER_S


def _budget_text(time_budget: float | None, token_budget: int | None) -> str:
    return f"{time_budget:g} s" if time_budget is not None else f"{token_budget:,} tokens"


def _too_small(time_budget, token_budget, setup_s, step_tokens, plan, speed) -> str:
    need = MIN_STEPS * step_tokens
    smallest = f"{plan.n_layer} x {plan.n_embd}"
    if token_budget is not None:
        return f"--token-budget {token_budget:,} is too small to train anything: give at least {need:,} tokens"
    per_s = speed.flops_per_s / plan.flops_per_token
    enough = setup_s + CLOSE_S + EVALS * _ckpt_s(plan.params) + max(MIN_TRAIN_S, need / per_s)
    least = math.ceil(enough / (1 - EVAL_SHARE))
    return (
        f"--time-budget {time_budget:g} is too small to train anything: set-up takes {setup_s:.1f} s and "
        f"{MIN_STEPS} steps of the smallest model ({smallest}) {need / per_s:.1f} s more; give at least {least} s"
    )


# --- the probe -------------------------------------------------------------------------------------


def probe(
    n_layer: int,
    n_embd: int,
    n_head: int,
    vocab_size: int,
    block_size: int,
    rows: int,
    device: torch.device,
    dtype: str = "auto",
    steps: int = PROBE_STEPS,
) -> Speed:
    """Time a few training steps (Muon + AdamW, as a sized run trains) and forward passes of one
    shape on random tokens: the machine's FLOP/s at it. The first step of each is not timed."""
    config = model_config(n_layer, n_embd, n_head, vocab_size, block_size)
    model = set_backends(GPT(config).to(device))
    settings = TrainConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, optimizer="muon")
    optimizer = configure_optimizer(model, settings, device.type)
    bf16 = device.type == "cuda" and dtype != "float32"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, (rows, block_size + 1), generator=gen).to(device)
    idx, targets = x[:, :-1], x[:, 1:]

    def train_step() -> None:
        with autocast:
            loss = model(idx, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_step() -> None:
        with autocast:
            model(idx, targets)

    def timed(step) -> float:
        step()
        _sync(device)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    train_s = timed(train_step)
    model.eval()
    eval_s = timed(eval_step)
    tokens = rows * block_size
    return Speed(
        flops_per_s=flops_per_token(config, block_size) * tokens / train_s,
        eval_tokens_per_s=tokens / eval_s,
        probed=f"{n_layer} x {n_embd}, {rows} x {block_size} tokens: {train_s * 1e3:.1f} ms/step",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- what train.py calls ---------------------------------------------------------------------------

SHAPE = ("n_layer", "n_embd")  # given both, the model is the user's: train.py does not size the run
GIVEN = ("n_layer", "n_head", "n_embd", "block_size", "batch_size")


def applies(cfg: TrainConfig, explicit: frozenset[str], recipe: str | None, resumed: bool) -> bool:
    """True if train.py sizes this run: a budget, a new model of no given shape, the default recipe,
    one process (a probe on one rank would size the others' runs)."""
    return (
        cfg.budgeted
        and not resumed
        and recipe is None
        and cfg.init is None
        and cfg.sft is None
        and not all(k in explicit for k in SHAPE)
        and int(os.environ.get("WORLD_SIZE", "1")) == 1
    )


def corpus_of(cfg: TrainConfig, explicit: frozenset[str]) -> Corpus:
    """The corpus facts the rule needs, read without preparing anything."""
    path = Path(cfg.data).expanduser()
    if (path / "meta.json").is_file():  # a prepared directory: its tokenizer is the run's
        meta = load_meta(path)
        train = meta["splits"]["train"]
        val = meta["splits"]["val"]["tokens"]
        return Corpus(train["bytes"], train["tokens"], meta.get("tokenizer", "gpt2"), meta["vocab_size"], (), val)
    train_bytes = source_bytes(cfg.data)
    if train_bytes is not None:
        train_bytes = int(train_bytes * 0.95)  # minigpt.data.corpus's default split holds out 5%
    prepared = tuple(
        v for v in (2**i for i in range(9, 16)) if (default_data_dir(cfg.data, f"bpe:{v}") / "meta.json").is_file()
    )
    if "tokenizer" in explicit:
        name, size = parse_tokenizer_kind(cfg.tokenizer)
        vocab = {"gpt2": 50257, "char": 322}.get(name, size)  # char: ASCII's 65-odd characters + 257
        return Corpus(train_bytes, None, cfg.tokenizer, vocab, prepared)
    if vocab_for_corpus(train_bytes) == MIN_VOCAB:  # a small corpus: its tokens counted (and cached)
        out = default_data_dir(cfg.data, f"bpe:{MIN_VOCAB}")
        meta = prepare(cfg.data, out, tokenizer=f"bpe:{MIN_VOCAB}")
        train, val = meta["splits"]["train"], meta["splits"]["val"]
        return Corpus(train["bytes"], train["tokens"], None, MIN_VOCAB, prepared, val["tokens"])
    return Corpus(train_bytes, None, None, None, prepared)


def size_run(cfg: TrainConfig, explicit: frozenset[str], started: float) -> tuple[TrainConfig, Sizing]:
    """The run's config with the rule's choice where no flag was given, and the choice.

    `started` is time.monotonic() at train.py's start. The probe runs twice at most: at the shape
    a first guess of the speed gives, then at the chosen shape if that differs."""
    corpus = corpus_of(cfg, explicit)
    try:
        device = resolve_device(cfg.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    given = {k: getattr(cfg, k) for k in GIVEN if k in explicit}
    speed = Speed(flops_per_s=2e10, eval_tokens_per_s=1e5)  # a first guess: one CPU thread
    probed: set[tuple] = set()
    for _ in range(2):
        setup = time.monotonic() - started
        choice = choose(
            corpus, speed, time_budget=cfg.time_budget, token_budget=cfg.token_budget, setup_s=setup, given=given
        )
        shape = (choice.n_layer, choice.n_embd, choice.n_head, choice.vocab_size, choice.block_size, choice.batch_size)
        if shape in probed:
            break
        probed.add(shape)
        speed = probe(*shape, device=device, dtype=cfg.dtype)
    setup = time.monotonic() - started
    choice = choose(
        corpus, speed, time_budget=cfg.time_budget, token_budget=cfg.token_budget, setup_s=setup, given=given
    )
    values = {k: v for k, v in choice.settings().items() if k not in explicit}
    if "lr" in explicit:
        values.pop("min_lr", None)
    if choice.train_s is not None:  # the user's budget is the wall clock; the steps get what is left
        values["time_budget"] = choice.train_s
    record = {**choice.record(), "budget_s": cfg.time_budget, "probe": speed.probed}
    return dataclasses.replace(cfg, **values, sizing=record), choice


def fit_to_deadline(cfg: TrainConfig, deadline: float, now: float | None = None) -> TrainConfig:
    """A sized time-budget run, set up: its training steps get what is left of the wall clock once
    the evaluations, checkpoints and close are reserved (cfg.sizing["reserve_s"]); at least half
    the budget, so a first run that spent most of it preparing the data still trains."""
    now = time.monotonic() if now is None else now
    budget = cfg.sizing["budget_s"]
    left = deadline - now - cfg.sizing["reserve_s"]
    train_s = round(max(left, budget / 2), 1)
    return dataclasses.replace(cfg, time_budget=train_s, sizing={**cfg.sizing, "train_s": train_s})
