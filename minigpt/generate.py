"""Sampling from a GPT: prefill the prompt once, then decode one token at a time
against a KV cache, so each new token costs one position of compute rather than
the whole context again.

Three layers, each usable alone:
- `sample_next`: logits -> next token (greedy, temperature, top-k, top-p);
- `stream` / `generate`: token ids in, token ids out (a batch of equal-length prompts);
- `complete`: strings in, strings out, with several samples per prompt, prompts of
  different lengths, stop strings and streaming text.

`stream` is the readable path: one `model(token, cache)` per token. `fast=True` hands
the same job to `minigpt.decode.Decoder` (fixed-shape steps over a preallocated cache,
replayed as a CUDA graph on a GPU), which gives the same greedy tokens.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from minigpt.model import GPT, KVCache


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token for each row of logits (B, V). temperature 0 is greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Keep the smallest set of most likely tokens whose probability reaches top_p
        # (the most likely token is always kept).
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def check_length(model: GPT, prompt_len: int, max_new_tokens: int) -> None:
    block = model.config.block_size
    if prompt_len < 1:
        raise ValueError("the prompt is empty: give at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if prompt_len > block:
        raise ValueError(f"the prompt is {prompt_len} tokens, longer than the context window of {block}")
    if prompt_len + max_new_tokens > block:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context window of "
            f"{block}; ask for at most {block - prompt_len} new tokens"
        )


@torch.no_grad()
def stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    fast: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row of idx (B, T), one (B,) tensor per step.

    Rows that have produced eos_id keep producing it; the stream ends when every row
    has, or after max_new_tokens steps. fast=True decodes with minigpt.decode.Decoder.
    """
    B, T = idx.shape
    check_length(model, T, max_new_tokens)
    if max_new_tokens == 0:
        return
    if fast:
        from minigpt.decode import Decoder

        decoder = Decoder(model, B, T + max_new_tokens)
        yield from decoder.stream(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  generator=generator, eos_id=eos_id)
        return
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.config, B, T + max_new_tokens, device=idx.device, dtype=dtype)
    logits = model(idx, cache=cache)[:, -1]  # prefill: the whole prompt in one forward
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    for step in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            token = token.masked_fill(done, eos_id)
            done |= token == eos_id
        yield token
        if step == max_new_tokens - 1 or (eos_id is not None and bool(done.all())):
            return
        logits = model(token[:, None], cache=cache)[:, -1]  # decode: one position per step


def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    fast: bool = False,
) -> torch.Tensor:
    """idx (B, T) followed by up to max_new_tokens sampled tokens: (B, T + n).

    With eos_id, generation ends early once every row has produced it; rows that
    finished first are padded with eos_id. fast=True decodes with minigpt.decode.Decoder.
    """
    if fast:
        from minigpt.decode import Decoder

        check_length(model, idx.size(1), max_new_tokens)
        decoder = Decoder(model, idx.size(0), idx.size(1) + max_new_tokens)
        return decoder.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                generator=generator, eos_id=eos_id)
    tokens = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator, eos_id))
    return torch.cat([idx, torch.stack(tokens, dim=1)], dim=1) if tokens else idx.clone()


@torch.no_grad()
def generate_uncached(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding that recomputes the whole context every step: the reference
    that cached decoding must reproduce token for token."""
    check_length(model, idx.size(1), max_new_tokens)
    for _ in range(max_new_tokens):
        next_token = model(idx)[:, -1].argmax(dim=-1, keepdim=True)
        idx = torch.cat([idx, next_token], dim=1)
    return idx


# ----------------------------------------------------------------------------------------------
# Text in, text out


@dataclass
class Completion:
    prompt_index: int
    sample_index: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the generated text (prompt excluded), cut before any stop string
    finish_reason: str = "length"  # "length", "eot" or "stop"


class _Row:
    """Turns one row's tokens into text: whole UTF-8 characters only, cut at stop strings."""

    def __init__(self, completion: Completion, enc, stop: Sequence[str], on_text):
        self.c, self.enc, self.stop, self.on_text = completion, enc, stop, on_text
        self.buf = b""  # bytes of tokens not yet decoded into whole characters
        self.pending = ""  # decoded text held back: it may be the start of a stop string
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.done = False

    def emit(self, text: str) -> None:
        self.c.text += text
        if text and self.on_text is not None:
            self.on_text(self.c, text)

    def push(self, token: int, eot: int | None) -> None:
        if token == eot:
            self.finish("eot")
            return
        self.c.tokens.append(token)
        self.buf += self.enc.decode_single_token_bytes(token)
        try:
            self.pending += self.buf.decode("utf-8")
            self.buf = b""
        except UnicodeDecodeError:  # a character split across tokens: wait for the rest
            return
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.pending = self.pending[: min(hits)]
            self.finish("stop")
            return
        safe = len(self.pending) - self.hold
        if safe > 0:
            self.emit(self.pending[:safe])
            self.pending = self.pending[safe:]

    def finish(self, reason: str) -> None:
        if self.done:
            return
        self.pending += self.buf.decode("utf-8", errors="replace")
        self.buf = b""
        self.emit(self.pending)
        self.pending = ""
        self.c.finish_reason = reason
        self.done = True


def complete(
    model: GPT,
    enc,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stop_at_eot: bool = True,
    batch_size: int | None = None,
    on_text: Callable[[Completion, str], None] | None = None,
    fast: bool = False,
) -> list[Completion]:
    """Sample num_samples continuations of each prompt.

    Prompts of equal token length are decoded together in one batch (up to
    batch_size rows); on_text(completion, new_text) is called as text arrives.
    Returns the completions ordered by prompt, then sample. fast=True decodes with
    minigpt.decode.Decoder.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if any(s == "" for s in stop):
        raise ValueError("stop strings must not be empty")
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    eot = enc.eot_token if stop_at_eot else None
    encoded = [enc.encode(p, allowed_special={"<|endoftext|>"}) for p in prompts]
    for ids in encoded:
        check_length(model, len(ids), max_new_tokens)

    completions = [Completion(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    by_length: dict[int, list[Completion]] = {}
    for c in completions:
        by_length.setdefault(len(encoded[c.prompt_index]), []).append(c)
    rows_per_batch = batch_size or len(completions)
    for group in by_length.values():
        for start in range(0, len(group), rows_per_batch):
            batch = group[start : start + rows_per_batch]
            idx = torch.tensor([encoded[c.prompt_index] for c in batch], dtype=torch.long, device=device)
            rows = [_Row(c, enc, stop, on_text) for c in batch]
            for token in stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator, eot, fast):
                for row, t in zip(rows, token.tolist()):
                    if not row.done:
                        row.push(t, eot)
                if all(row.done for row in rows):
                    break
            for row in rows:
                row.finish(row.c.finish_reason)
    return completions
