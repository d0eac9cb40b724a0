"""A model from a checkpoint, and a model written back as one.

    model = from_pretrained("gpt2", device="cuda", dtype=torch.bfloat16)  # a preset, hub id, directory, file or run
    model = from_pretrained("EleutherAI/gpt-neox-20b", dtype=torch.bfloat16, quantize="int4")  # ~12 GB, not 41
    save_pretrained(model, "out/export")  # model.safetensors + config.json that transformers loads

The model is built on the meta device (no memory, no initialisation) and takes the checkpoint's
tensors as its parameters, each already in `dtype` on `device` (minigpt.model.weights). With
`quantize`, each linear weight is quantized as it is read: the peak is about the quantized model
plus one full-precision tensor, never the full-precision model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from minigpt.model import weights
from minigpt.model.backends import set_backends
from minigpt.model.model import GPT
from minigpt.model.quantize import (
    DEFAULT_GROUP_SIZE,
    KERNEL_DTYPE,
    QuantizedLinear,
    check_mode,
    kernel_call,
    kernel_shape_problem,
    quantize_model,
)


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


def build_on_meta(config) -> GPT:
    """A GPT with every parameter on the meta device, to be loaded into."""
    with torch.device("meta"), SkipMetaInit():
        return GPT(config)


def from_pretrained(
    name_or_path: str | Path,
    device=None,
    dtype=None,
    attn_backend: str = "auto",
    ln_backend: str = "auto",
    quantize: str | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> GPT:
    """Load OpenAI's GPT-2 (a preset name), a hub id, a Hugging Face style directory, a .safetensors
    file or a train.py run (its latest checkpoint), in eval mode, with the backends resolved for `device`.

    quantize="int8" or "int4" (with group_size) gives the model minigpt.model.quantize.quantize_model
    makes, loaded one tensor at a time: every linear layer of the blocks and the lm_head quantized
    as its weight is read. The shapes are checked against the kernels' rules before anything is read.
    """
    if quantize is None:
        config, state, source, family = weights.load_state_dict(name_or_path, dtype=dtype, device=device)
        model = build_on_meta(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        weights.check_state_dict(state, expected, config, source, family)
        model.load_state_dict(state, strict=True, assign=True)
        model = model.to(device or "cpu").eval()
        return set_backends(model, attn_backend, ln_backend)
    return _load_quantized(name_or_path, device, dtype, attn_backend, ln_backend, quantize, group_size)


def _linear_names(model: GPT) -> dict[str, tuple[int, int]]:
    """The blocks' nn.Linear modules of a model, by name, with their (out, in) widths."""
    return {
        f"transformer.h.{name}": tuple(m.weight.shape)
        for name, m in model.transformer.h.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


def _load_quantized(name_or_path, device, dtype, attn_backend, ln_backend, mode: str, group_size: int) -> GPT:
    check_mode(mode, group_size)
    device = torch.device(device or "cpu")
    quantized: dict[str, QuantizedLinear] = {}  # module name -> its quantized layer
    checked = {}

    def convert(name: str, t: torch.Tensor, config) -> torch.Tensor:
        if not checked:  # every layer's shape against the kernel's rules, before any is quantized
            checked["linears"] = _linear_names(build_on_meta(config))
            for module, (n, k) in checked["linears"].items():
                problem = kernel_shape_problem(mode, n, k, group_size, device.type)
                if problem is not None:
                    raise ValueError(f"cannot quantize {module} ({n} x {k}) to {mode}: {problem}")
            head = (config.padded_vocab_size, config.n_embd)
            problem = kernel_shape_problem(mode, *head, group_size, device.type)
            if problem is not None:
                raise ValueError(f"cannot quantize lm_head ({head[0]} x {head[1]}) to {mode}: {problem}")
        module, _, kind = name.rpartition(".")
        if name == "lm_head.weight" and t.dim() == 2 and t.shape == (config.vocab_size, config.n_embd):
            rows = config.padded_vocab_size - config.vocab_size
            weight = torch.cat([t, t.new_zeros(rows, t.size(1))]) if rows else t
        elif kind == "weight" and checked["linears"].get(module) == tuple(t.shape):
            weight = t
        else:
            return t  # not a linear weight, or a wrong shape: check_state_dict's message names it
        with torch.no_grad():
            quantized[module] = QuantizedLinear(weight.to(device), mode, group_size)
        return torch.empty(t.shape, dtype=t.dtype, device="meta")  # its shape, for the checks

    config, state, source, family = weights.load_state_dict(name_or_path, dtype=dtype, device=device, convert=convert)
    model = build_on_meta(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights.check_state_dict(state, expected, config, source, family)
    if not quantized:  # a weights file without a config: its shape was known only once it was read
        model.load_state_dict(state, strict=True, assign=True)
        model = quantize_model(model.to(device).eval(), mode, group_size)
        return set_backends(model, attn_backend, ln_backend)
    for module, layer in quantized.items():  # the quantized layers take the float ones' places
        if module == "lm_head":
            continue
        del state[module + ".weight"]
        bias = state.pop(module + ".bias", None)
        if bias is not None:
            layer.bias = bias
        parent, _, child = module.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    state.pop("lm_head.weight", None)
    model.load_state_dict(state, strict=False, assign=True)
    leftover = [k for k, v in model.state_dict().items() if v.is_meta and not k.startswith("lm_head.")]
    if leftover:
        raise weights.CheckpointError(f"{source}: missing tensor(s) {', '.join(leftover[:5])}")
    with torch.no_grad():  # an untied head was quantized as it was read; a tied one is wte's
        head = quantized.get("lm_head")
        model.lm_head = head if head is not None else QuantizedLinear(model.transformer.wte.weight, mode, group_size)
        for layer in [m for m in model.modules() if isinstance(m, QuantizedLinear)]:
            kernel_call(layer.forward, torch.zeros(1, layer.in_features, device=device, dtype=KERNEL_DTYPE))
    model = model.to(device).eval()
    return set_backends(model, attn_backend, ln_backend)


def save_pretrained(model: GPT, directory: str | Path, transformers_only: bool = True) -> None:
    """Write model.safetensors + config.json that transformers' GPT2LMHeadModel loads.

    A model with a switch GPT2LMHeadModel lacks (config.hf_incompatibility()) is a ValueError,
    unless transformers_only=False: then config.json holds only minigpt's own config, which
    from_pretrained reads and transformers refuses (training checkpoints are written so).

    A model whose tensors are not the float ones its config describes (a quantized model: its
    int8/int4 buffers replace the weights) is a ValueError, raised before anything is written:
    writing it would lose them (over its own source directory: the model itself).
    """
    state = model.state_dict()
    if set(state) != set(build_on_meta(model.config).state_dict()):
        raise ValueError("this model is quantized; save it before quantizing (a checkpoint holds float weights)")
    weights.save_state_dict(state, model.config, directory, transformers_only)
