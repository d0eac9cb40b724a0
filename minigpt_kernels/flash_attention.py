"""Flash attention in Triton: causal or full softmax attention without the T x T matrix.

Maths
-----
For one head, with queries Q (Tq, D), keys K (Tk, D), values V (Tk, D) and a
scale s (1/sqrt(D) unless given):

    S = s * Q K^T                       (Tq, Tk) scores
    P = softmax(S + M)  row by row      M is 0 where query i may see key j, -inf elsewhere
    O = P V                             (Tq, D)

Causal masking is aligned bottom-right: the queries are the *last* Tq positions
of the key sequence, so query i may see key j when j <= i + (Tk - Tq). With
Tq == Tk (training) that is the usual lower triangle; with Tq < Tk it is the
KV-cache decode step, where the new queries see the whole cache and each other
causally. Full (non-causal) attention lets every query see every key.

Forward: the online softmax. Keys are visited in blocks of BLOCK_N. Each query
row keeps a running maximum m, a running normaliser l = sum_j exp(S_ij - m) and
an unnormalised output acc = sum_j exp(S_ij - m) V_j. A new block with scores
S_blk gives

    m_new = max(m, rowmax(S_blk))
    alpha = exp(m - m_new)                       rescales what was summed so far
    l     = alpha * l + rowsum(exp(S_blk - m_new))
    acc   = alpha * acc + exp(S_blk - m_new) V_blk

and at the end O = acc / l. The kernels work in base 2: log2(e) is folded into
the scale once, so every exponential is a single exp2. Only the per-row
log-sum-exp, LSE_i = log(sum_j exp(S_ij)) = m + log(l), is saved for the
backward: fp32, natural log, shape (B, H, Tq).

Backward: P is recomputed block by block from Q, K and the saved LSE, as
P_ij = exp(S_ij - LSE_i). Given dO = dL/dO:

    dV = P^T dO
    dP = dO V^T
    D_i = sum_j P_ij dP_ij = rowsum(dO * O)_i   (one number per query row)
    dS = P * (dP - D)                           softmax backward, elementwise
    dQ = s * dS K
    dK = s * dS^T Q

Three kernels: a preprocess computes D = rowsum(dO * O); one kernel owns a block
of keys and loops over the queries that see it, accumulating dK and dV; one owns
a block of queries and loops over the keys it sees, accumulating dQ. Every
output element is written by exactly one program, with no atomics, so the
gradients are bitwise reproducible for a given shape, device and configuration.

Masking is split in two so most blocks skip it: blocks that every row in the
program sees in full run without a mask, and only the blocks on the causal
diagonal or at a ragged sequence end apply one. Blocks no row can see are never
visited, so causal attention costs about half of full attention.

Supported inputs
----------------
* q: (B, H, Tq, D); k, v: (B, H, Tk, D); all on one device with one dtype.
  Causal needs Tq <= Tk (otherwise the first queries would see no key); full
  attention allows any Tq and Tk. Any lengths >= 1, including ones that are not a
  multiple of the block size, and T = 1. Forward and backward support all of
  these, the decode case (Tq < Tk) included.
* Head dimension D: a power of two from 16 to 128 (16 and 32 for tiny models,
  64 for every GPT-2 size, 128). Anything else raises ValueError: tl.dot needs
  at least 16 and the tile shapes need powers of two; above 128 the tiles no
  longer fit the registers.
* dtype: float16 and bfloat16 (the fast path on a GPU) and float32. Dot products
  accumulate in fp32 for every dtype; float32 inputs use IEEE fp32 dot products,
  not TF32, so the fp32 path is exact enough to test against float64 (and slower
  on a GPU). The output has q's dtype.
* Strides: any, as long as the last dimension has unit stride, so views such as
  `q.view(B, T, nh, hs).transpose(1, 2)` are read in place. A tensor whose last
  dimension is strided is first copied with `.contiguous()`.
* Device: CUDA tensors, or CPU tensors when the kernels were defined under the
  Triton interpreter (TRITON_INTERPRET=1 set before `kernels` is imported).
  B * H must not exceed 65535 (a grid dimension limit).

`attention_reference` at the end of this file is the same op in plain PyTorch.
"""

import contextlib
import math
import os

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
MAX_BATCH_HEADS = 65535  # CUDA limit on the grid's second dimension

# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------
# Constants inside the kernels: 1.4426950408889634 = log2(e), 0.6931471805599453 = ln(2).
# Masked scores are set to -1e30 in the forward, not -inf: a row that sees no key
# in its first block then gives exp2(0) = 1 instead of NaN, and those bogus terms
# are wiped by alpha = exp2(-1e30 - m) = 0 as soon as the row meets a visible key
# (every real row sees key 0, which is in the first block it visits).


@triton.jit
def _attn_fwd_inner(
    acc,
    l_i,
    m_i,  # running output (BLOCK_M, HEAD_DIM), normaliser and maximum (BLOCK_M,), fp32
    q,  # the program's query block (BLOCK_M, HEAD_DIM)
    k_head,
    v_head,  # pointers to K[b, h, 0, 0] and V[b, h, 0, 0]
    stride_kt,
    stride_vt,  # distance between consecutive key / value rows, in elements
    offs_m,  # query row indices of the block (BLOCK_M,)
    offs_d,  # 0 .. HEAD_DIM - 1
    lo,
    hi,  # key range [lo, hi) to visit; lo is a multiple of BLOCK_N
    Tk,  # number of keys
    causal_offset,  # Tk - Tq: query i sees key j when j <= i + causal_offset
    qk_scale,  # sm_scale * log2(e)
    CAUSAL: tl.constexpr,  # apply the causal mask (only matters when MASK)
    MASK: tl.constexpr,  # False: every key in [lo, hi) exists and is visible to every row
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs, "tf32" otherwise (ignored for 16-bit)
    BLOCK_N: tl.constexpr,  # keys per iteration
):
    offs_n_base = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_n_base
        kt_ptrs = k_head + offs_n[None, :] * stride_kt + offs_d[:, None]  # K^T block (HEAD_DIM, BLOCK_N)
        v_ptrs = v_head + offs_n[:, None] * stride_vt + offs_d[None, :]  # V block (BLOCK_N, HEAD_DIM)
        if MASK:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < Tk, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
        qk = tl.dot(q, kt, input_precision=DOT_PRECISION)
        if MASK:
            visible = offs_n[None, :] < Tk
            if CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
            qk = tl.where(visible, qk * qk_scale, -1.0e30)
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            qk = qk - m_new[:, None]
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_new[:, None]
        p = tl.exp2(qk)
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASK:
            v = tl.load(v_ptrs, mask=offs_n[:, None] < Tk, other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["Tq", "Tk"])
def _attn_fwd(
    Q,
    K,
    V,  # inputs: Q (B, H, Tq, D), K and V (B, H, Tk, D), unit stride along D
    O,  # output (B, H, Tq, D), contiguous, Q's dtype  # noqa: E741 (Q, K, V, O: the attention's own names)
    LSE,  # output (B, H, Tq), contiguous fp32: natural log-sum-exp of each row of scaled scores
    stride_qb,
    stride_qh,
    stride_qt,  # strides of Q over batch, head and time, in elements
    stride_kb,
    stride_kh,
    stride_kt,  # strides of K
    stride_vb,
    stride_vh,
    stride_vt,  # strides of V
    H,  # heads per batch element: program_id(1) is b * H + h
    Tq,
    Tk,  # number of queries and of keys
    sm_scale,  # softmax scale applied to Q K^T
    TQ_KEY,
    TK_KEY,  # next powers of two of Tq and Tk: read only by the autotuner, as its key
    HEAD_DIM: tl.constexpr,  # D, a power of two in 16 .. 128
    CAUSAL: tl.constexpr,  # causal (bottom-right aligned) or full attention
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs, "tf32" otherwise (ignored for 16-bit)
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per inner iteration
):
    # Query blocks are handed out last-first: under causal masking the last ones
    # see the most keys, and starting the longest programs first shortens the tail.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_head = Q + b * stride_qb + h * stride_qh
    k_head = K + b * stride_kb + h * stride_kh
    v_head = V + b * stride_vb + h * stride_vh
    o_head = O + pid_bh.to(tl.int64) * Tq * HEAD_DIM
    lse_head = LSE + pid_bh.to(tl.int64) * Tq

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < Tq
    q = tl.load(q_head + offs_m[:, None] * stride_qt + offs_d[None, :], mask=in_q[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    causal_offset = Tk - Tq

    # Keys [0, full_hi) are visible to every row of the block: no mask. Keys
    # [full_hi, hi) straddle the diagonal or the end of the sequence: masked.
    if CAUSAL:
        hi = tl.minimum(m0 + BLOCK_M + causal_offset, Tk)
        full_hi = tl.minimum(m0 + causal_offset + 1, Tk) // BLOCK_N * BLOCK_N
    else:
        hi = Tk
        full_hi = Tk // BLOCK_N * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_head,
        v_head,
        stride_kt,
        stride_vt,
        offs_m,
        offs_d,
        0,
        full_hi,
        Tk,
        causal_offset,
        qk_scale,
        CAUSAL=CAUSAL,
        MASK=False,
        DOT_PRECISION=DOT_PRECISION,
        BLOCK_N=BLOCK_N,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_head,
        v_head,
        stride_kt,
        stride_vt,
        offs_m,
        offs_d,
        full_hi,
        hi,
        Tk,
        causal_offset,
        qk_scale,
        CAUSAL=CAUSAL,
        MASK=True,
        DOT_PRECISION=DOT_PRECISION,
        BLOCK_N=BLOCK_N,
    )

    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # back from base 2 to natural log
    tl.store(lse_head + offs_m, lse, mask=in_q)
    o = acc / l_i[:, None]
    tl.store(o_head + offs_m[:, None] * HEAD_DIM + offs_d[None, :], o.to(O.dtype.element_ty), mask=in_q[:, None])


@triton.jit(do_not_specialize=["Tq"])
def _attn_bwd_delta(
    O,  # forward output (B, H, Tq, D), contiguous  # noqa: E741
    DO,  # gradient of the output (B, H, Tq, D), unit stride along D
    DELTA,  # output (B, H, Tq), contiguous fp32: rowsum(dO * O)
    stride_dob,
    stride_doh,
    stride_dot,  # strides of DO over batch, head and time
    H,  # heads per batch element
    Tq,  # number of queries
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_M: tl.constexpr,  # rows per program
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < Tq
    o_ptrs = O + pid_bh.to(tl.int64) * Tq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    do_ptrs = DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :]
    o = tl.load(o_ptrs, mask=in_q[:, None], other=0.0).to(tl.float32)
    do = tl.load(do_ptrs, mask=in_q[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh.to(tl.int64) * Tq + offs_m, tl.sum(o * do, 1), mask=in_q)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk,
    dv,  # running dK and dV of the key block (BLOCK_N, HEAD_DIM), fp32, dK without the scale
    k,
    v,  # the program's key and value blocks (BLOCK_N, HEAD_DIM)
    q_head,
    do_head,  # pointers to Q[b, h, 0, 0] and dO[b, h, 0, 0]
    lse_head,
    delta_head,  # pointers to LSE[b, h, 0] and DELTA[b, h, 0]
    stride_qt,
    stride_dot,  # distance between consecutive query / dO rows
    offs_n,  # key indices of the block (BLOCK_N,)
    offs_d,  # 0 .. HEAD_DIM - 1
    lo,
    hi,  # query range [lo, hi) to visit, in steps of BLOCK_M (lo need not be aligned)
    Tq,  # number of queries
    causal_offset,  # Tk - Tq
    qk_scale,  # sm_scale * log2(e)
    CAUSAL: tl.constexpr,  # apply the causal mask (only matters when MASK)
    MASK: tl.constexpr,  # False: every query in [lo, hi) exists and sees every key of the block
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs, "tf32" otherwise
    BLOCK_M: tl.constexpr,  # queries per iteration
):
    offs_m_base = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m_base
        qt_ptrs = q_head + offs_m[None, :] * stride_qt + offs_d[:, None]  # Q^T block (HEAD_DIM, BLOCK_M)
        do_ptrs = do_head + offs_m[:, None] * stride_dot + offs_d[None, :]  # dO block (BLOCK_M, HEAD_DIM)
        if MASK:
            in_q = offs_m < Tq
            qt = tl.load(qt_ptrs, mask=in_q[None, :], other=0.0)
            do = tl.load(do_ptrs, mask=in_q[:, None], other=0.0)
            lse = tl.load(lse_head + offs_m, mask=in_q, other=0.0)
            delta = tl.load(delta_head + offs_m, mask=in_q, other=0.0)
        else:
            qt = tl.load(qt_ptrs)
            do = tl.load(do_ptrs)
            lse = tl.load(lse_head + offs_m)
            delta = tl.load(delta_head + offs_m)
        # P^T = exp(S^T - LSE), computed in base 2.
        st = tl.dot(k, qt, input_precision=DOT_PRECISION) * qk_scale - lse[None, :] * 1.4426950408889634
        if MASK:
            visible = in_q[None, :]
            if CAUSAL:
                visible = visible & (offs_n[:, None] <= offs_m[None, :] + causal_offset)
            st = tl.where(visible, st, float("-inf"))
        pt = tl.exp2(st)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=["Tq", "Tk"])
def _attn_bwd_dkdv(
    Q,
    K,
    V,  # forward inputs, unit stride along D
    DO,  # gradient of the output (B, H, Tq, D), unit stride along D
    LSE,  # forward log-sum-exp (B, H, Tq), contiguous fp32
    DELTA,  # rowsum(dO * O) (B, H, Tq), contiguous fp32
    DK,
    DV,  # outputs (B, H, Tk, D), contiguous, K's dtype
    stride_qb,
    stride_qh,
    stride_qt,  # strides of Q over batch, head and time
    stride_kb,
    stride_kh,
    stride_kt,  # strides of K
    stride_vb,
    stride_vh,
    stride_vt,  # strides of V
    stride_dob,
    stride_doh,
    stride_dot,  # strides of DO
    H,  # heads per batch element
    Tq,
    Tk,  # number of queries and of keys
    sm_scale,  # softmax scale
    TQ_KEY,
    TK_KEY,  # next powers of two of Tq and Tk: autotuning key only
    HEAD_DIM: tl.constexpr,  # D
    CAUSAL: tl.constexpr,  # causal (bottom-right aligned) or full attention
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs, "tf32" otherwise
    BLOCK_M: tl.constexpr,  # queries per inner iteration
    BLOCK_N: tl.constexpr,  # keys per program
):
    # Under causal masking the first key blocks are seen by the most queries,
    # so the natural order already starts the longest programs first.
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_head = Q + b * stride_qb + h * stride_qh
    k_head = K + b * stride_kb + h * stride_kh
    v_head = V + b * stride_vb + h * stride_vh
    do_head = DO + b * stride_dob + h * stride_doh
    lse_head = LSE + pid_bh.to(tl.int64) * Tq
    delta_head = DELTA + pid_bh.to(tl.int64) * Tq

    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    in_k = offs_n < Tk
    k = tl.load(k_head + offs_n[:, None] * stride_kt + offs_d[None, :], mask=in_k[:, None], other=0.0)
    v = tl.load(v_head + offs_n[:, None] * stride_vt + offs_d[None, :], mask=in_k[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    causal_offset = Tk - Tq

    # Queries before lo see none of these keys. Queries in [lo, mid) straddle the
    # diagonal (masked); [mid, full_hi) see the whole block (no mask); the ragged
    # end [full_hi, Tq), shorter than BLOCK_M, is masked again. Keys past Tk
    # (zero-filled) only pollute rows of dK and dV that are never stored.
    if CAUSAL:
        lo = tl.maximum(n0 - causal_offset, 0)
        diag_hi = tl.minimum(tl.maximum(n0 + BLOCK_N - 1 - causal_offset, lo), Tq)
        mid = lo + tl.cdiv(diag_hi - lo, BLOCK_M) * BLOCK_M
    else:
        lo = 0
        mid = 0
    full_hi = mid + tl.maximum(Tq - mid, 0) // BLOCK_M * BLOCK_M
    dk, dv = _attn_bwd_dkdv_inner(
        dk,
        dv,
        k,
        v,
        q_head,
        do_head,
        lse_head,
        delta_head,
        stride_qt,
        stride_dot,
        offs_n,
        offs_d,
        lo,
        mid,
        Tq,
        causal_offset,
        qk_scale,
        CAUSAL=CAUSAL,
        MASK=True,
        DOT_PRECISION=DOT_PRECISION,
        BLOCK_M=BLOCK_M,
    )
    dk, dv = _attn_bwd_dkdv_inner(
        dk,
        dv,
        k,
        v,
        q_head,
        do_head,
        lse_head,
        delta_head,
        stride_qt,
        stride_dot,
        offs_n,
        offs_d,
        mid,
        full_hi,
        Tq,
        causal_offset,
        qk_scale,
        CAUSAL=CAUSAL,
        MASK=False,
        DOT_PRECISION=DOT_PRECISION,
        BLOCK_M=BLOCK_M,
    )
    dk, dv = _attn_bwd_dkdv_inner(
        dk,
        dv,
        k,
        v,
        q_head,
        do_head,
        lse_head,
        delta_head,
        stride_qt,
        stride_dot,
        offs_n,
        offs_d,
        full_hi,
        Tq,
        Tq,
        causal_offset,
        qk_scale,
        CAUSAL=CAUSAL,
        MASK=True,
        DOT_PRECISION=DOT_PRECISION,
        BLOCK_M=BLOCK_M,
    )

    out_offs = pid_bh.to(tl.int64) * Tk * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DK + out_offs, (dk * sm_scale).to(DK.dtype.element_ty), mask=in_k[:, None])
    tl.store(DV + out_offs, dv.to(DV.dtype.element_ty), mask=in_k[:, None])


@triton.jit
def _attn_bwd_dq_inner(
    dq,  # running dQ of the query block (BLOCK_M, HEAD_DIM), fp32, without the scale
    q,
    do,  # the program's query and dO blocks (BLOCK_M, HEAD_DIM)
    lse2,  # log-sum-exp of the block's rows in base 2 (BLOCK_M,)
    delta,  # rowsum(dO * O) of the block's rows (BLOCK_M,)
    k_head,
    v_head,  # pointers to K[b, h, 0, 0] and V[b, h, 0, 0]
    stride_kt,
    stride_vt,  # distance between consecutive key / value rows
    offs_m,  # query row indices of the block (BLOCK_M,)
    offs_d,  # 0 .. HEAD_DIM - 1
    lo,
    hi,  # key range [lo, hi) to visit; lo is a multiple of BLOCK_N
    Tk,  # number of keys
    causal_offset,  # Tk - Tq
    qk_scale,  # sm_scale * log2(e)
    CAUSAL: tl.constexpr,  # apply the causal mask (only matters when MASK)
    MASK: tl.constexpr,  # False: every key in [lo, hi) exists and is visible to every row
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs, "tf32" otherwise
    BLOCK_N: tl.constexpr,  # keys per iteration
):
    offs_n_base = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_n_base
        kt_ptrs = k_head + offs_n[None, :] * stride_kt + offs_d[:, None]  # K^T block (HEAD_DIM, BLOCK_N)
        vt_ptrs = v_head + offs_n[None, :] * stride_vt + offs_d[:, None]  # V^T block (HEAD_DIM, BLOCK_N)
        if MASK:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < Tk, other=0.0)
            vt = tl.load(vt_ptrs, mask=offs_n[None, :] < Tk, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            vt = tl.load(vt_ptrs)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale - lse2[:, None]
        if MASK:
            visible = offs_n[None, :] < Tk
            if CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
            s = tl.where(visible, s, float("-inf"))
        p = tl.exp2(s)
        dp = tl.dot(do, vt, input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit(do_not_specialize=["Tq", "Tk"])
def _attn_bwd_dq(
    Q,
    K,
    V,  # forward inputs, unit stride along D
    DO,  # gradient of the output (B, H, Tq, D), unit stride along D
    LSE,  # forward log-sum-exp (B, H, Tq), contiguous fp32
    DELTA,  # rowsum(dO * O) (B, H, Tq), contiguous fp32
    DQ,  # output (B, H, Tq, D), contiguous, Q's dtype
    stride_qb,
    stride_qh,
    stride_qt,  # strides of Q over batch, head and time
    stride_kb,
    stride_kh,
    stride_kt,  # strides of K
    stride_vb,
    stride_vh,
    stride_vt,  # strides of V
    stride_dob,
    stride_doh,
    stride_dot,  # strides of DO
    H,  # heads per batch element
    Tq,
    Tk,  # number of queries and of keys
    sm_scale,  # softmax scale
    TQ_KEY,
    TK_KEY,  # next powers of two of Tq and Tk: autotuning key only
    HEAD_DIM: tl.constexpr,  # D
    CAUSAL: tl.constexpr,  # causal (bottom-right aligned) or full attention
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs, "tf32" otherwise
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per inner iteration
):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest programs first, as in the forward
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_head = Q + b * stride_qb + h * stride_qh
    k_head = K + b * stride_kb + h * stride_kh
    v_head = V + b * stride_vb + h * stride_vh
    do_head = DO + b * stride_dob + h * stride_doh

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < Tq
    q = tl.load(q_head + offs_m[:, None] * stride_qt + offs_d[None, :], mask=in_q[:, None], other=0.0)
    do = tl.load(do_head + offs_m[:, None] * stride_dot + offs_d[None, :], mask=in_q[:, None], other=0.0)
    lse2 = tl.load(LSE + pid_bh.to(tl.int64) * Tq + offs_m, mask=in_q, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * Tq + offs_m, mask=in_q, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    causal_offset = Tk - Tq

    # The same split of the keys as in the forward.
    if CAUSAL:
        hi = tl.minimum(m0 + BLOCK_M + causal_offset, Tk)
        full_hi = tl.minimum(m0 + causal_offset + 1, Tk) // BLOCK_N * BLOCK_N
    else:
        hi = Tk
        full_hi = Tk // BLOCK_N * BLOCK_N
    dq = _attn_bwd_dq_inner(
        dq,
        q,
        do,
        lse2,
        delta,
        k_head,
        v_head,
        stride_kt,
        stride_vt,
        offs_m,
        offs_d,
        0,
        full_hi,
        Tk,
        causal_offset,
        qk_scale,
        CAUSAL=CAUSAL,
        MASK=False,
        DOT_PRECISION=DOT_PRECISION,
        BLOCK_N=BLOCK_N,
    )
    dq = _attn_bwd_dq_inner(
        dq,
        q,
        do,
        lse2,
        delta,
        k_head,
        v_head,
        stride_kt,
        stride_vt,
        offs_m,
        offs_d,
        full_hi,
        hi,
        Tk,
        causal_offset,
        qk_scale,
        CAUSAL=CAUSAL,
        MASK=True,
        DOT_PRECISION=DOT_PRECISION,
        BLOCK_N=BLOCK_N,
    )
    dq_ptrs = DQ + pid_bh.to(tl.int64) * Tq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=in_q[:, None])


# ----------------------------------------------------------------------------
# Tile configurations
# ----------------------------------------------------------------------------
# On a GPU each kernel is autotuned once per (power-of-two bucket of Tq, of Tk,
# head dim, causal, dtype); bucketing keeps a decode loop, whose Tk grows by one
# per step, from re-tuning at every step. The candidates follow the Triton
# fused-attention tutorial for Hopper: large query tiles for the forward and dQ,
# large key tiles for dK/dV, 3-5 pipeline stages. Candidates that run out of
# shared memory or registers for a head dim are dropped by the autotuner.
# Each list is in order of preference (the tutorial's choice first), so that
# MINIGPT_AUTOTUNE_MAX_CONFIGS=N, read when this module is imported, can bound the
# first call's tuning time to the first N candidates of each kernel (unset or 0:
# all of them); bench/gpu_suite.py uses it to fit a time budget.
# Under the interpreter the kernels run on the CPU one program at a time, where
# autotuning would only multiply the run time, so fixed small tiles are used;
# they are chosen unequal so the tests cover BLOCK_M > BLOCK_N and the reverse.


def _config(block_m, block_n, num_stages, num_warps):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_stages=num_stages, num_warps=num_warps)


_FWD_CONFIGS = [
    _config(128, 64, 3, 4),
    _config(128, 64, 4, 4),
    _config(128, 64, 3, 8),
    _config(128, 64, 4, 8),
    _config(128, 128, 3, 8),
    _config(128, 128, 4, 8),
    _config(128, 32, 4, 4),
    _config(64, 64, 3, 4),
    _config(64, 32, 4, 4),
]
_DKDV_CONFIGS = [
    _config(32, 128, 5, 4),
    _config(32, 128, 3, 4),
    _config(32, 128, 3, 8),
    _config(64, 128, 3, 8),
    _config(32, 64, 4, 4),
    _config(64, 64, 3, 4),
]
_DQ_CONFIGS = [
    _config(128, 32, 5, 4),
    _config(128, 32, 3, 4),
    _config(128, 32, 3, 8),
    _config(128, 64, 3, 8),
    _config(64, 32, 4, 4),
    _config(64, 64, 3, 4),
]
_TUNING_KEY = ["TQ_KEY", "TK_KEY", "HEAD_DIM", "CAUSAL"]
MAX_CONFIGS_ENV = "MINIGPT_AUTOTUNE_MAX_CONFIGS"


def _first_configs(configs):
    """The first $MINIGPT_AUTOTUNE_MAX_CONFIGS candidates (all when unset or 0)."""
    value = os.environ.get(MAX_CONFIGS_ENV, "").strip() or "0"
    if not value.isdigit():
        raise ValueError(f"{MAX_CONFIGS_ENV} must be a non-negative integer (0: no limit), got {value!r}")
    return configs[: int(value)] if int(value) > 0 else configs


# A plain list of configs, not an early_config_prune hook: torch.compile traces these
# autotuners, and a shorter list is what it handles the same way in every version.
_attn_fwd_tuned = triton.autotune(configs=_first_configs(_FWD_CONFIGS), key=_TUNING_KEY)(_attn_fwd)
_attn_bwd_dkdv_tuned = triton.autotune(configs=_first_configs(_DKDV_CONFIGS), key=_TUNING_KEY)(_attn_bwd_dkdv)
_attn_bwd_dq_tuned = triton.autotune(configs=_first_configs(_DQ_CONFIGS), key=_TUNING_KEY)(_attn_bwd_dq)

_INTERPRETER_FWD = {"BLOCK_M": 32, "BLOCK_N": 16}
_INTERPRETER_DKDV = {"BLOCK_M": 16, "BLOCK_N": 32}
_INTERPRETER_DQ = {"BLOCK_M": 32, "BLOCK_N": 16}
_DELTA_BLOCK_M = 64  # rows per program of the preprocess; it is bandwidth-bound and not tuned


# ----------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------


def _kernels_are_interpreted():
    """True when the kernels above were defined under TRITON_INTERPRET=1.

    Triton reads TRITON_INTERPRET when a kernel is decorated, so this, not the
    variable's current value, decides whether CPU tensors can be used.
    """
    return not isinstance(_attn_fwd, triton.runtime.JITFunction)


def _check_shapes(q, k, v, causal):
    """(B, H, Tq, Tk, D) of valid inputs; ValueError for anything else. Shared with the reference."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must have shape (B, H, T, D), got {tuple(t.shape)}")
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    if k.shape != (B, H, Tk, D) or v.shape != k.shape:
        raise ValueError(
            "attention: expected q (B, H, Tq, D) and k, v (B, H, Tk, D) with matching B, H and D; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if min(B, H, Tq, Tk, D) < 1:
        raise ValueError(f"attention: every dimension must be >= 1, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if causal and Tq > Tk:
        raise ValueError(
            f"attention: causal attention needs Tq <= Tk (the queries are the last Tq of the Tk "
            f"positions), got Tq={Tq}, Tk={Tk}"
        )
    return B, H, Tq, Tk, D


def _check_kernel_inputs(q, k, v):
    """Raise a clear error for what the Triton kernels cannot run (shapes already checked)."""
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"flash_attention: dtype {q.dtype} is not supported; use float16, bfloat16 or float32 "
            "(attention_reference handles float64)"
        )
    D = q.shape[-1]
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"flash_attention: head dim {D} is not supported; it must be one of {SUPPORTED_HEAD_DIMS}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"flash_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        raise ValueError(f"flash_attention: B * H = {q.shape[0] * q.shape[1]} exceeds {MAX_BATCH_HEADS}")
    if q.device.type != "cuda" and not _kernels_are_interpreted():
        raise RuntimeError(
            f"flash_attention: triton needs CUDA tensors, got tensors on {q.device}; to run on the "
            "CPU, set TRITON_INTERPRET=1 before `kernels` is imported"
        )


def _unit_last_stride(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides(t):
    """Strides over (B, H, T) of a (B, H, T, D) tensor with unit stride along D."""
    return t.stride(0), t.stride(1), t.stride(2)


def _launch(kernel, tuned, interpreter_blocks, blocks, grid, args, kwargs):
    """Launch with explicit tiles, the interpreter's fixed tiles, or the autotuner's choice."""
    if blocks is None and _kernels_are_interpreted():
        blocks = interpreter_blocks
    if blocks is None:
        tuned[grid](*args, **kwargs)
    else:
        kernel[grid](*args, **kwargs, **blocks)


def _on_device(t):
    """Triton launches on the current CUDA device, so make it t's."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _dot_precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def _forward(q, k, v, causal, sm_scale, blocks=None):
    """Output (B, H, Tq, D) and fp32 log-sum-exp (B, H, Tq) of checked inputs with unit last stride.

    blocks: optional dict of BLOCK_M, BLOCK_N (and num_warps, num_stages) that
    bypasses autotuning; the tests use it to cover other tilings.
    """
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    o = torch.empty((B, H, Tq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    args = (
        q,
        k,
        v,
        o,
        lse,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        H,
        Tq,
        Tk,
        sm_scale,
        triton.next_power_of_2(Tq),
        triton.next_power_of_2(Tk),
    )
    kwargs = {"HEAD_DIM": D, "CAUSAL": causal, "DOT_PRECISION": _dot_precision(q.dtype)}

    def grid(meta):
        return (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)

    _launch(_attn_fwd, _attn_fwd_tuned, _INTERPRETER_FWD, blocks, grid, args, kwargs)
    return o, lse


def _backward(do, q, k, v, o, lse, causal, sm_scale, blocks=None):
    """dq, dk, dv for checked inputs; blocks: optional {"dkdv": {...}, "dq": {...}} tiles."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    do = _unit_last_stride(do)
    delta = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    dq = torch.empty((B, H, Tq, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, H, Tk, D), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, H, Tk, D), dtype=v.dtype, device=v.device)

    _attn_bwd_delta[(triton.cdiv(Tq, _DELTA_BLOCK_M), B * H)](
        o,
        do,
        delta,
        *_strides(do),
        H,
        Tq,
        HEAD_DIM=D,
        BLOCK_M=_DELTA_BLOCK_M,
    )
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
    sizes = (H, Tq, Tk, sm_scale, triton.next_power_of_2(Tq), triton.next_power_of_2(Tk))
    kwargs = {"HEAD_DIM": D, "CAUSAL": causal, "DOT_PRECISION": _dot_precision(q.dtype)}
    blocks = blocks or {}

    def dkdv_grid(meta):
        return (triton.cdiv(Tk, meta["BLOCK_N"]), B * H)

    def dq_grid(meta):
        return (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)

    _launch(
        _attn_bwd_dkdv,
        _attn_bwd_dkdv_tuned,
        _INTERPRETER_DKDV,
        blocks.get("dkdv"),
        dkdv_grid,
        (q, k, v, do, lse, delta, dk, dv, *strides, *sizes),
        kwargs,
    )
    _launch(
        _attn_bwd_dq,
        _attn_bwd_dq_tuned,
        _INTERPRETER_DQ,
        blocks.get("dq"),
        dq_grid,
        (q, k, v, do, lse, delta, dq, *strides, *sizes),
        kwargs,
    )
    return dq, dk, dv


# ----------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper; inputs are assumed checked by `flash_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale):
        q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
        with _on_device(q):
            o, lse = _forward(q, k, v, causal, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        ctx.sm_scale = sm_scale
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        with _on_device(q):
            dq, dk, dv = _backward(do, q, k, v, o, lse, ctx.causal, ctx.sm_scale)
        return dq, dk, dv, None, None


def flash_attention(q, k, v, causal=True, sm_scale=None):
    """softmax(q k^T * sm_scale + mask) v, computed blockwise by Triton kernels.

    q: (B, H, Tq, D); k, v: (B, H, Tk, D); float16, bfloat16 or float32 on a CUDA
    device (or the CPU under the Triton interpreter); D in 16, 32, 64, 128.
    causal=True masks bottom-right aligned (query i sees key j <= i + Tk - Tq);
    causal=False is full attention. sm_scale defaults to 1/sqrt(D). Returns
    (B, H, Tq, D) in q's dtype; differentiable in q, k and v (once).
    """
    _check_shapes(q, k, v, causal)
    _check_kernel_inputs(q, k, v)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(q.shape[-1])
    return FlashAttentionFunction.apply(q, k, v, bool(causal), float(sm_scale))


# ----------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------


def attention_reference(q, k, v, causal=True, sm_scale=None):
    """Plain PyTorch attention with the same signature and semantics as `flash_attention`.

    Materialises the (Tq, Tk) score matrix. The softmax runs in float32 for 16-bit
    inputs and in the input's precision otherwise (float64 stays float64, which
    the tests use as ground truth); the output has q's dtype. Differentiable by
    autograd.
    """
    _, _, Tq, Tk, D = _check_shapes(q, k, v, causal)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(D)
    scores = (q @ k.transpose(-2, -1)) * sm_scale  # (B, H, Tq, Tk)
    if causal:
        visible = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
        scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    return (probs.to(v.dtype) @ v).to(q.dtype)
