"""Model FLOPs utilisation: the FLOPs a training step needs, and the peak of the device it runs on."""

from __future__ import annotations

import torch

from minigpt.model.config import GPTConfig


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls of forward + backward, plus attention.

    N counts every parameter that takes part in a matmul per token: all of them except the
    position embedding (a lookup). The token embedding is counted once: for the tied lm_head
    matmul (its lookup on the way in is free), or, untied, as the lm_head's own matrix in its
    place. Biases and LayerNorm gains ride along at 6 FLOPs each, which is negligible; so do
    the elementwise rotary embedding and q/k norm. Attention adds 12 * n_layer * n_embd * T
    (PaLM's appendix B, as in nanoGPT): q @ k^T and att @ v over all T positions, x3 for
    backward, counted without the causal half-saving. The padded vocabulary rows are not
    counted: this is the model's work, not the hardware's.
    """
    n = config.num_params()
    if config.position == "learned":
        n -= config.block_size * config.n_embd  # wpe: a lookup
    if not config.tie_word_embeddings:
        n -= config.vocab_size * config.n_embd  # wte is only a lookup; the lm_head does the matmul
    return 6 * n + 12 * config.n_layer * config.n_embd * seq_len


# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, by a substring of
# torch.cuda.get_device_name(). The first match wins, so longer names come first.
PEAK_FLOPS: list[tuple[str, float]] = [
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("A6000", 155e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
    ("T4", 65e12),  # fp16
]


def device_peak_flops(device: torch.device, override: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where the figure comes from); peak None when unknown."""
    if override is not None:
        return override, "--peak-flops"
    if device.type != "cuda":
        return None, f"no peak known for {device.type}; pass --peak-flops to get an MFU"
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS:
        if key in name:
            return flops, f"{name}: {flops / 1e12:.0f} TFLOPS bf16 dense"
    return None, f"{name} is not in the peak-FLOPS table; pass --peak-flops to get an MFU"
