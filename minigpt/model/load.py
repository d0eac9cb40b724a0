"""A model from a checkpoint, and a model written back as one.

    model = from_pretrained("gpt2", device="cuda", dtype=torch.bfloat16)  # a preset, hub id, directory, file or run
    save_pretrained(model, "out/export")  # model.safetensors + config.json that transformers loads

The model is built on the meta device (no memory, no initialisation) and takes the checkpoint's
tensors as its parameters, each already in `dtype` on `device` (minigpt.model.weights).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from minigpt.model import weights
from minigpt.model.backends import set_backends
from minigpt.model.model import GPT


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
    name_or_path: str | Path, device=None, dtype=None, attn_backend: str = "auto", ln_backend: str = "auto"
) -> GPT:
    """Load OpenAI's GPT-2 (a preset name), a hub id, a Hugging Face style directory, a .safetensors
    file or a train.py run (its latest checkpoint), in eval mode, with the backends resolved for `device`."""
    config, state, source, family = weights.load_state_dict(name_or_path, dtype=dtype, device=device)
    model = build_on_meta(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights.check_state_dict(state, expected, config, source, family)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device or "cpu").eval()
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
