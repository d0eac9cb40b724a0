"""LoRA: low-rank adapters on a model's linear layers, and their files in PEFT's format.

    add_lora(model, rank=8, alpha=16, targets=("c_attn", "c_proj"))  # only the adapters train
    save_adapter(model, "out/adapter")   # adapter_config.json + adapter_model.safetensors (PEFT)
    load_adapter(model, "out/adapter")   # the same adapter back on a model of the same shape
    merge_lora(model)                    # plain linear layers again: save_pretrained writes a checkpoint

Each chosen layer y = base(x) becomes y = base(x) + scaling * B(A(dropout(x))) with A (rank, in) and
B (out, rank), scaling = alpha / rank. The base is frozen: an nn.Linear, an int8/int4 QuantizedLinear
(minigpt.model.quantize; gradients still flow through it to the layers below) or, for a tied
lm_head, the token embedding itself. A starts as PEFT starts it (kaiming-uniform, a = sqrt(5)) and
B at zero, so a new adapter leaves the model's outputs unchanged.

Layers are chosen by name suffix, as PEFT's target_modules are: "c_attn" wraps every block's
attn.c_attn, "c_proj" both output projections, "mlp.c_proj" only the MLP's. The files are those
`peft.PeftModel.from_pretrained(GPT2LMHeadModel, dir)` reads: keys
base_model.model.<module>.lora_A.weight / lora_B.weight, and fan_in_fan_out set, as GPT-2's Conv1D
layers store their weights (in, out); the adapter matrices themselves are stored as for nn.Linear.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt.files import atomic_write
from minigpt.model.model import GPT
from minigpt.model.quantize import QuantizedLinear

# The linear layers of GPT-2 that an adapter can target: --lora-targets' help and the one-line
# errors list them. Any suffix of a linear layer's name works (e.g. "h.0.attn.c_attn").
TARGETS = {
    "c_attn": "attention q, k, v projection",
    "c_proj": "both output projections (attention and MLP)",
    "attn.c_proj": "the attention's output projection",
    "c_fc": "the MLP's up-projection",
    "mlp.c_proj": "the MLP's down-projection",
    "lm_head": "the output layer (tied to wte or not)",
}
DEFAULT_TARGETS = ("c_attn", "c_proj")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel's names of the wrapped model's modules


def targets_help() -> str:
    return "; ".join(f"{name}: {what}" for name, what in TARGETS.items())


class _FrozenQuantizedMatmul(torch.autograd.Function):
    """y = layer(x) for a frozen QuantizedLinear, with the input's gradient grad_y W (the
    dequantized weight): PyTorch's packed kernels have no derivative of their own."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantizedLinear) -> torch.Tensor:
        ctx.layer, ctx.dtype = layer, x.dtype
        return layer(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w = ctx.layer.dequantized_weight()  # (N, K) float32, made for this backward only
        return (grad.float() @ w).to(ctx.dtype), None


class TiedHead(nn.Module):
    """The tied lm_head as a layer: logits = x wte^T. It refers to the embedding without owning it,
    so wte stays one parameter under one name."""

    def __init__(self, wte: nn.Embedding):
        super().__init__()
        self.__dict__["wte"] = wte  # not registered: the model owns it

    @property
    def weight(self) -> torch.Tensor:
        return self.wte.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.wte.weight)


class LoRALinear(nn.Module):
    """base(x) + scaling * lora_B(lora_A(dropout(x))), the base frozen."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if isinstance(base, QuantizedLinear):
            in_features, out_features, dtype = base.in_features, base.out_features, torch.float32
            device = base.qweight.device
        else:
            out_features, in_features = base.weight.shape
            dtype, device = base.weight.dtype, base.weight.device
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.in_features, self.out_features = in_features, out_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(rank, out_features, bias=False, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default init
        nn.init.zeros_(self.lora_B.weight)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base, QuantizedLinear) and torch.is_grad_enabled() and x.requires_grad:
            return _FrozenQuantizedMatmul.apply(x, self.base)
        return self.base(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_forward(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def base_weight(self) -> torch.Tensor:
        """The frozen (out, in) weight, in float32 for a quantized base."""
        if isinstance(self.base, QuantizedLinear):
            return self.base.dequantized_weight()
        return self.base.weight

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @property
    def weight(self) -> torch.Tensor:
        """The effective (out, in) weight, base + B A * scaling: what GPT.head_weight hands the
        fused loss when the lm_head is adapted (differentiable in A and B)."""
        base = self.base_weight()
        return base + self.delta_weight().to(base.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base, "bias", None)


# ----------------------------------------------------------------------------------------------
# Adding, finding and merging adapters


def check_settings(rank, alpha, dropout) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"LoRA alpha must be a positive number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


def _matches(name: str, target: str) -> bool:
    """PEFT's rule: the module's full name is the target, or ends with "." + target."""
    return name == target or name.endswith("." + target)


def _linear_layers(model: GPT) -> dict[str, nn.Module]:
    """Every layer an adapter may wrap, by module name: the blocks' linear layers and the lm_head
    (the embedding as a TiedHead when tied)."""
    layers = {
        f"transformer.h.{name}": m
        for name, m in model.transformer.h.named_modules()
        if isinstance(m, (nn.Linear, QuantizedLinear, LoRALinear))
    }
    layers = {k: v for k, v in layers.items() if ".lora_" not in k and not k.endswith(".base")}
    layers["lm_head"] = model.lm_head if model.lm_head is not None else TiedHead(model.transformer.wte)
    return layers


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def parse_targets(targets) -> tuple[str, ...]:
    """A list of target suffixes from a tuple/list or a comma-separated string."""
    if isinstance(targets, str):
        targets = targets.split(",")
    targets = tuple(t.strip() for t in targets)
    if not targets or any(not t for t in targets):
        raise ValueError(f"LoRA targets must be layer names such as {', '.join(TARGETS)}, got {targets!r}")
    return targets


def add_lora(
    model: GPT, rank: int, alpha: float, targets=DEFAULT_TARGETS, dropout: float = 0.0
) -> dict[str, LoRALinear]:
    """Wrap, in place, every linear layer whose name ends with one of `targets` in a LoRALinear and
    freeze everything else; returns the wrapped layers by name. Everything is checked before the
    model is touched: a ValueError (one line) for rank < 1, alpha <= 0, a target naming no linear layer."""
    check_settings(rank, alpha, dropout)
    targets = parse_targets(targets)
    if lora_layers(model):
        raise ValueError("the model already has LoRA adapters (merge_lora first to add new ones)")
    layers = _linear_layers(model)
    for t in targets:
        if not any(_matches(name, t) for name in layers):
            other = [n for n, _ in model.named_modules() if _matches(n, t)]
            why = "is not a linear layer" if other else "names no layer of this model"
            raise ValueError(
                f"LoRA target {t!r} {why}; choose among {', '.join(TARGETS)} (or a suffix of a layer name)"
            )
    chosen = {name: layer for name, layer in layers.items() if any(_matches(name, t) for t in targets)}
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = {}
    for name, layer in chosen.items():
        wrapped[name] = LoRALinear(layer, rank, alpha, dropout)
        _set_module(model, name, wrapped[name])
    model.lora_config = {"rank": rank, "alpha": alpha, "targets": list(targets), "dropout": dropout}
    return wrapped


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in lora_layers(model).values() for p in (m.lora_A.weight, m.lora_B.weight)]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors under the model's names (<module>.lora_A.weight, ...), unpadded as PEFT's."""
    out = {}
    for name, m in lora_layers(model).items():
        out[f"{name}.lora_A.weight"] = m.lora_A.weight.detach()
        b = m.lora_B.weight.detach()
        if name == "lm_head":
            b = b[: model.config.vocab_size]  # the padded rows' logits are cut off anyway
        out[f"{name}.lora_B.weight"] = b
    return out


@torch.no_grad()
def merge_lora(model: GPT) -> GPT:
    """Fold every adapter into its layer, in place: plain nn.Linear layers with weight base + B A * scaling
    (in float32 for a quantized base: merging leaves those layers unquantized). A tied lm_head with an
    adapter becomes a head of its own (tie_word_embeddings False), as the merged head differs from wte.
    Returns the model, whose outputs are those of the adapted one (to rounding); the other parameters
    keep their requires_grad (frozen by add_lora)."""
    for name, m in lora_layers(model).items():
        if isinstance(m.base, TiedHead):
            model.config = dataclasses.replace(model.config, tie_word_embeddings=False)
        weight = m.weight.detach()
        bias = m.bias
        linear = nn.Linear(
            m.in_features, m.out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype
        )
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias.to(weight.dtype))
        _set_module(model, name, linear)
    model.__dict__.pop("lora_config", None)
    return model


# ----------------------------------------------------------------------------------------------
# PEFT's files


def save_adapter(model: GPT, directory: str | Path, base_model: str | None = None) -> Path:
    """Write the model's adapters as PEFT does: directory/adapter_config.json and
    adapter_model.safetensors (each atomically), which peft.PeftModel.from_pretrained applies to
    transformers' GPT2LMHeadModel of the same shape (for a GPT-2 family model: the names are the
    same). `base_model` is recorded as base_model_name_or_path. Returns the directory."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save (add_lora or load_adapter first)")
    first = next(iter(layers.values()))
    settings = getattr(model, "lora_config", None) or {
        "rank": first.rank,
        "alpha": first.alpha,
        "targets": sorted(layers),
        "dropout": 0.0,
    }
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": settings["rank"],
        "lora_alpha": settings["alpha"],
        "lora_dropout": settings["dropout"],
        "target_modules": settings["targets"],
        # GPT-2's Conv1D layers hold (in, out) weights: PEFT transposes the delta when it merges them
        "fan_in_fan_out": any(name != "lm_head" for name in layers),
        "bias": "none",
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    tensors = {PEFT_PREFIX + k: v.cpu().contiguous() for k, v in lora_state_dict(model).items()}
    shape = {k: getattr(model.config, k) for k in ("n_layer", "n_head", "n_embd", "vocab_size", "model_type")}
    metadata = {"format": "pt", "minigpt_model": json.dumps(shape)}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / WEIGHTS_FILE, lambda f: save_file(tensors, f.name, metadata=metadata))
    atomic_write(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return directory


def is_adapter(directory: str | Path) -> bool:
    return (Path(directory) / CONFIG_FILE).is_file()


def read_adapter_config(directory: str | Path) -> dict:
    """adapter_config.json, checked for what load_adapter supports (one-line ValueError otherwise)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{directory} holds no {CONFIG_FILE}: not a LoRA adapter directory")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ValueError(f"{path} is not a LoRA adapter config (peft_type must be LORA)")
    unsupported = {
        "use_dora": False,
        "use_rslora": False,
        "bias": "none",
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    for key, plain in unsupported.items():
        if config.get(key, plain) not in (plain, [], {}, None, False, "none"):
            raise ValueError(f"{path}: {key}={config[key]!r} is not supported (only plain LoRA adapters)")
    targets = config.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise ValueError(f"{path}: target_modules must be a list of layer names or a pattern, got {targets!r}")
    try:
        check_settings(config.get("r"), config.get("lora_alpha"), config.get("lora_dropout", 0.0))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return config


def load_adapter(model: GPT, directory: str | Path, dropout: float | None = None) -> dict[str, LoRALinear]:
    """Read a PEFT LoRA adapter (save_adapter's, or one PEFT wrote for a GPT2LMHeadModel) onto a model
    without adapters, in place; returns the wrapped layers. Checked before the model is touched: a
    one-line ValueError for an adapter of another model (a layer it lacks, another shape), a
    tensor that is not an adapter's, or settings it cannot apply."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_adapter_config(directory)
    path = Path(directory) / WEIGHTS_FILE
    try:
        saved = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ValueError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    layers = _linear_layers(model)
    targets = config["target_modules"]
    if isinstance(targets, str):  # PEFT: a pattern the whole module name must match
        targets = [name for name in layers if re.fullmatch(targets, name)]
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in saved.items():
        name = key.removeprefix(PEFT_PREFIX)
        if name.endswith(".base_layer.weight"):  # PEFT also saves a tied embedding it adapted: the base's own
            continue
        module, _, part = name.rpartition(".lora_")
        if part not in ("A.weight", "B.weight"):
            raise ValueError(f"{path}: tensor {key} is not a LoRA adapter's (lora_A / lora_B weight)")
        if module not in layers:
            raise ValueError(
                f"{path} is an adapter for another model: it adapts {module}, which this model does not have"
            )
        tensors.setdefault(module, {})[part[0]] = t
    rank = config["r"]
    for module, parts in tensors.items():
        layer = layers[module]
        if isinstance(layer, TiedHead):
            out_features, in_features = model.config.vocab_size, layer.weight.shape[1]
        elif isinstance(layer, QuantizedLinear):
            out_features, in_features = layer.out_features, layer.in_features
        else:
            out_features, in_features = layer.weight.shape
        if module == "lm_head":
            out_features = model.config.vocab_size
        expected = {"A": (rank, in_features), "B": (out_features, rank)}
        for part, shape in expected.items():
            if part not in parts:
                raise ValueError(f"{path}: no lora_{part} tensor for {module}")
            if tuple(parts[part].shape) != shape:
                raise ValueError(
                    f"{path} is an adapter for another model: {module}.lora_{part} has shape "
                    f"{tuple(parts[part].shape)}, this model needs {shape}"
                )
    chosen = [name for name in layers if any(_matches(name, t) for t in targets)]
    if sorted(chosen) != sorted(tensors):
        missing = sorted(set(chosen) - set(tensors)) or sorted(set(tensors) - set(chosen))
        raise ValueError(f"{path}: its target_modules and its tensors disagree (on {missing[0]})")
    if not chosen:
        raise ValueError(f"{path} is an adapter for another model: its targets {targets} name no layer of this one")
    wrapped = add_lora(
        model, rank, config["lora_alpha"], chosen, config.get("lora_dropout", 0.0) if dropout is None else dropout
    )
    model.lora_config["targets"] = list(targets)
    with torch.no_grad():
        for module, layer in wrapped.items():
            a, b = tensors[module]["A"], tensors[module]["B"]
            layer.lora_A.weight.copy_(a)
            layer.lora_B.weight.zero_()
            layer.lora_B.weight[: b.shape[0]].copy_(b)
    return wrapped
