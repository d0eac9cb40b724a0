"""minigpt_kernels.layer_norm against a float64 reference.

Each check draws fresh random x, weight, bias and dy in the dtype under test,
then upcasts those same values to float64 and runs `layer_norm_reference` with
autograd for the ground truth. Only the kernel's own arithmetic and the
rounding of its outputs can then differ.

Error measure: max |got - ref| / max |ref|, per tensor (y, dx, dweight, dbias).

Tolerance table
---------------
dtype     tolerance  why
float32   1e-4       fp32 arithmetic; measured errors are around 1e-7
float16   1e-3       half an fp16 ulp is 2**-11 ~ 4.9e-4 of the value
bfloat16  1e-2       half a bf16 ulp is 2**-8 ~ 3.9e-3; the Triton interpreter
                     truncates fp32 -> bf16 instead of rounding, up to 2**-7 ~ 7.8e-3

On a machine without CUDA these run under the Triton interpreter (see
conftest.py) at small shapes; the `cuda` tests use GPT-2's sizes.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minigpt_kernels.layer_norm import MAX_WIDTH, layer_norm, layer_norm_reference

TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 1e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REPO_ROOT = Path(__file__).resolve().parents[2]


def relative_error(got, ref):
    """max |got - ref| / max |ref|; the plain max difference when ref is all zeros."""
    diff = (got.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    return diff / scale if scale > 0 else diff


def random_inputs(shape, dtype, seed, weight_dtype=None):
    """x, weight, bias, dy on DEVICE; x has a non-zero mean and non-unit spread."""
    gen = torch.Generator().manual_seed(seed)
    N = shape[-1]
    x = torch.randn(shape, generator=gen) * 3.0 + 1.5
    weight = torch.randn(N, generator=gen)
    bias = torch.randn(N, generator=gen)
    dy = torch.randn(shape, generator=gen)
    weight_dtype = weight_dtype or dtype
    return (
        x.to(DEVICE, dtype),
        weight.to(DEVICE, weight_dtype),
        bias.to(DEVICE, weight_dtype),
        dy.to(DEVICE, dtype),
    )


def errors_against_reference(x, weight, bias, dy, eps=1e-5):
    """Relative errors of y, dx, dweight, dbias from layer_norm versus the float64 reference."""
    x_t, w_t, b_t = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    y = layer_norm(x_t, w_t, b_t, eps=eps)
    y.backward(dy)

    x_r, w_r, b_r = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    y_ref = layer_norm_reference(x_r, w_r, b_r, eps=eps)
    y_ref.backward(dy.double())

    assert y.shape == x.shape and y.dtype == x.dtype
    assert x_t.grad.dtype == x.dtype and w_t.grad.dtype == weight.dtype and b_t.grad.dtype == bias.dtype
    return {
        "y": relative_error(y, y_ref),
        "dx": relative_error(x_t.grad, x_r.grad),
        "dweight": relative_error(w_t.grad, w_r.grad),
        "dbias": relative_error(b_t.grad, b_r.grad),
    }


def assert_close_to_reference(shape, dtype, seed, weight_dtype=None):
    errors = errors_against_reference(*random_inputs(shape, dtype, seed, weight_dtype))
    tolerance = TOLERANCE[dtype]
    worst = max(errors.values())
    assert worst < tolerance, f"shape {shape} {dtype}: errors {errors} exceed {tolerance}"


# Widths: 1, odd, power of two, not a power of two, GPT-2 small and XL, the maximum.
# Rows: 1, primes, and counts that leave a partly filled last tile and last program.
SHAPES = [
    (1, 768),
    (13, 1),
    (13, 7),
    (4, 64),
    (101, 64),
    (31, 100),
    (37, 768),
    (3, 1000),
    (5, 1600),
    (2, 3, 768),
    (2, MAX_WIDTH),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_matches_float64_reference(shape):
    assert_close_to_reference(shape, torch.float32, seed=sum(shape))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(37, 768), (2, 5, 100)], ids=lambda s: "x".join(map(str, s)))
def test_half_precision_matches_float64_reference(shape, dtype):
    assert_close_to_reference(shape, dtype, seed=7)


def test_bfloat16_activations_with_float32_weights():
    # Mixed precision: gradients come back in each parameter's own dtype.
    assert_close_to_reference((19, 768), torch.bfloat16, seed=3, weight_dtype=torch.float32)


def test_eps_is_used():
    # Rows of near-constant values make eps dominate the variance.
    x, weight, bias, dy = random_inputs((9, 64), torch.float32, seed=11)
    x = x * 1e-3
    errors = errors_against_reference(x, weight, bias, dy, eps=1e-2)
    assert max(errors.values()) < TOLERANCE[torch.float32], errors


def test_non_contiguous_input_and_gradient():
    x, weight, bias, dy = random_inputs((48, 33), torch.float32, seed=5)
    x_t = x.t().contiguous().t().requires_grad_()  # same values, column-major
    dy_t = dy.t().contiguous().t()
    assert not x_t.is_contiguous() and not dy_t.is_contiguous()
    y = layer_norm(x_t, weight, bias)
    y.backward(dy_t)
    x_r = x.double().requires_grad_()
    y_ref = layer_norm_reference(x_r, weight.double(), bias.double())
    y_ref.backward(dy.double())
    assert relative_error(y, y_ref) < TOLERANCE[torch.float32]
    assert relative_error(x_t.grad, x_r.grad) < TOLERANCE[torch.float32]


def test_empty_input():
    x = torch.empty(0, 64, device=DEVICE, requires_grad=True)
    weight = torch.randn(64, device=DEVICE, requires_grad=True)
    bias = torch.randn(64, device=DEVICE, requires_grad=True)
    y = layer_norm(x, weight, bias)
    y.sum().backward()
    assert y.shape == (0, 64)
    assert torch.count_nonzero(weight.grad) == 0 and torch.count_nonzero(bias.grad) == 0


def test_reference_matches_torch():
    # The ground truth itself, checked against torch's own LayerNorm in float64.
    x, weight, bias, _ = random_inputs((6, 100), torch.float64, seed=2)
    expected = F.layer_norm(x, (100,), weight, bias, eps=1e-5)
    assert torch.allclose(layer_norm_reference(x, weight, bias), expected, rtol=0, atol=1e-12)
    assert layer_norm_reference(x.float(), weight, bias).dtype == torch.float32


def backward_gradients(shape, dtype, seed):
    x, weight, bias, dy = random_inputs(shape, dtype, seed)
    weight.requires_grad_()
    bias.requires_grad_()
    layer_norm(x.requires_grad_(), weight, bias).backward(dy)
    return weight.grad, bias.grad


def test_backward_is_deterministic():
    dw_1, db_1 = backward_gradients((37, 768), torch.float32, seed=13)
    dw_2, db_2 = backward_gradients((37, 768), torch.float32, seed=13)
    assert torch.equal(dw_1, dw_2) and torch.equal(db_1, db_2)


# --- errors ------------------------------------------------------------------


def test_wrong_weight_shape_is_rejected():
    x = torch.randn(4, 64, device=DEVICE)
    with pytest.raises(ValueError, match=r"weight \(32,\)"):
        layer_norm(x, torch.randn(32, device=DEVICE), torch.randn(64, device=DEVICE))
    with pytest.raises(ValueError, match=r"bias \(1, 64\)"):
        layer_norm(x, torch.randn(64, device=DEVICE), torch.randn(1, 64, device=DEVICE))


def test_too_wide_is_rejected():
    N = MAX_WIDTH + 1
    x = torch.randn(1, N, device=DEVICE)
    with pytest.raises(ValueError, match=f"N={N}"):
        layer_norm(x, torch.randn(N, device=DEVICE), torch.randn(N, device=DEVICE))


def test_float64_is_rejected():
    x = torch.randn(2, 8, dtype=torch.float64, device=DEVICE)
    w = torch.randn(8, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="float64"):
        layer_norm(x, w, w)


def test_device_mismatch_is_rejected():
    x = torch.randn(2, 8, device=DEVICE)
    weight = torch.randn(8, device="meta")
    with pytest.raises(ValueError, match="same device"):
        layer_norm(x, weight, torch.randn(8, device=DEVICE))


@pytest.mark.slow
def test_cpu_tensor_without_interpreter_is_rejected():
    # TRITON_INTERPRET is read when the kernels are defined, so use a fresh process.
    code = (
        "import torch\n"
        "from minigpt_kernels.layer_norm import layer_norm\n"
        "try:\n"
        "    layer_norm(torch.randn(2, 8), torch.randn(8), torch.randn(8))\n"
        "except RuntimeError as e:\n"
        "    assert 'CUDA tensor' in str(e) and 'TRITON_INTERPRET=1' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error raised')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr + result.stdout


# --- GPU, at GPT-2 sizes -----------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("width", [768, 1600])
def test_gpt2_sizes_on_cuda(width, dtype):
    assert_close_to_reference((8, 1024, width), dtype, seed=width)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_is_deterministic_on_cuda(dtype):
    dw_1, db_1 = backward_gradients((8 * 1024, 768), dtype, seed=17)
    dw_2, db_2 = backward_gradients((8 * 1024, 768), dtype, seed=17)
    assert torch.equal(dw_1, dw_2) and torch.equal(db_1, db_2)
