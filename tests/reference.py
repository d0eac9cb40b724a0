"""Reference checkpoints written by HF transformers, for the equivalence tests.

Tolerances (fp32, CPU), used throughout the model tests:
    logits vs transformers' GPT2LMHeadModel     max abs diff <= 1e-4
    cached vs uncached decode, backends vs math  max abs diff <= 1e-4
"""

from __future__ import annotations

from pathlib import Path

import torch

LOGITS_ATOL = 1e-4


def hf_model(seed: int = 0, **config):
    """A random-init transformers GPT2LMHeadModel (eval mode, fp32)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(**config)
    cfg.bos_token_id = cfg.eos_token_id = min(50256, cfg.vocab_size - 1)
    return GPT2LMHeadModel(cfg).eval()


def save_hf(model, directory: Path, safetensors: bool = True, prefix: bool = True) -> Path:
    """Write model like transformers does; .bin files via torch.save, optionally without the
    `transformer.` prefix and with the legacy attention buffers (as OpenAI's uploads have)."""
    directory.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(directory / "config.json")
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if not prefix:
        sd = {k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"}
        T = model.config.n_positions
        for i in range(model.config.n_layer):
            sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
            sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    if safetensors:
        from safetensors.torch import save_file

        sd.pop("lm_head.weight", None)  # tied: safetensors refuses shared storage
        save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, directory / "pytorch_model.bin")
    return directory


# Shapes tested against transformers: the exact 124M layout (fewer layers, to stay fast),
# an odd one (5 heads of 16), and a tiny-vocabulary one.
CONFIGS = {
    "124M-shape": dict(n_positions=1024, vocab_size=50257, n_layer=2, n_head=12, n_embd=768),
    "odd": dict(n_positions=64, vocab_size=50257, n_layer=3, n_head=5, n_embd=80),
    "small-vocab": dict(n_positions=32, vocab_size=101, n_layer=1, n_head=2, n_embd=32),
}
