"""The language-model loss: the tied lm_head and cross-entropy, fused and chunked.

The plain way (`linear_cross_entropy_reference`) materialises the logits for every position,
(N, vocab) in fp32: 206 MB for 1,024 tokens of GPT-2, and 3.3 GB for a 16 x 1024 batch.
Around that tensor autograd then runs a slice, a copy, a log-softmax, its backward, and two
zero fills, each a full pass over memory.

`linear_cross_entropy` computes the same loss a chunk of rows at a time, and, when a gradient
is wanted, the gradients too, in the forward pass (as Liger-Kernel's fused linear
cross-entropy does). The gradient of the mean cross-entropy with respect to a row of logits is
(softmax - onehot(target)) / N. Turning one chunk's logits into that in place and multiplying
it straight back through the lm_head means at most one chunk of logits ever exists. The
backward pass then only scales the stored gradients by the incoming one.

Rows whose target is `ignore_index` count neither in the loss nor in N, as in F.cross_entropy
(where every target is ignored, the loss and gradients are 0; F.cross_entropy gives nan).
Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as they do in the
reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# Rows per chunk are chosen so that one chunk of fp32 logits holds at most this many elements
# (64M: 256 MB). GPT-2 training on a CPU (1,024 rows) then runs in one chunk, and a 16 x 1024
# GPU batch runs in 13.
CHUNK_ELEMENTS = 1 << 26


def linear_cross_entropy_reference(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean cross-entropy of logits = x @ weight[:vocab_size].T against targets, x (N, C), targets (N,)."""
    logits = F.linear(x, weight)[:, :vocab_size]
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index)


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, vocab_size, ignore_index, chunk_rows):
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        want_dx, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(device, enabled=False):
            xc, w = x.to(dtype), weight[:vocab_size].to(dtype)  # the padding rows get no gradient
            valid = targets != ignore_index
            count = valid.sum()
            # Dividing by the count on the device keeps the host from waiting on it.
            scale = 1.0 / count.clamp(min=1).float()
            safe_targets = torch.where(valid, targets, 0)
            dx = torch.empty_like(xc) if want_dx else None
            dw = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if want_dw else None
            loss = torch.zeros((), dtype=torch.float32, device=x.device)
            for start in range(0, x.size(0), chunk_rows):
                rows = slice(start, start + chunk_rows)
                logits = (xc[rows] @ w.T).float()  # (n, vocab)
                # In place on the CPU, where a fresh buffer this size costs more in page faults than
                # the log-softmax itself (the kernel reads each element before writing it).
                logp = torch.log_softmax(logits, dim=-1, out=logits if device == "cpu" else None)
                target_logp = logp.gather(1, safe_targets[rows, None]).squeeze(1)
                loss -= (target_logp * valid[rows]).sum()
                if not (want_dx or want_dw):
                    continue
                # d loss / d logits = (softmax - onehot) / count, zero on ignored rows; in place
                grad = logp.exp_()
                grad.scatter_add_(1, safe_targets[rows, None], torch.full_like(target_logp, -1.0)[:, None])
                grad.mul_((scale * valid[rows])[:, None])
                grad = grad.to(dtype)
                if want_dx:
                    torch.mm(grad, w, out=dx[rows])
                if want_dw:
                    if dtype == torch.float32:
                        dw[:vocab_size].addmm_(grad.T, xc[rows])
                    else:  # accumulate across chunks in fp32
                        dw[:vocab_size] += (grad.T @ xc[rows]).float()
            ctx.save_for_backward(dx, dw)
            ctx.dtypes = (x.dtype, weight.dtype)
        return loss * scale

    @staticmethod
    def backward(ctx, grad_loss):
        dx, dw = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        # in place: these buffers are ours, and dw is as large as the embedding
        dx = None if dx is None else dx.mul_(grad_loss).to(x_dtype)
        dw = None if dw is None else dw.mul_(grad_loss).to(w_dtype)
        return dx, dw, None, None, None, None


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    ignore_index: int = IGNORE_INDEX,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """The same value and gradients as linear_cross_entropy_reference, computed a chunk of rows at a time.

    x (N, C) are the final hidden states, weight (V_padded, C) the lm_head (only its first
    vocab_size rows are used), targets (N,) token ids or ignore_index.
    """
    if x.dim() != 2 or targets.shape != x.shape[:1] or weight.dim() != 2 or weight.size(1) != x.size(1):
        raise ValueError(
            f"expected x (N, C), weight (V, C), targets (N,); got {tuple(x.shape)}, "
            f"{tuple(weight.shape)}, {tuple(targets.shape)}"
        )
    if not 0 < vocab_size <= weight.size(0):
        raise ValueError(f"vocab_size {vocab_size} must be in 1..{weight.size(0)} (the lm_head's rows)")
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // vocab_size)
    return LinearCrossEntropy.apply(x, weight, targets, vocab_size, ignore_index, chunk_rows)
