"""Int8 and int4 quantization for decoding: weight-only, and int8 weights with int8 activations.

At batch 1 a decode step reads every weight once, so storing the weights in 8 or 4 bits reads 2-4x
fewer bytes than bf16. `quantize_model(model, mode)` replaces every nn.Linear of the blocks and the
lm_head by a `QuantizedLinear` over PyTorch's kernels; each can give the exact float weight it
represents (`dequantized_weight()`), the reference its kernel is tested against.

Modes (MODES):
- "int8": int8 weights, one scale per output channel; activations stay float (bf16 in the kernel).
- "int4": int4 weights in groups of inputs with a scale and a zero each; activations as for int8.
- "int8-dynamic" (W8A8): the int8 weights of "int8", and each row of activations rounded to int8
  with its own scale as it arrives (`quantize_rows`); the product is integer (torch._int_mm, exact
  int32 sums), scaled back to float. It changes the numbers beyond the weights' rounding: its
  cost in bits per byte is in bench/results/w8a8-cpu.json beside the weight-only modes'. CPU only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("int8", "int4", "int8-dynamic")
INT8_WEIGHTS = ("int8", "int8-dynamic")  # the modes storing int8 weights with one scale per output channel
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what the int4 kernels accept
DEFAULT_GROUP_SIZE = 64
KERNEL_DTYPE = torch.bfloat16
_TINY = 1e-30  # the smallest scale: an all-zero row or group still divides safely
_BAND_ELEMENTS = 1 << 22  # weights are rounded in bands of about this many elements (CPU)
# From this many rows of input (a prefill) a CPU int8 product runs as a bf16 matrix product with q widened
# to bf16 (exactly: |q| <= 127), scaled per output channel afterwards, as the kernel scales its sums: the
# outputs rounded to bf16 twice instead of once. At 512 rows of GPT-2 124M's layers it ran at 2.4-2.7x
# the int8 kernel, and no slower at 32 (AMD EPYC); fewer rows (a decode step) keep the int8 kernel.
INT8_WIDENED_ROWS = 64


def check_mode(mode: str, group_size: int = DEFAULT_GROUP_SIZE) -> None:
    """A ValueError for an unknown mode or an int4 group size the kernels do not take."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose from {', '.join(MODES)}")
    if mode == "int4" and group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}, got {group_size}")


def kernel_shape_problem(
    mode: str, out_features: int, in_features: int, group_size: int, device_type: str
) -> str | None:
    """Why the packed kernel of `mode` on `device_type` cannot multiply by an (out_features, in_features)
    weight, or None if it can. Checked before anything is quantized: the CPU kernels do not check
    shapes themselves, and read out of bounds (garbage, NaN or a segfault) where these rules fail.

    - int8, CPU (_weight_int8pack_mm, aten/src/ATen/native/cpu/int8mm_kernel.cpp): the AVX-512 kernel
      steps through the input 16 values at a time with aligned 16- and 32-byte loads (AVX2: 8 at a time):
      the input width must be a multiple of 16. Any output width.
    - int8, CUDA (aten/src/ATen/native/cuda/int8mm.cu): one plain loop per output, any shape (its dtype
      checks are raised by the kernel itself, caught by the trial call of `quantize_model`).
    - int8-dynamic (torch._int_mm, CPU): any shape but an input width of 1 (wrong sums, measured with
      torch 2.13); other devices are refused.
    - int4, CPU and CUDA: the group size divides the input width (so it is a multiple of 32), and the
      output width is a multiple of 16 (the packing ops' N % 16 on a CPU, the CUDA tiles of 8 columns).
    """
    N, K = out_features, in_features
    if N < 1 or K < 1:
        return f"the kernels need both widths >= 1, got {N} x {K}"
    if mode == "int8-dynamic":  # torch._int_mm: on CUDA it needs more than 16 rows
        if device_type != "cpu":
            return f"int8-dynamic runs on a CPU only, not {device_type}"
        if K == 1 and N > 1:  # measured: with K = 1 the CPU kernel misreads the (1, N) weight (strides (1, 1))
            return "the CPU int8 x int8 kernel gives wrong sums for an input width of 1"
        return None
    if mode == "int8":
        if device_type == "cpu" and K % 16:
            return (
                f"the CPU int8 kernel needs an input width that is a multiple of 16 (it reads 16 values at a time), "
                f"got {K}"
            )
        return None
    if K % group_size:
        return f"the int4 group size {group_size} does not divide the layer's input width {K}"
    if N % 16:
        return f"int4 needs a layer's output width to be a multiple of 16, got {N}"
    return None


def _round_up_bf16(x: torch.Tensor) -> torch.Tensor:
    """x (float32) rounded to the nearest bfloat16 that is >= x."""
    b = x.to(torch.bfloat16)
    below = b.float() < x
    return torch.where(below, torch.nextafter(b, torch.full_like(b, float("inf"))), b)


# ----------------------------------------------------------------------------------------------
# Rounding the weights (plain tensor code: the reference for what the kernels are given)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) -> q (N, K) int8 and scale (N,) bf16 with w ~ q * scale[:, None]."""
    w = w.detach().to(torch.float32, copy=True)  # rounded in place below (fresh temporaries are slow to fault in)
    biggest = torch.maximum(w.amax(dim=1), w.amin(dim=1).neg_())  # max |w| per row
    scale = _round_up_bf16((biggest / 127).clamp(min=_TINY))  # |w| / scale <= 127: no clamping
    q = w.div_(scale.float()[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (N, K) -> q (N, K) int32 in [0, 15], scale and zero (N, K // group_size) bf16 with
    w[n, k] ~ (q[n, k] - 8) * scale[n, k // g] + zero[n, k // g]."""
    N, K = w.shape
    g = w.detach().to(torch.float32, copy=True).reshape(N, K // group_size, group_size)  # rounded in place below
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    # levels zero - 8 s ... zero + 7 s: round the zero first, then pick s so both ends still cover [lo, hi]
    zero = (lo + 8 * ((hi - lo) / 15)).to(torch.bfloat16)
    z = zero.float()
    scale = _round_up_bf16(torch.maximum((z - lo) / 8, (hi - z) / 7).clamp(min=_TINY))
    q = g.sub_(z[..., None]).div_(scale.float()[..., None]).add_(8).round_().clamp_(0, 15)  # round((g - z) / s + 8)
    return q.reshape(N, K).to(torch.int32), scale, zero


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> q (M, K) int8 and scale (M, 1) float32 with x ~ q * scale, symmetric per row:
    the activations of "int8-dynamic", rounded as they arrive. |x - q * scale| <= scale / 2."""
    x = x.float()
    amax = x.abs().amax(dim=-1, keepdim=True).clamp_(min=_TINY)
    # x * (127 / amax) is at most 127 * (1 + 2**-23) in size: it rounds to 127, never past it
    q = torch.round(x * (127 / amax)).to(torch.int8)
    return q, amax / 127


# ----------------------------------------------------------------------------------------------
# The kernels' packed int4 layout


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The 4-bit values of a packed tensor in memory order (low nibble of each byte first)."""
    b = packed.contiguous().view(torch.uint8).reshape(-1)
    return torch.stack([b & 15, b >> 4], dim=-1).reshape(-1)


def _int4_pack(q: torch.Tensor) -> torch.Tensor:
    """q (N, K) int32 in [0, 15] in the layout of the int4 kernel for q's device."""
    if q.device.type == "cuda":
        pairs = q.to(torch.uint8)
        return torch.ops.aten._convert_weight_to_int4pack((pairs[:, ::2] << 4) | pairs[:, 1::2], 8)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)


def _int4_unpack(packed: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """The (N, K) int32 values that `_int4_pack` packed. The layout is the packing op's own
    (blocked, and not the same on every device), so instead of restating it this packs the
    base-16 digits of each element's index and reads off where every element went."""
    nibbles = _nibbles(packed)
    if nibbles.numel() != N * K:
        raise ValueError(f"the int4 layout holds {nibbles.numel()} values, expected {N} x {K}")
    index = torch.arange(N * K, device=packed.device)
    source = torch.zeros(N * K, dtype=torch.long, device=packed.device)
    shift = 0
    while (1 << shift) < N * K:
        digit = ((index >> shift) & 15).to(torch.int32).reshape(N, K)
        source |= _nibbles(_int4_pack(digit)).long() << shift
        shift += 4
    q = torch.empty(N * K, dtype=torch.int32, device=packed.device)
    q[source] = nibbles.to(torch.int32)
    return q.reshape(N, K)


# ----------------------------------------------------------------------------------------------
# The module


class QuantizedLinear(nn.Module):
    """y = x W^T + b with W stored in int8 or int4.

    - int8: one symmetric scale per output channel, w ~ q * scale with q in [-127, 127],
      multiplied by torch.ops.aten._weight_int8pack_mm (on a CPU from INT8_WIDENED_ROWS rows of
      input, by F.linear with q widened to bf16, then the scales: a prefill's rows).
    - int4: groups of `group_size` consecutive inputs share a scale and a zero (asymmetric, the
      convention of PyTorch's int4 kernels): w ~ (q - 8) * scale + zero with q in [0, 15],
      multiplied by torch.ops.aten._weight_int4pack_mm_for_cpu on a CPU (its own packed layout,
      made by _convert_weight_to_int4pack_for_cpu) and _weight_int4pack_mm on CUDA.
    - int8-dynamic: the weights of int8, and each row of activations rounded to int8 with its own
      scale (`quantize_rows`); torch._int_mm sums the int8 products exactly in int32, which are
      then scaled by row scale x channel scale. The reference is F.linear of the two rounded
      operands in float32: the same numbers up to float32 summation order.

    The kernels take activations, scales and zeros of one dtype, bfloat16 here: on the CPUs
    measured their float32 variants were several times slower than a float32 F.linear, while the
    bfloat16 ones were ~3x faster. A float32 model therefore runs its quantized matmuls in
    bfloat16 (inputs rounded to bf16, outputs cast back), and everything else in float32.

    Every `QuantizedLinear` can say exactly which float weight it represents
    (`dequantized_weight()`, in float32): the reference its kernel is tested against, with
    `reference=True` computing F.linear(x, dequantized_weight()) instead of calling the kernel
    (for int8-dynamic, of x rounded by `quantize_rows`).
    Scales are rounded to bf16 *upwards* and each int4 scale is chosen after its zero is
    rounded, so no weight is clamped and |w - dequantized| <= scale / 2 holds for every element.

    Buffers: int8: `qweight` (N, K) int8, `scale` (N,) bf16 (int8-dynamic: the same values in
    float32, the dtype its scaling runs in). int4: `qweight` in the kernel's
    packed layout (made on, and valid for, one device type), `scale_and_zero` (K/g, N, 2) bf16.
    `bias` (N,) or None, in the model's dtype. No parameter is trainable.
    """

    def __init__(
        self,
        linear: nn.Linear | torch.Tensor,
        mode: str,
        group_size: int = DEFAULT_GROUP_SIZE,
        bias: torch.Tensor | None = None,
    ):
        super().__init__()
        check_mode(mode, group_size)
        weight = linear.weight if isinstance(linear, nn.Linear) else linear
        if isinstance(linear, nn.Linear):
            bias = linear.bias
        N, K = weight.shape
        self.mode, self.in_features, self.out_features = mode, K, N
        self.group_size = group_size if mode == "int4" else None
        self.reference = False
        problem = kernel_shape_problem(mode, N, K, group_size, weight.device.type)
        if problem is not None:
            raise ValueError(f"cannot quantize this {N} x {K} layer to {mode}: {problem}")
        # A large weight is rounded a band of rows at a time, so the float32 temporaries stay small
        # (a 50432 x 6144 embedding is 1.2 GB in float32). On a CPU the packed int4 layout is made
        # of blocks of 64 rows, so packing bands of a multiple of 64 rows gives the whole's layout.
        rows = N if weight.device.type != "cpu" else max(64, _BAND_ELEMENTS // K // 64 * 64)
        bands = [weight[i : i + rows] for i in range(0, N, rows)]
        qweight, scales, zeros = None, [], []
        for i, band in zip(range(0, N, rows), bands, strict=True):
            if mode in INT8_WEIGHTS:
                q, scale = quantize_int8(band)
            else:
                q, scale, zero = quantize_int4(band, group_size)
                q = kernel_call(_int4_pack, q)  # (band rows, ...) in the kernel's layout
                zeros.append(zero)
            if qweight is None:  # filled band by band: no second copy of the whole
                qweight = q.contiguous() if len(bands) == 1 else q.new_empty((N, *q.shape[1:]))
            if len(bands) > 1:
                qweight[i : i + q.size(0)] = q
            scales.append(scale)
            del q
        self.register_buffer("qweight", qweight)
        if mode in INT8_WEIGHTS:
            scale = torch.cat(scales)
            self.register_buffer("scale", scale.float() if mode == "int8-dynamic" else scale)
        else:
            scale, zero = torch.cat(scales), torch.cat(zeros)
            self.register_buffer("scale_and_zero", torch.stack([scale.t(), zero.t()], dim=-1).contiguous())
        self.packed_for = weight.device.type
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_buffers(
        cls, mode: str, group_size: int, out_features: int, in_features: int, buffers: dict[str, torch.Tensor]
    ) -> QuantizedLinear:
        """The layer whose buffers (a state_dict of one, e.g. read back from a file) are given: nothing
        is rounded again. The buffers must come from this torch on this device type (int4's packed
        layout is the kernel's own), which minigpt.model.load's quantized-weight cache records."""
        check_mode(mode, group_size)
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.mode, layer.in_features, layer.out_features = mode, in_features, out_features
        layer.group_size = group_size if mode == "int4" else None
        layer.reference = False
        layer.packed_for = buffers["qweight"].device.type
        scales = ("scale",) if mode in INT8_WEIGHTS else ("scale_and_zero",)
        for name in ("qweight", *scales):
            layer.register_buffer(name, buffers[name])
        layer.register_buffer("bias", buffers.get("bias"))
        return layer

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.mode == "int4" else ""
        return f"{self.in_features}, {self.out_features}, {self.mode}{group}, bias={self.bias is not None}"

    def dequantized_weight(self) -> torch.Tensor:
        """(N, K) float32: exactly the weight the kernel multiplies by."""
        if self.mode in INT8_WEIGHTS:
            return self.qweight.float() * self.scale.float()[:, None]
        q = _int4_unpack(self.qweight, self.out_features, self.in_features).float()
        scale, zero = self.scale_and_zero.float().unbind(-1)  # (K/g, N) each
        g = self.group_size
        return (q - 8) * scale.t().repeat_interleave(g, dim=1) + zero.t().repeat_interleave(g, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            bias = None if self.bias is None else self.bias.float()
            if self.mode == "int8-dynamic":
                q, scale = quantize_rows(x.reshape(-1, self.in_features))
                rounded = (q.float() * scale).view(*x.shape[:-1], self.in_features)
                return F.linear(rounded, self.dequantized_weight(), bias).to(x.dtype)
            return F.linear(x.float(), self.dequantized_weight(), bias).to(x.dtype)
        if x.device.type != self.packed_for:
            raise ValueError(
                f"this layer was quantized on {self.packed_for} and cannot run on {x.device.type}: "
                "move the model first, then quantize it"
            )
        if self.mode == "int8-dynamic":
            q, scale = quantize_rows(x.reshape(-1, self.in_features))
            y = torch._int_mm(q, self.qweight.t()).mul(scale).mul_(self.scale)  # exact int32 sums, then the scales
            if self.bias is not None:
                y += self.bias
            return y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        rows = x.reshape(-1, self.in_features).to(self.kernel_dtype).contiguous()
        widened = self.mode == "int8" and x.device.type == "cpu" and rows.size(0) >= INT8_WIDENED_ROWS
        # the CPU kernels make aligned loads: a view at an odd offset is copied first (compiled, where the
        # address is not known while tracing, always: a fresh buffer is aligned); F.linear needs no copy
        if not widened and (torch.compiler.is_compiling() or rows.data_ptr() % 64):
            rows = rows.clone()
        if widened:
            y = F.linear(rows, self.qweight.to(rows.dtype)) * self.scale.to(rows.dtype)
        elif self.mode == "int8":
            y = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scale)
        elif x.device.type == "cuda":
            y = torch.ops.aten._weight_int4pack_mm(rows, self.qweight, self.group_size, self.scale_and_zero)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.qweight, self.group_size, self.scale_and_zero)
        y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    @property
    def weight(self) -> torch.Tensor:
        # what a loss or an optimizer would ask for: a quantized layer has no trainable weight
        raise ValueError(
            "a quantized model is for inference only: it cannot compute a loss or be trained "
            "(quantize a copy of the float model for decoding)"
        )

    @property
    def kernel_dtype(self) -> torch.dtype:
        """The dtype the kernel runs in: its scales' (bf16 unless the module was cast; float32 for int8-dynamic)."""
        return (self.scale if self.mode in INT8_WEIGHTS else self.scale_and_zero).dtype


def kernel_call(fn, *args):
    """fn(*args), with a missing or unsupported PyTorch kernel turned into one line."""
    try:
        return fn(*args)
    except (AttributeError, NotImplementedError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"this PyTorch ({torch.__version__}) cannot run the kernel here: {first}") from None


# ----------------------------------------------------------------------------------------------
# The model


def quantize_model(model: nn.Module, mode: str, group_size: int = DEFAULT_GROUP_SIZE) -> nn.Module:
    """Replace, in place, every nn.Linear of model.transformer.h and the lm_head by a
    QuantizedLinear of `mode` (one of MODES), on the device the model is on; returns model.

    Quantize after moving the model (int4's packed layout belongs to one device type). Every
    layer is checked and its kernel tried on one row before any is replaced, so an error
    leaves the model as it was.
    """
    check_mode(mode, group_size)
    if model.training:
        raise ValueError("quantize a model for inference: call model.eval() first")
    targets = [
        (parent, name, child, f"transformer.h.{prefix}.{name}")
        for prefix, parent in model.transformer.h.named_modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    if is_quantized(model):
        raise ValueError("the model is already quantized")
    head = model.lm_head if model.lm_head is not None else model.transformer.wte.weight
    head_name = "lm_head" if model.lm_head is not None else "lm_head (tied to transformer.wte)"
    weights = [(linear.weight, name) for _, _, linear, name in targets] + [
        (head if isinstance(head, torch.Tensor) else head.weight, head_name)
    ]
    for weight, name in weights:  # every shape first: nothing is quantized if one layer cannot be
        problem = kernel_shape_problem(mode, *weight.shape, group_size, weight.device.type)
        if problem is not None:
            raise ValueError(f"cannot quantize {name} ({weight.shape[0]} x {weight.shape[1]}) to {mode}: {problem}")
    replaced = []
    with torch.no_grad():
        for parent, name, linear, _ in targets:
            replaced.append((parent, name, QuantizedLinear(linear, mode, group_size)))
        lm_head = QuantizedLinear(head, mode, group_size)
        for layer in [m for _, _, m in replaced] + [lm_head]:
            probe = torch.zeros(1, layer.in_features, device=layer.qweight.device, dtype=KERNEL_DTYPE)
            kernel_call(layer.forward, probe)
    for parent, name, layer in replaced:
        setattr(parent, name, layer)
    model.lm_head = lm_head
    return model


def set_reference(model: nn.Module, reference: bool = True) -> nn.Module:
    """Make every QuantizedLinear of model compute F.linear(x, dequantized_weight()) (or its kernel)."""
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            m.reference = reference
    return model


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantizedLinear) for m in model.modules())
