"""Loading writes each tensor once into the model's own memory (minigpt.model.weights' `into`):
the embedding straight into the first rows of its padded tensor, a tensor in another layout
through one reused scratch buffer. The result must be the plain reader's, bit for bit: every
tensor's values, dtype, shape and strides, nothing left on the meta device (buffers included),
for checkpoints transformers writes (GPT-2 tied and untied, sharded, GPT-NeoX, GPT-NeoX-Japanese)
in float32 and converted to bfloat16.
"""

import pytest
import torch
from safetensors.torch import save_file

from minigpt.model import weights
from minigpt.model.families import family_for
from minigpt.model.load import from_pretrained
from minigpt.rundir import CheckpointError

GPT2 = dict(vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4)  # 101 rows padded to 128
NEOX = dict(
    vocab_size=211,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=160,
    max_position_embeddings=64,
    rotary_pct=0.25,
)
JAPANESE = dict(vocab_size=199, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def hf_model(kind: str):
    """A random-init transformers model of one family (its own initialisation, seeded)."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(**GPT2))
    if kind == "gpt2-untied":
        return tf.GPT2LMHeadModel(tf.GPT2Config(**GPT2, tie_word_embeddings=False))
    if kind == "neox":
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**NEOX))
    if kind == "neox-japanese-untied":
        return tf.GPTNeoXJapaneseForCausalLM(tf.GPTNeoXJapaneseConfig(**JAPANESE, tie_word_embeddings=False))
    raise ValueError(kind)


def plain_reader(monkeypatch):
    """Make from_pretrained read every tensor into a new tensor of its own, as a reader that
    ignores `into` does (the reference: the model's tensors made by layout copies and torch.cat)."""
    read = weights.read_tensors
    monkeypatch.setattr(weights, "read_tensors", lambda path, dtype=None, into=None: read(path, dtype))


def all_tensors(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, persistent or not (a rotary cache, a causal mask)."""
    return {**dict(model.named_parameters()), **{"buffer " + k: v for k, v in model.named_buffers()}}


def assert_identical(fast, plain) -> None:
    a, b = all_tensors(fast), all_tensors(plain)
    assert list(a) == list(b)
    for name in a:
        x, y = a[name], b[name]
        assert not x.is_meta, name
        assert (x.dtype, x.shape, x.stride(), x.device) == (y.dtype, y.shape, y.stride(), y.device), name
        assert torch.equal(x, y), name


CHECKPOINTS = [
    ("gpt2", torch.float32, None),
    ("gpt2", torch.bfloat16, None),
    ("gpt2", torch.float32, "3KB"),  # shards with an index
    ("gpt2-untied", torch.float32, None),
    ("gpt2-untied", torch.bfloat16, "40KB"),
    ("neox", torch.float32, None),
    ("neox", torch.bfloat16, None),
    ("neox-japanese-untied", torch.float32, None),
]


@pytest.mark.parametrize("kind, dtype, shard", CHECKPOINTS)
def test_load_equals_the_plain_reader_bit_for_bit(tmp_path, monkeypatch, kind, dtype, shard):
    hf = hf_model(kind)
    hf.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    assert (tmp_path / "model.safetensors.index.json").exists() == bool(shard)
    fast = from_pretrained(tmp_path, dtype=dtype)
    with monkeypatch.context() as m:
        plain_reader(m)
        plain = from_pretrained(tmp_path, dtype=dtype)
    assert_identical(fast, plain)
    # and both hold transformers' own tensors, the padded rows zero
    config = fast.config
    family = family_for(config)  # both in the checkpoint's layout, under the model's names
    ours = {family.our_name(k): v for k, v in weights.hf_state_dict(fast.state_dict(), config).items()}
    theirs = {family.our_name(k): v for k, v in hf.state_dict().items() if family.our_name(k) in ours}
    assert set(theirs) == set(ours)
    for k, v in theirs.items():
        assert torch.equal(ours[k], v.to(dtype)), k
    rows = config.padded_vocab_size - config.vocab_size
    assert rows > 0
    assert not fast.transformer.wte.weight[config.vocab_size :].any()
    idx = torch.randint(0, config.vocab_size, (2, 7))
    assert torch.equal(fast(idx)[0], plain(idx)[0])


def test_a_tied_head_stored_beside_the_embedding_is_checked_against_its_unpadded_rows(tmp_path):
    hf = hf_model("gpt2")
    hf.save_pretrained(tmp_path)
    state = {k: v.clone().contiguous() for k, v in hf.state_dict().items()}
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model = from_pretrained(tmp_path)  # the stored head equals the embedding: accepted
    assert torch.equal(model.transformer.wte.weight[: GPT2["vocab_size"]], state["transformer.wte.weight"])
    state["lm_head.weight"][3, 5] += 1.0
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lm_head.weight differs from wte.weight"):
        from_pretrained(tmp_path)


def test_the_reader_fills_the_tensor_into_gives(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7), "c": torch.arange(4, dtype=torch.int64)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    big = torch.full((10, 5), -1.0)
    given = {"a": big[2:5]}  # rows of a larger tensor; "b" and "c": new tensors
    _, read = weights.read_tensors(tmp_path / "w.safetensors", into=lambda key, dtype, shape: given.get(key))
    got = dict(read)
    assert got["a"].data_ptr() == big[2].data_ptr()
    assert torch.equal(big[2:5], tensors["a"]) and (big[:2] == -1).all() and (big[5:] == -1).all()
    assert torch.equal(got["b"], tensors["b"]) and torch.equal(got["c"], tensors["c"])
    # converted to bfloat16 a band at a time into the given tensor
    half = torch.empty(3, 5, dtype=torch.bfloat16)
    _, read = weights.read_tensors(
        tmp_path / "w.safetensors", torch.bfloat16, lambda key, dtype, shape: {"a": half}.get(key)
    )
    got = dict(read)
    assert got["a"] is half and torch.equal(half, tensors["a"].to(torch.bfloat16))
    assert got["c"].dtype == torch.int64  # integers stay as stored


@pytest.mark.parametrize(
    "bad, words",
    [
        (lambda: torch.empty(3, 5, dtype=torch.float64), "torch.float64"),
        (lambda: torch.empty(5, 3), r"\(5, 3\)"),
        (lambda: torch.empty(5, 3).t(), r"\(3, 5\)"),  # the right shape, not contiguous
        (lambda: torch.empty(15), r"\(15,\)"),
    ],
    ids=["dtype", "shape", "strided", "flat"],
)
def test_into_must_give_a_contiguous_tensor_of_the_stored_shape(tmp_path, bad, words):
    save_file({"a": torch.randn(3, 5)}, str(tmp_path / "w.safetensors"))
    _, read = weights.read_tensors(tmp_path / "w.safetensors", into=lambda key, dtype, shape: bad())
    with pytest.raises(ValueError, match=f"into\\(\\) gave a a .*{words}"):
        dict(read)


def test_a_layout_that_returns_a_view_of_the_scratch_buffer_is_copied_out_of_it(tmp_path, monkeypatch):
    """A layout may give back a contiguous view of what was read (here: the bias as it is); the
    scratch buffer is overwritten by the next such tensor, so the model's tensor must be a copy."""
    from minigpt.model.families import GPT2 as GPT2_FAMILY
    from minigpt.model.families import Layout

    as_is = Layout(lambda t, config: t.view(t.shape), lambda t, config: t.view(t.shape))
    monkeypatch.setitem(GPT2_FAMILY.layouts, "attn.c_attn.bias", as_is)
    monkeypatch.setitem(GPT2_FAMILY.layouts, "mlp.c_fc.bias", as_is)
    hf = hf_model("gpt2")
    hf.save_pretrained(tmp_path)
    fast = from_pretrained(tmp_path)
    with monkeypatch.context() as m:
        plain_reader(m)
        plain = from_pretrained(tmp_path)
    assert_identical(fast, plain)
    assert torch.equal(fast.transformer.h[0].attn.c_attn.bias, hf.transformer.h[0].attn.c_attn.bias)
