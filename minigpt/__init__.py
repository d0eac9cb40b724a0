"""minigpt: a compact GPT-2 in pure PyTorch, with Triton kernels on CUDA.

    from minigpt import GPT, GPTConfig, from_pretrained

The names below are imported when first used, so that `import minigpt.files` (or running one of
the package's modules with `python -m`) does not import torch and the model first.
"""

import importlib

_EXPORTS = {
    "GPT": "minigpt.model.model",
    "KVCache": "minigpt.model.model",
    "GPTConfig": "minigpt.model.config",
    "PRESETS": "minigpt.model.config",
    "from_pretrained": "minigpt.model.load",
    "save_pretrained": "minigpt.model.load",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'minigpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
