"""from_pretrained(..., quantize=...): each weight quantized as it is read gives exactly the model
quantize_model makes of the full-precision one, refuses shapes the kernels cannot take before
reading, and never holds the full-precision model (the peak memory of a child process)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from minigpt.model.load import from_pretrained
from minigpt.model.quantize import QuantizedLinear, quantize_model

ROOT = Path(__file__).resolve().parents[2]


def hf_checkpoint(path: Path, family: str, **fields) -> Path:
    import transformers

    torch.manual_seed(0)
    if family == "gpt2":
        base = dict(vocab_size=250, n_embd=64, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**base, **fields}))
    else:
        base = dict(vocab_size=200, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
        model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**{**base, **fields}))
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("mode, group_size", [("int8", 64), ("int4", 32), ("int4", 64)])
@pytest.mark.parametrize(
    "family, fields",
    [("gpt2", {}), ("gpt2", dict(tie_word_embeddings=False)), ("gpt_neox", {}), ("gpt_neox", dict(vocab_size=256))],
    ids=["gpt2-tied", "gpt2-untied-padded", "neox-padded", "neox"],
)
def test_streamed_quantization_equals_quantizing_the_loaded_model(tmp_path, family, fields, mode, group_size):
    path = hf_checkpoint(tmp_path, family, **fields)
    streamed = from_pretrained(path, quantize=mode, group_size=group_size)
    whole = quantize_model(from_pretrained(path), mode, group_size)
    assert streamed.state_dict().keys() == whole.state_dict().keys()
    for (name, a), b in zip(streamed.state_dict().items(), whole.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    idx = torch.randint(0, streamed.config.vocab_size, (2, 7))
    with torch.no_grad():
        assert torch.equal(streamed(idx), whole(idx))


def test_a_weights_file_without_a_config_is_quantized_too(tmp_path):
    path = hf_checkpoint(tmp_path, "gpt2", n_embd=768, n_head=12, n_layer=1)
    (path / "config.json").unlink()
    model = from_pretrained(path / "model.safetensors", quantize="int8")
    assert isinstance(model.lm_head, QuantizedLinear) and isinstance(model.transformer.h[0].mlp.c_fc, QuantizedLinear)


@pytest.mark.parametrize(
    "mode, fields, named",
    [
        ("int8", dict(n_embd=40, n_head=4), "multiple of 16"),
        ("int4", dict(n_embd=48, n_head=4), "group size 64 does not divide"),
        ("int2", {}, "unknown quantization"),
    ],
)
def test_shapes_the_kernels_cannot_take_are_refused_in_one_line(tmp_path, mode, fields, named):
    path = hf_checkpoint(tmp_path, "gpt2", **fields)
    with pytest.raises(ValueError, match=named) as e:
        from_pretrained(path, quantize=mode)
    assert "\n" not in str(e.value)


def write_sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> int:
    """A float16 safetensors file of zeros, written sparse (no data blocks on disk); its size."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2 * int(torch.tensor(shape).prod())
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        f.truncate(8 + len(blob) + offset)
    return 8 + len(blob) + offset


@pytest.mark.slow
def test_int4_load_of_a_20b_wide_model_never_holds_it_in_full(tmp_path):
    """gpt-neox-20b's width (6144), heads and vocabulary with 2 layers: a 3.1 GB float16 file.

    The load may hold the quantized model plus one tensor in bfloat16 (and 10% for the allocator),
    never the whole model: here that is 52% of the file, since the bfloat16 input embedding alone
    is a fifth of it (with 44 layers, gpt-neox-20b's int4 model is under a third of its file)."""
    C, F, V, L = 6144, 24576, 50432, 2
    config = dict(
        model_type="gpt_neox", vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=64,
        intermediate_size=F, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
    )  # fmt: skip
    shapes = {"gpt_neox.embed_in.weight": (V, C), "embed_out.weight": (V, C)}
    shapes.update({"gpt_neox.final_layer_norm.weight": (C,), "gpt_neox.final_layer_norm.bias": (C,)})
    for i in range(L):
        p = f"gpt_neox.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            shapes.update({p + norm + ".weight": (C,), p + norm + ".bias": (C,)})
        for name, (n, k) in {
            "attention.query_key_value": (3 * C, C),
            "attention.dense": (C, C),
            "mlp.dense_h_to_4h": (F, C),
            "mlp.dense_4h_to_h": (C, F),
        }.items():
            shapes.update({p + name + ".weight": (n, k), p + name + ".bias": (n,)})
    size = write_sparse_safetensors(tmp_path / "model.safetensors", shapes)
    (tmp_path / "config.json").write_text(json.dumps(config))
    script = textwrap.dedent(f"""
        import json, resource, torch
        from minigpt.model.load import from_pretrained
        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        before = peak()
        model = from_pretrained({str(tmp_path)!r}, dtype=torch.bfloat16, quantize="int4")
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3]]))
        held = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        print(json.dumps({{"before": before, "after": peak(), "held": held}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    largest = 2 * F * C  # one MLP matrix in bfloat16
    assert rss["held"] < 0.45 * size  # quantized: every linear layer and the head in 4 bits
    assert rss["after"] - rss["before"] < 1.1 * (rss["held"] + largest), (rss, size)


# ----------------------------------------------------------------------------------------------
# The quantized-weight cache


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    directory = tmp_path / "quantized-cache"
    monkeypatch.setenv("MINIGPT_QUANTIZED_DIR", str(directory))
    return directory


@pytest.mark.parametrize("mode", ["int8", "int4", "int8-dynamic"])
@pytest.mark.parametrize("family, fields", [("gpt2", {}), ("gpt_neox", {})], ids=["gpt2-tied", "neox-untied"])
def test_a_second_load_reads_the_cache_and_quantizes_nothing(tmp_path, cache_dir, monkeypatch, family, fields, mode):
    import minigpt.model.load as load

    path = hf_checkpoint(tmp_path / "ckpt", family, **fields)
    first = from_pretrained(path, quantize=mode)
    assert len(list(cache_dir.glob("*.safetensors"))) == 1

    def no_rounding(*args, **kwargs):
        raise AssertionError("the cached model was quantized again")

    monkeypatch.setattr(load, "_load_quantized", no_rounding)
    second = from_pretrained(path, quantize=mode)
    assert second.state_dict().keys() == first.state_dict().keys()
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    idx = torch.randint(0, first.config.vocab_size, (2, 5))
    with torch.no_grad():
        assert torch.equal(first(idx), second(idx))


def test_the_cache_follows_the_checkpoint_mode_and_dtype(tmp_path, cache_dir):
    path = hf_checkpoint(tmp_path / "ckpt", "gpt2")
    from_pretrained(path, quantize="int8")
    from_pretrained(path, quantize="int4")
    from_pretrained(path, quantize="int8", dtype=torch.bfloat16)
    assert len(list(cache_dir.glob("*.safetensors"))) == 3
    hf_checkpoint(tmp_path / "ckpt", "gpt2", n_layer=1)  # the checkpoint changes: quantized afresh
    model = from_pretrained(path, quantize="int8")
    assert model.config.n_layer == 1 and len(list(cache_dir.glob("*.safetensors"))) == 4
    from_pretrained(path, quantize="int8", quantized_cache=False)
    assert len(list(cache_dir.glob("*.safetensors"))) == 4


@pytest.mark.parametrize("damage", ["torch-version", "truncated", "foreign"])
def test_an_unusable_cache_is_one_line_and_replaced(tmp_path, cache_dir, capfd, damage):
    from safetensors.torch import load_file, save_file

    path = hf_checkpoint(tmp_path / "ckpt", "gpt2")
    reference = from_pretrained(path, quantize="int4")
    [kept] = cache_dir.glob("*.safetensors")
    if damage == "torch-version":
        from safetensors import safe_open

        with safe_open(str(kept), "pt") as f:
            record = json.loads(f.metadata()["minigpt_quantized"])
        record["torch"] = "1.0.0"
        save_file(load_file(kept), kept, metadata={"minigpt_quantized": json.dumps(record)})
    elif damage == "truncated":
        kept.write_bytes(kept.read_bytes()[:-100])
    else:
        save_file({"x": torch.zeros(3)}, kept)
    capfd.readouterr()
    model = from_pretrained(path, quantize="int4")
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minigpt: not using the quantized model kept in"), err
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert from_pretrained(path, quantize="int4") is not None and capfd.readouterr().err == ""  # replaced
