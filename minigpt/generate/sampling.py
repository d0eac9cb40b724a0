"""Choosing the next token from logits, and the length checks every decoder shares.

Used by both decoding paths (minigpt.generate.simple's plain loop and minigpt.generate.decoder.Decoder),
so they sample alike: the same generator draws give the same tokens.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import torch
import torch.nn.functional as F


def penalize_repetition(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """Logits (B, V) with each token that occurs in its row of history (B, L) made less likely, as
    transformers' repetition_penalty does it: a positive logit divided by penalty, a negative one
    multiplied by it (penalty > 1 discourages repeats, < 1 encourages them)."""
    if penalty == 1.0 or history.size(1) == 0:
        return logits
    seen = logits.gather(1, history)
    return logits.scatter(1, history, torch.where(seen > 0, seen / penalty, seen * penalty))


def ban_repeated_ngrams(logits: torch.Tensor, history: torch.Tensor, n: int) -> torch.Tensor:
    """Logits (B, V) with -inf for every token that would complete an n-gram already in its row of
    history (B, L): the tokens that followed an earlier occurrence of the row's last n - 1 tokens."""
    B, L = history.shape
    if n == 0 or L < n:
        return logits
    windows = history.unfold(1, n, 1)  # (B, L - n + 1, n): every n-gram of each row
    match = (windows[:, :, :-1] == history[:, None, L - n + 1 :]).all(dim=-1)  # (B, L - n + 1)
    hits = torch.zeros(logits.shape, dtype=torch.int32, device=logits.device)
    banned = hits.scatter_add_(1, windows[:, :, -1], match.to(torch.int32)) > 0  # a token may end several n-grams
    return logits.masked_fill(banned, float("-inf"))


def apply_processors(
    logits: torch.Tensor,
    history: torch.Tensor | None,
    *,
    prompt_len: int = 0,
    eos_id: int | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    min_new_tokens: int = 0,
) -> torch.Tensor:
    """Logits (B, V) adjusted for what has been generated, before temperature, top-k and top-p (transformers'
    order): history (B, L) is each row's prompt followed by its new tokens, the first prompt_len being the
    prompt. min_new_tokens: eos_id is impossible (-inf) until L - prompt_len new tokens reach it."""
    check_processors(repetition_penalty, no_repeat_ngram_size, min_new_tokens)
    if repetition_penalty == 1.0 and no_repeat_ngram_size == 0 and min_new_tokens == 0:
        return logits
    if history is None:
        raise ValueError("repetition_penalty, no_repeat_ngram_size and min_new_tokens need the tokens so far (history)")
    logits = penalize_repetition(logits, history, repetition_penalty)
    logits = ban_repeated_ngrams(logits, history, no_repeat_ngram_size)
    if eos_id is not None and history.size(1) - prompt_len < min_new_tokens:
        logits = logits.clone()
        logits[:, eos_id] = float("-inf")
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    **processors,
) -> torch.Tensor:
    """Pick the next token for each row of logits (B, V). temperature 0 is greedy. processors: the
    keyword arguments of `apply_processors` (history, prompt_len, eos_id, repetition_penalty, ...)."""
    check_sampling(temperature, top_k, top_p)
    if processors:
        logits = apply_processors(logits, processors.pop("history", None), **processors)
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


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen, as every decoding function takes it.

    temperature: softmax temperature, 0 for greedy decoding; top_k: sample only from the k most
    likely tokens; top_p: only from the smallest set of tokens whose probability reaches p
    (nucleus); generator: the random generator the draws come from (None: PyTorch's global one);
    repetition_penalty, no_repeat_ngram_size, min_new_tokens: as transformers' generate has them
    (`apply_processors`; 1.0, 0, 0 are off), which need the tokens so far.
    The settings are checked when made (`check_sampling`: a ValueError naming the bad one).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0

    def __post_init__(self):
        check_sampling(self.temperature, self.top_k, self.top_p)
        check_processors(self.repetition_penalty, self.no_repeat_ngram_size, self.min_new_tokens)

    @classmethod
    def of(cls, sampling: SamplingSettings | None = None, **fields) -> SamplingSettings:
        """`sampling`, or settings made from keyword fields (temperature=0, top_k=40, ...), or the
        defaults; `sampling` and fields together take the fields over `sampling`'s values.
        An unknown field is a TypeError, as for any keyword argument."""
        if sampling is None:
            return cls(**fields)
        if not isinstance(sampling, cls):
            raise TypeError(f"sampling must be a SamplingSettings, got a {type(sampling).__name__}")
        return dataclasses.replace(sampling, **fields) if fields else sampling

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_history(self) -> bool:
        """Whether the choice depends on the tokens so far (repetition_penalty and the like), not on logits alone."""
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size != 0 or self.min_new_tokens != 0

    def sample(
        self,
        logits: torch.Tensor,
        history: torch.Tensor | None = None,
        prompt_len: int = 0,
        eos_id: int | None = None,
    ) -> torch.Tensor:
        """The next token of each row of logits (B, V); history (B, L), prompt_len and eos_id as for
        `apply_processors` (needed only when uses_history)."""
        if self.uses_history:
            logits = apply_processors(
                logits,
                history,
                prompt_len=prompt_len,
                eos_id=eos_id,
                repetition_penalty=self.repetition_penalty,
                no_repeat_ngram_size=self.no_repeat_ngram_size,
                min_new_tokens=self.min_new_tokens,
            )
        return sample_next(logits, self.temperature, self.top_k, self.top_p, self.generator)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """A clear ValueError unless the sampling settings make sense."""
    if (
        not isinstance(temperature, numbers.Real)
        or isinstance(temperature, bool)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None), got {top_k!r}")
    if top_p is not None and (
        not isinstance(top_p, numbers.Real) or isinstance(top_p, bool) or not 0.0 < top_p <= 1.0
    ):  # also refuses nan
        raise ValueError(f"top_p must be in (0, 1] (or None), got {top_p!r}")


def check_processors(repetition_penalty: float, no_repeat_ngram_size: int, min_new_tokens: int) -> None:
    """A clear ValueError unless the history-dependent settings make sense."""
    if (
        not isinstance(repetition_penalty, numbers.Real)
        or isinstance(repetition_penalty, bool)
        or not math.isfinite(repetition_penalty)
        or repetition_penalty <= 0
    ):
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1 is off), got {repetition_penalty!r}")
    if not _is_int(no_repeat_ngram_size) or no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be an integer >= 0 (0 is off), got {no_repeat_ngram_size!r}")
    if not _is_int(min_new_tokens) or min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be an integer >= 0, got {min_new_tokens!r}")


def check_ids(idx, vocab_size: int) -> None:
    """A clear ValueError unless idx is a (B, T) integer tensor of token ids in [0, vocab_size).

    The embedding has padding rows beyond vocab_size (GPTConfig.padded_vocab_size); an id there
    would run without complaint on meaningless zero rows, so the range is checked (one
    reduction, once per call, not per step).
    """
    if not isinstance(idx, torch.Tensor):
        raise ValueError(
            f"token ids must be a torch.Tensor of shape (batch, time), got a {type(idx).__name__}; "
            "e.g. torch.tensor([ids]) for one prompt"
        )
    if idx.is_nested or idx.layout != torch.strided:
        kind = "nested" if idx.is_nested else str(idx.layout).removeprefix("torch.")
        raise ValueError(
            f"token ids must be a dense tensor of shape (batch, time), got a {kind} tensor; "
            "pad the prompts to one length, or generate from each prompt on its own"
        )
    if idx.dim() != 2:
        hint = "; use ids[None] for one prompt" if idx.dim() == 1 else ""
        raise ValueError(f"token ids must have shape (batch, time), got shape {tuple(idx.shape)}{hint}")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ValueError(f"token ids must be an integer tensor (torch.long), got {idx.dtype}")
    if idx.numel() == 0:
        return  # check_length says what is wrong with an empty prompt
    low, high = (int(v) for v in torch.aminmax(idx))
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the model's vocabulary (0..{vocab_size - 1})")


def check_length(block_size: int, prompt_len: int, max_new_tokens: int) -> None:
    """A clear error unless a prompt of prompt_len plus max_new_tokens fits a context of block_size."""
    if not _is_int(max_new_tokens):
        raise ValueError(
            f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r} ({type(max_new_tokens).__name__})"
        )
    if prompt_len < 1:
        raise ValueError("the prompt is empty: give at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if prompt_len > block_size:
        raise ValueError(f"the prompt is {prompt_len} tokens, longer than the context window of {block_size}")
    if prompt_len + max_new_tokens > block_size:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context window of "
            f"{block_size}; ask for at most {block_size - prompt_len} new tokens"
        )
