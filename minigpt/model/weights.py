"""Reading and writing checkpoints in the Hugging Face layout: configs and tensors, never a model.

A name is a local path (a directory in the hub's layout, a .safetensors file, a train.py run), one
of OpenAI's presets or a hub id (minigpt.model.hub). The checkpoint's family (minigpt.model.families)
maps its names and layouts to the model's: keys with or without `transformer.`, old mask buffers,
Conv1D weights, an lm_head present or tied; one file or shards with an index. Each tensor is
converted to the target dtype as it is read, so a bf16 load never holds an fp32 copy of the model.
Nothing is unpickled with code execution: safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from minigpt.files import atomic_write
from minigpt.model.config import PRESETS, GPTConfig
from minigpt.model.families import GPT2, Family, family_for, family_of, hf_incompatibility
from minigpt.model.hub import WEIGHT_FILES, has_weights, hub_snapshot, parse_hub_id
from minigpt.rundir import CHECKPOINT_PREFIX, CheckpointError, latest_checkpoint

PADDED = ("transformer.wte.weight", "lm_head.weight")  # (vocab, C), padded to the model's padded vocabulary


# ----------------------------------------------------------------------------------------------
# Finding the files


def resolve_directory(name_or_path: str | Path) -> Path | None:
    """The local directory holding the config and tokenizer files of a local directory or a hub id
    (downloaded once); None for a preset name (GPT-2's tiktoken encoding) and for a single weights file.

    A train.py output directory resolves to its latest checkpoint.
    """

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or has_weights(path):
            return path
        return latest_checkpoint(path) or path
    if path.exists():
        return None
    name = str(name_or_path)
    if name in PRESETS:
        return None
    if parse_hub_id(name) is None:
        raise CheckpointError(_not_found(name))
    return hub_snapshot(name)


def _not_found(name: str) -> str:
    return (
        f"{name}: no such file or directory, not a preset ({', '.join(PRESETS)}) and not a hub id OWNER/NAME[@REVISION]"
    )


def _read_config_json(path: Path) -> tuple[GPTConfig, Family]:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} holds a JSON {_json_type(d)}, not an object of config fields")
    try:
        if "minigpt" in d:  # written by save_pretrained: the exact GPTConfig, in its family's layout
            config = _config_from_dict(d["minigpt"], "its 'minigpt' entry")
            return config, family_for(config)
        family = family_of(d)
        return family.config_from_hf(d), family
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def _json_type(value) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _config_from_dict(d, what: str) -> GPTConfig:
    """GPTConfig.from_dict of a parsed JSON value that must be an object (TypeError/ValueError if not)."""
    if not isinstance(d, dict):
        raise ValueError(f"{what} is a JSON {_json_type(d)}, not an object of GPTConfig fields")
    return GPTConfig.from_dict(d)


def find_weights(name_or_path: str | Path) -> tuple[Path, GPTConfig | None, Family]:
    """(weights file, config if one was found beside it, its family) for a name or a local path."""

    path = Path(name_or_path).expanduser()
    if not path.exists():
        name = str(name_or_path)
        if name not in PRESETS and parse_hub_id(name) is None:
            raise CheckpointError(_not_found(name))
        path = hub_snapshot(name)
    if path.is_dir():
        directory = path
        weights = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
        if weights is None:
            ckpt = latest_checkpoint(directory)
            if ckpt is None:
                raise CheckpointError(
                    f"{directory} holds no model.safetensors, pytorch_model.bin (or their shard index) or "
                    f"{CHECKPOINT_PREFIX}* checkpoint"
                )
            return find_weights(ckpt)
    else:
        directory, weights = path.parent, path
    config_file = directory / "config.json"
    if not config_file.is_file():
        return weights, None, GPT2
    return weights, *_read_config_json(config_file)


# ----------------------------------------------------------------------------------------------
# Reading tensors


_READ_BAND = 1 << 22  # elements read at a time when a tensor is converted as it is read

# safetensors dtype names -> torch dtypes
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _count(value) -> bool:
    """Whether a parsed JSON value is a non-negative integer (not a float, not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _header_entry(key: str, info: dict) -> tuple[int, int, torch.dtype, list[int]]:
    """(begin, end, dtype, shape) of one tensor's safetensors header entry; a ValueError naming the
    field unless data_offsets is two non-negative integers, dtype a known name and shape a list of
    non-negative integers."""
    for field in ("dtype", "shape", "data_offsets"):
        if field not in info:
            raise ValueError(f"the entry of tensor {key} has no {field}")
    offsets, dtype, shape = info["data_offsets"], info["dtype"], info["shape"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)):
        raise ValueError(f"tensor {key} has data_offsets {_shown(offsets)}, not two non-negative integers")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"tensor {key} has dtype {_shown(dtype)}, not one of {', '.join(SAFETENSORS_DTYPES)}")
    if not (isinstance(shape, list) and all(_count(d) for d in shape)):
        raise ValueError(f"tensor {key} has shape {_shown(shape)}, not a list of non-negative integers")
    if any(d >= 2**48 for d in shape):  # torch cannot even make an empty tensor of such a shape
        raise ValueError(f"tensor {key} has shape {_shown(shape)}, with a dimension of 2**48 or more")
    return offsets[0], offsets[1], SAFETENSORS_DTYPES[dtype], shape


# into(key, dtype, shape) -> a contiguous tensor of that dtype and shape for the reader to fill, or None
# for a new one: a loader reads straight into its own buffers (rows of a padded embedding, a scratch
# buffer it copies from), so no tensor is written twice into memory the process has never touched.
Into = Callable[[str, torch.dtype, list[int]], "torch.Tensor | None"]


def _iter_safetensors(
    path: Path, dtype: torch.dtype | None = None, into: Into | None = None
) -> tuple[dict, Iterator[tuple[str, torch.Tensor]]]:
    """Read a .safetensors file one tensor at a time with plain file reads; float tensors in `dtype`
    if given, converted a band at a time as they are read (no whole copy in the stored dtype);
    each into the tensor `into` gives for it, if any, else into a new one.

    The format is an 8-byte little-endian header length, a JSON header giving each
    tensor's dtype, shape and byte range, then the raw data. The safetensors library's
    `safe_open` memory-maps the file instead, so every page it touches counts as resident
    until the mapping goes, and a bf16 load then peaks with the whole fp32 file resident on
    top of the model. `python bench/load_memory.py` measures both readers side by side
    (peak resident memory and load time; bench/results/load-memory-*.json).
    """
    try:
        f = open(path, "rb")
        size = path.stat().st_size
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= min(size - 8, 100_000_000):
            raise ValueError(f"header length {n} does not fit a {size}-byte file")
        header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError(f"the header is a JSON {_json_type(header)}, not an object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise ValueError(f"__metadata__ is a JSON {_json_type(metadata)}, not an object")
        entries = []
        for key, info in header.items():
            if not isinstance(info, dict):
                raise ValueError(f"the entry of tensor {key} is a JSON {_json_type(info)}, not an object")
            begin, end, stored, shape = _header_entry(key, info)
            numel = 1
            for d in shape:
                numel *= d
            if not 0 <= begin <= end <= size - 8 - n or end - begin != numel * stored.itemsize:
                raise ValueError(f"tensor {key} has byte range {begin}..{end}, inconsistent with its shape or the file")
            entries.append((begin, key, stored, shape))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    data_start = 8 + n

    def read_into(buf: torch.Tensor, key: str) -> None:
        view = memoryview(buf.view(-1).view(torch.uint8).numpy()) if buf.numel() else memoryview(b"")
        if f.readinto(view) != len(view):
            raise CheckpointError(f"{path}: tensor {key} is truncated")

    def tensors():
        with f:
            for begin, key, stored, shape in sorted(entries, key=lambda e: e[0]):
                f.seek(data_start + begin)
                target = stored if dtype is None or not stored.is_floating_point else dtype
                buf = None if into is None else into(key, target, shape)
                if buf is None:
                    buf = torch.empty(shape, dtype=target)
                elif buf.dtype != target or list(buf.shape) != shape or not buf.is_contiguous():
                    raise ValueError(f"into() gave {key} a {buf.dtype} {tuple(buf.shape)} tensor, not {target} {shape}")
                if target == stored:
                    read_into(buf, key)
                else:  # read in bands of the stored dtype, each converted (and checked) into buf
                    flat = buf.view(-1)
                    band = torch.empty(min(flat.numel(), _READ_BAND), dtype=stored)
                    for start in range(0, flat.numel(), _READ_BAND):
                        part = band[: min(_READ_BAND, flat.numel() - start)]
                        read_into(part, key)
                        flat[start : start + part.numel()] = _finite(part, part.to(dtype), key, path)
                    del band, flat
                    part = None  # (a view of band)
                yield key, buf
                del buf  # let the consumer free it before the next tensor is read

    return metadata, tensors()


def _iter_sharded(
    index: Path, dtype: torch.dtype | None = None, into: Into | None = None
) -> tuple[dict, Iterator[tuple[str, torch.Tensor]]]:
    try:
        content = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read the shard index {index}: {e}") from None
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        found = "no weight_map" if weight_map is None else f"a weight_map that is a JSON {_json_type(weight_map)}"
        raise CheckpointError(f"{index} is not a shard index: it has {found}, not an object of tensor -> file names")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if Path(shard).name != shard or not (index.parent / shard).is_file():
            raise CheckpointError(f"{index} names shard {shard!r}, which is not a file beside it")

    def tensors():
        for shard in shards:  # each shard in its own format: .safetensors or .bin
            yield from read_tensors(index.parent / shard, dtype, into)[1]

    return {}, tensors()


def _iter_torch_bin(path: Path) -> tuple[dict, Iterator[tuple[str, torch.Tensor]]]:
    try:
        try:  # mmap keeps a large fp32 file out of memory until each tensor is converted
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # legacy (non-zip) files cannot be memory-mapped
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to unpickle anything but tensors ({str(e).splitlines()[0]})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return {}, iter(list(sd.items()))


def read_tensors(
    weights: Path, dtype: torch.dtype | None = None, into: Into | None = None
) -> tuple[dict, Iterator[tuple[str, torch.Tensor]]]:
    """(metadata, an iterator of (key, tensor)) of a weights file or shard index: each tensor read
    when the iterator reaches it; float tensors of safetensors files in `dtype` if given, read into
    the tensor `into` gives (see Into) where it gives one. A .bin file's tensors ignore `into`."""
    if weights.name.endswith((".safetensors.index.json", ".bin.index.json")):
        return _iter_sharded(weights, dtype, into)
    if weights.suffix == ".safetensors":
        return _iter_safetensors(weights, dtype, into)
    if weights.suffix in (".bin", ".pt", ".pth"):
        return _iter_torch_bin(weights)
    raise CheckpointError(f"{weights}: unknown weights format (expected .safetensors or .bin)")


# ----------------------------------------------------------------------------------------------
# Mapping names and shapes


def _infer_config(shapes: dict[str, tuple[int, ...]], source: Path) -> GPTConfig:
    """Guess the config from tensor shapes; the head count must match a preset's width."""
    try:
        V, C = shapes["transformer.wte.weight"]
        block_size = shapes["transformer.wpe.weight"][0]
    except KeyError as e:
        raise CheckpointError(f"{source}: no config.json and no {e.args[0]} to infer one from") from None
    n_layer = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("transformer.h."))
    heads = {p.n_embd: p.n_head for p in PRESETS.values()}
    if C not in heads:
        raise CheckpointError(
            f"{source}: no config.json, and n_embd={C} matches no preset, so the head count is unknown"
        )
    return GPTConfig(block_size=block_size, vocab_size=V, n_layer=n_layer, n_head=heads[C], n_embd=C)


def _finite(stored: torch.Tensor, converted: torch.Tensor, key: str, source: Path) -> torch.Tensor:
    """converted (stored in the target dtype), unless it holds NaN or infinity: then a CheckpointError
    naming the tensor. A sum is NaN or infinite whenever an element is (and, rarely, when finite
    values overflow it), so fast reductions clear a tensor, a band at a time (a float32 copy of a
    whole embedding would be the largest allocation of a quantized load); the exact checks run only after."""
    bands = converted.reshape(-1).split(1 << 22)
    if all(bool(torch.isfinite(b.sum(dtype=torch.float32))) for b in bands) or bool(torch.isfinite(converted).all()):
        return converted
    if converted.dtype != stored.dtype and bool(torch.isfinite(stored).all()):
        raise CheckpointError(
            f"{source}: tensor {key} overflows {str(converted.dtype).removeprefix('torch.')} "
            "(its values are finite as stored); load it in a wider dtype"
        )
    raise CheckpointError(
        f"{source}: tensor {key} holds NaN or infinite values; the weights are damaged "
        "(or were saved after training diverged)"
    )


def _check_size(config: GPTConfig, state: dict[str, torch.Tensor], lm_head, source: Path) -> None:
    """A CheckpointError if the config describes a model far larger than the tensors read, before
    anything of the config's size is allocated (a config with n_embd=1e9 was a RuntimeError from
    torch); exact shapes are compared with the model's afterwards (check_state_dict)."""
    held = sum(t.numel() for t in state.values()) + (0 if lm_head is None else lm_head.numel())
    described = config.num_params()
    if described > 2 * held + 1_000_000:
        size = ", ".join(
            f"{k}={getattr(config, k)}" for k in ("n_layer", "n_embd", "n_inner", "vocab_size", "block_size")
        )
        raise CheckpointError(
            f"{source}: its config ({size}) describes a model of {described:,} parameters, but the file holds "
            f"{held:,}; the config does not belong to these weights"
        )


def load_state_dict(
    name_or_path: str | Path,
    dtype: torch.dtype | None = None,
    device=None,
    convert: Callable[[str, torch.Tensor, GPTConfig], torch.Tensor] | None = None,
) -> tuple[GPTConfig, dict[str, torch.Tensor], Path, Family]:
    """(config, state dict under our names, weights file, its family) of the checkpoint at name_or_path.

    Tensors are converted to dtype (default float32) as they are read and moved to device
    (default cpu); the embedding is padded to the config's padded vocabulary. Check the result
    against a model with `check_state_dict` before loading it. Each tensor is written once into
    its own new memory: one stored as the model stores it is read into it, the embedding into the
    first rows of its padded tensor (on the CPU), one stored in another layout (GPT-2's Conv1D)
    into a scratch buffer that every such tensor reuses, then copied into the model's layout.

    convert(name, tensor, config), if given, sees each float tensor as it is read, in dtype and the
    model's layout (an untied lm_head unpadded), and returns it, or a meta tensor of its shape when
    it took the tensor itself: a quantizing loader keeps the quantized weight aside, so the
    full-precision model is never held.
    """
    dtype = dtype or torch.float32
    device = torch.device(device or "cpu")
    weights, config, family = find_weights(name_or_path)
    padded: dict[str, torch.Tensor] = {}  # key -> the padded tensor whose first rows it is read into
    scratch: list[torch.Tensor] = []  # the reused buffer (one, grown as needed)

    def into(key: str, target: torch.dtype, shape: list[int]) -> torch.Tensor | None:
        name = family.our_name(key)
        if config is None or convert is not None or name is None or not target.is_floating_point:
            return None
        if name in PADDED and len(shape) == 2 and shape[0] == config.vocab_size < config.padded_vocab_size:
            if device.type != "cpu":
                return None
            full = torch.empty(config.padded_vocab_size, shape[1], dtype=target)
            full[config.vocab_size :].zero_()
            padded[key] = full
            return full[: config.vocab_size]
        if name == "lm_head.weight" or family.layout(name) is None:
            return None  # kept as read: the reader's new tensor is the model's
        numel = math.prod(shape)
        if not scratch or scratch[0].numel() < numel or scratch[0].dtype != target:
            scratch[:] = [torch.empty(numel, dtype=target)]
        return scratch[0][:numel].view(shape)

    metadata, tensors = read_tensors(weights, dtype, into)
    if config is None and "minigpt_config" in metadata:
        try:
            config = _config_from_dict(json.loads(metadata["minigpt_config"]), "its minigpt_config metadata")
        except (TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
            raise CheckpointError(f"{weights}: {e}") from None

    # Collect tensors under our names, converting each to the target dtype as it is read so
    # that no full-precision copy of the whole model is ever held.
    state: dict[str, torch.Tensor] = {}
    lm_head = None
    for key, t in tensors:
        name = family.our_name(key)
        if name is None:
            continue
        if name in state:
            raise CheckpointError(f"{weights}: tensor {key} appears twice")
        if t.is_floating_point():  # (safetensors are read in dtype already: then no copy is made)
            t = _finite(t, t.to(dtype=dtype), key, weights)
        try:
            t = t if name == "lm_head.weight" else family.to_model_layout(name, t, config)
        except ValueError as e:
            raise CheckpointError(f"{weights}: {key} {e}") from None
        tied_head = name == "lm_head.weight" and config is not None and config.tie_word_embeddings
        if convert is not None and config is not None and t.is_floating_point() and not tied_head:
            kept = convert(name, t, config)
            if kept.is_meta:  # the converter took the tensor: keep only its shape
                if name == "lm_head.weight":
                    lm_head = kept
                else:
                    state[name] = kept
                del t, kept  # the tensor goes before the next one is read
                continue
            del kept
        if key in padded:
            t = padded.pop(key)
        elif scratch and t.untyped_storage().data_ptr() == scratch[0].untyped_storage().data_ptr():
            t = torch.empty(t.shape, dtype=t.dtype, device=device).copy_(t)  # the next tensor reuses scratch
        if name == "lm_head.weight":
            lm_head = t
            continue
        state[name] = t.to(device).contiguous()
    scratch.clear()  # the buffer goes before the padding below allocates
    if config is None:
        config = _infer_config({k: tuple(v.shape) for k, v in state.items()}, weights)
    _check_size(config, state, lm_head, weights)

    wte = state.get("transformer.wte.weight")
    if config.tie_word_embeddings:
        if lm_head is not None and (wte is None or not torch.equal(lm_head.to(wte.device), wte)):
            raise CheckpointError(
                f"{weights}: lm_head.weight differs from wte.weight, but the config ties them "
                "(tie_word_embeddings is true)"
            )
    elif lm_head is not None:
        state["lm_head.weight"] = lm_head if lm_head.is_meta else lm_head.to(device).contiguous()
    # The embedding (and an untied lm_head) is stored unpadded; pad with zero rows to the padded width.
    for name in PADDED:
        t = state.get(name)
        if t is not None and t.dim() == 2 and t.size(0) == config.vocab_size < config.padded_vocab_size:
            state[name] = torch.cat([t, t.new_zeros(config.padded_vocab_size - config.vocab_size, t.size(1))])
    return config, state, weights, family


def check_state_dict(
    state: dict[str, torch.Tensor],
    expected: dict[str, tuple[int, ...]],
    config: GPTConfig,
    source: Path,
    family: Family = GPT2,
) -> None:
    """A CheckpointError unless state holds exactly the expected tensor names and shapes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(
            f"{source}: missing tensor(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor(s) {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
        )
    for name, shape in expected.items():
        got = tuple(state[name].shape)
        if name in PADDED:
            got = (got[0] - (config.padded_vocab_size - config.vocab_size), got[1])
            shape = (config.vocab_size, shape[1])
        else:  # report shapes as the checkpoint stores them
            got, shape = family.stored_shape(name, got), family.stored_shape(name, shape)
        if got != shape:
            raise CheckpointError(f"{source}: {name} has shape {got} in the checkpoint, the model expects {shape}")


# ----------------------------------------------------------------------------------------------
# Saving


def hf_state_dict(state_dict: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """A model's state dict under its family's transformers names and layouts (GPT-2's Conv1D,
    GPT-NeoX's per-head q/k/v), on the CPU."""
    family = family_for(config)
    out = {}
    for name, t in state_dict.items():
        t = t.detach()
        if name in PADDED:
            t = t[: config.vocab_size]
        else:
            t = family.to_checkpoint_layout(name, t, config)
        out[family.checkpoint_name(name)] = t.contiguous().cpu()
    return out


def save_state_dict(
    state_dict: dict[str, torch.Tensor], config: GPTConfig, directory: str | Path, transformers_only: bool = True
) -> None:
    """Write model.safetensors + config.json (each atomically) that transformers loads: in the layout
    of the model's family (GPT2LMHeadModel, GPTNeoXForCausalLM, ...: config.model_type).

    A config that class cannot compute is a ValueError naming the switch, unless
    transformers_only=False: then config.json holds only the "minigpt" entry, which
    from_pretrained reads and transformers refuses for want of a model_type.
    """
    from safetensors.torch import save_file

    family = family_for(config)
    reason = hf_incompatibility(config)
    if reason is not None and transformers_only:
        raise ValueError(f"cannot save in transformers' {family.architecture} format: {reason}")
    directory = Path(directory)
    tensors = hf_state_dict(state_dict, config)
    metadata = {"format": "pt", "minigpt_config": json.dumps(config.to_dict())}
    atomic_write(directory / "model.safetensors", lambda f: save_file(tensors, f.name, metadata=metadata))
    hf_config = {} if reason is not None else family.config_to_hf(config)
    hf_config["dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    hf_config["minigpt"] = config.to_dict()
    atomic_write(directory / "config.json", json.dumps(hf_config, indent=2) + "\n")
