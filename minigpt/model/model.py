"""GPT-2 in plain PyTorch.

The model reads top to bottom: attention, MLP, a pre-LayerNorm block, then the
GPT itself. Parameter names are OpenAI's (wte, wpe, h.N.ln_1, attn.c_attn, ...),
so the released checkpoints load with a small transpose table (minigpt/weights.py).

Shapes use B (batch), T (time), C (channels = n_embd), nh (heads), hs (head size).

Two pieces can be swapped for faster implementations, chosen in one place
(`resolve_backends`, run when the backends are set and when the model moves):
attention ("math", "sdpa" or "triton") and LayerNorm ("torch" or "triton"). The
"math" attention is the reference the others are tested against.

The config's variants (minigpt/config.py) are those of transformers' GPT2LMHeadModel
(MLP width, activation, attention scaling and fp32 upcast, an untied lm_head), each
computed as transformers computes it, plus switches GPT-2 lacks for training small
models: rotary positions instead of wpe, RMS-normalised q and k, and no biases. With
every switch at its default the model is GPT-2 exactly.

The same forward serves training, scoring and decoding: given a `KVCache` it
continues from the positions the cache holds, and the fast decoder of
minigpt/decode.py calls it with the cache's static mode rather than restating it.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from minigpt.model import weights
from minigpt.model.config import GPTConfig
from minigpt.model.loss import linear_cross_entropy, linear_cross_entropy_reference
from minigpt.generate.quantize import quantize_model

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


# Every attention takes an optional `visible` (Tq, Tk) boolean mask. None means causal, with the
# queries the last Tq of the Tk positions; a static KV cache passes its own (see KVCache).
# `scale` multiplies q k^T (None: 1/sqrt(hs)); `upcast` forms the scores and their softmax in
# float32 and casts the probabilities back to v's dtype, as transformers' reorder_and_upcast_attn.


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   visible: torch.Tensor | None = None, scale: float | None = None,
                   upcast: bool = False) -> torch.Tensor:
    """The reference: softmax(q k^T * scale + mask) v, written out."""
    Tq, Tk, hs = q.size(-2), k.size(-2), q.size(-1)
    if visible is None:
        visible = causal_mask(Tq, Tk, q.device)
    if scale is None:
        scale = 1.0 / math.sqrt(hs)
    if upcast:
        q, k = q.float(), k.float()
    att = (q @ k.transpose(-2, -1)) * scale  # (B, nh, Tq, Tk)
    att = att.masked_fill(~visible, float("-inf"))
    att = F.softmax(att, dim=-1).to(v.dtype)
    return att @ v  # (B, nh, Tq, hs)


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   visible: torch.Tensor | None = None, scale: float | None = None,
                   upcast: bool = False) -> torch.Tensor:
    if upcast and q.dtype != torch.float32:  # sdpa keeps the scores in q's dtype (or its own choice)
        return attention_math(q, k, v, visible, scale, upcast)
    Tq, Tk = q.size(-2), k.size(-2)
    if visible is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if Tq == 1:  # one new token sees every cached position: no mask needed
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    # is_causal aligns the mask top-left; a cache needs it bottom-right, so pass it explicitly
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(Tq, Tk, q.device), scale=scale)


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     visible: torch.Tensor | None = None, scale: float | None = None,
                     upcast: bool = False) -> torch.Tensor:
    # The flash kernel knows only the causal mask. It keeps its scores in float32 but casts the
    # probabilities differently from an upcast softmax, so that variant goes to the reference.
    if visible is not None or (upcast and q.dtype != torch.float32):
        return attention_sdpa(q, k, v, visible, scale, upcast)
    from minigpt_kernels import flash_attention

    return flash_attention(q, k, v, causal=True, sm_scale=scale)


ATTENTION = {"math": attention_math, "sdpa": attention_sdpa, "triton": attention_triton}


def rotary_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, hs/2), float32, of the angles pos * theta^(-2j/hs) for positions (T,)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate each pair (x[..., j], x[..., j + hs/2]) of x (B, nh, T, hs) by its angle, in float32."""
    cos, sin = rope
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # None is the backends' own 1/sqrt(hs): GPT-2's scaling takes the kernels' default path
        scale = config.layer_attn_scale(layer_idx)
        self.scale = None if scale == 1.0 / math.sqrt(config.head_dim) else scale
        self.upcast = config.reorder_and_upcast_attn
        self.qk_norm_eps = config.layer_norm_epsilon if config.qk_norm else None
        self.backend = "math"  # set by GPT.set_backends

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                visible: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.qk_norm_eps is not None:  # RMSNorm without weights, per head: bounded scores
            q = F.rms_norm(q, (q.size(-1),), eps=self.qk_norm_eps)
            k = F.rms_norm(k, (k.size(-1),), eps=self.qk_norm_eps)
        if rope is not None:  # the rotation of the tokens' absolute positions; cached keys keep theirs
            q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, T_past + T, hs); a static cache: (B, nh, max_len, hs)
        y = ATTENTION[self.backend](q, k, v, visible, self.scale, self.upcast)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


# ----------------------------------------------------------------------------------------------
# MLP, LayerNorm, Block


def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # transformers' gelu_new writes this tanh approximation out; the fused op is the same function
    # (GPT-2 used it), equal to within float rounding
    return F.gelu(x, approximate="tanh")


# The MLP nonlinearities, under the names transformers' ACT2FN gives them.
ACTIVATIONS = {
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_fast,
    "gelu": F.gelu,  # the exact, erf form
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "relu2": relu2,  # ReLU squared (Primer; modded-nanogpt)
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.c_fc(x))
        return self.dropout(self.c_proj(x))


class LayerNorm(nn.Module):
    def __init__(self, ndim: int, eps: float, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps
        self.backend = "torch"  # set by GPT.set_backends

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "triton":
            from minigpt_kernels import layer_norm

            bias = self.bias if self.bias is not None else torch.zeros_like(self.weight)  # the kernel always adds one
            return layer_norm(x, self.weight, bias, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_epsilon, config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, config.layer_norm_epsilon, config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                visible: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, visible, rope)
        x = x + self.mlp(self.ln_2(x))
        return x


# ----------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of the positions seen so far, for incremental decoding.

    Preallocated once for `max_len` positions, so decoding never reallocates. Two modes:

    - growing (static=False): `pos` is a Python int; a forward of T tokens writes them at
      [pos, pos + T) and attends over the written prefix [0, pos + T), a view of the cache.
    - static (static=True): `pos` is a (1,) tensor on the cache's device, and attention runs
      over all max_len positions with a mask hiding those after each query. Every shape is
      fixed and nothing is read back to the host, so a decode step can be recorded once as a
      CUDA graph and replayed (minigpt.generate.decoder), with `pos` advanced in place.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device=None, dtype=None,
                 static: bool = False):
        if max_len > config.block_size:
            raise ValueError(f"KV cache of {max_len} positions exceeds the context window ({config.block_size})")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.static = static
        if static:
            self.pos = torch.zeros(1, dtype=torch.long, device=device)
            self.key_positions = torch.arange(max_len, device=device)
        else:
            self.pos = 0

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    def positions(self, T: int) -> torch.Tensor:
        """(T,) absolute positions of the next T tokens."""
        if self.static:
            return self.pos + torch.arange(T, device=self.pos.device)
        return torch.arange(self.pos, self.pos + T, device=self.k.device)

    def visible(self, positions: torch.Tensor) -> torch.Tensor | None:
        """(T, max_len) mask of the keys each query may see in a static cache; None (causal) otherwise."""
        if not self.static:
            return None
        return self.key_positions[None, :] <= positions[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T, hs) at the next T positions; the keys and values to attend over."""
        T = k.size(2)
        if self.static:
            positions = self.positions(T)
            self.k[layer].index_copy_(2, positions, k)
            self.v[layer].index_copy_(2, positions, v)
            return self.k[layer], self.v[layer]
        end = self.pos + T
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, T: int) -> None:
        if self.static:
            self.pos.add_(T)
        else:
            self.pos += T

    def reset(self) -> None:
        if self.static:
            self.pos.zero_()
        else:
            self.pos = 0


# ----------------------------------------------------------------------------------------------
# GPT


class SkipMetaInit(TorchFunctionMode):
    """While active, in-place ops on meta tensors (the initialisers nn.Linear and nn.Embedding run
    in their constructors) are skipped: a meta tensor has no values to change, and running them
    there first imports PyTorch's Python reference ops, the larger part of a checkpoint's load time."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by keyword
        in_place = name.endswith("_") and not name.startswith("__")  # uniform_, normal_, zero_, ...
        if in_place and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, attn_backend: str = "auto", ln_backend: str = "auto"):
        super().__init__()
        self.config = config
        on_meta = torch.empty(0).device.type == "meta"  # built to be loaded into: a checkpoint provides every tensor
        with SkipMetaInit() if on_meta else contextlib.nullcontext():
            modules = dict(wte=nn.Embedding(config.padded_vocab_size, config.n_embd))  # token embeddings
            if config.position == "learned":  # with rope, positions enter as rotations of q and k instead
                modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)  # learned position embeddings
            modules.update(
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, config.layer_norm_epsilon, config.bias),
            )
            self.transformer = nn.ModuleDict(modules)
            # GPT-2's lm_head is tied to wte, so it has no parameter of its own: head() multiplies by
            # wte.weight directly, which keeps the tie intact however the weights are loaded or moved.
            # A module set here (an untied or a quantized head) takes its place.
            self.lm_head: nn.Module | None = None
            if not config.tie_word_embeddings:  # padded like wte; the padded rows' logits are cut off
                self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.set_backends(attn_backend, ln_backend)
        if not on_meta:
            self.init_weights()

    def init_weights(self) -> None:
        """GPT-2's initialisation, in place."""
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # GPT-2 scales the residual projections by 1/sqrt(number of residual additions)
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
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
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for every position of idx (B, T); or, given targets (B, T),
        the mean next-token cross-entropy against them (targets of -100 are ignored).

        The loss is F.cross_entropy(self(idx), targets) computed without ever holding all the
        logits (minigpt/loss.py explains how). With a KV cache, idx holds the next T tokens
        after the ones the cache has seen. last_only=True gives the logits (B, 1, vocab_size) of
        the last position only, all that sampling the next token needs.
        """
        x = self.hidden_states(idx, cache)
        if targets is not None:
            args = (x.reshape(-1, x.size(-1)), self.head_weight, targets.reshape(-1), self.config.vocab_size)
            if torch.compiler.is_compiling():  # Inductor fuses the plain version by itself
                return linear_cross_entropy_reference(*args)
            return linear_cross_entropy(*args)
        if last_only:
            x = x[:, -1:]
        return self.head(x)[..., : self.config.vocab_size]

    @property
    def head_weight(self) -> torch.Tensor:
        """The lm_head's (padded_vocab, C) weight: wte's own when tied."""
        return self.transformer.wte.weight if self.lm_head is None else self.lm_head.weight

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the padded vocabulary (..., padded_vocab) of hidden states x (..., C)."""
        if self.lm_head is not None:
            return self.lm_head(x)
        return F.linear(x, self.transformer.wte.weight)  # the tied lm_head

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final hidden states (B, T, C), after ln_f: what the lm_head multiplies."""
        B, T = idx.size()
        if cache is None:
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
            end = T
        else:
            # a static cache's position stays on the device: only its own size can be checked here
            end = T if cache.static else cache.pos + T
            if end > cache.max_len or B != cache.batch_size:
                start = "its position" if cache.static else f"position {cache.pos}"
                raise ValueError(
                    f"KV cache holds {cache.batch_size} x {cache.max_len} positions; "
                    f"cannot add {B} x {T} tokens at {start}"
                )
            pos = cache.positions(T)
        if end > self.config.block_size:
            raise ValueError(f"sequence of {end} tokens exceeds the context window of {self.config.block_size}")
        visible = None if cache is None else cache.visible(pos)  # (T, max_len) for a static cache
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.position == "rope":
            rope = rotary_angles(pos, self.config.head_dim, self.config.rope_theta)  # (T, hs/2) each
        else:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, visible, rope)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.advance(T)
        return x

    def num_params(self, non_embedding: bool = False) -> int:
        return self.config.num_params(non_embedding)

    # --- weights --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device=None, dtype=None, attn_backend: str = "auto",
                        ln_backend: str = "auto") -> GPT:
        """Load OpenAI's GPT-2 (a preset name), a Hugging Face style directory, or a .safetensors file.

        The model is built on the meta device (no memory, no initialisation) and takes the
        checkpoint's tensors as its parameters, already in `dtype` on `device`.
        """
        config, state, source = weights.load_state_dict(name_or_path, dtype=dtype, device=device)
        with torch.device("meta"):
            model = cls(config, attn_backend=attn_backend, ln_backend=ln_backend)
        weights.check_state_dict(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, config, source)
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device or "cpu").eval()

    def save_pretrained(self, directory: str | Path, transformers_only: bool = True) -> None:
        """Write model.safetensors + config.json that transformers' GPT2LMHeadModel loads.

        A model with a switch GPT2LMHeadModel lacks (config.hf_incompatibility()) is a ValueError,
        unless transformers_only=False: then config.json holds only minigpt's own config, which
        from_pretrained reads and transformers refuses (training checkpoints are written so).
        """
        weights.save_state_dict(self.state_dict(), self.config, directory, transformers_only)

    # --- quantization ---------------------------------------------------------------------------
    def quantize(self, mode: str, group_size: int = 64) -> GPT:
        """Weight-only int8 or int4 (groups of group_size inputs) for every linear layer and the
        lm_head, in place, for decoding on the device the model is on (minigpt/quantize.py)."""
        return quantize_model(self, mode, group_size)
