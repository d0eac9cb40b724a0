"""Fused LayerNorm over the last dimension, in Triton, with a deterministic backward.

Maths
-----
For one row x of width N, with learnable weight w and bias b (both of shape (N,)):

    mean  = (1/N) * sum_j x_j
    var   = (1/N) * sum_j (x_j - mean)^2          (biased, as torch and GPT-2 use)
    rstd  = 1 / sqrt(var + eps)
    xhat  = (x - mean) * rstd
    y     = xhat * w + b

Backward, given dy = dL/dy for the row, and writing g = dy * w (elementwise):

    dx    = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat))
    dw    = sum over rows of dy * xhat
    db    = sum over rows of dy

The dx formula follows from differentiating through mean and rstd: the two
subtracted terms remove the components of g along the constant vector and along
xhat, the two directions in which the normalisation is invariant.

Implementation
--------------
* Forward: one program per tile of BLOCK_M rows x BLOCK_N columns. x is read
  once, y written once; mean and rstd (fp32, M values each) are saved for the
  backward.
* Backward: a fixed number of programs, each owning a contiguous block of rows.
  It recomputes xhat from x, mean and rstd, writes dx, and keeps running sums of
  dy * xhat and dy in registers. At the end each program writes its partial
  dw and db to row `pid` of an fp32 buffer of shape (num_programs, 2, N); one
  torch `.sum(0)` reduces that buffer. No atomics and no locks, so dw and db are
  bitwise reproducible from run to run for a given shape and device.
* All statistics and accumulations are in fp32; outputs are in the input's dtype.

Supported inputs
----------------
* x: float32, float16 or bfloat16, any shape (..., N); it is viewed as (M, N)
  with M the product of the leading dimensions. A non-contiguous x or dy is
  copied to contiguous memory first (one extra read and write).
* weight, bias: shape exactly (N,), on x's device, any of the three dtypes above
  (they may differ from x's, e.g. fp32 weights with bf16 activations); their
  gradients come back in their own dtype.
* 1 <= N <= MAX_WIDTH (8192); wider rows raise ValueError. float64 raises
  TypeError: use `layer_norm_reference` for float64.
* x on a CUDA device, or on the CPU when the kernels were defined under the
  Triton interpreter (TRITON_INTERPRET=1 set before `kernels` is imported).
"""

import contextlib

import torch
import triton
import triton.language as tl

MAX_WIDTH = 8192
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Elements in one program's tile. 4096 gives GPT-2's widths 4 (N=768, 1024) or
# 2 (N=1280, 1600) rows per tile, so each program has several rows of loads in
# flight, and narrow rows are batched instead of wasting most of a program. At
# 8 warps (16 elements per thread) neither kernel spilled registers when
# compiled offline for sm_90 with Triton 3.9, at any width up to MAX_WIDTH.
_TILE_ELEMENTS = 4096
# Backward programs per streaming multiprocessor. A backward program holds two
# fp32 accumulator tiles besides its working tile; compiled offline for sm_90 it
# used 113-119 registers per thread at 8 warps for N=768..1600, so two fit on an
# SM at once. Two per SM runs every program in one wave and keeps the
# (programs, 2, N) partial buffer small (1.5 MiB for 8192 rows of N=768 on an
# H100's 132 SMs).
# A tuning knob: re-measure on the target GPU.
_BACKWARD_PROGRAMS_PER_SM = 2
# Backward programs when running under the interpreter: enough to exercise the
# cross-program reduction, few enough to stay quick on a CPU.
_INTERPRETER_BACKWARD_PROGRAMS = 4


# ----------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------


@triton.jit
def _layer_norm_fwd_kernel(
    X,  # pointer to the input, (M, N), row stride stride_x
    Y,  # pointer to the output, (M, N), row stride stride_y, same dtype as X
    W,  # pointer to the weight, (N,)
    B,  # pointer to the bias, (N,)
    Mean,  # pointer to the saved per-row mean, (M,), fp32
    Rstd,  # pointer to the saved per-row 1/sqrt(var + eps), (M,), fp32
    stride_x,  # elements between consecutive rows of X
    stride_y,  # elements between consecutive rows of Y
    M,  # number of rows
    N,  # number of columns (the normalised width)
    eps,  # added to the variance before the square root
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # columns per program: next_power_of_2(N), masked
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    mask = row_mask[:, None] & col_mask[None, :]
    # 64-bit row offsets: M * N can exceed 2**31 for large batches.
    rows64 = rows.to(tl.int64)

    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    # Centre before squaring (two-pass variance): no cancellation when |mean| >> std.
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)

    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + rows, mean, mask=row_mask)
    tl.store(Rstd + rows, rstd, mask=row_mask)


@triton.jit
def _layer_norm_bwd_kernel(
    X,  # pointer to the forward input, (M, N), row stride stride_x
    DY,  # pointer to the incoming gradient dL/dy, (M, N), row stride stride_dy
    DX,  # pointer to the outgoing gradient dL/dx, (M, N), row stride stride_dx
    W,  # pointer to the weight, (N,)
    Mean,  # pointer to the per-row mean saved by the forward, (M,), fp32
    Rstd,  # pointer to the per-row rstd saved by the forward, (M,), fp32
    Partial,  # pointer to the fp32 partial sums, (num_programs, 2, N): [dw, db] per program
    stride_x,  # elements between consecutive rows of X
    stride_dy,  # elements between consecutive rows of DY
    stride_dx,  # elements between consecutive rows of DX
    M,  # number of rows
    N,  # number of columns
    rows_per_program,  # rows owned by each program; a multiple of BLOCK_M
    BLOCK_M: tl.constexpr,  # rows handled per loop iteration
    BLOCK_N: tl.constexpr,  # columns per program: next_power_of_2(N), masked
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    # Running sums for this program's rows, reduced over the BLOCK_M axis once
    # at the end rather than on every iteration.
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    row_begin = pid * rows_per_program
    row_end = tl.minimum(row_begin + rows_per_program, M)
    for row_start in range(row_begin, row_end, BLOCK_M):
        rows = row_start + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        mask = row_mask[:, None] & col_mask[None, :]
        rows64 = rows.to(tl.int64)

        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + rows, mask=row_mask, other=0.0)
        rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)

        # Masked columns hold xhat = -mean * rstd, but dy and w load as 0 there,
        # so they add nothing to the row sums or to dw and db.
        xhat = (x - mean[:, None]) * rstd[:, None]
        g = dy * w[None, :]
        mean_g = tl.sum(g, axis=1) / N
        mean_g_xhat = tl.sum(g * xhat, axis=1) / N
        dx = (g - mean_g[:, None] - xhat * mean_g_xhat[:, None]) * rstd[:, None]
        tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)

        dw_acc += dy * xhat
        db_acc += dy

    partial_row = Partial + pid.to(tl.int64) * 2 * N
    tl.store(partial_row + cols, tl.sum(dw_acc, axis=0), mask=col_mask)
    tl.store(partial_row + N + cols, tl.sum(db_acc, axis=0), mask=col_mask)


# ----------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------


def _kernels_are_interpreted():
    """True when the kernels above were defined under TRITON_INTERPRET=1.

    Triton reads TRITON_INTERPRET when a kernel is decorated, so this, not the
    variable's current value, decides whether CPU tensors can be used.
    """
    return not isinstance(_layer_norm_fwd_kernel, triton.runtime.JITFunction)


def _on_device(device):
    """Make `device` current: Triton launches on the current CUDA device, not the tensors'."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _tile_shape(M, N):
    """(BLOCK_M, BLOCK_N, num_warps) for an (M, N) problem, shared by forward and backward."""
    block_n = triton.next_power_of_2(N)
    # Fill the tile with rows when the width is small, but not with rows that do not exist.
    block_m = max(1, min(_TILE_ELEMENTS // block_n, triton.next_power_of_2(M)))
    # About 512 elements per warp (16 per thread): 8 warps for a 4096 tile, 16 at N=8192.
    num_warps = min(16, max(1, block_m * block_n // 512))
    return block_m, block_n, num_warps


def _check_inputs(x, weight, bias):
    """Raise a clear error for anything the kernels do not support."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"layer_norm: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"layer_norm: {name} has dtype {t.dtype}; the Triton kernel supports "
                "float32, float16 and bfloat16 (use layer_norm_reference for float64)"
            )
    if x.dim() == 0:
        raise ValueError("layer_norm: x must have at least one dimension")
    N = x.shape[-1]
    if weight.shape != (N,) or bias.shape != (N,):
        raise ValueError(
            f"layer_norm: weight and bias must have shape ({N},) to match x's last dimension; "
            f"got x {tuple(x.shape)}, weight {tuple(weight.shape)}, bias {tuple(bias.shape)}"
        )
    if not 1 <= N <= MAX_WIDTH:
        raise ValueError(f"layer_norm: width N={N} is outside the supported range 1..{MAX_WIDTH}")
    if not (x.device == weight.device == bias.device):
        raise ValueError(
            "layer_norm: x, weight and bias must be on the same device; "
            f"got x on {x.device}, weight on {weight.device}, bias on {bias.device}"
        )
    if x.device.type != "cuda" and not _kernels_are_interpreted():
        raise RuntimeError(
            f"layer_norm: triton needs a CUDA tensor, got x on {x.device}; to run on the CPU, "
            "set TRITON_INTERPRET=1 before `kernels` is imported"
        )


def _layer_norm_forward(x2d, weight, bias, eps):
    """y, mean, rstd for a contiguous (M, N) x."""
    M, N = x2d.shape
    y = torch.empty_like(x2d)
    mean = torch.empty(M, dtype=torch.float32, device=x2d.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x2d.device)
    if M == 0:
        return y, mean, rstd
    block_m, block_n, num_warps = _tile_shape(M, N)
    grid = (triton.cdiv(M, block_m),)
    with _on_device(x2d.device):
        _layer_norm_fwd_kernel[grid](
            x2d,
            y,
            weight,
            bias,
            mean,
            rstd,
            x2d.stride(0),
            y.stride(0),
            M,
            N,
            eps,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            num_warps=num_warps,
        )
    return y, mean, rstd


def _backward_program_count(device, num_tiles):
    """How many backward programs: a few per SM on a GPU, never more than there are tiles."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = sms * _BACKWARD_PROGRAMS_PER_SM
    else:
        target = _INTERPRETER_BACKWARD_PROGRAMS
    return max(1, min(target, num_tiles))


def _layer_norm_backward(dy2d, x2d, weight, mean, rstd):
    """dx (x's dtype) and fp32 dweight, dbias for contiguous (M, N) dy and x."""
    M, N = x2d.shape
    dx = torch.empty_like(x2d)
    if M == 0:
        zeros = torch.zeros(N, dtype=torch.float32, device=x2d.device)
        return dx, zeros, zeros.clone()
    block_m, block_n, num_warps = _tile_shape(M, N)
    programs = _backward_program_count(x2d.device, triton.cdiv(M, block_m))
    # Whole tiles per program, then drop programs that would get no rows.
    rows_per_program = triton.cdiv(triton.cdiv(M, programs), block_m) * block_m
    programs = triton.cdiv(M, rows_per_program)
    partial = torch.empty((programs, 2, N), dtype=torch.float32, device=x2d.device)
    with _on_device(x2d.device):
        _layer_norm_bwd_kernel[(programs,)](
            x2d,
            dy2d,
            dx,
            weight,
            mean,
            rstd,
            partial,
            x2d.stride(0),
            dy2d.stride(0),
            dx.stride(0),
            M,
            N,
            rows_per_program,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            num_warps=num_warps,
        )
    # A fixed-order reduction over programs (torch reductions use no atomics).
    dw, db = partial.sum(dim=0).unbind(0)
    return dx, dw, db


# ----------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------


class LayerNormFunction(torch.autograd.Function):
    """Autograd wrapper; inputs are assumed checked by `layer_norm`."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        N = x.shape[-1]
        x2d = x.reshape(-1, N).contiguous()
        y, mean, rstd = _layer_norm_forward(x2d, weight, bias, eps)
        ctx.save_for_backward(x2d, weight, mean, rstd)
        ctx.bias_dtype = bias.dtype
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x2d, weight, mean, rstd = ctx.saved_tensors
        dy2d = dy.reshape(x2d.shape).contiguous()
        dx, dw, db = _layer_norm_backward(dy2d, x2d, weight, mean, rstd)
        needs_dx, needs_dw, needs_db, _ = ctx.needs_input_grad
        return (
            dx.view(dy.shape) if needs_dx else None,
            dw.to(weight.dtype) if needs_dw else None,
            db.to(ctx.bias_dtype) if needs_db else None,
            None,
        )


def layer_norm(x, weight, bias, eps=1e-5):
    """LayerNorm of x over its last dimension: (x - mean) / sqrt(var + eps) * weight + bias.

    x: (..., N) float32/float16/bfloat16 on a CUDA device (or the CPU under the
    Triton interpreter); weight, bias: (N,). Returns a tensor of x's shape and
    dtype. Differentiable in x, weight and bias (once).
    """
    _check_inputs(x, weight, bias)
    return LayerNormFunction.apply(x, weight, bias, float(eps))


# ----------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------


def layer_norm_reference(x, weight, bias, eps=1e-5):
    """Plain PyTorch LayerNorm with the same signature as `layer_norm`.

    Computes in float64 when x is float64 and in float32 otherwise, and returns
    x's dtype. Differentiable by autograd; used by the tests as ground truth.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute)
    mean = xf.mean(dim=-1, keepdim=True)
    xc = xf - mean
    var = (xc * xc).mean(dim=-1, keepdim=True)
    y = xc * torch.rsqrt(var + eps) * weight.to(compute) + bias.to(compute)
    return y.to(x.dtype)
