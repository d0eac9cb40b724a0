"""LoRA adapters: the adapted forward against the merged weights, gradients only in the adapters,
a quantized base, and the PEFT files against peft itself on transformers' GPT2LMHeadModel."""

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from reference import hf_model, save_hf

from minigpt import GPT, GPTConfig
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.model.lora import (
    LoRALinear,
    add_lora,
    load_adapter,
    lora_layers,
    lora_parameters,
    merge_lora,
    save_adapter,
)
from minigpt.model.quantize import QuantizedLinear, quantize_model, set_reference

ATOL = 1e-5  # fp32: adapted vs merged, ours vs peft
ALL = ("c_attn", "c_proj", "c_fc", "lm_head")


def randomize_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """B starts at zero (the adapter changes nothing): give every adapter values that matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def tiny(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    config = dict(block_size=32, vocab_size=97, n_layer=2, n_head=3, n_embd=48)
    return GPT(GPTConfig(**{**config, **kw})).eval()


@pytest.mark.parametrize(
    "targets,tied",
    [
        (("c_attn",), True),
        (("attn.c_proj", "mlp.c_proj"), True),
        (ALL, True),
        (ALL, False),
        (("h.1.mlp.c_fc", "lm_head"), False),
    ],
)
def test_adapted_forward_equals_merged_forward(targets, tied):
    model = tiny(tie_word_embeddings=tied)
    base = copy.deepcopy(model)
    add_lora(model, rank=3, alpha=5.0, targets=targets)
    idx = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        assert torch.equal(model(idx), base(idx))  # B = 0: a new adapter changes nothing
        randomize_adapters(model)
        adapted = model(idx)
        assert (adapted - base(idx)).abs().max() > 1e-3  # ... and these adapters do
        merged = merge_lora(copy.deepcopy(model))
        assert not lora_layers(merged)
        assert (merged(idx) - adapted).abs().max().item() <= ATOL
        # the fused loss reads the head through head_weight: the same logits as head()
        loss = model(idx, targets=idx)
        assert torch.allclose(loss, F.cross_entropy(adapted.flatten(0, 1), idx.flatten()), atol=1e-5)


def test_which_layers_are_wrapped():
    model = tiny()
    wrapped = add_lora(model, 2, 4, ("c_attn", "mlp.c_proj"))
    assert sorted(wrapped) == [f"transformer.h.{i}.{n}" for i in range(2) for n in ("attn.c_attn", "mlp.c_proj")]
    layer = wrapped["transformer.h.0.attn.c_attn"]
    assert layer.scaling == 2.0 and layer.lora_A.weight.shape == (2, 48) and layer.lora_B.weight.shape == (144, 2)
    assert torch.count_nonzero(layer.lora_A.weight) == layer.lora_A.weight.numel()  # kaiming-uniform, not zeros
    bound = 1 / 48**0.5  # kaiming_uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in)), as PEFT
    assert layer.lora_A.weight.abs().max() <= bound


def test_gradients_reach_only_the_adapters():
    model = tiny(tie_word_embeddings=True).train()
    add_lora(model, 4, 8, ALL)
    randomize_adapters(model)
    idx = torch.randint(0, 97, (2, 11))
    model(idx, targets=idx).backward()
    adapters = {id(p) for p in lora_parameters(model)}
    assert len(adapters) == 2 * (4 * 2 + 1)  # A and B of 4 layers in each of 2 blocks, and of the lm_head
    for name, p in model.named_parameters():
        if id(p) in adapters:
            assert p.requires_grad and p.grad is not None and p.grad.abs().max() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_gradients_through_a_quantized_base_match_its_reference():
    """int8 base (frozen, packed kernel): the adapters' gradients equal those computed through
    F.linear with the dequantized weights (the kernel's reference), to bf16 rounding."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=96, n_layer=2, n_head=2, n_embd=32)).eval()
    quantize_model(model, "int8")
    add_lora(model, 4, 8, ALL)
    randomize_adapters(model)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    idx = torch.randint(0, 96, (2, 9))
    grads = []
    for reference in (False, True):
        set_reference(model, reference)
        model.zero_grad()
        logits = model(idx)
        F.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
        grads.append([p.grad.clone() for p in lora_parameters(model)])
    for kernel, ref in zip(*grads, strict=True):
        assert torch.allclose(kernel, ref, rtol=5e-2, atol=5e-3 * ref.abs().max().item())
    with torch.no_grad():
        adapted = model(idx)  # reference mode: F.linear with the dequantized weights
        merged = merge_lora(model)  # float layers: dequantized + delta
        assert not lora_layers(merged) and not any(isinstance(m, QuantizedLinear) for m in merged.modules())
        assert (merged(idx) - adapted).abs().max().item() <= 1e-4


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    hf = hf_model(n_positions=32, vocab_size=101, n_layer=2, n_head=2, n_embd=32)
    return save_hf(hf, tmp_path_factory.mktemp("hf")), hf


@pytest.mark.parametrize("targets", [("c_attn", "c_proj", "c_fc"), ALL, ("mlp.c_proj",)])
def test_peft_applies_our_adapter_with_identical_logits(hf_dir, tmp_path, targets):
    peft = pytest.importorskip("peft")
    directory, hf = hf_dir
    model = from_pretrained(directory)
    add_lora(model, 4, 16, targets)
    randomize_adapters(model)
    save_adapter(model, tmp_path / "adapter", base_model=str(directory))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True and config["target_modules"] == list(targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "adapter").eval()
    idx = torch.randint(0, 101, (2, 17))
    with torch.no_grad():
        ours, theirs = model(idx), peft_model(idx).logits
        assert (ours - hf(idx).logits).abs().max() > 1e-3  # the adapter matters
        assert (ours - theirs).abs().max().item() <= ATOL
        # ... and back: load_adapter reads it onto a fresh model
        again = from_pretrained(directory)
        load_adapter(again, tmp_path / "adapter")
        assert torch.equal(again(idx), ours)


def test_we_read_an_adapter_peft_wrote(hf_dir, tmp_path):
    peft = pytest.importorskip("peft")
    directory, hf = hf_dir
    config = peft.LoraConfig(r=3, lora_alpha=7, target_modules=["c_attn", "mlp.c_fc"], fan_in_fan_out=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = peft.get_peft_model(copy.deepcopy(hf), config)
        torch.manual_seed(3)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
        peft_model.save_pretrained(tmp_path / "peft")
    model = from_pretrained(directory)
    wrapped = load_adapter(model, tmp_path / "peft")
    assert len(wrapped) == 4 and all(isinstance(m, LoRALinear) for m in wrapped.values())
    idx = torch.randint(0, 101, (1, 20))
    with torch.no_grad():
        assert (model(idx) - peft_model.eval()(idx).logits).abs().max().item() <= ATOL


def test_merged_model_saves_a_checkpoint_transformers_loads(hf_dir, tmp_path):
    from transformers import GPT2LMHeadModel

    directory, _ = hf_dir
    model = from_pretrained(directory)
    add_lora(model, 2, 4, ALL)  # the tied lm_head too: merging unties it
    randomize_adapters(model)
    idx = torch.randint(0, 101, (2, 12))
    with torch.no_grad():
        adapted = model(idx)
    merge_lora(model)
    assert model.config.tie_word_embeddings is False
    save_pretrained(model, tmp_path / "merged")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert (hf(idx).logits - adapted).abs().max().item() <= ATOL


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(rank=0), "rank must be a positive integer"),
        (dict(rank=-2), "rank must be a positive integer"),
        (dict(rank=2.5), "rank must be a positive integer"),
        (dict(alpha=0), "alpha must be a positive number"),
        (dict(alpha=-1.0), "alpha must be a positive number"),
        (dict(alpha=float("nan")), "alpha must be a positive number"),
        (dict(dropout=1.0), "dropout must be in [0, 1)"),
        (dict(targets=("c_attn", "q_proj")), "'q_proj' names no layer of this model"),
        (dict(targets=("wte",)), "'wte' is not a linear layer"),
        (dict(targets=("ln_1",)), "'ln_1' is not a linear layer"),
        (dict(targets=""), "LoRA targets must be layer names"),
    ],
)
def test_bad_settings_are_one_line_errors_and_leave_the_model(kwargs, message):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = {"rank": 2, "alpha": 4.0, "targets": ("c_attn",), **kwargs}
    with pytest.raises(ValueError) as e:
        add_lora(model, **args)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def _adapter(tmp_path, **model_kw):
    model = tiny(**model_kw)
    add_lora(model, 2, 4, ("c_attn", "lm_head"))
    return save_adapter(model, tmp_path / "adapter")


def _spoil(path):
    path.write_bytes(b"{junk")
    return path.parent


def _edit_config(directory, **changes):
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "setup,message",
    [
        (
            lambda d: _adapter(d, n_embd=60),
            "an adapter for another model: lm_head.lora_A has shape (2, 60)",
        ),
        (lambda d: _adapter(d, n_layer=3), "an adapter for another model: it adapts transformer.h.2.attn.c_attn"),
        (lambda d: _adapter(d, vocab_size=50), "an adapter for another model: lm_head.lora_B has shape"),
        (lambda d: d, "holds no adapter_config.json"),
        (lambda d: _spoil(_adapter(d) / "adapter_config.json"), "cannot read"),
        (lambda d: _edit_config(_adapter(d), use_dora=True) or d / "adapter", "use_dora=True is not supported"),
        (lambda d: _edit_config(_adapter(d), peft_type="IA3") or d / "adapter", "not a LoRA adapter config"),
        (lambda d: _edit_config(_adapter(d), r=0) or d / "adapter", "rank must be a positive integer"),
        (lambda d: _edit_config(_adapter(d), target_modules=["c_fc"]) or d / "adapter", "disagree"),
        (lambda d: _spoil(_adapter(d) / "adapter_model.safetensors"), "cannot read"),
    ],
)
def test_bad_adapters_are_one_line_errors_and_leave_the_model(tmp_path, setup, message):
    directory = setup(tmp_path)
    model = tiny()
    with pytest.raises(ValueError) as e:
        load_adapter(model, directory)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not lora_layers(model)


def test_adding_twice_and_saving_without_adapters_are_errors(tmp_path):
    model = tiny()
    with pytest.raises(ValueError, match="no LoRA adapters to save"):
        save_adapter(model, tmp_path)
    add_lora(model, 2, 2)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, 2, 2)
