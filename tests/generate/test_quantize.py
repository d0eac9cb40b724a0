"""Weight-only int8/int4 quantization (minigpt.model.quantize) against its dequantized reference.

Tolerances: the kernels run in bfloat16 (inputs rounded to bf16, bf16 outputs), so one layer
agrees with F.linear(bf16(x), dequantized_weight) in float32 to bf16 output rounding (2**-8
relative, plus the rounding of the fp32 sum: 2**-7 of the largest |y| is allowed). A whole
model's logits agree with its reference (every layer F.linear(x, dequantized_weight) in
float32) to 3% of the largest logit; greedy tokens must be identical. The rounding of the
weights is held to its bound exactly: |w - dequantized| <= scale / 2 per element.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_decode import allocations_per_step

from minigpt import GPT, GPTConfig
from minigpt.generate import decoder as decode
from minigpt.generate.decoder import Decoder
from minigpt.generate.simple import generate
from minigpt.model import quantize
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.model.quantize import QuantizedLinear, quantize_int4, quantize_int8, quantize_model, set_reference

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

# width 96 with 3 heads (head size 32); int4 needs widths that are multiples of 16 and of the group
ODD = dict(block_size=64, vocab_size=101, n_layer=2, n_head=3, n_embd=96)
MODES = [("int8", None), ("int4", 32)]


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**ODD, **overrides})).eval()
    with torch.no_grad():  # sharpen the random model so its greedy choices are far from ties
        model.transformer.wte.weight.mul_(8)
    return model


def quantized(model: GPT, mode: str, group: int | None) -> GPT:
    return quantize_model(model, mode) if group is None else quantize_model(model, mode, group_size=group)


# ----------------------------------------------------------------------------------------------
# The rounding


def test_int8_error_within_half_a_step():
    w = torch.randn(37, 61) * torch.logspace(-3, 1, 37)[:, None]  # rows of very different sizes
    w[5] = 0  # an all-zero row
    q, scale = quantize_int8(w)
    deq = q.float() * scale.float()[:, None]
    assert q.dtype == torch.int8 and scale.dtype == torch.bfloat16
    assert ((w - deq).abs() <= scale.float()[:, None] / 2 * (1 + 1e-6)).all()
    assert (deq[5] == 0).all()
    assert q.abs().max() == 127  # the scale is as small as the bound allows (not inflated)


@pytest.mark.parametrize("group", [32, 64])
def test_int4_error_within_half_a_step(group):
    w = torch.randn(48, 192) * 0.02
    w[:, :group] += 3.0  # a group far from zero: the zero point has to carry it
    w[7, group : 2 * group] = 0.5  # a constant group
    q, scale, zero = quantize_int4(w, group)
    s = scale.float().repeat_interleave(group, dim=1)
    deq = (q.float() - 8) * s + zero.float().repeat_interleave(group, dim=1)
    assert q.min() >= 0 and q.max() <= 15
    assert ((w - deq).abs() <= s / 2 * (1 + 1e-5)).all()
    assert (w - deq)[:, :group].abs().max() < 0.2  # and the bound is not met by a huge scale
    assert torch.allclose(deq[7, group : 2 * group], torch.tensor(0.5), atol=1e-6)


@pytest.mark.parametrize("mode,group", MODES)
def test_layer_kernel_equals_its_dequantized_weight(mode, group):
    torch.manual_seed(1)
    for bias in (True, False):
        linear = nn.Linear(96, 288, bias=bias)
        layer = QuantizedLinear(linear, mode, group or 64)
        deq = layer.dequantized_weight()
        per_element = (linear.weight - deq).abs()
        if mode == "int8":
            assert (per_element <= layer.scale.float()[:, None] / 2 * (1 + 1e-6)).all()
        assert per_element.max() < 0.1 * linear.weight.abs().max()  # it does represent the layer
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(5, 3, 96, dtype=dtype)
            y = layer(x)
            ref = F.linear(x.to(torch.bfloat16).float(), deq, None if linear.bias is None else linear.bias.float())
            assert y.dtype == dtype and y.shape == (5, 3, 288)
            assert (y.float() - ref).abs().max() <= 2**-7 * ref.abs().max() + 1e-6
            layer.reference = True
            assert torch.allclose(layer(x).float(), F.linear(x.float(), deq, linear.bias).to(dtype).float())
            layer.reference = False


@pytest.mark.parametrize("rows", [1, 63, 64, 100, 301])
def test_int8_layer_agrees_with_its_dequantized_weight_from_one_row_to_a_prefills(rows):
    """From INT8_WIDENED_ROWS rows the CPU int8 product multiplies by q widened to bf16 and scales
    the (bf16) sums, where the kernel scales float32 sums: one more rounding of each output. Both
    stay within the tolerance above of F.linear(bf16(x), dequantized_weight) in float32."""
    torch.manual_seed(rows)
    linear = nn.Linear(112, 83)  # an odd output width
    layer = QuantizedLinear(linear, "int8")
    deq = layer.dequantized_weight()
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(1, rows, 112, dtype=dtype)
        y = layer(x)
        ref = F.linear(x.to(torch.bfloat16).float(), deq, linear.bias.float())
        assert y.dtype == dtype and y.shape == (1, rows, 83)
        assert (y.float() - ref).abs().max() <= 2**-7 * ref.abs().max() + 1e-6
    x = torch.randn(rows, 112, dtype=torch.bfloat16)
    bias = linear.bias.to(torch.bfloat16)
    if rows >= quantize.INT8_WIDENED_ROWS:  # q widened to bf16, the sums scaled
        assert torch.equal(layer(x), F.linear(x, layer.qweight.to(torch.bfloat16)) * layer.scale + bias)
    else:  # the int8 kernel
        assert torch.equal(layer(x), torch.ops.aten._weight_int8pack_mm(x, layer.qweight, layer.scale) + bias)


# ----------------------------------------------------------------------------------------------
# The model


@pytest.mark.parametrize("mode,group", MODES)
def test_quantized_model_equals_its_reference(mode, group):
    model = tiny_model()
    idx = torch.randint(0, ODD["vocab_size"], (2, 7))
    float_logits = model(idx)
    quantized(model, mode, group)
    assert model.lm_head is not None and model.transformer.wte.weight.shape == (128, 96)  # tied: wte kept
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [] and sum(isinstance(m, QuantizedLinear) for m in model.modules()) == 2 * 4 + 1
    with torch.inference_mode():
        logits = model(idx)
        fast = generate(model, idx, 20, temperature=0)
        set_reference(model)
        ref_logits = model(idx)
        ref = generate(model, idx, 20, temperature=0)
    assert (logits - ref_logits).abs().max() <= 0.03 * ref_logits.abs().max()
    assert torch.equal(fast, ref)
    # the quantized model is still the same model (a loose check that the weights went in right)
    assert (ref_logits - float_logits).abs().max() <= 0.1 * float_logits.abs().max()


@pytest.mark.parametrize("mode,group", MODES)
def test_quantized_model_decodes_with_the_decoder(mode, group):
    model = quantized(tiny_model(seed=2), mode, group)
    idx = torch.randint(0, ODD["vocab_size"], (3, 5))
    with torch.inference_mode():
        simple = generate(model, idx, 20, temperature=0)
    for decode_mode in ("eager", "static"):
        out = Decoder(model, 3, 32, mode=decode_mode).generate(idx, 20, temperature=0)
        assert torch.equal(out, simple), decode_mode
    assert torch.equal(generate(model, idx, 20, temperature=0, decoder_mode="auto"), simple)


@pytest.mark.parametrize("mode,group", MODES)
def test_quantized_decode_steps_allocate_nothing_that_grows(mode, group):
    model = quantized(tiny_model(seed=3, block_size=128), mode, group)
    B, max_len = 2, 128
    cache_layer_bytes = B * model.config.n_head * max_len * model.config.head_dim * 4
    decoder = Decoder(model, B, max_len, mode="eager")
    with torch.inference_mode():
        decoder.advance(decoder.prefill(torch.randint(0, 101, (B, 8))).argmax(-1))
        steps = allocations_per_step(decoder.greedy_step, 100)
    assert max(max(s) for s in steps) < cache_layer_bytes / 8
    assert sum(steps[-1]) - sum(steps[0]) < cache_layer_bytes / 8


def test_untied_bias_free_head_and_bf16_model():
    model = tiny_model(seed=4)
    head = nn.Linear(96, 128, bias=False)
    model.lm_head = head
    model = model.to(torch.bfloat16)
    idx = torch.randint(0, 101, (1, 6))
    quantize_model(model, "int8")
    assert model.lm_head.bias is None and model.lm_head.out_features == 128
    with torch.inference_mode():
        logits = model(idx)
        set_reference(model)
        ref = model(idx)
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - ref.float()).abs().max() <= 0.03 * ref.float().abs().max()


# ----------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_one_line():
    model = tiny_model()
    x = torch.randint(0, 101, (1, 4))
    cases = [
        (lambda: quantize_model(model, "int3"), "unknown quantization 'int3'"),
        (lambda: quantize_model(model, "int4", group_size=48), "group size must be one of 32, 64, 128, 256"),
        (
            lambda: quantize_model(model, "int4", group_size=64),
            "group size 64 does not divide the layer's input width 96",
        ),
        (lambda: quantize_model(tiny_model(n_embd=40, n_head=2), "int4", group_size=32), "does not divide"),
        (lambda: quantize_model(GPT(GPTConfig(**ODD)), "int8"), "call model.eval"),  # training mode
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())  # a failed call changed nothing
    quantize_model(model, "int8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, "int8")
    with pytest.raises(ValueError, match="inference only"):
        model(x, targets=x)


def test_missing_kernel_is_one_line(monkeypatch):
    """A PyTorch without the int4 kernel (an older build, another CPU architecture): one line, model unchanged."""
    import minigpt.model.quantize as quantize

    def missing(q):
        raise AttributeError("'_OpNamespace' 'aten' object has no attribute '_convert_weight_to_int4pack_for_cpu'")

    monkeypatch.setattr(quantize, "_int4_pack", missing)
    model = tiny_model()
    with pytest.raises(ValueError, match="cannot run the kernel here: .*_convert_weight_to_int4pack_for_cpu") as e:
        quantize_model(model, "int4", group_size=32)
    assert "\n" not in str(e.value) and model.lm_head is None


def test_decoder_does_not_reuse_a_float_models_cpu_linear_choice():
    """The CPU decoder times F.linear against oneDNN once per model shape and dtype: a quantized model
    of the same shape has no F.linear to route, and must not inherit the float model's choice."""
    model = tiny_model(seed=5).to(torch.bfloat16)
    idx = torch.randint(0, 101, (1, 4))
    Decoder(model, 1, 16).generate(idx, 4, temperature=0)
    for key in decode._measured_cpu_linear:  # as if oneDNN had won for the float model
        decode._measured_cpu_linear[key] = "onednn"
    decoder = Decoder(quantize_model(model, "int8"), 1, 16)
    decoder.generate(idx, 4, temperature=0)
    assert decoder.cpu_linear == "torch"


# ----------------------------------------------------------------------------------------------
# Widths the kernels cannot take: before, int8 at widths 8, 24, 40 gave NaN or
# garbage and widths 4, 12, 20, n_embd=1, n_inner=7 segfaulted on the first forward

SWEEP = r"""
import json, sys, torch
from minigpt import GPT, GPTConfig
from minigpt.model.quantize import QuantizedLinear, quantize_model, set_reference
torch.manual_seed(0)
device = sys.argv[2] if len(sys.argv) > 2 else "cpu"
out = []
for n_embd, n_inner, mode, group in json.loads(sys.argv[1]):
    config = GPTConfig(block_size=16, vocab_size=101, n_layer=1, n_head=1, n_embd=n_embd, n_inner=n_inner)
    model = GPT(config).to(device, torch.bfloat16 if device == "cuda" else torch.float32).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 101, (2, 5), device=device)
    try:
        quantize_model(model, mode, **({} if group is None else {"group_size": group}))
    except ValueError as e:
        after = model.state_dict()
        unchanged = not any(isinstance(m, QuantizedLinear) for m in model.modules()) and before.keys() == after.keys()
        unchanged = unchanged and all(torch.equal(before[k], after[k]) for k in before)
        out.append(dict(error=str(e), unchanged=unchanged))
        continue
    with torch.no_grad():
        got = model(x)[0]
        want = set_reference(model)(x)[0]
    err = float((got - want).float().abs().max() / want.float().abs().max().clamp(min=1e-6))
    out.append(dict(error=None, finite=bool(torch.isfinite(got).all()), rel_err=err))
print(json.dumps(out))
"""


def test_odd_widths_are_refused_in_one_line_or_quantized_right():
    """Each shape either quantizes to a model that agrees with its reference, or is refused in one line
    naming the layer and the rule, the model unchanged. Run in a subprocess: a segfault fails the test."""
    cases = []
    for n_embd, n_inner in [(1, None), (4, None), (8, None), (12, None), (20, None), (24, None), (40, None)]:
        cases.append((n_embd, n_inner, "int8", None))
    cases += [(16, 7, "int8", None), (32, 7, "int8", None), (16, None, "int8", None), (48, 40, "int8", None)]
    cases += [(32, None, "int8", None), (64, 96, "int8", None)]
    cases += [(32, 7, "int4", 32), (40, None, "int4", 32), (8, None, "int4", 32), (96, None, "int4", 32)]
    cases += [(64, 48, "int4", 32), (64, 96, "int4", 32)]
    proc = subprocess.run(
        [sys.executable, "-c", SWEEP, json.dumps(cases)], capture_output=True, text=True, timeout=600, env=os.environ
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    results = json.loads(proc.stdout)
    refused = {}
    for case, r in zip(cases, results, strict=True):
        n_embd, n_inner, mode, _ = case
        if r["error"] is None:
            assert r["finite"] and r["rel_err"] < 0.03, (case, r)
        else:
            assert "\n" not in r["error"] and r["unchanged"], (case, r)
            assert re.match(
                r"cannot quantize (transformer\.h\.0\.\S+|lm_head.*) \(\d+ x \d+\) to int[48]: ", r["error"]
            )
            refused[case] = r["error"]
    # the rules: int8 on a CPU needs input widths that are multiples of 16; int4 the group dividing them
    for case, r in zip(cases, results, strict=True):
        n_embd, n_inner, mode, group = case
        widths = (n_embd, n_inner or 4 * n_embd)
        expect_ok = all(w % 16 == 0 for w in widths) if mode == "int8" else all(w % group == 0 for w in widths)
        assert (case not in refused) == expect_ok, (case, r)
    assert "multiple of 16" in refused[(16, 7, "int8", None)] and "mlp.c_proj" in refused[(16, 7, "int8", None)]
    assert "transformer.h.0.attn.c_attn (3 x 1)" in refused[(1, None, "int8", None)]


ODD_SHAPES = [(n, None, "int8", None) for n in (1, 4, 8, 12, 20, 24, 40)] + [
    (16, 7, "int8", None),
    (48, 40, "int8", None),
    (64, 96, "int8", None),
    (32, 7, "int4", 32),
    (40, None, "int4", 32),
    (96, None, "int4", 32),
    (64, 48, "int4", 32),
    (64, 96, "int4", 32),
]


@pytest.mark.cuda
def test_odd_widths_on_cuda_follow_the_cuda_rules():
    """The same sweep on a GPU (bf16, as CUDA quantized models run): every shape the CUDA rules of
    kernel_shape_problem accept (int8: any; int4: the group divides the input width, the output width
    a multiple of 16) agrees with its reference, and every other is refused in one line, unchanged."""
    from minigpt.model.quantize import kernel_shape_problem

    proc = subprocess.run(
        [sys.executable, "-c", SWEEP, json.dumps(ODD_SHAPES), "cuda"],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    for case, r in zip(ODD_SHAPES, json.loads(proc.stdout), strict=True):
        n_embd, n_inner, mode, group = case
        inner = n_inner or 4 * n_embd
        shapes = [(3 * n_embd, n_embd), (n_embd, n_embd), (inner, n_embd), (n_embd, inner)]
        expect_ok = all(kernel_shape_problem(mode, N, K, group or 128, "cuda") is None for N, K in shapes)
        if r["error"] is None:
            assert expect_ok and r["finite"] and r["rel_err"] < 0.05, (case, r)
        else:
            assert not expect_ok and "\n" not in r["error"] and r["unchanged"], (case, r)


def test_saving_a_quantized_model_is_refused_and_writes_nothing(tmp_path):
    """Save_pretrained of a quantized model wrote a model.safetensors without any
    c_attn/c_proj/c_fc weight; over its source directory, that destroyed the model."""
    model = tiny_model(seed=2)
    source = tmp_path / "source"
    save_pretrained(model, source, transformers_only=False)
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    assert "model.safetensors" in files
    quantize_model(model, "int8")
    fresh = tmp_path / "fresh"
    for directory in (source, fresh):
        with pytest.raises(ValueError, match="this model is quantized; save it before quantizing") as e:
            save_pretrained(model, directory, transformers_only=False)
        assert "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in source.iterdir()} == files  # not a byte changed
    assert not fresh.exists()
    reloaded = from_pretrained(source)  # the float model is still there
    assert reloaded.transformer.h[0].attn.c_attn.weight.shape == (3 * 96, 96)
