"""GPT2LMHeadModel's config variants: each checkpoint, written by transformers, gives transformers'
logits and greedy tokens; our export of each loads back in transformers; the rest is refused.

Tolerances as in tests/reference.py (fp32 logits to LOGITS_ATOL). transformers runs its eager
attention, the one implementation that honours reorder_and_upcast_attn.
"""

import json

import pytest
import torch
from reference import LOGITS_ATOL

from minigpt import GPT, GPTConfig, KVCache
from minigpt.generate.decoder import StaticKVCache
from minigpt.generate.simple import generate
from minigpt.model.backends import set_backends
from minigpt.model.config import ACTIVATIONS
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.rundir import CheckpointError

BASE = dict(n_positions=48, vocab_size=503, n_layer=2, n_head=4, n_embd=64, bos_token_id=500, eos_token_id=500)

# name -> GPT2Config fields on top of BASE, and the GPTConfig fields they must become
VARIANTS = {
    "n_inner-4.5x": (dict(n_inner=288), dict(n_inner=288)),
    **{f"act-{a}": (dict(activation_function=a), dict(activation=a)) for a in ACTIVATIONS},
    "scale-by-inverse-layer-idx": (
        dict(scale_attn_by_inverse_layer_idx=True, n_layer=3),
        dict(scale_attn_by_inverse_layer_idx=True),
    ),
    "reorder-and-upcast": (dict(reorder_and_upcast_attn=True), dict(reorder_and_upcast_attn=True)),
    "unscaled-attention": (dict(scale_attn_weights=False), dict(scale_attn_weights=False)),
    "vocab-32000": (
        dict(vocab_size=32000, n_embd=32, n_head=2, bos_token_id=1, eos_token_id=2),
        dict(vocab_size=32000),
    ),
    "untied-head": (dict(tie_word_embeddings=False), dict(tie_word_embeddings=False)),
    "token-ids": (
        dict(bos_token_id=3, eos_token_id=4, pad_token_id=5),
        dict(bos_token_id=3, eos_token_id=4, pad_token_id=5),
    ),
    "all-at-once": (
        dict(
            n_inner=100,
            activation_function="quick_gelu",
            scale_attn_by_inverse_layer_idx=True,
            reorder_and_upcast_attn=True,
            tie_word_embeddings=False,
            vocab_size=1000,
            n_head=8,
        ),
        dict(n_inner=100, activation="quick_gelu", tie_word_embeddings=False, vocab_size=1000),
    ),
}


def hf_variant(seed: int, **fields):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(**{**BASE, **fields}, attn_implementation="eager")).eval()
    with torch.no_grad():
        # Widen the weights so that attention scores and MLP inputs span several units: at GPT-2's
        # init scale (0.02) every activation is near-linear and the scalings barely change a softmax,
        # so a wrong variant would pass. Then sharpen the logits so greedy choices are far from ties.
        for block in hf.transformer.h:
            block.attn.c_attn.weight.mul_(8)
            block.mlp.c_fc.weight.mul_(25)
        hf.transformer.wte.weight.mul_(8)
        if not hf.config.tie_word_embeddings:
            hf.lm_head.weight.mul_(8)
    return hf


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory):
    hf_fields, ours = VARIANTS[request.param]
    hf = hf_variant(list(VARIANTS).index(request.param), **hf_fields)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)  # transformers' own writer
    return hf, path, ours


def test_config_fields(variant):
    _, path, ours = variant
    config = from_pretrained(path).config
    for name, value in ours.items():
        assert getattr(config, name) == value, name


def test_logits_equal_transformers(variant):
    hf, path, _ = variant
    model = from_pretrained(path)
    idx = torch.randint(0, hf.config.vocab_size, (2, 37))
    with torch.no_grad():
        ref = hf(idx).logits
        for backend in ("math", "sdpa"):
            set_backends(model, attn=backend)
            out = model(idx)
            assert out.shape == ref.shape
            assert (out - ref).abs().max().item() <= LOGITS_ATOL, backend
        # the KV cache, growing and static, continues exactly as the full forward
        for static in (False, True):
            cache = (StaticKVCache if static else KVCache)(model.config, 2, 37)
            parts = [model(idx[:, :20], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(20, 37)]
            assert (torch.cat(parts, 1) - ref).abs().max().item() <= LOGITS_ATOL, static


@pytest.mark.slow
def test_greedy_equals_transformers_generate(variant):
    hf, path, _ = variant
    model = from_pretrained(path)
    idx = torch.randint(0, hf.config.vocab_size, (2, 9))
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    ref = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=20, do_sample=False)
    assert torch.equal(generate(model, idx, 20, temperature=0), ref)
    assert torch.equal(generate(model, idx, 20, temperature=0, decoder_mode="static"), ref)


def test_export_loads_in_transformers(variant, tmp_path):
    from transformers import GPT2LMHeadModel

    hf, path, _ = variant
    model = from_pretrained(path)
    save_pretrained(model, tmp_path)
    back = GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    for name in (
        "n_inner",
        "activation_function",
        "scale_attn_weights",
        "scale_attn_by_inverse_layer_idx",
        "reorder_and_upcast_attn",
        "tie_word_embeddings",
        "vocab_size",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        assert getattr(back.config, name) == getattr(hf.config, name), name
    idx = torch.randint(0, hf.config.vocab_size, (2, 21))
    with torch.no_grad():
        assert (back(idx).logits - model(idx)).abs().max().item() <= LOGITS_ATOL
    assert from_pretrained(tmp_path).config == model.config


def test_upcast_attention_in_bfloat16():
    """reorder_and_upcast_attn in bf16: the scores and softmax are those of float32, the
    probabilities cast to bf16 before multiplying v, as transformers computes them."""
    from minigpt.model.model import attention_math, attention_sdpa, causal_mask

    q, k, v = (torch.randn(2, 3, 11, 16).to(torch.bfloat16) for _ in range(3))
    scores = (q.float() @ k.float().transpose(-2, -1)) * 0.125
    probs = scores.masked_fill(~causal_mask(11, 11, q.device), float("-inf")).softmax(-1)
    expected = probs.to(torch.bfloat16) @ v
    for attention in (attention_math, attention_sdpa):
        assert torch.equal(attention(q, k, v, scale=0.125, upcast=True), expected)


def test_untied_head_pads_and_counts(tmp_path):
    config = GPTConfig(
        block_size=16, vocab_size=100, n_layer=1, n_head=2, n_embd=16, tie_word_embeddings=False, n_inner=40
    )
    model = GPT(config)
    assert model.lm_head.weight.shape == (config.padded_vocab_size, 16) and model.lm_head.bias is None
    assert model.head_weight is model.lm_head.weight
    pad = config.padded_vocab_size - config.vocab_size
    assert sum(p.numel() for p in model.parameters()) - 2 * pad * 16 == config.num_params()
    save_pretrained(model, tmp_path)
    back = from_pretrained(tmp_path)
    V = config.vocab_size  # the padded rows are never used: a fresh model's are random, a loaded one's zero
    assert torch.equal(back.lm_head.weight[:V], model.lm_head.weight[:V])
    assert not torch.equal(back.lm_head.weight, back.transformer.wte.weight)
    idx = torch.randint(0, 100, (1, 7))
    with torch.no_grad():
        assert torch.equal(back(idx), model(idx))


def test_tied_config_refuses_a_differing_head(tmp_path):
    hf = hf_variant(0, tie_word_embeddings=False)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    with pytest.raises(CheckpointError, match="lm_head.weight differs from wte.weight"):
        from_pretrained(tmp_path)


def test_sharded_checkpoints(tmp_path):
    """transformers' sharded safetensors, and .bin shards with their index, load as one file does."""
    hf = hf_variant(1, tie_word_embeddings=False)
    hf.save_pretrained(tmp_path / "st", max_shard_size="100KB")
    assert (tmp_path / "st" / "model.safetensors.index.json").is_file()
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    names = sorted(sd)
    halves = {
        "pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
        "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :],
    }
    (tmp_path / "bin").mkdir()
    hf.config.to_json_file(tmp_path / "bin" / "config.json")
    for file, keys in halves.items():
        torch.save({k: sd[k] for k in keys}, tmp_path / "bin" / file)
    index = {"weight_map": {k: file for file, keys in halves.items() for k in keys}}
    (tmp_path / "bin" / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    idx = torch.randint(0, 503, (1, 13))
    with torch.no_grad():
        ref = hf(idx).logits
        for d in ("st", "bin"):
            assert (from_pretrained(tmp_path / d)(idx) - ref).abs().max().item() <= LOGITS_ATOL, d


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("add_cross_attention", True, "add_cross_attention"),
        ("model_type", "gpt_neo", "model_type"),
        ("activation_function", "mish", "activation_function"),
        ("n_inner", 0, "n_inner"),
        ("eos_token_id", -1, "eos_token_id"),
    ],
)
def test_unimplemented_config_fields_are_refused(tmp_path, field, value, named):
    hf = hf_variant(0)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(CheckpointError, match=named) as e:
        from_pretrained(tmp_path)
    assert "\n" not in str(e.value)


def test_n_ctx_is_ignored_as_transformers_does(tmp_path):
    from transformers import GPT2LMHeadModel

    hf = hf_variant(0)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_ctx": 7}))
    back = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    model = from_pretrained(tmp_path)
    assert model.config.block_size == back.config.n_positions == 48
    idx = torch.randint(0, 503, (1, 30))
    with torch.no_grad():
        assert (model(idx) - back(idx).logits).abs().max().item() <= LOGITS_ATOL


def test_old_config_dicts_still_load():
    """A config saved before the variant fields existed gets GPT-2's behaviour for all of them."""
    old = dict(
        block_size=16,
        vocab_size=64,
        n_layer=1,
        n_head=2,
        n_embd=16,
        layer_norm_epsilon=1e-5,
        dropout=0.0,
        pad_vocab_multiple=64,
    )
    config = GPTConfig.from_dict(old)
    assert config == GPTConfig(**old)
    assert (config.mlp_width, config.activation, config.position, config.tie_word_embeddings, config.bias) == (
        64,
        "gelu_new",
        "learned",
        True,
        True,
    )
    assert config.hf_incompatibility() is None


# ----------------------------------------------------------------------------------------------
# Hub ids, offline: the cache is a folder made here, and HF_HUB_OFFLINE keeps the network out.


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    return cache


def cache_snapshot(cache, repo: str, refs: tuple[str, ...] = ("main",)):
    """A snapshot of repo in the hub cache's layout (models--OWNER--NAME/{refs,snapshots}), as a
    download leaves it; returns the snapshot folder and its commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot, commit


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("rinna/japanese-gpt2-xsmall", ("rinna/japanese-gpt2-xsmall", None)),
        ("owner/name@v1.0", ("owner/name", "v1.0")),
        ("owner/name@refs/pr/3", ("owner/name", "refs/pr/3")),
        ("Owner_1/my.model-2@0123abc", ("Owner_1/my.model-2", "0123abc")),
        ("gpt2", None),
        ("a/b/c", None),
        ("./a/b", None),
        ("/abs/path", None),
        ("a//b", None),
        ("a/b@", None),
        ("-a/b", None),
        ("a/..", None),
        ("a/b@x@y", None),
        ("a b/c", None),
        ("ckpt.safetensors", None),
    ],
)
def test_hub_id_parsing(name, parsed):
    from minigpt.model.hub import parse_hub_id

    assert parse_hub_id(name) == parsed


def test_bad_names_are_one_line_errors(offline_cache):
    for name in ("a/b/c", "no-such-thing", "./x/y"):
        with pytest.raises(CheckpointError, match="not a hub id OWNER/NAME") as e:
            from_pretrained(name)
        assert "\n" not in str(e.value)


def test_uncached_hub_id_offline_says_what_to_run(offline_cache):
    from minigpt.model.weights import resolve_directory

    for call in (from_pretrained, resolve_directory):
        with pytest.raises(CheckpointError) as e:
            call("someone/tiny-gpt2@v2")
        msg = str(e.value)
        assert "someone/tiny-gpt2 at revision v2" in msg and "\n" not in msg
        assert "python -m minigpt.model.hub download someone/tiny-gpt2@v2" in msg
    # a cached repo whose snapshot lacks weights counts as not downloaded
    snapshot, _ = cache_snapshot(offline_cache, "someone/configs-only")
    (snapshot / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="someone/configs-only is not in the Hugging Face cache"):
        from_pretrained("someone/configs-only")


def test_cached_hub_id_loads_offline(offline_cache):
    from minigpt.model.weights import resolve_directory

    hf = hf_variant(4, vocab_size=300, tie_word_embeddings=False, n_inner=72)
    snapshot, commit = cache_snapshot(offline_cache, "someone/tiny-gpt2", refs=("main", "v1"))
    hf.save_pretrained(snapshot)
    (snapshot / "tokenizer.json").write_text("{}")
    idx = torch.randint(0, 300, (1, 11))
    with torch.no_grad():
        ref = hf(idx).logits
        for name in ("someone/tiny-gpt2", "someone/tiny-gpt2@v1", f"someone/tiny-gpt2@{commit}"):
            assert (from_pretrained(name)(idx) - ref).abs().max().item() <= LOGITS_ATOL, name
            assert resolve_directory(name) == snapshot
    with pytest.raises(CheckpointError, match="someone/tiny-gpt2 at revision v9 is not in the Hugging Face cache"):
        from_pretrained("someone/tiny-gpt2@v9")


def test_resolve_directory_of_local_names(tmp_path, offline_cache):
    from minigpt.model.weights import resolve_directory

    assert resolve_directory("gpt2") is None  # tiktoken's encoding, nothing to read from disk
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    save_pretrained(model, tmp_path / "d")
    assert resolve_directory(tmp_path / "d") == tmp_path / "d"
    assert resolve_directory(tmp_path / "d" / "model.safetensors") is None
    save_pretrained(model, tmp_path / "run" / "ckpt_00000010")
    assert resolve_directory(tmp_path / "run") == tmp_path / "run" / "ckpt_00000010"
    with pytest.raises(CheckpointError, match="no such file or directory"):
        resolve_directory(tmp_path / "nope")


def test_download_command_refuses_bad_names(capsys):
    from minigpt.model.hub import main

    assert main(["download", "not-a-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# The hub unreachable: a closed port on the loopback stands in for a
# machine without network, so nothing here leaves this machine. Before the fix, a hub id ended in
# an httpx ConnectError traceback after ~30 s of retries, and `python -m minigpt.model.hub` always
# printed runpy's RuntimeWarning.

CLOSED_PORT = "http://127.0.0.1:9"  # discard: nothing listens there


def _run_hub_command(tmp_path, *args):
    import os
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=CLOSED_PORT, HF_HUB_CACHE=str(tmp_path / "empty-cache"), HF_HOME=str(tmp_path / "hf"))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("name", ["someone/tiny-gpt2", "gpt2"])
def test_download_command_unreachable_hub_is_one_line_at_once(tmp_path, name):
    proc, took = _run_hub_command(tmp_path, "-m", "minigpt.model.hub", "download", name)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: cannot download ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot be reached" in proc.stderr and "Connection refused" in proc.stderr
    assert "RuntimeWarning" not in proc.stderr and "Traceback" not in proc.stderr
    assert took < 20, f"{took:.0f} s: the hub was retried rather than found unreachable once"


def test_importing_minigpt_does_not_import_the_hub_command(tmp_path):
    # what makes runpy warn: the package already holding the module `python -m` runs
    proc, _ = _run_hub_command(tmp_path, "-c", "import sys, minigpt; print('minigpt.model.hub' in sys.modules)")
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stdout + proc.stderr


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", CLOSED_PORT)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))


def test_uncached_hub_id_with_the_hub_unreachable_is_one_line_at_once(unreachable_hub):
    import time

    from minigpt.model.weights import resolve_directory

    for call in (from_pretrained, resolve_directory):
        start = time.monotonic()
        with pytest.raises(CheckpointError) as e:
            call("someone/tiny-gpt2")
        msg = str(e.value)
        assert "\n" not in msg and "cannot be reached" in msg and CLOSED_PORT in msg
        assert "python -m minigpt.model.hub download someone/tiny-gpt2" in msg
        assert time.monotonic() - start < 20


def test_network_failure_after_the_hub_answered_is_one_line(unreachable_hub, monkeypatch):
    # the hub answers the check and then goes away: whatever the HTTP library raises is caught
    import huggingface_hub

    from minigpt.model import hub

    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)
    http = next(m for m in ("httpx2", "httpx", "requests") if m in __import__("sys").modules)
    error = __import__(http).ConnectionError if http == "requests" else __import__(http).ConnectError

    def refuse(*args, **kwargs):
        raise error("[Errno 111] Connection refused")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", refuse)
    with pytest.raises(CheckpointError, match=r"cannot be reached \(ConnectE\w+: \[Errno 111\]") as e:
        from_pretrained("someone/tiny-gpt2")
    assert "\n" not in str(e.value)
