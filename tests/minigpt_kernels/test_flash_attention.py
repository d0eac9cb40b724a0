"""minigpt_kernels.flash_attention against attention_reference computed in float64.

Without a GPU the kernels run under the Triton interpreter (see conftest.py), on
small shapes in float32. The CUDA tests run GPT-2 sizes in bfloat16 and float16.

Tolerances: a result x passes against the reference r when

    max|x - r| <= RTOL * max|r| + ATOL

for the output and for each of dq, dk, dv. ATOL only matters where r is zero
analytically (T = 1: softmax over one key is constant, so dq = dk = 0).

    inputs     reference computed in   RTOL    ATOL    why
    float32    float64                 1e-4    1e-5    fp32 accumulation, IEEE dot products
    float16    float32                 5e-3    1e-4    P and dS are rounded to fp16 for the dots
    bfloat16   float32                 2e-2    1e-3    same, with 8 bits of mantissa

The reference always starts from the very same (rounded) inputs, upcast.
"""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from minigpt_kernels.flash_attention import _backward, _forward, attention_reference, flash_attention

TOLERANCES = {  # dtype: (RTOL, ATOL)
    torch.float32: (1e-4, 1e-5),
    torch.float16: (5e-3, 1e-4),
    torch.bfloat16: (2e-2, 1e-3),
}
REFERENCE_DTYPE = {torch.float32: torch.float64, torch.float16: torch.float32, torch.bfloat16: torch.float32}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(seed, B, H, Tq, Tk, D, dtype=torch.float32, device=DEVICE):
    """Fresh q, k, v (leaf tensors that require grad) and an output gradient dO."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(T):
        return torch.randn(B, H, T, D, generator=g).to(device=device, dtype=dtype)

    q, k, v = (randn(T).requires_grad_() for T in (Tq, Tk, Tk))
    return q, k, v, randn(Tq)


def reference_outputs(q, k, v, do, causal, sm_scale=None):
    """Output and (dq, dk, dv) of attention_reference on the inputs upcast to the reference dtype."""
    ref_dtype = REFERENCE_DTYPE[q.dtype]
    qr, kr, vr = (t.detach().to(ref_dtype).requires_grad_() for t in (q, k, v))
    out = attention_reference(qr, kr, vr, causal=causal, sm_scale=sm_scale)
    grads = torch.autograd.grad(out, (qr, kr, vr), do.to(ref_dtype))
    return out.detach(), grads


def assert_close(name, x, ref, dtype):
    rtol, atol = TOLERANCES[dtype]
    assert x.shape == ref.shape, f"{name}: shape {tuple(x.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(x).all(), f"{name}: non-finite values"
    err = (x.to(ref.dtype) - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= rtol * scale + atol, f"{name}: max abs error {err:.3e} vs max |ref| {scale:.3e} (rtol {rtol})"


def check_against_reference(q, k, v, do, causal, sm_scale=None):
    out = flash_attention(q, k, v, causal=causal, sm_scale=sm_scale)
    assert out.dtype == q.dtype
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_out, ref_grads = reference_outputs(q, k, v, do, causal, sm_scale)
    assert_close("out", out, ref_out, q.dtype)
    for name, x, r in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        assert_close(name, x, r, q.dtype)


# ----------------------------------------------------------------------------
# Correctness, float32 (interpreter on CPU, real kernels on a GPU)
# ----------------------------------------------------------------------------

# (B, H, T, D): T = 1, T below, at and above a block, odd widths; few D = 128 cases.
SHAPES = [
    (2, 3, 1, 32),
    (2, 3, 17, 32),
    (1, 1, 64, 64),
    (2, 3, 130, 64),
    (1, 2, 130, 16),
    (1, 1, 17, 128),
    (1, 1, 130, 128),
]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("B,H,T,D", SHAPES)
def test_matches_reference(B, H, T, D, causal):
    q, k, v, do = make_inputs(1000 * T + D, B, H, T, T, D)
    check_against_reference(q, k, v, do, causal)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("Tq,Tk", [(1, 17), (5, 17), (1, 130), (5, 130)])
def test_decode_queries_are_the_last_positions(Tq, Tk, causal):
    # KV-cache decode: the Tq queries are positions Tk - Tq .. Tk - 1 of the key sequence.
    q, k, v, do = make_inputs(Tq * 1000 + Tk, 2, 3, Tq, Tk, 64)
    check_against_reference(q, k, v, do, causal)


def test_decode_equals_the_last_rows_of_full_causal_attention():
    # The causal-offset convention, checked without the reference: attending with
    # the last 5 queries must reproduce the last 5 rows of the Tq == Tk result.
    q, k, v, _ = make_inputs(7, 1, 2, 40, 40, 32)
    full = flash_attention(q, k, v, causal=True)
    last = flash_attention(q[:, :, -5:], k, v, causal=True)
    torch.testing.assert_close(last, full[:, :, -5:], rtol=0, atol=1e-5)


def test_full_attention_with_more_queries_than_keys():
    q, k, v, do = make_inputs(11, 1, 2, 37, 9, 32)
    check_against_reference(q, k, v, do, causal=False)


def test_custom_softmax_scale():
    q, k, v, do = make_inputs(12, 2, 1, 33, 33, 64)
    check_against_reference(q, k, v, do, causal=True, sm_scale=0.3)


def test_causal_mask_changes_the_result():
    # Guards the comparison itself: causal and full attention must differ by far more than RTOL.
    q, k, v, _ = make_inputs(13, 1, 2, 64, 64, 32)
    out = flash_attention(q, k, v, causal=True).detach().double()
    full = attention_reference(q.detach().double(), k.detach().double(), v.detach().double(), causal=False)
    assert (out - full).abs().max() > 100 * TOLERANCES[torch.float32][0] * full.abs().max()


def test_log_sum_exp_is_saved_in_fp32_natural_log():
    q, k, v, _ = make_inputs(14, 2, 2, 5, 70, 32)
    q, k, v = q.detach(), k.detach(), v.detach()
    scale = 1 / math.sqrt(32)
    _, lse = _forward(q, k, v, True, scale)
    scores = (q.double() @ k.double().transpose(-2, -1)) * scale
    visible = torch.ones(5, 70, dtype=torch.bool, device=q.device).tril(diagonal=65)
    expected = torch.logsumexp(scores.masked_fill(~visible, float("-inf")), dim=-1)
    assert lse.dtype == torch.float32 and lse.shape == (2, 2, 5)
    torch.testing.assert_close(lse.double(), expected, rtol=0, atol=1e-5)


# Tilings other than the default, through the launchers: BLOCK_M below, equal to
# and above BLOCK_N in every kernel, on a ragged T and on the decode offset.
TILINGS = [
    ({"BLOCK_M": 16, "BLOCK_N": 32}, {"dkdv": {"BLOCK_M": 32, "BLOCK_N": 16}, "dq": {"BLOCK_M": 16, "BLOCK_N": 32}}),
    ({"BLOCK_M": 64, "BLOCK_N": 16}, {"dkdv": {"BLOCK_M": 16, "BLOCK_N": 64}, "dq": {"BLOCK_M": 64, "BLOCK_N": 16}}),
    ({"BLOCK_M": 32, "BLOCK_N": 32}, {"dkdv": {"BLOCK_M": 32, "BLOCK_N": 32}, "dq": {"BLOCK_M": 32, "BLOCK_N": 32}}),
]


@pytest.mark.parametrize("Tq,Tk", [(130, 130), (5, 70)])
@pytest.mark.parametrize("fwd_blocks,bwd_blocks", TILINGS, ids=["m<n", "m>n", "m=n"])
def test_other_tilings(fwd_blocks, bwd_blocks, Tq, Tk):
    q, k, v, do = make_inputs(15 + Tq, 1, 2, Tq, Tk, 32)
    q, k, v = q.detach(), k.detach(), v.detach()
    scale = 1 / math.sqrt(32)
    out, lse = _forward(q, k, v, True, scale, blocks=fwd_blocks)
    grads = _backward(do, q, k, v, out, lse, True, scale, blocks=bwd_blocks)
    ref_out, ref_grads = reference_outputs(q, k, v, do, True)
    assert_close("out", out, ref_out, q.dtype)
    for name, x, r in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        assert_close(name, x, r, q.dtype)


def test_strided_inputs_and_output_gradient():
    # As the model calls it: heads split out of (B, T, C) by a view and a transpose.
    B, T, H, D = 2, 21, 3, 32
    g = torch.Generator().manual_seed(16)
    qkv = torch.randn(B, T, 3 * H * D, generator=g).to(DEVICE)
    q, k, v = (t.view(B, T, H, D).transpose(1, 2).detach().requires_grad_() for t in qkv.split(H * D, dim=2))
    assert not q.is_contiguous()
    do = torch.randn(B, T, H, D, generator=g).to(DEVICE).transpose(1, 2)
    check_against_reference(q, k, v, do, causal=True)
    # A last dimension with stride 2 is copied first.
    wide = torch.randn(B, H, T, 2 * D, generator=g).to(DEVICE)
    q2 = wide[..., ::2].detach().requires_grad_()
    check_against_reference(q2, k, v, do, causal=False)


def test_reference_matches_torch_sdpa():
    # The reference itself, against PyTorch's attention with an explicit bottom-right mask.
    q, k, v, _ = make_inputs(17, 2, 2, 9, 23, 32, dtype=torch.float64)
    visible = torch.ones(9, 23, dtype=torch.bool, device=q.device).tril(diagonal=23 - 9)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
    torch.testing.assert_close(attention_reference(q, k, v, causal=True), expected)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention_reference(q, k, v, causal=False), expected)


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


def _t(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize(
    "q,k,v,causal",
    [
        (_t(1, 2, 8, 32), _t(1, 2, 8, 16), _t(1, 2, 8, 16), True),  # head dims differ
        (_t(1, 2, 8, 32), _t(2, 2, 8, 32), _t(2, 2, 8, 32), True),  # batch differs
        (_t(1, 2, 8, 32), _t(1, 3, 8, 32), _t(1, 3, 8, 32), True),  # heads differ
        (_t(1, 2, 8, 32), _t(1, 2, 8, 32), _t(1, 2, 9, 32), True),  # v is not shaped like k
        (_t(2, 8, 32), _t(2, 8, 32), _t(2, 8, 32), True),  # 3-D
        (_t(1, 2, 0, 32), _t(1, 2, 8, 32), _t(1, 2, 8, 32), False),  # empty
        (_t(1, 2, 9, 32), _t(1, 2, 8, 32), _t(1, 2, 8, 32), True),  # causal with Tq > Tk
    ],
    ids=["head-dim", "batch", "heads", "v-shape", "3d", "empty", "tq>tk"],
)
def test_bad_shapes_raise(q, k, v, causal):
    with pytest.raises(ValueError):
        flash_attention(q, k, v, causal=causal)
    with pytest.raises(ValueError):
        attention_reference(q, k, v, causal=causal)


@pytest.mark.parametrize("D", [8, 48, 100, 256])
def test_unsupported_head_dim_raises(D):
    q = _t(1, 1, 4, D)
    with pytest.raises(ValueError, match="head dim"):
        flash_attention(q, q, q)


@pytest.mark.parametrize(
    "dtypes",
    [(torch.float64,) * 3, (torch.int32,) * 3, (torch.float32, torch.float32, torch.float16)],
    ids=["float64", "int32", "mixed"],
)
def test_unsupported_dtypes_raise(dtypes):
    q, k, v = (_t(1, 1, 4, 32, dtype=dt) for dt in dtypes)
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(q, k, v)


def test_cpu_tensors_without_the_interpreter_raise(monkeypatch):
    # kernels/__init__ rebinds the name `minigpt_kernels.flash_attention` to the function, so fetch the module.
    fa = importlib.import_module("minigpt_kernels.flash_attention")
    monkeypatch.setattr(fa, "_kernels_are_interpreted", lambda: False)
    q = torch.zeros(1, 1, 4, 32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        flash_attention(q, q, q)


# ----------------------------------------------------------------------------
# CUDA: GPT-2 sizes in 16-bit
# ----------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("B,H,Tq,Tk,D", [(4, 12, 1024, 1024, 64), (4, 12, 1024, 1024, 128), (2, 12, 1000, 1000, 64)])
def test_cuda_low_precision_training_sizes(B, H, Tq, Tk, D, dtype):
    q, k, v, do = make_inputs(B * Tq + D, B, H, Tq, Tk, D, dtype=dtype)
    check_against_reference(q, k, v, do, causal=True)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", [64, 128])
def test_cuda_decode_step(D, dtype):
    q, k, v, do = make_inputs(D, 4, 12, 1, 1000, D, dtype=dtype)
    check_against_reference(q, k, v, do, causal=True)


@pytest.mark.cuda
def test_cuda_float32_and_full_attention():
    q, k, v, do = make_inputs(3, 2, 4, 300, 300, 64)
    check_against_reference(q, k, v, do, causal=False)


@pytest.mark.cuda
def test_cuda_backward_is_deterministic():
    q, k, v, do = make_inputs(4, 4, 12, 1024, 1024, 64, dtype=torch.bfloat16)
    first = torch.autograd.grad(flash_attention(q, k, v), (q, k, v), do)
    second = torch.autograd.grad(flash_attention(q, k, v), (q, k, v), do)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
