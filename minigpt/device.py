"""Devices and dtypes by name: what --device and --dtype say, checked to exist on this machine."""

from __future__ import annotations

import torch

# The weights-and-activations dtypes a model can be loaded in (--dtype), "auto" aside.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device --device names ("auto": CUDA if a GPU is visible, else the CPU), checked to exist
    here; a ValueError of one line otherwise. Under torchrun (local_rank given) a CUDA device
    without an index is this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and device.index is None and local_rank is not None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(
                f"--device {name} asks for CUDA, but {why} (PyTorch {torch.__version__}); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise ValueError(f"--device {name!r}: the scripts run on cpu, cuda or mps")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype --dtype names on `device` ("auto": bfloat16 on a CUDA GPU that has it, else float32).

    bfloat16 on a CUDA GPU without bfloat16 support is refused (a ValueError), as is a name outside DTYPES.
    """
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: choose from auto, {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"--dtype bfloat16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
            "use --dtype float16 or float32"
        )
    return dtype
