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


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token for each row of logits (B, V). temperature 0 is greedy."""
    check_sampling(temperature, top_k, top_p)
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
    (nucleus); generator: the random generator the draws come from (None: PyTorch's global one).
    The settings are checked when made (`check_sampling`: a ValueError naming the bad one).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None

    def __post_init__(self):
        check_sampling(self.temperature, self.top_k, self.top_p)

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

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of each row of logits (B, V)."""
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
