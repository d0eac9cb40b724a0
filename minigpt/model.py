"""GPT-2 in plain PyTorch.

The model reads top to bottom: attention, MLP, a pre-LayerNorm block, then the
GPT itself. Parameter names are OpenAI's (wte, wpe, h.N.ln_1, attn.c_attn, ...),
so the released checkpoints load with a small transpose table (minigpt/weights.py).

Shapes use B (batch), T (time), C (channels = n_embd), nh (heads), hs (head size).

Two pieces can be swapped for faster implementations, chosen in one place
(`resolve_backends`): attention ("math", "sdpa" or "triton") and LayerNorm
("torch" or "triton"). The "math" attention is the reference the others are
tested against.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt.config import GPTConfig
from minigpt.loss import linear_cross_entropy, linear_cross_entropy_reference

ATTN_BACKENDS = ("auto", "math", "sdpa", "triton")
LN_BACKENDS = ("auto", "torch", "triton")


# ----------------------------------------------------------------------------------------------
# Backend choice


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on `device`, or None if they can."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not interpreted:
        return f"Triton kernels need a CUDA device (got {device.type}); set TRITON_INTERPRET=1 to run them in the (slow) Triton interpreter"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the triton package is not installed"
    return None


_warned: set[str] = set()


def check_backend_names(attn: str, ln: str) -> None:
    if attn not in ATTN_BACKENDS:
        raise ValueError(f"unknown attention backend {attn!r}; choose from {', '.join(ATTN_BACKENDS)}")
    if ln not in LN_BACKENDS:
        raise ValueError(f"unknown LayerNorm backend {ln!r}; choose from {', '.join(LN_BACKENDS)}")


def resolve_backends(attn: str, ln: str, device: torch.device) -> tuple[str, str]:
    """Turn requested backends into the ones that will run on `device`.

    "auto" picks triton on CUDA and the PyTorch implementations elsewhere, saying
    once why when it falls back on a GPU. An explicit "triton" that cannot run raises.
    """
    check_backend_names(attn, ln)
    reason = triton_unavailable_reason(device)
    for requested in (attn, ln):
        if requested == "triton" and reason is not None:
            raise RuntimeError(f"backend 'triton' cannot run: {reason}")
    use_triton = device.type == "cuda" and reason is None
    if device.type == "cuda" and reason is not None and "auto" in (attn, ln) and reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"backend 'auto' falls back to PyTorch: {reason}", stacklevel=3)
    if attn == "auto":
        attn = "triton" if use_triton else "sdpa"
    if ln == "auto":
        ln = "triton" if use_triton else "torch"
    return attn, ln


# ----------------------------------------------------------------------------------------------
# Attention


def causal_mask(Tq: int, Tk: int, device: torch.device) -> torch.Tensor:
    """(Tq, Tk) boolean mask, True where query i may attend to key j.

    The queries are the *last* Tq of the Tk positions (a KV cache holds the first
    Tk - Tq), so query i sits at absolute position i + Tk - Tq.
    """
    offset = Tk - Tq
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=offset)


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The reference: softmax(q k^T / sqrt(hs) + causal mask) v, written out."""
    Tq, Tk, hs = q.size(-2), k.size(-2), q.size(-1)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, Tq, Tk)
    att = att.masked_fill(~causal_mask(Tq, Tk, q.device), float("-inf"))
    att = F.softmax(att, dim=-1)
    return att @ v  # (B, nh, Tq, hs)


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    Tq, Tk = q.size(-2), k.size(-2)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if Tq == 1:  # one new token sees every cached position: no mask needed
        return F.scaled_dot_product_attention(q, k, v)
    # is_causal aligns the mask top-left; a cache needs it bottom-right, so pass it explicitly
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(Tq, Tk, q.device))


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from kernels import flash_attention

    return flash_attention(q, k, v, causal=True)


ATTENTION = {"math": attention_math, "sdpa": attention_sdpa, "triton": attention_triton}


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.backend = "math"  # set by GPT.set_backends

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, T_past + T, hs)
        y = ATTENTION[self.backend](q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


# ----------------------------------------------------------------------------------------------
# MLP, LayerNorm, Block


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.c_fc(x), approximate="tanh")  # GPT-2 used the tanh approximation
        return self.dropout(self.c_proj(x))


class LayerNorm(nn.Module):
    def __init__(self, ndim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim))
        self.eps = eps
        self.backend = "torch"  # set by GPT.set_backends

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "triton":
            from kernels import layer_norm

            return layer_norm(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


# ----------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of the positions seen so far, for incremental decoding.

    Preallocated once for `max_len` positions so decoding never reallocates:
    each step writes its new keys/values at `pos` and attends over [0, pos + T).
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device=None, dtype=None):
        if max_len > config.block_size:
            raise ValueError(f"KV cache of {max_len} positions exceeds the context window ({config.block_size})")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reset(self) -> None:
        self.pos = 0


# ----------------------------------------------------------------------------------------------
# GPT


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, attn_backend: str = "auto", ln_backend: str = "auto"):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),  # token embeddings
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, config.layer_norm_epsilon),
            )
        )
        # The lm_head is tied to wte (GPT-2 shares them), so it has no parameter of its own:
        # forward() multiplies by wte.weight directly, which keeps the tie intact however the
        # weights are loaded or moved.
        self.set_backends(attn_backend, ln_backend)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # GPT-2 scales the residual projections by 1/sqrt(number of residual additions)
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # --- backends -------------------------------------------------------------------------------
    def set_backends(self, attn: str = "auto", ln: str = "auto", device: torch.device | str | None = None) -> None:
        """Choose the attention and LayerNorm implementations for `device` (default: where the
        parameters are). Moving the model (`.to()`, `.cuda()`) resolves the choice again for
        its new device, so nothing is left to settle on the first forward.
        """
        check_backend_names(attn, ln)
        self.requested_backends = (attn, ln)
        self._resolve_backends(device)

    def _resolve_backends(self, device: torch.device | str | None = None) -> None:
        device = torch.device(device) if device is not None else self.transformer.wte.weight.device
        if device.type == "meta":  # a model being built for loading: resolved once it is moved
            self.backends = self.requested_backends
            return
        attn, ln = resolve_backends(*self.requested_backends, device)
        for m in self.modules():
            if isinstance(m, CausalSelfAttention):
                m.backend = attn
            elif isinstance(m, LayerNorm):
                m.backend = ln
        self.backends = (attn, ln)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)  # what .to(), .cuda(), .half() all go through
        self._resolve_backends()
        return self

    # --- forward --------------------------------------------------------------------------------
    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for every position of idx (B, T); or, given targets (B, T),
        the mean next-token cross-entropy against them (targets of -100 are ignored).

        The loss is F.cross_entropy(self(idx), targets) computed without ever holding all the
        logits (minigpt/loss.py explains how). With a KV cache, idx holds the next T tokens
        after the cache.pos already seen.
        """
        x = self.hidden_states(idx, cache)
        if targets is not None:
            args = (x.reshape(-1, x.size(-1)), self.transformer.wte.weight, targets.reshape(-1), self.config.vocab_size)
            if torch.compiler.is_compiling():  # Inductor fuses the plain version by itself
                return linear_cross_entropy_reference(*args)
            return linear_cross_entropy(*args)
        logits = F.linear(x, self.transformer.wte.weight)  # (B, T, padded_vocab): the tied lm_head
        return logits[..., : self.config.vocab_size]

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final hidden states (B, T, C), after ln_f: what the lm_head multiplies."""
        B, T = idx.size()
        start = 0 if cache is None else cache.pos
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds the context window of {self.config.block_size}"
            )
        if cache is not None and (start + T > cache.max_len or B != cache.batch_size):
            raise ValueError(
                f"KV cache holds {cache.batch_size} x {cache.max_len} positions; "
                f"cannot add {B} x {T} tokens at position {start}"
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += T
        return x

    def num_params(self, non_embedding: bool = False) -> int:
        return self.config.num_params(non_embedding)

    # --- weights --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device=None, dtype=None, **backends) -> GPT:
        """Load OpenAI's GPT-2 (a preset name), a Hugging Face style directory, or a .safetensors file."""
        from minigpt.weights import load_pretrained

        return load_pretrained(name_or_path, device=device, dtype=dtype, **backends)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write model.safetensors + config.json that transformers' GPT2LMHeadModel loads."""
        from minigpt.weights import save_pretrained

        save_pretrained(self, directory)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """Continue idx (B, T) by max_new_tokens tokens; see minigpt.generate.generate."""
        from minigpt.generate import generate

        return generate(self, idx, max_new_tokens, **kwargs)
