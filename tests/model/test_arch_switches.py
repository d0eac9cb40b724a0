"""The opt-in switches for small-model training (rope, qk_norm, relu2, untied head, bias=False),
each against a plain float64 reference written here, through the KV cache, the backends and
the checkpoint writers. Every switch off is GPT-2 exactly (tests/test_model.py holds that
against transformers). Tolerance: fp32 logits within LOGITS_ATOL of the reference.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from reference import LOGITS_ATOL

from minigpt import GPT, GPTConfig, KVCache
from minigpt.generate.decoder import StaticKVCache
from minigpt.generate.simple import generate, generate_uncached
from minigpt.model.backends import set_backends
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.model.model import apply_rotary, rotary_angles
from minigpt.train.flops import flops_per_token

BASE = dict(block_size=40, vocab_size=97, n_layer=2, n_head=3, n_embd=48)
SWITCHES = {
    "rope": dict(position="rope"),
    "rope-theta-500": dict(position="rope", rope_theta=500.0),
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(activation="relu2"),
    "no-bias": dict(bias=False),
    "untied": dict(tie_word_embeddings=False),
    "all": dict(position="rope", qk_norm=True, activation="relu2", tie_word_embeddings=False, bias=False, n_inner=100),
}
HF_INCOMPATIBLE = {
    "rope": "position",
    "rope-theta-500": "position",
    "qk_norm": "qk_norm",
    "no-bias": "bias",
    "all": "position",
}


def widened(model: GPT) -> GPT:
    """The model with attention and MLP inputs spread over several units, so that every switch
    changes the logits by far more than the tolerance (at the init scale all are near-linear)."""
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(8)
            block.mlp.c_fc.weight.mul_(25)
        model.transformer.wte.weight.mul_(8)
        if model.lm_head is not None:
            model.lm_head.weight.mul_(8)
    return model.eval()


def make(name: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return widened(set_backends(GPT(GPTConfig(**BASE, **SWITCHES[name])), attn="math"))


# ----------------------------------------------------------------------------------------------
# The plain reference


def rope_reference(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding as complex multiplication: channel j and j + hs/2 are the real and imaginary
    parts of one number, turned by the angle pos * theta^(-2j/hs)."""
    h = x.size(-1) // 2
    z = torch.complex(x[..., :h].double(), x[..., h:].double())
    freqs = theta ** (-2.0 * torch.arange(h, dtype=torch.float64) / x.size(-1))
    turn = torch.polar(torch.ones(len(positions), h, dtype=torch.float64), positions.double()[:, None] * freqs)
    z = z * turn
    return torch.cat([z.real, z.imag], dim=-1)


def layer_norm(x, weight, bias, eps):
    x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    return x * weight + (0 if bias is None else bias)


def linear(x, layer):
    return x @ layer.weight.double().t() + (0 if layer.bias is None else layer.bias.double())


ACTIVATION_REFERENCE = {
    "gelu_new": lambda u: 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3))),
    "relu2": lambda u: torch.where(u > 0, u * u, torch.zeros_like(u)),
}


def reference_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The model's forward written out in float64, one switch at a time."""
    cfg, tr = model.config, model.transformer
    B, T = idx.shape
    nh, hs, eps = cfg.n_head, cfg.head_dim, cfg.layer_norm_epsilon
    positions = torch.arange(T)
    x = tr.wte.weight.double()[idx]
    if cfg.position == "learned":
        x = x + tr.wpe.weight.double()[:T]

    def norm(ln, x):
        return layer_norm(x, ln.weight.double(), None if ln.bias is None else ln.bias.double(), eps)

    for block in tr.h:
        q, k, v = linear(norm(block.ln_1, x), block.attn.c_attn).split(cfg.n_embd, dim=-1)
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))
        if cfg.qk_norm:
            q = q / torch.sqrt((q * q).mean(-1, keepdim=True) + eps)
            k = k / torch.sqrt((k * k).mean(-1, keepdim=True) + eps)
        if cfg.position == "rope":
            q, k = rope_reference(q, positions, cfg.rope_theta), rope_reference(k, positions, cfg.rope_theta)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, cfg.n_embd)
        x = x + linear(y, block.attn.c_proj)
        u = linear(norm(block.ln_2, x), block.mlp.c_fc)
        x = x + linear(ACTIVATION_REFERENCE[cfg.activation](u), block.mlp.c_proj)
    x = norm(tr.ln_f, x)
    head = tr.wte.weight if cfg.tie_word_embeddings else model.lm_head.weight
    return (x @ head.double().t())[..., : cfg.vocab_size]


# ----------------------------------------------------------------------------------------------
# Rotary embeddings on their own


@pytest.mark.parametrize("T, hs, theta", [(1, 2, 10000.0), (13, 16, 10000.0), (29, 34, 500.0)])
def test_rotary_equals_complex_multiplication(T, hs, theta):
    x = torch.randn(2, 3, T, hs)
    positions = torch.randint(0, 256, (T,))  # the angles are float32: at position p they are good to ~p * 1e-7
    out = apply_rotary(x, rotary_angles(positions, hs, theta))
    assert (out.double() - rope_reference(x, positions, theta)).abs().max().item() <= 1e-4


def test_rotary_scores_depend_on_relative_position_only():
    q, k = torch.randn(4, 16), torch.randn(4, 16)

    def score(i, j):
        qi = apply_rotary(q, rotary_angles(torch.full((4,), i), 16, 10000.0))
        kj = apply_rotary(k, rotary_angles(torch.full((4,), j), 16, 10000.0))
        return (qi * kj).sum(-1)

    assert torch.allclose(score(5, 2), score(105, 102), atol=1e-4)
    assert not torch.allclose(score(5, 2), score(5, 3), atol=1e-2)


# ----------------------------------------------------------------------------------------------
# Each switch in the whole model


@pytest.mark.parametrize("name", list(SWITCHES))
def test_logits_equal_reference(name):
    model = make(name)
    idx = torch.randint(0, 97, (2, 31))
    with torch.no_grad():
        ref = reference_logits(model, idx)
        for backend in ("math", "sdpa"):
            set_backends(model, attn=backend)
            assert (model(idx).double() - ref).abs().max().item() <= LOGITS_ATOL, backend
        # the switch matters: GPT-2's computation on the same weights is far away
        plain = make(name)
        plain.config.position, plain.config.qk_norm, plain.config.activation = "learned", False, "gelu_new"
        if name in ("rope", "rope-theta-500", "qk_norm", "relu2"):
            if name.startswith("rope"):
                plain.transformer["wpe"] = torch.nn.Embedding(40, 48).requires_grad_(False)
                torch.nn.init.zeros_(plain.transformer.wpe.weight)
            for block in plain.transformer.h:
                block.attn.qk_norm_eps = None
                block.mlp.act = lambda u: F.gelu(u, approximate="tanh")
            assert (plain(idx).double() - ref).abs().max().item() > 100 * LOGITS_ATOL


@pytest.mark.parametrize("name", list(SWITCHES))
def test_kv_cache_continues_the_full_forward(name):
    """The cache, growing and static, gives the full forward's logits: with rope, the positions of
    the new tokens come from the cache, and cached keys keep the rotation of their own positions."""
    model = make(name, seed=1)
    idx = torch.randint(0, 97, (2, 33))
    with torch.no_grad():
        full = model(idx)
        for backend in ("math", "sdpa"):
            set_backends(model, attn=backend)
            for static in (False, True):
                cache = (StaticKVCache if static else KVCache)(model.config, 2, 33)
                parts = [model(idx[:, :12], cache=cache), model(idx[:, 12:19], cache=cache)]
                parts += [model(idx[:, t : t + 1], cache=cache) for t in range(19, 33)]
                assert (torch.cat(parts, 1) - full).abs().max().item() <= LOGITS_ATOL, (backend, static)
    idx = idx[:, :8]
    expected = generate_uncached(model, idx, 20)
    assert torch.equal(generate(model, idx, 20, temperature=0), expected)
    assert torch.equal(generate(model, idx, 20, temperature=0, decoder_mode="static"), expected)


@pytest.mark.parametrize("name", list(SWITCHES))
def test_backward_math_equals_sdpa(name):
    torch.manual_seed(2)
    model = set_backends(GPT(GPTConfig(**BASE, **SWITCHES[name])), attn="math").train()
    idx, targets = torch.randint(0, 97, (2, 23)), torch.randint(0, 97, (2, 23))
    grads = []
    for backend in ("math", "sdpa"):
        set_backends(model, attn=backend)
        model.zero_grad(set_to_none=True)
        model(idx, targets).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        assert torch.isfinite(grads[0][n]).all() and torch.allclose(grads[0][n], grads[1][n], atol=1e-5), n


@pytest.mark.parametrize("name", list(SWITCHES))
def test_param_count_and_flops(name):
    model = make(name)
    cfg = model.config
    pad = cfg.padded_vocab_size - cfg.vocab_size
    params = dict(model.named_parameters())
    padded = [n for n in ("transformer.wte.weight", "lm_head.weight") if n in params]
    total = sum(p.numel() for p in params.values()) - pad * cfg.n_embd * len(padded)
    assert total == cfg.num_params()
    # matmul parameters per token: everything but the lookups (wpe; wte when the head is untied)
    lookups = {"transformer.wpe.weight"} | ({"transformer.wte.weight"} if "lm_head.weight" in params else set())
    matmul = total - sum(params[n].numel() - (pad * cfg.n_embd if n in padded else 0) for n in lookups if n in params)
    assert flops_per_token(cfg, 40) == 6 * matmul + 12 * cfg.n_layer * cfg.n_embd * 40


def test_no_bias_means_no_bias_parameters():
    model = make("no-bias")
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert "transformer.wpe.weight" in dict(model.named_parameters())
    assert "transformer.wpe.weight" not in dict(make("rope").named_parameters())


@pytest.mark.parametrize("name", list(SWITCHES))
def test_saving(name, tmp_path):
    """Switches GPT2LMHeadModel has (relu2, untied head) export to transformers; the others refuse
    in one line naming the switch, and write minigpt's own config when asked to (training checkpoints)."""
    model = make(name)
    idx = torch.randint(0, 97, (1, 17))
    if name in HF_INCOMPATIBLE:
        with pytest.raises(ValueError, match=HF_INCOMPATIBLE[name]) as e:
            save_pretrained(model, tmp_path / "hf")
        assert "\n" not in str(e.value) and not (tmp_path / "hf" / "model.safetensors").exists()
        save_pretrained(model, tmp_path / "own", transformers_only=False)
        back = from_pretrained(tmp_path / "own", attn_backend="math")
    else:
        from transformers import GPT2LMHeadModel

        save_pretrained(model, tmp_path / "hf")
        hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
        with torch.no_grad():
            assert (hf(idx).logits - model(idx)).abs().max().item() <= LOGITS_ATOL
        back = from_pretrained(tmp_path / "hf", attn_backend="math")
    assert back.config == model.config
    with torch.no_grad():
        assert torch.equal(back(idx), model(idx))


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test")
def test_triton_backends_with_switches():
    """The flash kernel takes the variants' scale; the LayerNorm kernel runs without a bias too."""
    torch.manual_seed(3)
    cfg = GPTConfig(
        block_size=24,
        vocab_size=67,
        n_layer=2,
        n_head=2,
        n_embd=32,
        position="rope",
        qk_norm=True,
        scale_attn_by_inverse_layer_idx=True,
        scale_attn_weights=False,
        bias=False,
    )
    model = widened(set_backends(GPT(cfg), attn="math"))
    idx = torch.randint(0, 67, (1, 17))
    with torch.no_grad():
        ref = model(idx)
        set_backends(model, "triton", "triton")
        assert (model(idx) - ref).abs().max().item() <= LOGITS_ATOL


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(position="alibi"), "position"),
        (dict(activation="mish"), "activation"),
        (dict(n_inner=0), "n_inner"),
        (dict(position="rope", n_head=5, n_embd=45), "head_dim"),
        (dict(position="rope", rope_theta=1.0), "rope_theta"),
        (dict(bias="no"), "bias"),
        (dict(qk_norm=1), "qk_norm"),
        (dict(tie_word_embeddings=None), "tie_word_embeddings"),
        (dict(pad_token_id=-3), "pad_token_id"),
        (dict(eos_token_id=[1, "x"]), "eos_token_id"),
        (dict(position="rope", rotary_pct=0.0), "rotary_pct"),
        (dict(position="rope", rotary_pct=1.5), "rotary_pct"),
        (dict(position="rope", n_head=2, n_embd=20, rotary_pct=0.3), "rotary_pct"),
        (dict(attn_bias="yes"), "attn_bias"),
        (dict(mlp_bias=0), "mlp_bias"),
        (dict(parallel_residual=None), "parallel_residual"),
        (dict(model_type=""), "model_type"),
    ],
)
def test_bad_switches_are_clear_errors(fields, message):
    with pytest.raises(ValueError, match=message) as e:
        GPTConfig(**{**BASE, **fields})
    assert "\n" not in str(e.value)
