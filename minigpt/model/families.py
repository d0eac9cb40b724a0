"""Model families: how each one's Hugging Face checkpoints map onto the one model, as one table.

An entry says which `model_type` its config.json has, how that config becomes a GPTConfig and
back, which checkpoint key holds which of the model's parameters (a table of name patterns), and
how a tensor's layout differs from the model's. Loading and saving (minigpt.model.weights) look
the family up by the config's model_type, so another family is one more entry in FAMILIES and,
where its maths differs, config switches in the model (GPTConfig's GPT-NeoX section).

    family       transformers class            what differs from GPT-2, in the model
    gpt2         GPT2LMHeadModel               -
    gpt_neox     GPTNeoXForCausalLM            rotary positions (a share of each head), parallel
                                               residual (or not), untied embed_out, its own q/k/v order
    gpt_neox_japanese  GPTNeoXJapaneseForCausalLM   rotary, no linear biases but the last block's
                                               attention output, MLP width a multiple of the width
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from minigpt.model.config import ACTIVATIONS, GPTConfig


@dataclass(frozen=True)
class Layout:
    """How a checkpoint stores one kind of parameter, when not as the model's nn.Linear (out, in)."""

    to_model: Callable[[torch.Tensor, GPTConfig], torch.Tensor]  # ValueError for a tensor of the wrong shape
    to_checkpoint: Callable[[torch.Tensor, GPTConfig], torch.Tensor]
    transposed: bool = False  # stored as (in, out): shapes in messages are reported as stored


def _pattern(template: str) -> re.Pattern:
    """A name template -> a regex: {i} a layer number, {p} weight or bias, {rest} anything."""
    groups = {"{i}": r"(?P<i>\d+)", "{p}": r"(?P<p>weight|bias)", "{rest}": r"(?P<rest>.+)"}
    regex = re.escape(template)
    for name, group in groups.items():
        regex = regex.replace(re.escape(name), group)
    return re.compile(regex)


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json's model_type
    architecture: str  # the transformers class that runs it
    config_from_hf: Callable[[dict], GPTConfig]  # config.json -> GPTConfig; ValueError names a refused field
    config_to_hf: Callable[[GPTConfig], dict]  # GPTConfig -> config.json that transformers reads; ValueError if none
    # (checkpoint key, model parameter) templates; a key takes the first pair it matches, and a
    # parameter is saved under the first pair its name matches
    names: tuple[tuple[str, str], ...]
    ignored: tuple[str, ...] = ()  # regexes of keys that hold no parameter (buffers of old checkpoints)
    layouts: dict[str, Layout] = field(default_factory=dict)  # parameter-name suffix -> its stored layout

    def __post_init__(self):
        compiled = tuple((_pattern(theirs), _pattern(ours), theirs, ours) for theirs, ours in self.names)
        object.__setattr__(self, "_compiled", compiled)
        object.__setattr__(self, "_ignored", tuple(re.compile(r) for r in self.ignored))

    def our_name(self, key: str) -> str | None:
        """A checkpoint key -> the model's parameter name; None for keys that hold no parameter.
        A key the table does not know is kept as it is (the model then reports it unexpected)."""
        if any(r.fullmatch(key) for r in self._ignored):
            return None
        for theirs, _, _, ours in self._compiled:
            m = theirs.fullmatch(key)
            if m:
                return ours.format(**m.groupdict())
        return key

    def checkpoint_name(self, name: str) -> str:
        """The model's parameter name -> the key this family's checkpoints store it under."""
        for _, ours, theirs, _ in self._compiled:
            m = ours.fullmatch(name)
            if m:
                return theirs.format(**m.groupdict())
        raise ValueError(f"the {self.model_type} layout has no place for parameter {name}")

    def layout(self, name: str) -> Layout | None:
        return next((lay for suffix, lay in self.layouts.items() if name.endswith(suffix)), None)

    def to_model_layout(self, name: str, t: torch.Tensor, config: GPTConfig | None = None) -> torch.Tensor:
        """A checkpoint tensor in the model's layout (nn.Linear's (out, in)); ValueError for a wrong shape."""
        lay = self.layout(name)
        return t if lay is None else lay.to_model(t, config)

    def to_checkpoint_layout(self, name: str, t: torch.Tensor, config: GPTConfig | None = None) -> torch.Tensor:
        """The inverse of to_model_layout."""
        lay = self.layout(name)
        return t if lay is None else lay.to_checkpoint(t, config)

    def stored_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A model parameter's shape as the checkpoint stores it (for messages)."""
        lay = self.layout(name)
        return shape[::-1] if lay is not None and lay.transposed else shape


def _transpose(t: torch.Tensor, config: GPTConfig | None) -> torch.Tensor:
    if t.dim() != 2:
        raise ValueError(f"has shape {tuple(t.shape)}, expected a matrix")
    return t.t()


CONV1D = Layout(_transpose, _transpose, transposed=True)  # GPT-2's Conv1D stores (in, out)


def _check_int(d: dict, name: str, default):
    value = d.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"config.json {name} is {value!r}, not an integer")
    return value


def _activation(d: dict, name: str, default: str) -> str:
    act = d.get(name, default)
    if act not in ACTIVATIONS:
        raise ValueError(f"config.json {name} {act!r} is not implemented; supported: {', '.join(ACTIVATIONS)}")
    return act


def _config(fields: dict) -> GPTConfig:
    try:
        return GPTConfig(**fields)
    except ValueError as e:
        raise ValueError(f"config.json: {e}".replace("GPTConfig.", "")) from None


# --- GPT-2: transformers' GPT2LMHeadModel ----------------------------------------------------------


def gpt2_config_from_hf(d: dict) -> GPTConfig:
    """Read a transformers GPT2Config dict, refusing fields that change the maths in a way this model does not.

    Absent fields take GPT2Config's defaults. n_ctx is ignored, as transformers ignores it: the
    position table has n_positions rows (n_ctx is used only when n_positions is absent). Dropout
    probabilities and the fields of other heads (summary_*) do not change the language model's outputs.
    """
    if d.get("add_cross_attention"):
        raise ValueError("config.json sets add_cross_attention, which this model does not implement")
    return _config(
        dict(
            block_size=d.get("n_positions", d.get("n_ctx", 1024)),
            vocab_size=d.get("vocab_size", 50257),
            n_layer=d.get("n_layer", 12),
            n_head=d.get("n_head", 12),
            n_embd=d.get("n_embd", 768),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
            n_inner=d.get("n_inner"),
            activation=_activation(d, "activation_function", "gelu_new"),
            scale_attn_weights=d.get("scale_attn_weights", True),
            scale_attn_by_inverse_layer_idx=d.get("scale_attn_by_inverse_layer_idx", False),
            reorder_and_upcast_attn=d.get("reorder_and_upcast_attn", False),
            tie_word_embeddings=d.get("tie_word_embeddings", True),
            bos_token_id=d.get("bos_token_id", 50256),
            eos_token_id=d.get("eos_token_id", 50256),
            pad_token_id=d.get("pad_token_id"),
        )
    )


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
    architecture="GPT2LMHeadModel",
    config_from_hf=gpt2_config_from_hf,
    config_to_hf=gpt2_config_to_hf,
    names=(
        ("lm_head.weight", "lm_head.weight"),
        ("transformer.{rest}", "transformer.{rest}"),
        ("{rest}", "transformer.{rest}"),  # GPT2Model's checkpoints: no `transformer.`
    ),
    ignored=(r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias",),  # causal-mask buffers of old checkpoints
    layouts={s: CONV1D for s in ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")},
)


# --- GPT-NeoX: GPTNeoXForCausalLM (Pythia, gpt-neox-20b, rinna's japanese-gpt-neox) ----------------


def _rotary(d: dict, default_pct: float) -> tuple[float, float]:
    """(rotary_pct, rope_theta) as config.json spells them: transformers 5's nested rope_parameters
    (or rope_scaling), GPT-NeoX's rotary_pct / rotary_emb_base, or partial_rotary_factor / rope_theta.
    A rotary scaling other than the plain one changes the maths: a ValueError."""
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ValueError(f"config.json rope_parameters is {params!r}, not an object")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ValueError(f"config.json asks for rope_type {kind!r}; only the plain rotary embedding is implemented")
    theta = params.get("rope_theta", d.get("rotary_emb_base", d.get("rope_theta", 10000.0)))
    pct = params.get("partial_rotary_factor", d.get("rotary_pct", d.get("partial_rotary_factor", default_pct)))
    for name, value in (("rotary_pct", pct), ("rope_theta", theta)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"config.json {name} is {value!r}, not a number")
    return float(pct), float(theta)


def _neox_common(d: dict, default_pct: float) -> dict:
    """The GPTConfig fields every GPT-NeoX config.json gives the same way."""
    pct, theta = _rotary(d, default_pct)
    return dict(
        block_size=_check_int(d, "max_position_embeddings", 2048),
        vocab_size=_check_int(d, "vocab_size", 50432),
        n_layer=_check_int(d, "num_hidden_layers", 44),
        n_head=_check_int(d, "num_attention_heads", 64),
        n_embd=_check_int(d, "hidden_size", 6144),
        layer_norm_epsilon=d.get("layer_norm_eps", 1e-5),
        activation=_activation(d, "hidden_act", "gelu"),
        position="rope",
        rotary_pct=pct,
        rope_theta=theta,
    )


def neox_config_from_hf(d: dict) -> GPTConfig:
    """Read a transformers GPTNeoXConfig dict; absent fields take its defaults (gpt-neox-20b's)."""
    return _config(
        dict(
            _neox_common(d, default_pct=0.25),
            model_type="gpt_neox",
            n_inner=_check_int(d, "intermediate_size", 24576),
            parallel_residual=d.get("use_parallel_residual", True),
            attn_bias=d.get("attention_bias", True),
            mlp_bias=True,
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            bos_token_id=d.get("bos_token_id", 0),
            eos_token_id=d.get("eos_token_id", 2),
            pad_token_id=d.get("pad_token_id"),
        )
    )


def _neox_refusal(config: GPTConfig, what: str) -> str | None:
    """Why the GPT-NeoX classes cannot compute this model (their common ground), or None."""
    checks = (
        (config.position != "rope", f"position={config.position!r} ({what} has rotary positions only)"),
        (config.qk_norm, f"qk_norm=True ({what} does not normalise q and k)"),
        (not config.bias, f"bias=False ({what}'s LayerNorms have biases)"),
        (not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx, "a scaling of the scores"),
        (config.reorder_and_upcast_attn, f"reorder_and_upcast_attn=True (not a {what} option)"),
    )
    return next((reason for failed, reason in checks if failed), None)


def _neox_hf_common(config: GPTConfig) -> dict:
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "hidden_act": config.activation,
        "max_position_embeddings": config.block_size,
        "layer_norm_eps": config.layer_norm_epsilon,
        "rotary_pct": config.rotary_pct,
        "rotary_emb_base": config.rope_theta,
        "attention_dropout": 0.0,
        "hidden_dropout": config.dropout,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }


def neox_config_to_hf(config: GPTConfig) -> dict:
    reason = _neox_refusal(config, "GPTNeoXForCausalLM")
    if reason is None and (not config.has_mlp_bias or config.last_attn_proj_bias):
        reason = "its MLP biases (GPTNeoXForCausalLM's MLP always has them)"
    if reason is not None:
        raise ValueError(f"this model has no transformers GPTNeoXForCausalLM equivalent: {reason}")
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        **_neox_hf_common(config),
        "intermediate_size": config.mlp_width,
        "use_parallel_residual": config.parallel_residual,
        "attention_bias": config.has_attn_bias,
    }


def _heads_qkv_to_model(t: torch.Tensor, config: GPTConfig) -> torch.Tensor:
    """GPT-NeoX's query_key_value rows (heads, 3, head_size) -> the model's c_attn rows (3, heads, head_size)."""
    nh, hs = config.n_head, config.head_dim
    if t.size(0) != 3 * nh * hs or t.dim() > 2 or (t.dim() == 2 and t.size(1) != config.n_embd):
        expected = (3 * nh * hs, config.n_embd) if t.dim() == 2 else (3 * nh * hs,)
        raise ValueError(f"has shape {tuple(t.shape)}, expected {expected} (3 x {nh} heads x {hs})")
    return t.reshape(nh, 3, hs, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _heads_qkv_to_checkpoint(t: torch.Tensor, config: GPTConfig) -> torch.Tensor:
    nh, hs = config.n_head, config.head_dim
    return t.reshape(3, nh, hs, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


NEOX_QKV = Layout(_heads_qkv_to_model, _heads_qkv_to_checkpoint)


def _neox_names(prefix: str, extra: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
    layer = prefix + ".layers.{i}."
    return extra + (
        (prefix + ".embed_in.weight", "transformer.wte.weight"),
        (layer + "input_layernorm.{p}", "transformer.h.{i}.ln_1.{p}"),
        (layer + "post_attention_layernorm.{p}", "transformer.h.{i}.ln_2.{p}"),
        (layer + "attention.query_key_value.{p}", "transformer.h.{i}.attn.c_attn.{p}"),
        (layer + "attention.dense.{p}", "transformer.h.{i}.attn.c_proj.{p}"),
        (layer + "mlp.dense_h_to_4h.{p}", "transformer.h.{i}.mlp.c_fc.{p}"),
        (layer + "mlp.dense_4h_to_h.{p}", "transformer.h.{i}.mlp.c_proj.{p}"),
        (prefix + ".final_layer_norm.{p}", "transformer.ln_f.{p}"),
        ("embed_out.weight", "lm_head.weight"),
        ("lm_head.weight", "lm_head.weight"),  # the name transformers 5 gives embed_out in memory
    )


NEOX_BUFFERS = r"{}\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)"

GPT_NEOX = Family(
    model_type="gpt_neox",
    architecture="GPTNeoXForCausalLM",
    config_from_hf=neox_config_from_hf,
    config_to_hf=neox_config_to_hf,
    names=_neox_names("gpt_neox"),
    ignored=(NEOX_BUFFERS.format("gpt_neox"),),
    layouts={"attn.c_attn.weight": NEOX_QKV, "attn.c_attn.bias": NEOX_QKV},
)


# --- GPT-NeoX-Japanese: GPTNeoXJapaneseForCausalLM (abeja's gpt-neox-japanese) ---------------------


def neox_japanese_config_from_hf(d: dict) -> GPTConfig:
    """Read a transformers GPTNeoXJapaneseConfig dict: sequential residual, no biases in the linears
    but the last block's attention output, the MLP `intermediate_multiple_size` times the width."""
    common = _neox_common(d, default_pct=1.0)
    multiple = d.get("intermediate_multiple_size", 4)
    if not isinstance(multiple, (int, float)) or isinstance(multiple, bool) or multiple <= 0:
        raise ValueError(f"config.json intermediate_multiple_size is {multiple!r}, not a positive number")
    return _config(
        dict(
            common,
            vocab_size=_check_int(d, "vocab_size", 32000),
            n_layer=_check_int(d, "num_hidden_layers", 32),
            n_head=_check_int(d, "num_attention_heads", 32),
            n_embd=_check_int(d, "hidden_size", 2560),
            model_type="gpt_neox_japanese",
            n_inner=int(_check_int(d, "hidden_size", 2560) * multiple),
            attn_bias=False,
            mlp_bias=False,
            last_attn_proj_bias=True,
            tie_word_embeddings=d.get("tie_word_embeddings", True),
            bos_token_id=d.get("bos_token_id", 31996),
            eos_token_id=d.get("eos_token_id", 31999),
            pad_token_id=d.get("pad_token_id"),
        )
    )


def neox_japanese_config_to_hf(config: GPTConfig) -> dict:
    reason = _neox_refusal(config, "GPTNeoXJapaneseForCausalLM")
    multiple = config.mlp_width / config.n_embd
    multiple = int(multiple) if multiple.is_integer() else multiple
    if reason is None and (config.parallel_residual or config.has_attn_bias or config.has_mlp_bias):
        reason = "its residual or biases (GPTNeoXJapaneseForCausalLM: sequential, linear biases off)"
    if reason is None and (not config.last_attn_proj_bias or int(config.n_embd * multiple) != config.mlp_width):
        reason = "its last attention bias or its MLP width"
    if reason is not None:
        raise ValueError(f"this model has no transformers GPTNeoXJapaneseForCausalLM equivalent: {reason}")
    return {
        "architectures": ["GPTNeoXJapaneseForCausalLM"],
        "model_type": "gpt_neox_japanese",
        **_neox_hf_common(config),
        "intermediate_multiple_size": multiple,
    }


GPT_NEOX_JAPANESE = Family(
    model_type="gpt_neox_japanese",
    architecture="GPTNeoXJapaneseForCausalLM",
    config_from_hf=neox_japanese_config_from_hf,
    config_to_hf=neox_japanese_config_to_hf,
    # its last block's attention output bias is a parameter of its own, added after the dense layer
    names=_neox_names(
        "gpt_neox_japanese",
        extra=(("gpt_neox_japanese.layers.{i}.attention.dense_bias", "transformer.h.{i}.attn.c_proj.bias"),),
    ),
    ignored=(NEOX_BUFFERS.format("gpt_neox_japanese"),),
    layouts={"attn.c_attn.weight": NEOX_QKV},
)


FAMILIES: dict[str, Family] = {f.model_type: f for f in (GPT2, GPT_NEOX, GPT_NEOX_JAPANESE)}


def family_of(hf_config: dict) -> Family:
    """The family of a config.json (GPT-2 when it names no model_type); ValueError if there is none."""
    model_type = hf_config.get("model_type", "gpt2")
    if model_type not in FAMILIES:
        supported = ", ".join(repr(m) for m in FAMILIES)
        raise ValueError(f"config.json is for model_type {model_type!r}, which is not implemented (only {supported})")
    return FAMILIES[model_type]


def family_for(config: GPTConfig) -> Family:
    """The family whose checkpoint layout a model of this config loads from and saves to."""
    if config.model_type not in FAMILIES:
        raise ValueError(f"GPTConfig.model_type {config.model_type!r} is not one of {', '.join(FAMILIES)}")
    return FAMILIES[config.model_type]


def hf_incompatibility(config: GPTConfig) -> str | None:
    """Why transformers has no class that computes this model in its family's layout, or None."""
    try:
        family_for(config).config_to_hf(config)
    except ValueError as e:
        return str(e)
    return None
