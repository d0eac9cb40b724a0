"""Triton kernels for minigpt: fused LayerNorm and causal flash attention.

This package never imports `minigpt`. Each op lives in its own file with its
maths, the Triton kernels, the host launcher, the autograd.Function and a plain
PyTorch reference with the same signature.
"""

from minigpt_kernels.flash_attention import attention_reference, flash_attention
from minigpt_kernels.layer_norm import layer_norm, layer_norm_reference

__all__ = ["flash_attention", "attention_reference", "layer_norm", "layer_norm_reference"]
