"""The one scoring operation everything in minigpt.eval.evaluate is built on, and its inputs.

`score_rows` gives the log-likelihood of the last n tokens of each of many token rows,
batched: rows sorted by length, padded on the right, one forward per batch. Causal attention
keeps the padding out of every real position, so batching does not change a score; only the
scored positions get logits (`scored_logits`) and a softmax.

Context and continuation are tokenized the way lm-evaluation-harness does it (`encode_pair`);
`rolling_rows` cuts a long text into windows that predict each token once.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from minigpt.eval.tasks import TaskError
from minigpt.model.model import GPT
from minigpt.tokenizers import Tokenizer

# ----------------------------------------------------------------------------------------------
# Tokenizing context + continuation


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    # "<|endoftext|>" written in a text is the end-of-text token, as Hugging Face's tokenizer reads it.
    return tokenizer.encode(text, allow_special=True)


def start_id(tokenizer: Tokenizer) -> int:
    """The id a text is conditioned on when nothing comes before it: the end-of-text id."""
    if tokenizer.eot_id is None:
        raise TaskError(f"the {tokenizer.kind} tokenizer has no end-of-text id to condition a text's first token on")
    return tokenizer.eot_id


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens), split as lm-evaluation-harness splits them."""
    if context == "":
        cont = encode(tokenizer, continuation)
        # Conditioned on <|endoftext|>; a continuation that starts with it is conditioned on itself.
        eot = tokenizer.eot_id
        return (cont[:1], cont[1:]) if cont and cont[0] == eot else ([start_id(tokenizer)], cont)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    return ctx, whole[len(ctx) :]


# ----------------------------------------------------------------------------------------------
# The one scoring operation


@dataclass(frozen=True)
class Row:
    """Score the last `n` of `tokens` (the model sees all but the last token)."""

    tokens: list[int]
    n: int


@dataclass(frozen=True)
class Score:
    logprob: float  # sum of the n tokens' log-probabilities (natural log)
    greedy: bool  # whether each of them is the argmax given what precedes it


def fit_window(context: list[int], continuation: list[int], block_size: int, where: str = "") -> tuple[Row, bool]:
    """The row scoring continuation after context, cut from the left to fit the window;
    and whether it was cut."""
    if not continuation:
        raise TaskError(f"{where or 'a request'}: the continuation is empty after tokenization")
    if len(continuation) > block_size:
        raise TaskError(
            f"{where or 'a request'}: the continuation alone is {len(continuation)} tokens, "
            f"longer than the model's context window of {block_size}"
        )
    tokens = context + continuation
    return Row(tokens[-(block_size + 1) :], len(continuation)), len(tokens) > block_size + 1


def scored_logits(model, idx: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """model(idx)[b, t]: the logits (N, vocab) at N positions of idx (B, T).

    For minigpt's GPT the lm_head multiplies only those positions' hidden states: a
    multiple-choice row mostly holds context, and for a small model the 50257-wide lm_head is
    most of the work of a forward. Any other module is called whole.
    """
    if isinstance(model, GPT):
        x = model.hidden_states(idx)[b, t]  # (N, C)
        return model.head(x)[:, : model.config.vocab_size]
    return model(idx)[b, t]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_rows(
    model, rows: Sequence[Row], batch_size: int = 16, progress: bool = False, desc: str | None = None
) -> list[Score]:
    """Log-likelihood of the last n tokens of every row, batch_size rows per forward."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    block_size = model.config.block_size
    for r in rows:
        if not 1 <= r.n < len(r.tokens) <= block_size + 1:
            raise ValueError(f"a row of {len(r.tokens)} tokens scoring {r.n} does not fit a window of {block_size}")
    device = _device(model)
    # Longest first: rows of a batch have similar lengths (little padding), and a batch too big
    # for memory fails at once rather than at the end.
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
    scores: list[Score | None] = [None] * len(rows)
    bar = tqdm(total=len(rows), desc=desc, disable=not progress, file=sys.stderr, leave=False)
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start : start + batch_size]]
        T = max(len(r.tokens) for r in batch) - 1
        idx = torch.zeros(len(batch), T, dtype=torch.long)
        b, t, target = [], [], []
        for j, r in enumerate(batch):
            L = len(r.tokens) - 1
            idx[j, :L] = torch.tensor(r.tokens[:-1])
            b += [j] * r.n
            t += range(L - r.n, L)
            target += r.tokens[-r.n :]
        # Only the scored positions get logits and go through the softmax, in fp32.
        picked = scored_logits(
            model, idx.to(device), torch.tensor(b, device=device), torch.tensor(t, device=device)
        ).float()  # (N, vocab)
        target_t = torch.tensor(target, device=device)
        logp = picked.log_softmax(dim=-1).gather(1, target_t[:, None]).squeeze(1)
        hit = picked.argmax(dim=-1) == target_t
        for j, (lp, g) in enumerate(
            zip(logp.double().cpu().split([r.n for r in batch]), hit.cpu().split([r.n for r in batch]), strict=True)
        ):
            scores[order[start + j]] = Score(lp.sum().item(), bool(g.all()))
        bar.update(len(batch))
    bar.close()
    return scores  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Rows of a long text


def safe_exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf  # a perplexity too large for a float


def rolling_rows(tokens: Sequence[int], window: int, stride: int) -> list[Row]:
    """Rows that predict tokens[1:] once each: the first `window` of them with all the context
    there is, then `stride` new ones per row, each with `window` tokens of input."""
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}")
    tokens = list(tokens)
    last = len(tokens) - 1  # the predicted positions are 1..last
    done = min(window, last)
    rows = [Row(tokens[: done + 1], done)] if done else []
    while done < last:
        end = min(done + stride, last)
        rows.append(Row(tokens[end - window : end + 1], end - done))
        done = end
    return rows
