"""The compiled decode step (Decoder mode "compiled": the static-cache step compiled by Inductor)
against the simple path: greedy tokens identical, sampled tokens identical for one seed, logits
within 1e-4 of the largest logit (float32; Inductor may fuse and reorder sums), and one
compilation per kind of step: none per token, position, prompt length or new decode.

Compiling costs seconds even for these tiny models, so the test runs few decoders and one file
holds them; the float32 greedy check runs in the quick suite, the rest are marked slow.
"""

import pytest
import torch

from minigpt import GPT, GPTConfig
from minigpt.generate.decoder import Decoder
from minigpt.generate.simple import generate
from minigpt.model.quantize import quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

# odd widths: 3 heads of 32, a vocabulary of 101, a context the decoder does not fill
ODD = dict(block_size=64, vocab_size=101, n_layer=2, n_head=3, n_embd=96)


def tiny_model(seed: int) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**ODD)).eval()
    with torch.no_grad():  # sharpen the random model so its greedy choices are far from ties
        model.transformer.wte.weight.mul_(8)
    return model


def test_compiled_greedy_equals_simple_and_compiles_once():
    model = tiny_model(0)
    B = 3
    decoder = Decoder(model, B, 48, mode="compiled")
    assert decoder.compilations == 0
    for T, n in [(5, 20), (2, 30), (11, 9)]:  # new prompt lengths, positions and decode lengths
        idx = torch.randint(0, ODD["vocab_size"], (B, T))
        with torch.inference_mode():
            simple = generate(model, idx, n, temperature=0)
        assert torch.equal(decoder.generate(idx, n, temperature=0), simple), (T, n)
        assert decoder.compilations == 1, (T, n)  # compiled at the first decode, never again


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8-dynamic", "int4"])
def test_compiled_quantized_batch_1_equals_simple(mode):
    model = quantize_model(tiny_model(1), mode, group_size=32)
    decoder = Decoder(model, 1, 40, mode="compiled")
    for T, n in [(4, 16), (7, 25)]:
        idx = torch.randint(0, ODD["vocab_size"], (1, T))
        with torch.inference_mode():
            simple = generate(model, idx, n, temperature=0)
        assert torch.equal(decoder.generate(idx, n, temperature=0), simple)
    assert decoder.compilations == 1


@pytest.mark.slow
def test_compiled_sampling_equals_simple_and_stops_at_eos():
    model = tiny_model(2)
    idx = torch.randint(0, ODD["vocab_size"], (2, 4))
    decoder = Decoder(model, 2, 40, mode="compiled")

    def settings(seed):
        return dict(temperature=0.9, top_k=20, generator=torch.Generator().manual_seed(seed))

    for seed in (0, 1):
        with torch.inference_mode():
            simple = generate(model, idx, 24, **settings(seed))
        assert torch.equal(decoder.generate(idx, 24, **settings(seed)), simple)
        # the last step's logits (the step fed every token but the last) against a whole forward
        with torch.inference_mode():
            full = model(simple[:, :-1])[:, -1]
        assert (decoder.logits - full).abs().max() <= 1e-4 * full.abs().max()
    eos = int(simple[0, 6])  # a token the first row produces: the decode stops there as the simple path does
    with torch.inference_mode():
        simple_eos = generate(model, idx, 24, eos_id=eos, **settings(1))
    assert torch.equal(decoder.generate(idx, 24, eos_id=eos, **settings(1)), simple_eos)
    assert decoder.compilations == 1  # the sampling step, compiled once
    decoder.generate(idx, 5, temperature=0)
    assert decoder.compilations == 2  # and the greedy step, once


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(mode="compile"), "unknown decode mode 'compile'"),
        (dict(mode="graph"), "mode 'graph' needs the model on a CUDA device"),
    ],
)
def test_bad_modes_are_one_line(kwargs, error):
    with pytest.raises(ValueError, match=error):
        Decoder(tiny_model(0), 1, 16, **kwargs)
