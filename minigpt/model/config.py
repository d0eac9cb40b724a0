"""Model configuration: one dataclass and OpenAI's four released GPT-2 sizes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# Activations by their transformers (ACT2FN) names; "relu2" is ReLU squared. The model
# implements each (minigpt/model.py ACTIVATIONS); these are the names a config may hold.
ACTIVATIONS = (
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "gelu",
    "quick_gelu",
    "relu",
    "relu2",
    "silu",
    "swish",
    "tanh",
)
POSITIONS = ("learned", "rope")


@dataclass
class GPTConfig:
    block_size: int = 1024  # context length (HF: n_positions)
    vocab_size: int = 50257  # GPT-2's BPE vocabulary: 50,000 merges + 256 bytes + <|endoftext|>
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.0  # on embeddings and residual branches; GPT-2 trained with 0.1
    # The embedding table is padded to a multiple of this many rows so the lm_head matmul
    # has a GPU-friendly width (50257 -> 50304). Padded rows are never a target and the
    # logits are cut back to vocab_size, so the model's outputs do not change.
    pad_vocab_multiple: int = 64

    # --- variants of GPT2LMHeadModel (the defaults are GPT-2's) --------------------------------
    n_inner: int | None = None  # MLP hidden width; None means 4 * n_embd
    activation: str = "gelu_new"  # the MLP's nonlinearity, by transformers' name (ACTIVATIONS)
    scale_attn_weights: bool = True  # scores times 1/sqrt(head_dim); False: unscaled
    scale_attn_by_inverse_layer_idx: bool = False  # scores of layer i also divided by i + 1
    reorder_and_upcast_attn: bool = False  # scores and softmax in float32 whatever the model's dtype
    tie_word_embeddings: bool = True  # the lm_head is wte; False: a separate (vocab, C) matrix, no bias
    # Token ids the checkpoint names (config.json); carried through for export and tokenizers.
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None

    # --- switches for training small models, with no GPT2LMHeadModel equivalent ---------------
    position: str = "learned"  # "learned": GPT-2's wpe table; "rope": rotary q, k and no wpe
    rope_theta: float = 10000.0  # the rotary base: pair j turns by pos * rope_theta^(-2j/head_dim)
    qk_norm: bool = False  # q and k RMS-normalised per head (no weights) before the scores
    bias: bool = True  # False: no bias in any Linear layer or LayerNorm

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "pad_vocab_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        for name in ("layer_norm_epsilon", "dropout", "rope_theta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"GPTConfig.{name} must be a finite number, got {value!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_inner is not None and (
            not isinstance(self.n_inner, int) or isinstance(self.n_inner, bool) or self.n_inner < 1
        ):
            raise ValueError(f"GPTConfig.n_inner must be a positive integer or None (4 * n_embd), got {self.n_inner!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"GPTConfig.activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        for name in (
            "scale_attn_weights",
            "scale_attn_by_inverse_layer_idx",
            "reorder_and_upcast_attn",
            "tie_word_embeddings",
            "qk_norm",
            "bias",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) and name == "eos_token_id" else [value]
            if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
                what = "a token id, a list of them" if name == "eos_token_id" else "a token id"
                raise ValueError(f"GPTConfig.{name} must be {what} (an integer >= 0) or None, got {value!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"GPTConfig.position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if self.position == "rope":
            if self.head_dim % 2:
                raise ValueError(f"rotary positions turn pairs of channels: head_dim ({self.head_dim}) must be even")
            if not self.rope_theta > 1:
                raise ValueError(f"rope_theta must be > 1, got {self.rope_theta}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width: n_inner, or GPT-2's 4 * n_embd."""
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    @property
    def attn_scale(self) -> float:
        """The factor on q k^T of layer 0; layer i divides it by i + 1 with scale_attn_by_inverse_layer_idx."""
        return 1.0 / math.sqrt(self.head_dim) if self.scale_attn_weights else 1.0

    def layer_attn_scale(self, layer: int) -> float:
        scale = self.attn_scale
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count of the model this config describes (unpadded vocabulary).

        non_embedding=True leaves out the token embedding wte (an untied lm_head is counted)."""
        C, L, F, b = self.n_embd, self.n_layer, self.mlp_width, int(self.bias)
        norm = C + b * C  # a LayerNorm's gain and bias
        attn = C * 3 * C + b * 3 * C + C * C + b * C  # c_attn, c_proj
        mlp = C * F + b * F + F * C + b * C  # c_fc, c_proj
        n = L * (2 * norm + attn + mlp) + norm  # the blocks and ln_f
        if self.position == "learned":
            n += self.block_size * C  # wpe
        if not self.tie_word_embeddings:
            n += self.vocab_size * C  # lm_head
        return n if non_embedding else n + self.vocab_size * C

    def hf_incompatibility(self) -> str | None:
        """Why GPT2LMHeadModel cannot compute this model (the first switch that is on), or None if it can."""
        if self.position != "learned":
            return f"position={self.position!r} (GPT2LMHeadModel has learned positions only)"
        if self.qk_norm:
            return "qk_norm=True (GPT2LMHeadModel does not normalise q and k)"
        if not self.bias:
            return "bias=False (GPT2LMHeadModel always has biases)"
        return None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        """The inverse of to_dict; fields missing from d (a config saved before they existed) keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown GPTConfig fields: {sorted(unknown)}")
        return cls(**d)


# OpenAI's released sizes: (n_layer, n_head, n_embd); all have 1024 positions and 50257 tokens.
PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}

# Where the weights live on the Hugging Face hub.
HUB_REPOS = {name: f"openai-community/{name}" for name in PRESETS}


def preset(name: str) -> GPTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
