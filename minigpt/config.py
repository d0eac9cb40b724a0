"""Model configuration: one dataclass and OpenAI's four released GPT-2 sizes."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


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

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "pad_vocab_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        for name in ("layer_norm_epsilon", "dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"GPTConfig.{name} must be a finite number, got {value!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count of the model this config describes (unpadded vocabulary)."""
        C, L = self.n_embd, self.n_layer
        per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
        n = L * per_block + 2 * C + self.block_size * C
        return n if non_embedding else n + self.vocab_size * C

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown GPTConfig fields: {sorted(unknown)}")
        return cls(**d)

    # --- the Hugging Face config.json of GPT2LMHeadModel -------------------------------------
    def to_hf_dict(self) -> dict:
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": "gelu_new",
            "n_positions": self.block_size,
            "n_ctx": self.block_size,
            "vocab_size": self.vocab_size,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.n_embd,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "attn_pdrop": 0.0,
            "embd_pdrop": self.dropout,
            "resid_pdrop": self.dropout,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
            "tie_word_embeddings": True,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "n_inner": None,
        }

    @classmethod
    def from_hf_dict(cls, d: dict) -> "GPTConfig":
        """Read a transformers GPT2Config dict, refusing variants this model does not implement."""
        if d.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"config.json is for model_type {d.get('model_type')!r}, not 'gpt2'")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"config.json activation_function {act!r} is not GPT-2's tanh GELU")
        n_embd = d.get("n_embd", 768)
        if d.get("n_inner") not in (None, 4 * n_embd):
            raise ValueError(f"config.json n_inner={d['n_inner']} is not 4*n_embd, unsupported")
        if d.get("scale_attn_by_inverse_layer_idx") or d.get("reorder_and_upcast_attn"):
            raise ValueError("config.json asks for an attention variant GPT-2 does not use")
        if d.get("scale_attn_weights") is False or d.get("tie_word_embeddings") is False:
            raise ValueError("config.json asks for unscaled attention or untied lm_head, unsupported")
        return cls(
            block_size=d.get("n_positions", d.get("n_ctx", 1024)),
            vocab_size=d.get("vocab_size", 50257),
            n_layer=d.get("n_layer", 12),
            n_head=d.get("n_head", 12),
            n_embd=n_embd,
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
        )


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
