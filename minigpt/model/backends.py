"""The attention and LayerNorm implementations, as one table each, and the choice among them.

"math" is the written-out reference (minigpt.model.model.attention_math) the others are tested
against; "sdpa" is PyTorch's fused attention, the model's default; "triton" runs minigpt_kernels
on CUDA (or under TRITON_INTERPRET=1). "auto" picks triton on CUDA and PyTorch elsewhere, saying
once why when it falls back on a GPU. set_backends(model, ...) resolves a choice for the device
the model is on (call it again after moving the model to another kind of device).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

from minigpt.model.model import GPT, CausalSelfAttention, LayerNorm, attention_math, attention_sdpa


def attention_triton(q, k, v, visible=None, scale=None, upcast=False) -> torch.Tensor:
    # The flash kernel knows only the causal mask. It keeps its scores in float32 but casts the
    # probabilities differently from an upcast softmax, so that variant goes to the reference.
    if visible is not None or (upcast and q.dtype != torch.float32):
        return attention_sdpa(q, k, v, visible, scale, upcast)
    from minigpt_kernels import flash_attention

    return flash_attention(q, k, v, causal=True, sm_scale=scale)


def layer_norm_triton(x, normalized_shape, weight, bias, eps) -> torch.Tensor:
    from minigpt_kernels import layer_norm

    bias = bias if bias is not None else torch.zeros_like(weight)  # the kernel always adds one
    return layer_norm(x, weight, bias, eps)


ATTENTION = {"math": attention_math, "sdpa": attention_sdpa, "triton": attention_triton}
LAYER_NORM = {"torch": F.layer_norm, "triton": layer_norm_triton}
ATTN_BACKENDS = ("auto", *ATTENTION)  # what a command line offers
LN_BACKENDS = ("auto", *LAYER_NORM)

_warned: set[str] = set()


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on `device`, or None if they can."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return (
            f"Triton kernels need a CUDA device (got {device.type}); set TRITON_INTERPRET=1 to run them in "
            "the (slow) Triton interpreter"
        )
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the triton package is not installed"
    return None


def check_backend_names(attn: str, ln: str) -> None:
    if attn not in ATTN_BACKENDS:
        raise ValueError(f"unknown attention backend {attn!r}; choose from {', '.join(ATTN_BACKENDS)}")
    if ln not in LN_BACKENDS:
        raise ValueError(f"unknown LayerNorm backend {ln!r}; choose from {', '.join(LN_BACKENDS)}")


def resolve_backends(attn: str, ln: str, device: torch.device) -> tuple[str, str]:
    """The (attention, LayerNorm) that will run on `device` for the requested ones; an explicit
    "triton" that cannot run is a RuntimeError."""
    check_backend_names(attn, ln)
    reason = triton_unavailable_reason(device)
    for requested in (attn, ln):
        if requested == "triton" and reason is not None:
            raise RuntimeError(f"backend 'triton' cannot run: {reason}")
    use_triton = device.type == "cuda" and reason is None
    if device.type == "cuda" and reason is not None and "auto" in (attn, ln) and reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"backend 'auto' falls back to PyTorch: {reason}", stacklevel=3)
    if attn == "auto":
        attn = "triton" if use_triton else "sdpa"
    if ln == "auto":
        ln = "triton" if use_triton else "torch"
    return attn, ln


def set_backends(model: GPT, attn: str = "auto", ln: str = "auto", device: torch.device | str | None = None) -> GPT:
    """Make every attention and LayerNorm of `model` use the chosen implementations, resolved for
    `device` (default: where its parameters are). Returns the model; `model.backends` says which."""
    device = torch.device(device) if device is not None else model.transformer.wte.weight.device
    attn, ln = resolve_backends(attn, ln, device)
    for m in model.modules():
        if isinstance(m, CausalSelfAttention):
            m.attend = ATTENTION[attn]
        elif isinstance(m, LayerNorm):
            m.normalize = LAYER_NORM[ln]
    model.backends = (attn, ln)
    return model
