"""The command-line layer the top-level scripts share (train.py, sample.py, eval.py, prepare.py).

One parser whose usage errors are one line, the device and dtype flags and their checks, the
attention-backend flag (its choices are minigpt.model.backends' table), the sampling flags and
--adapter (a LoRA adapter merged into the loaded model: load_model), so that each script declares
them once and refuses a bad value with the same words.

Only the top-level scripts (and `python -m minigpt.data`, which runs prepare.py) import this
module; nothing inside the package does, so it may import from any of it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minigpt.device import DTYPES, resolve_device, resolve_dtype
from minigpt.generate.sampling import SamplingSettings
from minigpt.model.backends import ATTN_BACKENDS
from minigpt.model.load import from_pretrained
from minigpt.model.lora import is_adapter, load_adapter, merge_lora, read_adapter_config
from minigpt.model.model import GPT
from minigpt.model.quantize import DEFAULT_GROUP_SIZE, INT4_GROUP_SIZES, MODES, check_mode, quantize_model
from minigpt.model.weights import resolve_directory
from minigpt.rundir import latest_checkpoint


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line on stderr (and exit code 2), like every other error of the scripts."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


# --- flags ---------------------------------------------------------------------------------------


def add_device_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--device and --dtype, read back by resolve_device and resolve_dtype."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="weights and activations dtype (auto: bfloat16 on CUDA, float32 on CPU)",
    )


def add_attn_backend_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--attn-backend, with the choices of minigpt.model.backends.ATTN_BACKENDS."""
    parser.add_argument(
        "--attn-backend",
        default="auto",
        choices=ATTN_BACKENDS,
        help="attention implementation (auto: triton on CUDA, sdpa elsewhere)",
    )


def add_quantize_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--quantize and --quantize-group-size; quantize_settings(args) checks and reads them."""
    parser.add_argument(
        "--quantize",
        choices=MODES,
        default=None,
        help="weight-only quantization of every linear layer and the lm_head, each weight quantized as it "
        "is read (minigpt/model/quantize.py): int8 per output channel, int4 per group of inputs",
    )
    parser.add_argument(
        "--quantize-group-size",
        type=int,
        default=None,
        help=f"--quantize int4 only: inputs per scale and zero, {', '.join(map(str, INT4_GROUP_SIZES))}, "
        f"dividing the model's width (default {DEFAULT_GROUP_SIZE})",
    )


def quantize_settings(args: argparse.Namespace) -> dict:
    """from_pretrained's quantize and group_size of --quantize / --quantize-group-size; ValueError if they clash."""
    if args.quantize_group_size is not None and args.quantize != "int4":
        given = f"with --quantize {args.quantize}" if args.quantize else "without --quantize"
        raise ValueError(f"--quantize-group-size is for --quantize int4 only (int8 has one scale per row), not {given}")
    group_size = DEFAULT_GROUP_SIZE if args.quantize_group_size is None else args.quantize_group_size
    if args.quantize is not None:
        check_mode(args.quantize, group_size)
    return dict(quantize=args.quantize, group_size=group_size)


def add_sampling_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--temperature, --top-k, --top-p, --seed, --repetition-penalty, --no-repeat-ngram-size and
    --min-new-tokens; sampling_settings(args) reads all but --seed."""
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 is greedy decoding")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="sample only from the smallest set of tokens whose probability reaches p (nucleus)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable samples")
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="> 1 makes tokens already in the text less likely (a positive logit divided by it, a negative "
        "one multiplied, as in transformers); 1 is off",
    )
    parser.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        default=0,
        help="never repeat an n-gram of this many tokens (prompt included); 0 is off",
    )
    parser.add_argument(
        "--min-new-tokens",
        type=int,
        default=0,
        help="the end-of-text token is impossible until this many tokens are generated",
    )


def sampling_settings(args: argparse.Namespace) -> SamplingSettings:
    """The SamplingSettings of add_sampling_flags' flags (a ValueError saying which one is bad)."""
    return SamplingSettings(
        args.temperature,
        args.top_k,
        args.top_p,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        min_new_tokens=args.min_new_tokens,
    )


def add_adapter_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--adapter DIR; adapter_directory(args) checks it, load_model(...) applies it."""
    parser.add_argument(
        "--adapter",
        default=None,
        metavar="DIR",
        help="a LoRA adapter in PEFT's format (adapter_config.json + adapter_model.safetensors: a train.py "
        "--lora-rank checkpoint or run directory, or one PEFT wrote for this model), applied to --init's "
        "weights and merged into them before use; with --quantize the merged layers are quantized "
        "(the float model is loaded first, so the load's peak memory is the float model's)",
    )


def adapter_directory(args: argparse.Namespace) -> Path | None:
    """--adapter's directory (a train.py run directory: its latest checkpoint), checked before any model is
    loaded: ValueError (one line) for a missing path, a directory that holds no LoRA adapter, an adapter
    config load_adapter cannot apply, or the adapter --init already holds merged (a checkpoint of the same
    LoRA run). Whether it fits the model (its layers and shapes) is checked by load_model."""
    if args.adapter is None:
        return None
    path = Path(args.adapter).expanduser()
    if not path.exists():
        raise ValueError(f"--adapter {args.adapter}: no such directory")
    if not path.is_dir():
        raise ValueError(f"--adapter {args.adapter} is a file; give the directory that holds adapter_config.json")
    if not is_adapter(path):
        latest = latest_checkpoint(path)  # a train.py --lora-rank run: its newest checkpoint
        if latest is not None and is_adapter(latest):
            path = latest
    try:
        read_adapter_config(path)
    except ValueError as e:
        raise ValueError(f"--adapter: {e}") from None
    init_dir = resolve_directory(args.init)
    if init_dir is not None and is_adapter(init_dir):
        same = init_dir.resolve() == path.resolve()
        if same or init_dir.resolve().parent == path.resolve().parent:  # two checkpoints of one LoRA run
            raise ValueError(
                f"--init {args.init} already holds the merged weights of the LoRA run {path} comes from; "
                "give the model it was trained on as --init (its adapter_config.json's base_model_name_or_path)"
            )
    return path


def load_model(args: argparse.Namespace, device, dtype, quantization: dict) -> GPT:
    """from_pretrained(--init) on device in dtype with --attn-backend and quantization (quantize_settings'
    dict), --adapter (if given) loaded onto it and merged (minigpt.model.lora), so every layer is a plain
    one again. With both, the model is loaded in float, adapted, merged, then quantized (quantize_model):
    the adapter changes the weights that are rounded, as if the merged model had been saved and loaded.
    A ValueError (one line) for an adapter of another model."""
    adapter = adapter_directory(args)
    if adapter is None:
        return from_pretrained(args.init, device=device, dtype=dtype, attn_backend=args.attn_backend, **quantization)
    model = from_pretrained(args.init, device=device, dtype=dtype, attn_backend=args.attn_backend)
    try:
        load_adapter(model, adapter)
    except ValueError as e:
        raise ValueError(f"--adapter: {e}") from None
    merge_lora(model)
    model.requires_grad_(False)
    if quantization.get("quantize") is not None:
        quantize_model(model, quantization["quantize"], quantization["group_size"])
    return model


__all__ = [
    "DTYPES",
    "OneLineParser",
    "add_adapter_flag",
    "add_attn_backend_flag",
    "add_device_flags",
    "add_sampling_flags",
    "adapter_directory",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "sampling_settings",
]
