"""minigpt: a compact GPT-2 in pure PyTorch, with Triton kernels on CUDA."""

from minigpt.model.config import PRESETS, GPTConfig
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.model.model import GPT, KVCache

__all__ = ["GPT", "GPTConfig", "KVCache", "PRESETS", "from_pretrained", "save_pretrained"]
