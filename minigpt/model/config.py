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

    # --- switches of other families (GPT-NeoX: Pythia, gpt-neox-20b, rinna's and abeja's models) --
    model_type: str = "gpt2"  # the checkpoint layout it loads from and saves to (minigpt.model.families)
    parallel_residual: bool = False  # x + attn(ln_1(x)) + mlp(ln_2(x)) instead of one after the other
    rotary_pct: float = 1.0  # with rope: the share of each head's channels that is rotated (Pythia: 0.25)
    attn_bias: bool | None = None  # biases on c_attn and the attention's c_proj; None: as `bias`
    mlp_bias: bool | None = None  # biases on c_fc and the MLP's c_proj; None: as `bias`
    last_attn_proj_bias: bool = False  # the last block's attention c_proj has a bias even without attn_bias

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "pad_vocab_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        for name in ("layer_norm_epsilon", "dropout", "rope_theta", "rotary_pct"):
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
            "parallel_residual",
            "last_attn_proj_bias",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("attn_bias", "mlp_bias"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be true, false or None (as bias), got {getattr(self, name)!r}")
        if not isinstance(self.model_type, str) or not self.model_type:
            raise ValueError(f"GPTConfig.model_type must be a model_type name, got {self.model_type!r}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) and name == "eos_token_id" else [value]
            if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
                what = "a token id, a list of them" if name == "eos_token_id" else "a token id"
                raise ValueError(f"GPTConfig.{name} must be {what} (an integer >= 0) or None, got {value!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"GPTConfig.position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if self.position == "rope":
            if not 0 < self.rotary_pct <= 1:
                raise ValueError(f"rotary_pct must be in (0, 1], got {self.rotary_pct}")
            if self.rotary_dim % 2 or self.rotary_dim == 0:
                raise ValueError(
                    f"rotary positions turn pairs of channels: int(head_dim * rotary_pct) "
                    f"(int({self.head_dim} * {self.rotary_pct}) = {self.rotary_dim}) must be even and > 0"
                )
            if not self.rope_theta > 1:
                raise ValueError(f"rope_theta must be > 1, got {self.rope_theta}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def rotary_dim(self) -> int:
        """How many of each head's channels rotary positions turn: the first int(head_dim * rotary_pct)."""
        return int(self.head_dim * self.rotary_pct)

    @property
    def has_attn_bias(self) -> bool:
        return self.bias if self.attn_bias is None else self.attn_bias

    @property
    def has_mlp_bias(self) -> bool:
        return self.bias if self.mlp_bias is None else self.mlp_bias

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
        ba, bm = int(self.has_attn_bias), int(self.has_mlp_bias)
        norm = C + b * C  # a LayerNorm's gain and bias
        attn = C * 3 * C + ba * 3 * C + C * C + ba * C  # c_attn, c_proj
        mlp = C * F + bm * F + F * C + bm * C  # c_fc, c_proj
        n = L * (2 * norm + attn + mlp) + norm  # the blocks and ln_f
        if self.last_attn_proj_bias and not ba:
            n += C
        if self.position == "learned":
            n += self.block_size * C  # wpe
        if not self.tie_word_embeddings:
            n += self.vocab_size * C  # lm_head
        return n if non_embedding else n + self.vocab_size * C

    def hf_incompatibility(self) -> str | None:
        """Why GPT2LMHeadModel cannot compute this model (the first switch that is on), or None if it can.

        For the other families (model_type) their entry in minigpt.model.families says."""
        if self.model_type != "gpt2":
            return f"model_type={self.model_type!r} (not GPT2LMHeadModel's layout)"
        if self.parallel_residual or self.attn_bias is not None or self.mlp_bias is not None:
            return "a GPT-NeoX switch (parallel_residual, attn_bias or mlp_bias) is set"
        if self.last_attn_proj_bias:
            return "last_attn_proj_bias=True (GPT2LMHeadModel has every bias or none)"
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
