"""The whole model with the Triton backends against the PyTorch ones.

On the CPU the kernels run in the Triton interpreter (conftest.py sets
TRITON_INTERPRET=1), so the configs are tiny. Tolerances: fp32 logits and every
gradient within 1e-4 relative to the largest magnitude; bf16 on CUDA within 2e-2.
"""

import pytest
import torch

from minigpt import GPT, GPTConfig, KVCache
from minigpt.model.backends import set_backends
from minigpt.model.config import preset


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def forward_backward(model, idx, targets):
    model.zero_grad(set_to_none=True)
    logits = model(idx)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    loss.backward()
    return logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; CUDA runs the test below")
@pytest.mark.parametrize("T", [1, 17])
def test_triton_model_equals_pytorch_interpreted(T):
    torch.manual_seed(T)
    cfg = GPTConfig(block_size=32, vocab_size=67, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg)
    idx = torch.randint(0, 67, (2, T))
    targets = torch.randint(0, 67, (2, T))
    set_backends(model, "math", "torch")
    ref_logits, ref_grads = forward_backward(model, idx, targets)
    set_backends(model, "triton", "triton")
    logits, grads = forward_backward(model, idx, targets)
    assert model.backends == ("triton", "triton")
    assert rel_err(logits, ref_logits) < 1e-4
    for name in ref_grads:
        assert rel_err(grads[name], ref_grads[name]) < 1e-4, name


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test")
def test_triton_decode_with_cache_interpreted():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=32, vocab_size=67, n_layer=1, n_head=2, n_embd=32)
    model = set_backends(GPT(cfg), attn="triton", ln="triton")
    idx = torch.randint(0, 67, (1, 12))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(cfg, 1, 12)
        steps = [model(idx[:, :9], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(9, 12)]
    assert rel_err(torch.cat(steps, dim=1), full) < 1e-4


@pytest.mark.cuda
def test_training_step_124m_triton_matches_sdpa():
    torch.manual_seed(0)
    cfg = preset("gpt2")
    model = GPT(cfg).cuda()
    idx = torch.randint(0, cfg.vocab_size, (4, 1024), device="cuda")
    targets = torch.randint(0, cfg.vocab_size, (4, 1024), device="cuda")
    results = {}
    for backends in (("sdpa", "torch"), ("triton", "triton")):
        set_backends(model, *backends)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            results[backends] = forward_backward(model, idx, targets)
    (ref_logits, ref_grads), (logits, grads) = results.values()
    assert rel_err(logits, ref_logits) < 2e-2
    for name in ref_grads:
        assert rel_err(grads[name], ref_grads[name]) < 5e-2, name
