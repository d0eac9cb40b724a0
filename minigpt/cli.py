"""The command-line layer the top-level scripts share (train.py, sample.py, eval.py, prepare.py).

One parser whose usage errors are one line, the device and dtype flags and their checks, the
attention-backend flag (its choices are minigpt.model.backends' table) and the sampling flags,
so that each script declares them once and refuses a bad value with the same words.

Only the top-level scripts (and `python -m minigpt.data`, which runs prepare.py) import this
module; nothing inside the package does, so it may import from any of it.
"""

from __future__ import annotations

import argparse

from minigpt.device import DTYPES, resolve_device, resolve_dtype
from minigpt.generate.sampling import SamplingSettings
from minigpt.model.backends import ATTN_BACKENDS


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


def add_sampling_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--temperature, --top-k, --top-p and --seed; sampling_settings(args) reads the first three."""
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 is greedy decoding")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="sample only from the smallest set of tokens whose probability reaches p (nucleus)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable samples")


def sampling_settings(args: argparse.Namespace) -> SamplingSettings:
    """The SamplingSettings of add_sampling_flags' flags (a ValueError saying which one is bad)."""
    return SamplingSettings(args.temperature, args.top_k, args.top_p)


__all__ = [
    "DTYPES",
    "OneLineParser",
    "add_attn_backend_flag",
    "add_device_flags",
    "add_sampling_flags",
    "resolve_device",
    "resolve_dtype",
    "sampling_settings",
]
