"""A multi-turn chat with one model, its conversation kept in a KV cache between turns.

Each turn renders the whole conversation with the chat format and tokenizes it, then runs through
the model only the tokens the cache does not already hold: those after the longest common prefix
of the new tokens and the cached ones. Usually that is the new user message and the header of the
reply; if a re-render changed earlier tokens (an edited system prompt, turns dropped to fit), the
cache is rewound to where they differ (its position set back) and refilled from there. So a
session's greedy replies are token for token those of generating from the whole rendered
conversation afresh (`minigpt.generate.simple.generate`), with a fraction of the prefill.

When a turn would not fit the context (block_size) with room for max_new_tokens, the oldest turns
(not system messages) are dropped until it does, and the reply says how many messages went.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from minigpt.chat.formats import ChatFormat, Message, TemplateFormat, check_messages
from minigpt.generate.sampling import SamplingSettings, check_ids
from minigpt.generate.simple import Completion, CompletionText
from minigpt.model.model import GPT, KVCache
from minigpt.tokenizers import Tokenizer

DEFAULT_MAX_NEW_TOKENS = 256  # a reply's length unless given; at most half the context


@dataclass
class Reply:
    text: str  # the reply as stored in the conversation (format's reply_text of the generated text)
    tokens: list[int] = field(default_factory=list)  # the tokens generated, the end-of-text one excluded
    finish_reason: str = "length"  # "eot", "stop", "length", or "interrupted" (an exception, e.g. Ctrl-C)
    prompt_tokens: int = 0  # the rendered conversation the reply continues
    prefilled: int = 0  # of those, the ones run through the model this turn (the rest were cached)
    dropped: int = 0  # messages dropped from the conversation's start to fit the context
    ttft: float = 0.0  # seconds from the call to the first token chosen


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class ChatSession:
    """A conversation with model (eval mode) through tokenizer and chat_format.

    say(text) adds a user message, generates the assistant's reply (streamed to on_text in whole
    characters, cut before the format's stop strings or the end-of-text token) and adds it.
    sampling: how tokens are chosen (SamplingSettings, as sample.py's); seed: draw from a generator
    seeded with it; max_new_tokens: a reply's longest (default: DEFAULT_MAX_NEW_TOKENS, at most half the
    context). messages holds the conversation, a system message first if there is one.
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        chat_format: ChatFormat,
        sampling: SamplingSettings | None = None,
        *,
        max_new_tokens: int | None = None,
        system: str | None = None,
        seed: int | None = None,
    ):
        block_size = model.config.block_size
        if max_new_tokens is None:
            max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, block_size // 2)
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens < block_size:
            raise ValueError(
                f"max_new_tokens must be between 1 and {block_size - 1} (the context), got {max_new_tokens}"
            )
        if model.training:
            raise ValueError("the model is in training mode (dropout is on); call model.eval() first")
        param = next(model.parameters())
        self.model, self.tokenizer, self.format = model, tokenizer, chat_format
        self.max_new_tokens = max_new_tokens
        self.sampling = SamplingSettings.of(sampling)
        if seed is not None:
            self.sampling = SamplingSettings.of(
                self.sampling, generator=torch.Generator(param.device).manual_seed(seed)
            )
        self.device = param.device
        self.cache = KVCache(model.config, 1, block_size, device=param.device, dtype=param.dtype)
        self.cached: list[int] = []  # the tokens whose keys and values the cache holds, in order
        self.messages: list[Message] = []
        if system:
            self.messages.append({"role": "system", "content": system})

    # --- the conversation -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the turns; a system message stays."""
        self.messages = [m for m in self.messages if m["role"] == "system"]

    def set_system(self, text: str | None) -> None:
        """Replace the system message (None or "": none); the turns stay."""
        turns = [m for m in self.messages if m["role"] != "system"]
        self.messages = ([{"role": "system", "content": text}] if text else []) + turns

    def load(self, messages: list[Message]) -> None:
        """Continue the conversation messages (ValueError, one line, if the format cannot render it)."""
        check_messages(messages)
        if messages:
            self.format.render(messages)
        self.messages = [{"role": m["role"], "content": m["content"]} for m in messages]

    def encode(self, text: str) -> list[int]:
        """A rendered conversation's ids. A model's own template writes its special tokens itself (as
        transformers' apply_chat_template encodes it); a built-in format is encoded as a prompt is."""
        ids = self.tokenizer.encode(text, allow_special=True)
        return ids if isinstance(self.format, TemplateFormat) else [*self.tokenizer.special_prefix, *ids]

    def fit(self, messages: list[Message]) -> tuple[list[Message], list[int], int]:
        """(messages, their prompt ids, messages dropped): the oldest turns dropped (system messages
        kept) until the prompt leaves room for max_new_tokens; ValueError if the last message alone does not."""
        limit = self.model.config.block_size - self.max_new_tokens
        dropped = 0
        while True:
            ids = self.encode(self.format.render(messages))
            if len(ids) <= limit:
                return messages, ids, dropped
            turns = [i for i, m in enumerate(messages) if m["role"] != "system"]
            if len(turns) <= 1:
                raise ValueError(
                    f"the prompt is {len(ids)} tokens; with max_new_tokens {self.max_new_tokens} it does not fit "
                    f"the context of {self.model.config.block_size} (shorten the message or the system prompt)"
                )
            # the first turn: its first message and what follows up to the next user message
            gone = {turns[0]}
            for i in turns[1:]:
                if messages[i]["role"] == "user":
                    break
                gone.add(i)
            messages = [m for i, m in enumerate(messages) if i not in gone]
            dropped += len(gone)

    # --- a turn -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, int]:
        """Make the cache hold ids: (the logits (1, V) of the token after them, how many ids ran).
        Runs only what the cache lacks, after rewinding it to the common prefix (the last id always
        runs, for its logits)."""
        keep = min(common_prefix(self.cached, ids), len(ids) - 1)
        self.cache.pos, self.cached = keep, self.cached[:keep]
        new = torch.tensor([ids[keep:]], dtype=torch.long, device=self.device)
        check_ids(new, self.model.config.vocab_size)
        logits = self.model(new, cache=self.cache, last_only=True)[:, -1]
        self.cached = list(ids)
        return logits, len(ids) - keep

    @torch.inference_mode()
    def feed(self, token: int) -> torch.Tensor:
        """Run one token after the cached ones: the logits (1, V) of the next."""
        logits = self.model(torch.tensor([[token]], device=self.device), cache=self.cache, last_only=True)[:, -1]
        self.cached.append(token)
        return logits

    def say(
        self,
        text: str,
        on_text: Callable[[str], None] | None = None,
        on_overflow: Callable[[int], None] | None = None,
    ) -> Reply:
        """Add the user message text, generate the reply and add it; the Reply.

        on_text(piece) receives the reply's text as it becomes final; on_overflow(n) is called before
        generating when n messages were dropped to fit the context. If generation is interrupted (an
        exception such as KeyboardInterrupt), the reply as shown so far is added and the exception goes on."""
        t0 = time.perf_counter()
        messages, ids, dropped = self.fit([*self.messages, {"role": "user", "content": text}])
        if dropped and on_overflow is not None:
            on_overflow(dropped)
        self.messages = messages
        reply = Reply("", prompt_tokens=len(ids), dropped=dropped)
        completion = Completion(0, 0)

        def show(_: Completion, piece: str) -> None:
            if on_text is not None:
                on_text(piece)

        row = CompletionText(completion, self.tokenizer, self.format.stop_strings, show)
        eot = self.tokenizer.eot_id
        try:
            logits, reply.prefilled = self.prefill(ids)
            history = ids
            for step in range(self.max_new_tokens):
                token = int(self._choose(logits, history, len(ids), eot))
                if step == 0:
                    reply.ttft = time.perf_counter() - t0
                row.push(token, eot)
                if row.done:
                    break
                history = [*history, token]
                if step < self.max_new_tokens - 1:
                    logits = self.feed(token)
            row.finish(completion.finish_reason)
        except BaseException:
            completion.finish_reason = "interrupted"  # the reply as shown so far is kept (text held back is not)
            raise
        finally:
            reply.tokens = completion.tokens
            reply.finish_reason = completion.finish_reason
            reply.text = self.format.reply_text(completion.text)
            self.messages = [*self.messages, {"role": "assistant", "content": reply.text}]
        return reply

    def _choose(self, logits: torch.Tensor, history: list[int], prompt_len: int, eot: int | None) -> torch.Tensor:
        if self.sampling.uses_history:
            hist = torch.tensor([history], dtype=torch.long, device=self.device)
            return self.sampling.sample(logits, hist, prompt_len, eot)[0]
        return self.sampling.sample(logits)[0]
