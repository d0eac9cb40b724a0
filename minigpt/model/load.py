"""A model from a checkpoint, and a model written back as one.

    model = from_pretrained("gpt2", device="cuda", dtype=torch.bfloat16)  # a preset, hub id, directory, file or run
    model = from_pretrained("EleutherAI/gpt-neox-20b", dtype=torch.bfloat16, quantize="int4")  # ~12 GB, not 41
    save_pretrained(model, "out/export")  # model.safetensors + config.json that transformers loads

The model is built on the meta device (no memory, no initialisation) and takes the checkpoint's
tensors as its parameters, each already in `dtype` on `device` (minigpt.model.weights). With
`quantize`, each linear weight is quantized as it is read: the peak is about the quantized model
plus one full-precision tensor, never the full-precision model. The quantized model is then kept
in a cache ($MINIGPT_QUANTIZED_DIR, else ~/.cache/minigpt/quantized), so the next load of the same
checkpoint files (their names, sizes and times), mode, dtype and device type reads it instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from minigpt.files import atomic_write
from minigpt.model import weights
from minigpt.model.backends import set_backends
from minigpt.model.config import GPTConfig
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
    quantized_cache: bool = True,
) -> GPT:
    """Load OpenAI's GPT-2 (a preset name), a hub id, a Hugging Face style directory, a .safetensors
    file or a train.py run (its latest checkpoint), in eval mode, with the backends resolved for `device`.

    quantize="int8" or "int4" (with group_size) gives the model minigpt.model.quantize.quantize_model
    makes, loaded one tensor at a time: every linear layer of the blocks and the lm_head quantized
    as its weight is read. The shapes are checked against the kernels' rules before anything is read.
    The quantized model is kept on disk and read back by the next such load (quantized_cache=False:
    neither read nor written; see quantized_cache_file).
    """
    if quantize is None:
        config, state, source, family = weights.load_state_dict(name_or_path, dtype=dtype, device=device)
        model = build_on_meta(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        weights.check_state_dict(state, expected, config, source, family)
        model.load_state_dict(state, strict=True, assign=True)
        model = model.to(device or "cpu").eval()
        return set_backends(model, attn_backend, ln_backend)
    check_mode(quantize, group_size)
    device = torch.device(device or "cpu")
    cache = quantized_cache_file(name_or_path, quantize, group_size, dtype or torch.float32, device)
    cache = cache if quantized_cache else None
    model = read_quantized_cache(cache, device) if cache is not None else None
    if model is None:
        model = _load_quantized(name_or_path, device, dtype, quantize, group_size)
        if cache is not None:
            write_quantized_cache(model, cache)
    return set_backends(model.to(device).eval(), attn_backend, ln_backend)


def _linear_names(model: GPT) -> dict[str, tuple[int, int]]:
    """The blocks' nn.Linear modules of a model, by name, with their (out, in) widths."""
    return {
        f"transformer.h.{name}": tuple(m.weight.shape)
        for name, m in model.transformer.h.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


def _load_quantized(name_or_path, device: torch.device, dtype, mode: str, group_size: int) -> GPT:
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
        return quantize_model(model.to(device).eval(), mode, group_size)
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
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------
# The quantized-weight cache


def quantized_cache_dir() -> Path:
    """$MINIGPT_QUANTIZED_DIR, else ~/.cache/minigpt/quantized."""
    root = os.environ.get("MINIGPT_QUANTIZED_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "minigpt" / "quantized"


def quantized_cache_file(name_or_path, mode: str, group_size: int, dtype: torch.dtype, device) -> Path | None:
    """Where the quantized model of this checkpoint, mode, group size, dtype and device type is kept:
    named by a hash of those and of every file beside the weights (name, size, modification time),
    so a changed checkpoint is quantized afresh. None for a name that is no local file or cached
    hub snapshot (nothing is downloaded here; the load that follows says what is wrong)."""
    try:
        source = weights.find_weights(name_or_path)[0]
    except (ValueError, OSError):  # CheckpointError is a ValueError; the load itself reports it
        return None
    files = sorted(p for p in source.parent.iterdir() if p.is_file() and not p.name.startswith("."))
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = json.dumps([str(source.resolve()), stamp, mode, group_size, str(dtype), torch.device(device).type])
    return quantized_cache_dir() / f"{hashlib.sha1(key.encode()).hexdigest()}.safetensors"


def _cache_record(model: GPT) -> dict:
    """What a cache file says of its model: the config, torch's version and each quantized layer."""
    layers = {
        name: [m.mode, m.group_size, m.out_features, m.in_features]
        for name, m in model.named_modules()
        if isinstance(m, QuantizedLinear)
    }
    return {"config": model.config.to_dict(), "torch": torch.__version__, "layers": layers}


def write_quantized_cache(model: GPT, path: Path) -> None:
    """Keep a quantized model (atomically); a failure (a full disk, a read-only home) is one line on
    stderr and the model is used as it is."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"minigpt_quantized": json.dumps(_cache_record(model))}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: save_file(tensors, f.name, metadata=metadata))
    except OSError as e:
        print(f"minigpt: could not keep the quantized model in {path}: {e.strerror or e}", file=sys.stderr)


def read_quantized_cache(path: Path, device: torch.device) -> GPT | None:
    """The model kept in a cache file, or None if there is none (or it is unusable: then one line on
    stderr says why, and the caller quantizes afresh and replaces it)."""
    if not path.is_file():
        return None
    try:
        metadata, tensors = weights.read_tensors(path)
        record = json.loads(metadata["minigpt_quantized"])
        if record["torch"] != torch.__version__:  # int4's packed layout is the kernel's own
            raise ValueError(f"it was written by torch {record['torch']}, this is {torch.__version__}")
        state = {k: t.to(device) for k, t in tensors}
        model = build_on_meta(GPTConfig.from_dict(record["config"]))
        for name, (mode, group_size, n, k) in record["layers"].items():
            buffers = {key[len(name) + 1 :]: state.pop(key) for key in list(state) if key.startswith(name + ".")}
            layer = QuantizedLinear.from_buffers(mode, group_size or DEFAULT_GROUP_SIZE, n, k, buffers)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
        unexpected = model.load_state_dict(state, strict=False, assign=True).unexpected_keys
        leftover = [k for k, v in model.state_dict().items() if v.is_meta]
        if unexpected or leftover:
            raise ValueError(f"its tensors do not match its config ({(unexpected or leftover)[0]})")
    except (ValueError, KeyError, TypeError, RuntimeError) as e:  # CheckpointError and JSONDecodeError are ValueErrors
        print(f"minigpt: not using the quantized model kept in {path}: {str(e).splitlines()[0]}", file=sys.stderr)
        return None
    return model


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
