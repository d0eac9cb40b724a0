"""Model families: how each one's Hugging Face checkpoints map onto the one model, as one table.

An entry says which `model_type` its config.json has, how that config becomes a GPTConfig and
back, and how the checkpoint's tensor names and layouts become the model's parameters. Loading
and saving (minigpt.model.weights) look the family up by the config's model_type, so another
family is one more entry in FAMILIES and, where its maths differs, config switches in the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from minigpt.model.config import ACTIVATIONS, GPTConfig


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json's model_type
    config_from_hf: Callable[[dict], GPTConfig]  # config.json -> GPTConfig; ValueError names a refused field
    config_to_hf: Callable[[GPTConfig], dict]  # GPTConfig -> config.json that transformers reads
    transposed: tuple[str, ...]  # parameters stored as (in, out) matrices: Conv1D weights
    ignored: tuple[str, ...]  # key suffixes that hold no parameter (old buffers)
    prefix: str = "transformer."  # the body's key prefix, present or not in a checkpoint
    head: str = "lm_head.weight"  # the output projection's key (tied or not)

    def our_name(self, key: str) -> str | None:
        """A checkpoint key -> the model's parameter name, or None for keys that hold no parameter."""
        key = key.removeprefix(self.prefix)
        if key.endswith(self.ignored):
            return None
        return key if key == self.head else self.prefix + key

    def to_model_layout(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """A checkpoint tensor in the model's layout (nn.Linear's (out, in))."""
        return t.t() if name.endswith(self.transposed) else t

    def to_checkpoint_layout(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """The inverse of to_model_layout."""
        return t.t() if name.endswith(self.transposed) else t


# --- GPT-2: transformers' GPT2LMHeadModel ----------------------------------------------------------


def gpt2_config_from_hf(d: dict) -> GPTConfig:
    """Read a transformers GPT2Config dict, refusing fields that change the maths in a way this model does not.

    Absent fields take GPT2Config's defaults. n_ctx is ignored, as transformers ignores it: the
    position table has n_positions rows (n_ctx is used only when n_positions is absent). Dropout
    probabilities and the fields of other heads (summary_*) do not change the language model's outputs.
    """
    if d.get("add_cross_attention"):
        raise ValueError("config.json sets add_cross_attention, which this model does not implement")
    act = d.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(
            f"config.json activation_function {act!r} is not implemented; supported: {', '.join(ACTIVATIONS)}"
        )
    fields = dict(
        block_size=d.get("n_positions", d.get("n_ctx", 1024)),
        vocab_size=d.get("vocab_size", 50257),
        n_layer=d.get("n_layer", 12),
        n_head=d.get("n_head", 12),
        n_embd=d.get("n_embd", 768),
        layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
        n_inner=d.get("n_inner"),
        activation=act,
        scale_attn_weights=d.get("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=d.get("scale_attn_by_inverse_layer_idx", False),
        reorder_and_upcast_attn=d.get("reorder_and_upcast_attn", False),
        tie_word_embeddings=d.get("tie_word_embeddings", True),
        bos_token_id=d.get("bos_token_id", 50256),
        eos_token_id=d.get("eos_token_id", 50256),
        pad_token_id=d.get("pad_token_id"),
    )
    try:
        return GPTConfig(**fields)
    except ValueError as e:
        raise ValueError(f"config.json: {e}".replace("GPTConfig.", "")) from None


def gpt2_config_to_hf(config: GPTConfig) -> dict:
    """transformers' GPT2Config of this model; a ValueError if it has none (hf_incompatibility)."""
    reason = config.hf_incompatibility()
    if reason is not None:
        raise ValueError(f"this model has no transformers GPT2LMHeadModel equivalent: {reason}")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": config.activation,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "vocab_size": config.vocab_size,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "n_inner": config.n_inner,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "attn_pdrop": 0.0,
        "embd_pdrop": config.dropout,
        "resid_pdrop": config.dropout,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "tie_word_embeddings": config.tie_word_embeddings,
        "scale_attn_weights": config.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": config.scale_attn_by_inverse_layer_idx,
        "reorder_and_upcast_attn": config.reorder_and_upcast_attn,
    }


GPT2 = Family(
    model_type="gpt2",
    config_from_hf=gpt2_config_from_hf,
    config_to_hf=gpt2_config_to_hf,
    transposed=("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"),
    ignored=(".attn.bias", ".attn.masked_bias"),  # causal-mask buffers of old checkpoints
)

FAMILIES: dict[str, Family] = {f.model_type: f for f in (GPT2,)}


def family_of(hf_config: dict) -> Family:
    """The family of a config.json (GPT-2 when it names no model_type); ValueError if there is none."""
    model_type = hf_config.get("model_type", "gpt2")
    if model_type not in FAMILIES:
        supported = " or ".join(repr(m) for m in FAMILIES)
        raise ValueError(f"config.json is for model_type {model_type!r}, not {supported}")
    return FAMILIES[model_type]
