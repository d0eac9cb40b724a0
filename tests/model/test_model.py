"""The model against transformers' GPT2LMHeadModel, and its backends against each other."""

import pytest
import torch
from reference import CONFIGS, LOGITS_ATOL, hf_model, save_hf

from minigpt import GPT, GPTConfig, KVCache
from minigpt.generate.decoder import StaticKVCache
from minigpt.model.backends import ATTENTION, set_backends
from minigpt.model.config import PRESETS, preset
from minigpt.model.load import from_pretrained, save_pretrained


def load_pair(tmp_path, name, **save_kw):
    hf = hf_model(**CONFIGS[name])
    path = save_hf(hf, tmp_path / name, **save_kw)
    return hf, from_pretrained(path, attn_backend="math")


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("layout", ["safetensors", "bin", "bin-no-prefix", "safetensors-no-prefix"])
def test_logits_equal_transformers(tmp_path, name, layout):
    hf, model = load_pair(
        tmp_path, name, safetensors=layout.startswith("safetensors"), prefix="no-prefix" not in layout
    )
    idx = torch.randint(0, hf.config.vocab_size, (2, min(37, hf.config.n_positions)))
    with torch.no_grad():
        ref = hf(idx).logits
        for backend in ("math", "sdpa"):
            set_backends(model, attn=backend)
            out = model(idx)
            assert out.shape == ref.shape == (2, idx.size(1), hf.config.vocab_size)
            assert (out - ref).abs().max().item() <= LOGITS_ATOL, backend


def test_full_context_and_loss(tmp_path):
    hf, model = load_pair(tmp_path, "small-vocab")
    idx = torch.randint(0, 101, (3, 32))  # exactly block_size
    with torch.no_grad():
        ref = hf(idx, labels=idx)
        assert (model(idx) - ref.logits).abs().max().item() <= LOGITS_ATOL
        # transformers shifts labels inside; ours takes explicit targets
        ours = model(idx[:, :-1], idx[:, 1:])
    assert abs(ours.item() - ref.loss.item()) < 1e-5


def test_cached_forward_equals_full_forward(tmp_path):
    _, model = load_pair(tmp_path, "odd")
    idx = torch.randint(0, 50257, (2, 40))
    cache = KVCache(model.config, batch_size=2, max_len=40)
    with torch.no_grad():
        full = model(idx)
        for backend in ("math", "sdpa"):
            set_backends(model, attn=backend)
            cache.reset()
            parts = [model(idx[:, :17], cache=cache), model(idx[:, 17:23], cache=cache)]
            parts += [model(idx[:, t : t + 1], cache=cache) for t in range(23, 40)]
            assert (torch.cat(parts, dim=1) - full).abs().max().item() <= LOGITS_ATOL, backend
    assert cache.pos == 40


def test_static_cache_forward_equals_full_forward(tmp_path):
    """The static cache (device-side position, masked attention over all its positions) gives the
    growing cache's logits, whatever stale keys sit past the position."""
    _, model = load_pair(tmp_path, "odd")
    idx = torch.randint(0, 50257, (3, 29))
    cache = StaticKVCache(model.config, batch_size=3, max_len=37)
    with torch.no_grad():
        full = model(idx)
        for backend in ("math", "sdpa"):
            set_backends(model, attn=backend)
            cache.k.normal_()  # stale entries beyond the position must stay invisible
            cache.v.normal_()
            cache.reset()
            parts = [model(idx[:, :11], cache=cache), model(idx[:, 11:14], cache=cache)]
            parts += [model(idx[:, t : t + 1], cache=cache) for t in range(14, 29)]
            assert (torch.cat(parts, dim=1) - full).abs().max().item() <= LOGITS_ATOL, backend
            assert cache.pos.tolist() == [29]
        cache.reset()
        last = model(idx, cache=cache, last_only=True)
    assert last.shape == (3, 1, 50257)
    assert (last - full[:, -1:]).abs().max().item() <= LOGITS_ATOL


def test_backward_math_equals_sdpa():
    torch.manual_seed(1)
    cfg = GPTConfig(block_size=24, vocab_size=97, n_layer=2, n_head=3, n_embd=48)
    model = set_backends(GPT(cfg), attn="math")
    idx = torch.randint(0, 97, (2, 24))
    grads = {}
    for backend in ("math", "sdpa"):
        model.zero_grad()
        set_backends(model, attn=backend)
        model(idx[:, :-1], idx[:, 1:]).backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n in grads["math"]:
        torch.testing.assert_close(grads["sdpa"][n], grads["math"][n], rtol=1e-4, atol=1e-6, msg=n)


def test_presets_have_openai_sizes():
    expected = {
        "gpt2": (12, 12, 768, 124),
        "gpt2-medium": (24, 16, 1024, 355),
        "gpt2-large": (36, 20, 1280, 774),
        "gpt2-xl": (48, 25, 1600, 1558),
    }
    for name, (L, H, C, millions) in expected.items():
        cfg = preset(name)
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (L, H, C, 1024, 50257)
        assert round(cfg.num_params() / 1e6) == millions
    assert preset("gpt2") is not PRESETS["gpt2"]  # a copy: callers may change it


def test_param_count_matches_module():
    cfg = GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg)
    pad_rows = cfg.padded_vocab_size - cfg.vocab_size
    assert sum(p.numel() for p in model.parameters()) - pad_rows * cfg.n_embd == cfg.num_params()


def test_padded_vocab_is_invisible():
    cfg = GPTConfig(block_size=16, vocab_size=100, n_layer=1, n_head=2, n_embd=32)
    assert cfg.padded_vocab_size == 128
    model = GPT(cfg)
    assert model.transformer.wte.weight.shape == (128, 32)
    assert model(torch.randint(0, 100, (1, 5))).shape == (1, 5, 100)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpt3")
    cfg = GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    with pytest.raises(ValueError, match="context window"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_backends(model, attn="flash")
    cache = KVCache(cfg, batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="KV cache"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_triton_backend_without_cuda_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cfg = GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(RuntimeError, match="CUDA"):  # resolved when chosen, not on the first forward
        set_backends(GPT(cfg), attn="triton")
    model = GPT(cfg)
    with pytest.raises(RuntimeError, match="CUDA"):
        set_backends(model, attn="triton")


def test_backends_are_resolved_when_set_and_when_loaded(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    config = GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=2, n_embd=16)
    model = set_backends(GPT(config), attn="math")
    assert model.backends == ("math", "torch")  # no forward needed
    assert all(b.attn.attend is ATTENTION["math"] for b in model.transformer.h)
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path, attn_backend="math")  # resolved for the device it was loaded to
    assert loaded.backends == ("math", "torch")
    assert all(b.attn.attend is ATTENTION["math"] for b in loaded.transformer.h)
    assert from_pretrained(tmp_path).backends == ("sdpa", "torch")


def test_auto_backend_on_cpu_is_pytorch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter may run kernels, but auto stays on PyTorch
    model = set_backends(GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=2, n_embd=16)))
    model(torch.zeros(1, 4, dtype=torch.long))
    assert model.backends == ("sdpa", "torch")


@pytest.mark.slow
def test_exact_124m_in_openai_hub_layout(tmp_path):
    """The full gpt2 shape, saved the way OpenAI's upload is: no `transformer.` prefix,
    the attn.bias / attn.masked_bias buffers present, lm_head absent."""
    hf = hf_model(n_positions=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768)
    path = save_hf(hf, tmp_path, safetensors=True, prefix=False)
    model = from_pretrained(path)
    assert model.config == preset("gpt2")
    idx = torch.randint(0, 50257, (1, 64))
    with torch.no_grad():
        assert (model(idx) - hf(idx).logits).abs().max().item() <= LOGITS_ATOL
