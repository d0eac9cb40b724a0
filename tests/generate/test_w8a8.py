"""int8-dynamic (W8A8: int8 weights and per-row int8 activations, minigpt.model.quantize) against
its references.

Tolerances: one layer's integer product is exact (int32 sums of int8 products), so against the
same product computed in float64 from the rounded operands it differs only by the float32
scaling: 1e-5 of the largest |y| (float32 outputs), 2**-7 (bfloat16 outputs). The reference
mode (F.linear of the rounded operands in float32) differs by float32 summation order: a whole
model's logits agree with it to 1e-3 of the largest logit, and greedy tokens are identical.
Against weight-only int8 (same weights, float activations) the activations' rounding costs at
most 5% of the largest logit on these models.
"""

import pytest
import torch
import torch.nn as nn
from test_quantize import ODD, tiny_model

from minigpt.generate.decoder import Decoder
from minigpt.generate.simple import generate
from minigpt.model.model import KVCache
from minigpt.model.quantize import (
    MODES,
    QuantizedLinear,
    kernel_shape_problem,
    quantize_int8,
    quantize_model,
    quantize_rows,
    set_reference,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

MODE = "int8-dynamic"


def test_the_mode_is_listed():
    assert MODE in MODES  # so --quantize offers it (minigpt.cli.add_quantize_flags)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_are_rounded_within_half_a_step(dtype):
    torch.manual_seed(0)
    x = (torch.randn(9, 61) * torch.logspace(-20, 20, 9)[:, None]).to(dtype)  # rows of very different sizes
    x[4] = 0  # an all-zero row
    x[6, 3] = -x[6].abs().max() * 2  # the largest entry negative
    q, scale = quantize_rows(x)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (9, 1)
    back = q.double() * scale.double()  # in float64, so the check adds no rounding of its own
    # half a step, and the float32 rounding of x * (127 / amax) (a few ulps of 127)
    assert ((x.double() - back).abs() <= scale.double() * (0.5 + 1e-4)).all()
    assert (q[4] == 0).all() and (back[4] == 0).all()
    nonzero = [i for i in range(9) if i != 4]
    assert (q[nonzero].abs().amax(dim=1) == 127).all()  # every row uses the full range
    assert q[6, 3] == -127
    assert q.abs().max() <= 127  # -128 is never produced: the range is symmetric


def test_weights_are_those_of_weight_only_int8():
    torch.manual_seed(1)
    linear = nn.Linear(64, 37)  # weight-only int8 needs an input width that is a multiple of 16
    a, b = QuantizedLinear(linear, "int8"), QuantizedLinear(linear, MODE)
    assert torch.equal(a.qweight, b.qweight)
    assert torch.equal(a.dequantized_weight(), b.dequantized_weight())
    assert b.scale.dtype == torch.float32 and torch.equal(b.scale, quantize_int8(linear.weight)[1].float())


@pytest.mark.parametrize("in_features,out_features", [(61, 37), (96, 288), (2, 5), (768, 101)])
@pytest.mark.parametrize("lead", [(1,), (1, 1), (5, 3), (2, 17)])
def test_layer_equals_the_float64_product_of_its_rounded_operands(in_features, out_features, lead):
    torch.manual_seed(in_features + out_features + len(lead))
    for bias in (True, False):
        linear = nn.Linear(in_features, out_features, bias=bias)
        layer = QuantizedLinear(linear, MODE)
        deq = layer.dequantized_weight().double()
        for dtype in (torch.float32, torch.bfloat16):
            x = (torch.randn(*lead, in_features) * 3).to(dtype)
            q, sx = quantize_rows(x.reshape(-1, in_features))
            exact = (q.double() @ layer.qweight.double().t()) * sx.double() * layer.scale.double()
            if bias:
                exact += linear.bias.detach().to(dtype).double()
            exact = exact.view(*lead, out_features)
            y = layer(x)
            assert y.dtype == dtype and y.shape == (*lead, out_features)
            tol = 1e-5 if dtype == torch.float32 else 2**-7
            assert (y.double() - exact).abs().max() <= tol * exact.abs().max() + 1e-6
            layer.reference = True
            ref = layer(x)
            layer.reference = False
            assert (ref.double() - exact).abs().max() <= tol * exact.abs().max() + 1e-6
            # and the rounded operands are close to the float layer (a loose check that they represent it)
            floaty = torch.nn.functional.linear(x.double(), deq, None if not bias else linear.bias.double())
            assert (y.double() - floaty).abs().max() <= 0.05 * floaty.abs().max() + 1e-3


def _logits_step_by_step(model, idx):
    """Logits (B, T, V) of idx fed one token at a time through a KV cache."""
    B, T = idx.shape
    cache = KVCache(model.config, B, T, device=idx.device, dtype=torch.float32)
    return torch.cat([model(idx[:, t : t + 1], cache=cache) for t in range(T)], dim=1)


@pytest.mark.parametrize("B", [1, 3])
def test_model_equals_its_reference_with_and_without_a_cache(B):
    model = quantize_model(tiny_model(seed=4), MODE)
    idx = torch.randint(0, ODD["vocab_size"], (B, 7))
    with torch.inference_mode():
        whole, stepped = model(idx), _logits_step_by_step(model, idx)
        fast = generate(model, idx, 20, temperature=0)
        set_reference(model)
        ref_whole, ref_stepped = model(idx), _logits_step_by_step(model, idx)
        ref = generate(model, idx, 20, temperature=0)
        set_reference(model, False)
    assert (whole - ref_whole).abs().max() <= 1e-3 * ref_whole.abs().max()
    assert (stepped - ref_stepped).abs().max() <= 1e-3 * ref_stepped.abs().max()
    assert torch.equal(fast, ref)
    # per-row rounding: a token's logits do not depend on the rows beside it, cached or not
    assert (whole - stepped).abs().max() <= 1e-3 * whole.abs().max()


@pytest.mark.parametrize("B", [1, 3])
def test_decoder_gives_the_simple_paths_tokens(B):
    model = quantize_model(tiny_model(seed=5), MODE)
    idx = torch.randint(0, ODD["vocab_size"], (B, 5))
    with torch.inference_mode():
        simple = generate(model, idx, 20, temperature=0)
    for decode_mode in ("eager", "static"):
        assert torch.equal(Decoder(model, B, 32, mode=decode_mode).generate(idx, 20, temperature=0), simple)


def test_activation_rounding_costs_little_against_weight_only_int8():
    idx = torch.randint(0, ODD["vocab_size"], (2, 9))
    with torch.inference_mode():
        w8 = quantize_model(tiny_model(seed=6), "int8")(idx)
        w8a8 = quantize_model(tiny_model(seed=6), MODE)(idx)
    assert 0 < (w8 - w8a8).abs().max() <= 0.05 * w8.abs().max()  # different numbers, close ones


def test_bfloat16_model():
    model = tiny_model(seed=7).to(torch.bfloat16)
    quantize_model(model, MODE)
    idx = torch.randint(0, ODD["vocab_size"], (2, 6))
    with torch.inference_mode():
        logits = model(idx)
        set_reference(model)
        ref = model(idx)
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - ref.float()).abs().max() <= 0.03 * ref.float().abs().max()


@pytest.mark.parametrize(
    "device_type,n,k,expected",
    [
        ("cuda", 64, 64, "int8-dynamic runs on a CPU only, not cuda"),
        ("mps", 64, 64, "int8-dynamic runs on a CPU only, not mps"),
        ("cpu", 5, 1, "the CPU int8 x int8 kernel gives wrong sums for an input width of 1"),
        ("cpu", 0, 8, "the kernels need both widths >= 1, got 0 x 8"),
        ("cpu", 37, 61, None),  # any other shape on a CPU
        ("cpu", 1, 1, None),
    ],
)
def test_shapes_and_devices_the_kernel_cannot_take_are_refused_in_one_line(device_type, n, k, expected):
    assert kernel_shape_problem(MODE, n, k, 64, device_type) == expected
    if expected is not None and device_type == "cpu":
        with pytest.raises(ValueError, match=f"cannot quantize this {n} x {k} layer to int8-dynamic: {expected}"):
            QuantizedLinear(torch.randn(n, k), MODE)


@pytest.mark.parametrize(
    "argv,error",
    [
        (["--quantize", "int8-dynamic", "--quantize-group-size", "32"], "--quantize-group-size is for --quantize int4"),
        (["--quantize", "int8-dyn"], "invalid choice: 'int8-dyn'"),
    ],
)
def test_bad_flags_are_one_line(argv, error, capsys):
    from minigpt.cli import OneLineParser, add_quantize_flags, quantize_settings

    p = OneLineParser()
    add_quantize_flags(p)
    with pytest.raises((SystemExit, ValueError)) as e:
        quantize_settings(p.parse_args(argv))
    message = capsys.readouterr().err.strip() if e.type is SystemExit else str(e.value)
    assert error in message and "\n" not in message


def test_the_flag_takes_it():
    from minigpt.cli import OneLineParser, add_quantize_flags, quantize_settings

    p = OneLineParser()
    add_quantize_flags(p)
    assert quantize_settings(p.parse_args(["--quantize", MODE]))["quantize"] == MODE
