"""Building the model to load a checkpoint into runs no initialiser (the checkpoint provides every tensor)."""

import torch
from torch.overrides import TorchFunctionMode

from minigpt import GPT, GPTConfig
from minigpt.model.load import build_on_meta, from_pretrained, save_pretrained

TINY = dict(block_size=32, vocab_size=101, n_layer=1, n_head=2, n_embd=16)


class TensorOps(TorchFunctionMode):
    """Records the name of every torch function that reaches the tensors (below any other mode)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_meta_device_build_runs_no_initialiser(tmp_path):
    init_ops = {"normal_", "uniform_", "kaiming_uniform_", "zero_", "zeros_", "fill_"}
    with TensorOps() as real:  # the counter can fail: a real build initialises
        torch.manual_seed(0)
        model = GPT(GPTConfig(**TINY))
    assert init_ops & set(real.names)
    with TensorOps() as meta:  # the recorder sits below the modes the build enters
        build_on_meta(GPTConfig(**TINY))
    assert not init_ops & set(meta.names), sorted(init_ops & set(meta.names))
    save_pretrained(model, tmp_path)  # and a load still gives every tensor its value
    loaded = from_pretrained(tmp_path)
    idx = torch.randint(0, TINY["vocab_size"], (2, 9))
    assert torch.equal(model.eval()(idx), loaded(idx))
