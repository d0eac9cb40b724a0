"""The GPT-NeoX family (GPTNeoXForCausalLM: Pythia, gpt-neox-20b, rinna's NeoX; and
GPTNeoXJapaneseForCausalLM: abeja's) in the one model: each checkpoint variant, written by
transformers, gives transformers' logits, continues exactly through both KV caches, decodes
transformers' greedy tokens, and saves back in its own layout with identical logits.
"""

import json

import pytest
import torch
from reference import LOGITS_ATOL

from minigpt import KVCache
from minigpt.generate.decoder import StaticKVCache
from minigpt.generate.simple import generate
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.rundir import CheckpointError

NEOX = dict(
    vocab_size=211,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=160,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    hidden_act="gelu",
)
JAPANESE = dict(
    vocab_size=199,
    hidden_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_multiple_size=3,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> (family, config.json fields on top of its base, how the rotary fields are spelled)
VARIANTS = {
    "pythia": ("gpt_neox", dict(rotary_pct=0.25), "old"),
    "sequential-full-rotary": ("gpt_neox", dict(use_parallel_residual=False, rotary_pct=1.0), "old"),
    "half-rotary-new-names": ("gpt_neox", dict(rotary_pct=0.5, rotary_emb_base=500.0), "top"),
    "nested-rope-parameters": ("gpt_neox", dict(rotary_pct=0.25, rotary_emb_base=2000.0), "nested"),
    "no-attention-bias": ("gpt_neox", dict(attention_bias=False), "old"),
    "padded-vocab-tied": ("gpt_neox", dict(vocab_size=256, tie_word_embeddings=True), "old"),
    "gelu-fast-eps": ("gpt_neox", dict(hidden_act="gelu_fast", layer_norm_eps=1e-3), "old"),
    "japanese": ("gpt_neox_japanese", dict(), "old"),
    "japanese-untied-half": ("gpt_neox_japanese", dict(tie_word_embeddings=False, rotary_pct=0.5), "nested"),
}


def spell_rotary(d: dict, spelling: str, default_pct: float) -> dict:
    """config.json with its rotary fields written one of the three ways checkpoints have them."""
    d = dict(d)
    params = d.pop("rope_parameters", None) or {}
    pct = params.get("partial_rotary_factor", d.pop("rotary_pct", default_pct))
    theta = params.get("rope_theta", d.pop("rotary_emb_base", 10000.0))
    for key in ("rotary_pct", "rotary_emb_base", "rope_theta", "partial_rotary_factor", "rope_scaling"):
        d.pop(key, None)
    if spelling == "old":
        d.update(rotary_pct=pct, rotary_emb_base=theta)
    elif spelling == "top":
        d.update(partial_rotary_factor=pct, rope_theta=theta)
    else:
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": pct}
    return d


def hf_neox(family: str, seed: int, **fields):
    import transformers

    torch.manual_seed(seed)
    if family == "gpt_neox":
        config = transformers.GPTNeoXConfig(**{**NEOX, **fields})
        model = transformers.GPTNeoXForCausalLM(config)
    else:
        config = transformers.GPTNeoXJapaneseConfig(**{**JAPANESE, **fields})
        model = transformers.GPTNeoXJapaneseForCausalLM(config)
    with torch.no_grad():  # wide weights so every variant moves the logits (see test_variants.py)
        for name, p in model.named_parameters():
            if p.dim() == 2 or name.endswith("bias"):
                p.normal_(0, 0.3 if p.dim() == 2 else 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory):
    family, fields, spelling = VARIANTS[request.param]
    hf = hf_neox(family, list(VARIANTS).index(request.param), **fields)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    config_file = path / "config.json"
    default_pct = 0.25 if family == "gpt_neox" else 1.0
    config_file.write_text(json.dumps(spell_rotary(json.loads(config_file.read_text()), spelling, default_pct)))
    # The model as built is the reference: transformers 5 itself reads the top-level
    # partial_rotary_factor / rope_theta of older configs as absent (its defaults).
    hf.config._attn_implementation = "eager"
    return hf, path, family


def test_logits_and_caches_equal_transformers(variant):
    hf, path, family = variant
    model = from_pretrained(path)
    assert model.config.model_type == family
    idx = torch.randint(0, hf.config.vocab_size, (2, 29))
    with torch.no_grad():
        ref = hf(idx).logits
        out = model(idx)
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= LOGITS_ATOL
        for static in (False, True):
            cache = (StaticKVCache if static else KVCache)(model.config, 2, 29)
            parts = [model(idx[:, :11], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(11, 29)]
            assert (torch.cat(parts, 1) - ref).abs().max().item() <= LOGITS_ATOL, static


@pytest.mark.slow
def test_greedy_equals_transformers_generate(variant):
    hf, path, _ = variant
    model = from_pretrained(path)
    idx = torch.randint(3, hf.config.vocab_size, (2, 7))
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    ref = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=12, do_sample=False)
    assert torch.equal(generate(model, idx, 12, temperature=0), ref)
    assert torch.equal(generate(model, idx, 12, temperature=0, decoder_mode="static"), ref)


def test_saves_back_in_its_own_layout(variant, tmp_path):
    import transformers

    hf, path, family = variant
    model = from_pretrained(path)
    save_pretrained(model, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == family
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(back) is type(hf)
    idx = torch.randint(0, hf.config.vocab_size, (1, 17))
    with torch.no_grad():
        assert (back(idx).logits - hf(idx).logits).abs().max().item() <= LOGITS_ATOL
    assert from_pretrained(tmp_path).config == model.config


def test_partial_rotary_turns_only_its_share():
    """rotary_pct 0.25 leaves three quarters of each head's channels as they are."""
    from minigpt.model.model import apply_rotary, rotary_angles

    x = torch.randn(1, 2, 5, 16)
    out = apply_rotary(x, rotary_angles(torch.arange(5), 4, 10000.0))
    assert torch.equal(out[..., 4:], x[..., 4:])
    assert not torch.allclose(out[..., :4], x[..., :4])
    assert torch.equal(out[:, :, 0], x[:, :, 0])  # position 0 turns by nothing


def write_checkpoint(tmp_path, family="gpt_neox", **fields):
    hf = hf_neox(family, 0, **fields)
    hf.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(model_type="gpt_neo"), "model_type 'gpt_neo'"),
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}), "rope_type 'linear'"),
        (dict(rope_scaling={"type": "dynamic", "factor": 2.0}, rope_parameters=None), "rope_type 'dynamic'"),
        (dict(hidden_act="mish"), "hidden_act 'mish'"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.1}), "rotary_pct"),
        (dict(num_attention_heads=3), "n_head"),
    ],
)
def test_bad_configs_are_one_line(tmp_path, change, named):
    path = write_checkpoint(tmp_path)
    d = json.loads((path / "config.json").read_text())
    d.update(change)
    (path / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=named) as e:
        from_pretrained(path)
    assert "\n" not in str(e.value)


def test_query_key_value_of_the_wrong_shape_is_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    path = write_checkpoint(tmp_path)
    tensors = load_file(path / "model.safetensors")
    key = "gpt_neox.layers.1.attention.query_key_value.weight"
    tensors[key] = tensors[key][:-4]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="query_key_value.weight has shape") as e:
        from_pretrained(path)
    assert "\n" not in str(e.value)


def test_a_japanese_checkpoint_without_its_last_bias_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path = write_checkpoint(tmp_path, "gpt_neox_japanese")
    tensors = load_file(path / "model.safetensors")
    del tensors["gpt_neox_japanese.layers.2.attention.dense_bias"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing tensor.*h.2.attn.c_proj.bias"):
        from_pretrained(path)
