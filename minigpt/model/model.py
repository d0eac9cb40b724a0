"""GPT-2 in plain PyTorch, read top to bottom: attention, MLP, LayerNorm, Block, GPT.

Parameter names are OpenAI's (wte, wpe, h.N.ln_1, attn.c_attn, ...), so the released checkpoints
load with a small table (minigpt.model.families). Shapes: B batch, T time, C channels (n_embd),
nh heads, hs head size. With every config switch at its default this is GPT-2 exactly; the
variants (transformers' GPT2LMHeadModel options; GPT-NeoX's parallel residual, partial rotary
positions and separate biases; q/k normalisation and no biases for small models) are config
switches and small named pieces after it.

The same forward serves training, scoring and decoding: given a KVCache it continues from the
positions the cache holds (one set for the batch, or one per row), and given doc_ids it keeps
packed documents apart. Faster attention and LayerNorm implementations are chosen outside
(minigpt.model.backends); loading, saving and quantization live beside it, not in it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt.model.config import GPTConfig
from minigpt.model.loss import linear_cross_entropy, linear_cross_entropy_reference

# ----------------------------------------------------------------------------------------------
# Attention


def causal_mask(Tq: int, Tk: int, device: torch.device) -> torch.Tensor:
    """(Tq, Tk) boolean mask, True where query i may attend to key j. The queries are the *last*
    Tq of the Tk positions (a KV cache holds the first Tk - Tq): query i sits at i + Tk - Tq."""
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


# Every attention function takes q, k, v (B, nh, T, hs) and an optional `visible` (Tq, Tk) mask:
# None means causal, the queries being the last Tq of the Tk positions. `scale` multiplies q k^T
# (None: 1/sqrt(hs)); `upcast` forms the scores and their softmax in float32 (transformers'
# reorder_and_upcast_attn). minigpt.model.backends holds the table of them.


def attention_math(q, k, v, visible=None, scale=None, upcast=False) -> torch.Tensor:
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


def attention_sdpa(q, k, v, visible=None, scale=None, upcast=False) -> torch.Tensor:
    """The same through PyTorch's fused scaled_dot_product_attention: the default."""
    if upcast and q.dtype != torch.float32:  # sdpa keeps the scores in q's dtype (or its own choice)
        return attention_math(q, k, v, visible, scale, upcast)
    Tq, Tk = q.size(-2), k.size(-2)
    if visible is None and Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if visible is None and Tq > 1:  # is_causal aligns the mask top-left; a cache needs it bottom-right
        visible = causal_mask(Tq, Tk, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale)  # one query sees all


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        bias = config.has_attn_bias
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=bias)  # q, k, v for all heads
        last = layer_idx == config.n_layer - 1
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=bias or (last and config.last_attn_proj_bias))
        self.resid_dropout = nn.Dropout(config.dropout)
        scale = config.layer_attn_scale(layer_idx)  # None: the backends' own 1/sqrt(hs), GPT-2's
        self.scale = None if scale == 1.0 / math.sqrt(config.head_dim) else scale
        self.upcast = config.reorder_and_upcast_attn
        self.qk_norm_eps = config.layer_norm_epsilon if config.qk_norm else None
        self.attend = attention_sdpa  # minigpt.model.backends.set_backends chooses another

    def forward(self, x, cache: KVCache | None = None, layer: int = 0, visible=None, rope=None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.qk_norm_eps is not None:
            q, k = qk_norm(q, self.qk_norm_eps), qk_norm(k, self.qk_norm_eps)
        if rope is not None:  # rotate by the tokens' absolute positions; cached keys keep theirs
            q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # every position the cache holds, this step's included
        y = self.attend(q, k, v, visible, self.scale, self.upcast)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


# ----------------------------------------------------------------------------------------------
# MLP, LayerNorm, Block


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width, bias=config.has_mlp_bias)
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd, bias=config.has_mlp_bias)
        self.act = ACTIVATIONS[config.activation]  # GPT-2: gelu_new, the tanh approximation
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class LayerNorm(nn.Module):
    def __init__(self, ndim: int, eps: float, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps
        self.normalize = F.layer_norm  # minigpt.model.backends.set_backends chooses another

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x, self.weight.shape, self.weight, self.bias, self.eps)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_epsilon, config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, config.layer_norm_epsilon, config.bias)
        self.mlp = MLP(config)
        self.parallel = config.parallel_residual

    def forward(self, x, cache: KVCache | None = None, layer: int = 0, visible=None, rope=None) -> torch.Tensor:
        if self.parallel:  # GPT-NeoX: both branches read the block's input
            return x + self.attn(self.ln_1(x), cache, layer, visible, rope) + self.mlp(self.ln_2(x))
        x = x + self.attn(self.ln_1(x), cache, layer, visible, rope)  # pre-LayerNorm residual blocks
        x = x + self.mlp(self.ln_2(x))
        return x


# ----------------------------------------------------------------------------------------------
# GPT


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.padded_vocab_size, config.n_embd))  # token embeddings
        if config.position == "learned":  # with rope, positions enter as rotations of q and k instead
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)  # position embeddings
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, config.layer_norm_epsilon, config.bias),
        )
        self.transformer = nn.ModuleDict(modules)
        # GPT-2's lm_head is wte itself (head() multiplies by wte.weight, so the tie holds however the
        # weights are loaded or moved). A module here, an untied or a quantized head, takes its place.
        self.lm_head: nn.Module | None = None
        if not config.tie_word_embeddings:  # padded like wte; the padded rows' logits are cut off
            self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.backends = ("sdpa", "torch")  # (attention, LayerNorm): see minigpt.model.backends
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2's initialisation, in place."""

        def init(module: nn.Module) -> None:
            if isinstance(module, (nn.Linear, nn.Embedding)):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                torch.nn.init.zeros_(module.bias)

        self.apply(init)  # children before parents, as GPT-2's order of random draws has it
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections: 1/sqrt(number of residual additions)
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def forward(
        self, idx, targets=None, cache: KVCache | None = None, last_only: bool = False, doc_ids=None
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for every position of idx (B, T); or, given targets (B, T),
        the mean next-token cross-entropy against them (targets of -100 are ignored).

        The loss is F.cross_entropy(self(idx), targets) computed without ever holding all the
        logits (minigpt.model.loss). With a KV cache, idx holds the T tokens after those the cache
        has seen. last_only=True gives only the last position's logits (B, 1, vocab_size).
        doc_ids (B, T) marks documents packed side by side in a row (equal ids, contiguous): each
        token then sees only its own document, whose positions start at 0, as if it ran alone.
        """
        x = self.hidden_states(idx, cache, doc_ids)
        if targets is not None:
            args = (x.reshape(-1, x.size(-1)), self.head_weight, targets.reshape(-1), self.config.vocab_size)
            if torch.compiler.is_compiling():  # Inductor fuses the plain version by itself
                return linear_cross_entropy_reference(*args)
            return linear_cross_entropy(*args)
        if last_only:
            x = x[:, -1:]
        return self.head(x)[..., : self.config.vocab_size]

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None, doc_ids=None) -> torch.Tensor:
        """The final hidden states (B, T, C), after ln_f: what the lm_head multiplies."""
        B, T = idx.size()
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds the context window of {self.config.block_size}")
            pos, visible = torch.arange(T, device=idx.device), None
            if doc_ids is not None:
                pos, visible = document_positions(doc_ids)  # (B, T) and (B, 1, T, T)
        else:
            # (T,) absolute positions, checked against the cache's room, or (B, T): one row each
            pos = cache.positions(B, T)
            visible = cache.visible(pos)  # None: causal over the positions held; or a (Tq, Tk) / (B, 1, Tq, Tk) mask
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.position == "rope":
            rope = rotary_angles(pos, self.config.rotary_dim, self.config.rope_theta)
        else:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, visible, rope)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    @property
    def head_weight(self) -> torch.Tensor:
        """The lm_head's (padded_vocab, C) weight: wte's own when tied."""
        return self.transformer.wte.weight if self.lm_head is None else self.lm_head.weight

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the padded vocabulary (..., padded_vocab) of hidden states x (..., C)."""
        return F.linear(x, self.transformer.wte.weight) if self.lm_head is None else self.lm_head(x)

    def num_params(self, non_embedding: bool = False) -> int:
        return self.config.num_params(non_embedding)


# ----------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of the positions seen so far, for incremental decoding: preallocated for
    max_len positions; a forward of T tokens writes them at [pos, pos + T) and attends over the
    written prefix. minigpt.generate.decoder has a fixed-shape variant for CUDA graphs."""

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

    def positions(self, B: int, T: int) -> torch.Tensor:
        """(T,) absolute positions of the next T tokens of B rows; ValueError if they do not fit."""
        if self.pos + T > self.max_len or B != self.batch_size:
            raise ValueError(
                f"KV cache holds {self.batch_size} x {self.max_len} positions; "
                f"cannot add {B} x {T} tokens at position {self.pos}"
            )
        return torch.arange(self.pos, self.pos + T, device=self.k.device)

    def visible(self, positions: torch.Tensor) -> torch.Tensor | None:
        return None  # causal over the written prefix

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T, hs) at the next T positions; the keys and values to attend over."""
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, T: int) -> None:
        self.pos += T

    def reset(self) -> None:
        self.pos = 0


# ----------------------------------------------------------------------------------------------
# Variants: activations, q/k normalisation, rotary positions, packed documents


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # transformers' gelu_new writes this tanh approximation out; the fused op is the same function
    return F.gelu(x, approximate="tanh")


def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))  # ReLU squared (Primer; modded-nanogpt)


# The MLP nonlinearities under transformers' ACT2FN names (config.ACTIVATIONS lists the same keys).
ACTIVATIONS = {
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_fast,
    "gelu": F.gelu,  # the exact, erf form
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "relu2": relu2,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def qk_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS normalisation of each head's q or k (B, nh, T, hs), without weights: bounded scores."""
    return F.rms_norm(x, (x.size(-1),), eps=eps)


def rotary_angles(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, float32, of the angles pos / theta^(2j/dim) for the dim/2 pairs a head rotates:
    (T, dim/2) for positions (T,); (B, 1, T, dim/2) for positions (B, T), one row each."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    if positions.dim() == 2:
        angles = angles.unsqueeze(1)  # broadcast over the heads of (B, nh, T, hs)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate each pair (x[..., j], x[..., j + dim/2]) of x (B, nh, T, hs) by its angle, in float32.
    Only the first dim = 2 * cos.size(-1) channels turn (GPT-NeoX's rotary_pct); the rest pass."""
    cos, sin = rope
    dim = 2 * cos.size(-1)
    x1, x2 = x[..., :dim].float().chunk(2, dim=-1)
    turned = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
    return turned if dim == x.size(-1) else torch.cat([turned, x[..., dim:]], dim=-1)


def document_positions(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For documents packed in rows, doc_ids (B, T), each a run of equal ids: each token's position
    within its document (B, T), and the (B, 1, T, T) mask letting a token see only the earlier
    tokens of its document."""
    B, T = doc_ids.shape
    index = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values  # where each document begins
    same = first[:, :, None] == first[:, None, :]  # a run of equal ids is one document
    visible = same & causal_mask(T, T, doc_ids.device)
    return index - first, visible.unsqueeze(1)
