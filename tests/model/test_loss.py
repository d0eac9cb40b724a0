"""The fused, chunked lm_head + cross-entropy against the plain one (in float64) and inside the model.

Tolerances: fp32 against the float64 reference, relative error <= 1e-5 for the loss and every
gradient; under bf16 autocast, against the reference under the same autocast, 2e-2.
"""

import pytest
import torch
import torch.nn.functional as F

from minigpt import GPT, GPTConfig
from minigpt.model.backends import set_backends
from minigpt.model.loss import linear_cross_entropy, linear_cross_entropy_reference


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


def inputs(N, C, V, padded, seed, ignore=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g)
    w = torch.randn(padded, C, generator=g) * 0.5
    t = torch.randint(0, V, (N,), generator=g)
    t[torch.randperm(N, generator=g)[:ignore]] = -100
    return x, w, t


@pytest.mark.parametrize(
    "N,C,V,padded,chunk,ignore",
    [
        (37, 24, 97, 128, None, 0),  # one chunk
        (37, 24, 97, 128, 5, 3),  # ragged last chunk, ignored rows
        (1, 16, 50, 50, 1, 0),  # one row, no padding
        (64, 48, 1000, 1024, 64, 63),  # all but one row ignored
    ],
)
def test_fp32_equals_float64_reference(N, C, V, padded, chunk, ignore):
    x, w, t = inputs(N, C, V, padded, seed=N + V, ignore=ignore)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    ref = linear_cross_entropy_reference(x64, w64, t, V)
    ref.backward()
    x, w = x.requires_grad_(), w.requires_grad_()
    ours = linear_cross_entropy(x, w, t, V, chunk_rows=chunk)
    # a grad_output other than 1 must scale both gradients
    (ours * 3).backward()
    assert ours.dtype == torch.float32 and ours.dim() == 0
    assert rel_err(ours, ref) <= 1e-5
    assert rel_err(x.grad, 3 * x64.grad) <= 1e-5
    assert rel_err(w.grad, 3 * w64.grad) <= 1e-5
    assert torch.count_nonzero(w.grad[V:]) == 0  # the padding rows are never used


def test_bf16_autocast_matches_reference_under_autocast():
    x, w, t = inputs(50, 64, 300, 320, seed=3)
    results = []
    for fn in (linear_cross_entropy_reference, lambda *a: linear_cross_entropy(*a, chunk_rows=16)):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(xi, wi, t, 300)
        loss.backward()
        assert xi.grad.dtype == wi.grad.dtype == torch.float32
        results.append((loss, xi.grad, wi.grad))
    for ours, ref in zip(results[1], results[0], strict=True):
        assert rel_err(ours, ref) <= 2e-2


def test_without_grad_gives_the_loss_only():
    x, w, t = inputs(20, 8, 30, 32, seed=5, ignore=4)
    with torch.no_grad():
        ours = linear_cross_entropy(x, w, t, 30, chunk_rows=3)
    assert not ours.requires_grad
    assert rel_err(ours, linear_cross_entropy_reference(x.double(), w.double(), t, 30)) <= 1e-6


def test_every_target_ignored_gives_zero_not_nan():
    x, w, t = inputs(6, 8, 30, 32, seed=8)
    x.requires_grad_()
    loss = linear_cross_entropy(x, w, torch.full_like(t, -100), 30)
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(x.grad) == 0


def test_only_x_needs_grad():
    x, w, t = inputs(9, 8, 30, 32, seed=6)
    x.requires_grad_()
    linear_cross_entropy(x, w, t, 30).backward()
    x64 = x.detach().double().requires_grad_()
    linear_cross_entropy_reference(x64, w.double(), t, 30).backward()
    assert w.grad is None and rel_err(x.grad, x64.grad) <= 1e-5


@pytest.mark.parametrize("bad", ["x-rank", "targets", "vocab"])
def test_bad_shapes_raise(bad):
    x, w, t = inputs(9, 8, 30, 32, seed=7)
    args = {"x-rank": (x[None], w, t, 30), "targets": (x, w, t[:-1], 30), "vocab": (x, w, t, 33)}[bad]
    with pytest.raises(ValueError):
        linear_cross_entropy(*args)


def test_model_loss_equals_cross_entropy_of_logits():
    torch.manual_seed(2)
    cfg = GPTConfig(block_size=16, vocab_size=97, n_layer=2, n_head=2, n_embd=32)  # padded to 128
    model = set_backends(GPT(cfg), attn="math")
    idx = torch.randint(0, 97, (3, 16))
    targets = torch.randint(0, 97, (3, 16))
    targets[1, :5] = -100

    model(idx, targets).backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(idx)
    ref = F.cross_entropy(logits.reshape(-1, 97), targets.reshape(-1))
    ref.backward()
    with torch.no_grad():
        assert abs(model(idx, targets).item() - ref.item()) <= 1e-5
    for name, p in model.named_parameters():
        assert rel_err(fused[name], p.grad) <= 1e-5, name


@pytest.mark.cuda
def test_cuda_bf16_at_gpt2_size_uses_less_memory():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4096, 768, device="cuda", generator=g)
    w = torch.randn(50304, 768, device="cuda", generator=g) * 0.02
    t = torch.randint(0, 50257, (4096,), device="cuda", generator=g)
    results, peaks = [], []
    for fn in (linear_cross_entropy_reference, linear_cross_entropy):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(xi, wi, t, 50257)
        loss.backward()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - start)
        results.append((loss, xi.grad, wi.grad))
    for ours, ref in zip(results[1], results[0], strict=True):
        assert rel_err(ours, ref) <= 2e-2
    assert peaks[1] < peaks[0]
