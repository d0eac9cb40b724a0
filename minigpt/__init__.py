"""minigpt: a compact GPT-2 in pure PyTorch, with Triton kernels on CUDA."""
from minigpt.config import PRESETS, GPTConfig
from minigpt.model import GPT, KVCache

__all__ = ["GPT", "GPTConfig", "KVCache", "PRESETS"]
