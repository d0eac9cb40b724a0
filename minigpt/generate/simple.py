"""Sampling from a GPT: prefill the prompt once, then decode one token at a time
against a KV cache, so each new token costs one position of compute rather than
the whole context again.

Two layers, each usable alone:
- `stream` / `generate`: token ids in, token ids out (a batch of equal-length prompts);
- `complete`: strings in, strings out, with several samples per prompt, prompts of
  different lengths, stop strings and streaming text.

`stream` is the readable path: one `model(token, cache=cache)` per token. Given a
`decoder_mode` ("auto", "eager", "static" or "graph"), the same job goes to
`minigpt.generate.decoder.Decoder` in that mode (decoding state kept in device buffers; on a GPU
fixed-shape steps replayed as a CUDA graph), which gives the same greedy tokens.
How tokens are chosen is one `SamplingSettings` (minigpt.generate.sampling: temperature, top_k,
top_p, generator), given as `sampling=` or as those keyword arguments (`temperature=0`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from minigpt.generate.decoder import Decoder
from minigpt.generate.sampling import SamplingSettings, check_ids, check_length
from minigpt.model.model import GPT, KVCache
from minigpt.tokenizers import TextStream, Tokenizer

# Rows decoded together by `complete` unless batch_size says otherwise. A decode step costs about the same for 1
# row as for a few dozen on a CPU (it reads every weight once), so batching pays up to about here; beyond it a
# batch only holds more memory (every row keeps a KV cache and a row of logits) for no more speed
# (--num-samples 10000 in one batch grew by ~1 MB a sample and ran no faster).
DEFAULT_BATCH_SIZE = 32


@torch.no_grad()
def stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    sampling: SamplingSettings | None = None,
    *,
    eos_id: int | None = None,
    decoder_mode: str | None = None,
    **fields,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row of idx (B, T), one (B,) tensor per step.

    Rows that have produced eos_id keep producing it; the stream ends when every row
    has, or after max_new_tokens steps. decoder_mode: decode with a minigpt.generate.decoder.Decoder
    in that mode instead of the loop below. idx must hold ids below model.config.vocab_size
    (a ValueError otherwise). sampling, or its fields as keywords (temperature=0, top_k=40, ...):
    how tokens are chosen (SamplingSettings; the defaults sample at temperature 1).
    """
    sampling = SamplingSettings.of(sampling, **fields)
    check_ids(idx, model.config.vocab_size)
    B, T = idx.shape
    check_length(model.config.block_size, T, max_new_tokens)
    if max_new_tokens == 0:
        return
    if decoder_mode is not None:
        decoder = Decoder(model, B, T + max_new_tokens, mode=decoder_mode)
        yield from decoder.stream(idx, max_new_tokens, sampling, eos_id=eos_id)
        return
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.config, B, T + max_new_tokens, device=idx.device, dtype=dtype)
    logits = model(idx, cache=cache, last_only=True)[:, -1]  # prefill: the whole prompt in one forward
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    history = idx  # the prompt and the new tokens, for the settings that look at them (repetition_penalty, ...)
    for step in range(max_new_tokens):
        token = sampling.sample(logits, history, T, eos_id)
        if eos_id is not None:
            token = token.masked_fill(done, eos_id)
            done |= token == eos_id
        yield token
        if sampling.uses_history:
            history = torch.cat([history, token[:, None]], dim=1)
        if step == max_new_tokens - 1 or (eos_id is not None and bool(done.all())):
            return
        logits = model(token[:, None], cache=cache, last_only=True)[:, -1]  # decode: one position per step


def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    sampling: SamplingSettings | None = None,
    *,
    eos_id: int | None = None,
    decoder_mode: str | None = None,
    **fields,
) -> torch.Tensor:
    """idx (B, T) followed by up to max_new_tokens sampled tokens: (B, T + n).

    With eos_id, generation ends early once every row has produced it; rows that
    finished first are padded with eos_id. sampling (or its fields) and decoder_mode: as for `stream`.
    """
    sampling = SamplingSettings.of(sampling, **fields)
    if decoder_mode is not None:
        check_ids(idx, model.config.vocab_size)
        check_length(model.config.block_size, idx.size(1), max_new_tokens)
        decoder = Decoder(model, idx.size(0), idx.size(1) + max_new_tokens, mode=decoder_mode)
        return decoder.generate(idx, max_new_tokens, sampling, eos_id=eos_id)
    tokens = list(stream(model, idx, max_new_tokens, sampling, eos_id=eos_id))
    return torch.cat([idx, torch.stack(tokens, dim=1)], dim=1) if tokens else idx.clone()


@torch.no_grad()
def generate_uncached(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding that recomputes the whole context every step: the reference
    that cached decoding must reproduce token for token."""
    check_ids(idx, model.config.vocab_size)
    check_length(model.config.block_size, idx.size(1), max_new_tokens)
    for _ in range(max_new_tokens):
        next_token = model(idx)[:, -1].argmax(dim=-1, keepdim=True)
        idx = torch.cat([idx, next_token], dim=1)
    return idx


# ----------------------------------------------------------------------------------------------
# Text in, text out


@dataclass
class Completion:
    """One generated continuation: which prompt and which of its samples, the tokens generated (the
    end-of-text token excluded), their text and why generation ended."""

    prompt_index: int
    sample_index: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the generated text (prompt excluded), cut before any stop string
    finish_reason: str = "length"  # "length", "eot" or "stop"


class CompletionText:
    """Builds a Completion's text from one row's tokens as they are sampled: whole characters only
    (TextStream), cut before the first stop string, handed to on_text(completion, new_text) as it
    becomes final (text that may be the start of a stop string is held back until it is not).

    push(token, eot) adds a token (eot: the end-of-text id, or None); finish(reason) flushes what is
    held back and sets finish_reason ("length", "eot", "stop"); done says whether the row has ended.
    complete(), minigpt.chat.session and minigpt.serve.engine each drive one per row."""

    def __init__(self, completion: Completion, tokenizer: Tokenizer, stop: Sequence[str], on_text):
        self.completion, self.stop, self.on_text = completion, stop, on_text
        self.text = TextStream(tokenizer)
        self.pending = ""  # decoded text held back: it may be the start of a stop string
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.done = False

    def emit(self, text: str) -> None:
        self.completion.text += text
        if text and self.on_text is not None:
            self.on_text(self.completion, text)

    def push(self, token: int, eot: int | None) -> None:
        if token == eot:
            self.finish("eot")
            return
        self.completion.tokens.append(token)
        new = self.text.push(token)  # "" while a character is still split across tokens
        if not new:
            return
        self.pending += new
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
        if reason != "stop":  # text after a stop string is dropped with it
            self.pending += self.text.flush()
            hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
            if hits:
                self.pending, reason = self.pending[: min(hits)], "stop"
        self.emit(self.pending)
        self.pending = ""
        self.completion.finish_reason = reason
        self.done = True


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The ids a prompt starts generation from: its text's ids after whatever transformers'
    tokenizer(text) puts before them (a BOS where the checkpoint adds one), but without the
    end-of-text some tokenizers append (rinna's models say to leave it out when generating).
    "<|endoftext|>" and other special tokens written in the prompt are those tokens."""
    return [*tokenizer.special_prefix, *tokenizer.encode(prompt, allow_special=True)]


def complete(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    sampling: SamplingSettings | None = None,
    *,
    num_samples: int = 1,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stop_at_eot: bool = True,
    batch_size: int | None = None,
    on_text: Callable[[Completion, str], None] | None = None,
    decoder_mode: str | None = None,
    **fields,
) -> list[Completion]:
    """Sample num_samples continuations of each prompt.

    Prompts of equal token length are decoded together in batches of up to batch_size rows
    (DEFAULT_BATCH_SIZE if None); on_text(completion, new_text) is called as text arrives.
    Returns the completions ordered by prompt, then sample. sampling (or its fields) and
    decoder_mode: as for `stream`; seed: draw from a new generator seeded with it (on the model's device).
    Text is decoded with tokenizer (minigpt.tokenizers.tokenizer.TextStream), so a character split over
    several tokens is handed out whole; with stop_at_eot a row ends at tokenizer.eot_id (a
    tokenizer without one, eot_id None, never stops early). "<|endoftext|>" written in a prompt
    is the end-of-text token.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if any(s == "" for s in stop):
        raise ValueError("stop strings must not be empty")
    sampling = SamplingSettings.of(sampling, **fields)
    device = next(model.parameters()).device
    if seed is not None:
        if sampling.generator is not None:
            raise ValueError("give a seed or a generator, not both")
        sampling = SamplingSettings.of(sampling, generator=torch.Generator(device=device).manual_seed(seed))
    eot = tokenizer.eot_id if stop_at_eot else None
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    for ids in encoded:
        check_length(model.config.block_size, len(ids), max_new_tokens)

    completions = [Completion(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    by_length: dict[int, list[Completion]] = {}
    for c in completions:
        by_length.setdefault(len(encoded[c.prompt_index]), []).append(c)
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1 (or None), got {batch_size!r}")
    rows_per_batch = batch_size or DEFAULT_BATCH_SIZE
    for group in by_length.values():
        for start in range(0, len(group), rows_per_batch):
            batch = group[start : start + rows_per_batch]
            idx = torch.tensor([encoded[c.prompt_index] for c in batch], dtype=torch.long, device=device)
            rows = [CompletionText(c, tokenizer, stop, on_text) for c in batch]
            for token in stream(model, idx, max_new_tokens, sampling, eos_id=eot, decoder_mode=decoder_mode):
                for row, t in zip(rows, token.tolist(), strict=True):
                    if not row.done:
                        row.push(t, eot)
                if all(row.done for row in rows):
                    break
            for row in rows:
                row.finish(row.completion.finish_reason)
    return completions
