"""Loading and saving checkpoints: round trips with transformers, strictness, safety."""

import json

import pytest
import torch
from reference import CONFIGS, LOGITS_ATOL, hf_model, save_hf

from minigpt import GPT, GPTConfig
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.rundir import CheckpointError


def test_save_pretrained_loads_in_transformers(tmp_path):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=4, n_embd=64)).eval()
    save_pretrained(model, tmp_path)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        assert torch.equal(hf(idx).logits, hf(idx).logits)
        assert (hf(idx).logits - model(idx)).abs().max().item() <= LOGITS_ATOL
    # ... and back again
    again = from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(idx), model(idx))


def test_transformers_save_loads_in_minigpt(tmp_path):
    hf = hf_model(**CONFIGS["odd"])
    hf.save_pretrained(tmp_path)  # transformers' own writer
    model = from_pretrained(tmp_path)
    idx = torch.randint(0, 50257, (1, 30))
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)).abs().max().item() <= LOGITS_ATOL


def test_single_safetensors_file(tmp_path):
    model = GPT(GPTConfig(block_size=32, vocab_size=300, n_layer=1, n_head=3, n_embd=48)).eval()
    save_pretrained(model, tmp_path / "d")
    only = tmp_path / "weights.safetensors"
    (tmp_path / "d" / "model.safetensors").rename(only)  # no config.json beside it: read the metadata
    loaded = from_pretrained(only)
    assert loaded.config == model.config
    idx = torch.randint(0, 300, (1, 10))
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))


def test_bfloat16_load(tmp_path):
    hf = hf_model(**CONFIGS["small-vocab"])
    save_hf(hf, tmp_path)
    model = from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    idx = torch.randint(0, 101, (1, 16))
    with torch.no_grad():
        ref = hf(idx).logits
        assert (model(idx).float() - ref).abs().max().item() < 5e-2 * ref.abs().max().item() + 1e-2


def test_missing_unexpected_and_misshaped_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = hf_model(**CONFIGS["small-vocab"])
    save_hf(hf, tmp_path)
    path = tmp_path / "model.safetensors"
    good = load_file(path)

    sd = dict(good)
    del sd["transformer.h.0.mlp.c_fc.bias"]
    save_file(sd, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) transformer.h.0.mlp.c_fc.bias"):
        from_pretrained(tmp_path)

    sd = dict(good, **{"transformer.h.0.extra.weight": torch.zeros(2)})
    save_file(sd, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="unexpected tensor.*extra.weight"):
        from_pretrained(tmp_path)

    sd = dict(good, **{"transformer.h.0.attn.c_proj.weight": torch.zeros(32, 31)})
    save_file(sd, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"attn.c_proj.weight has shape \(32, 31\).*expects \(32, 32\)"):
        from_pretrained(tmp_path)


def test_untied_lm_head_is_refused(tmp_path):
    hf = hf_model(**CONFIGS["small-vocab"])
    sd = hf.state_dict()
    sd["lm_head.weight"] = torch.randn_like(sd["lm_head.weight"])
    tmp_path.mkdir(exist_ok=True)
    hf.config.to_json_file(tmp_path / "config.json")
    torch.save({k: v.clone() for k, v in sd.items()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        from_pretrained(tmp_path)


def test_pickle_is_never_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('pwned')",))

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    torch.save({"wte.weight": Boom()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        from_pretrained(tmp_path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_corrupt_safetensors(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        from_pretrained(tmp_path)


def test_bad_paths_and_configs(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        from_pretrained(tmp_path)
    hf = hf_model(**CONFIGS["small-vocab"])
    save_hf(hf, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "activation_function": "mish"}))
    with pytest.raises(CheckpointError, match="activation_function"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        from_pretrained(tmp_path)


def test_preset_offline_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError) as e:
        from_pretrained("gpt2-medium")
    msg = str(e.value)
    assert "python -m minigpt.model.hub download gpt2-medium" in msg and "\n" not in msg


def test_latest_training_checkpoint_is_found(tmp_path):
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    for step in (5, 20, 100):
        save_pretrained(model, tmp_path / f"ckpt_{step:08d}")
    (tmp_path / ".tmp_ckpt_00000200").mkdir()  # an unfinished write is ignored
    loaded = from_pretrained(tmp_path)
    assert loaded.config == model.config


# ----------------------------------------------------------------------------------------------
# The safetensors header, field by field: before, float offsets ended in
# "TypeError: 'float' object cannot be interpreted as an integer".

GOOD_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def _safetensors_with(path, entry):
    header = json.dumps({"x": entry}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    return path


@pytest.mark.parametrize(
    "field, value",
    [
        ("data_offsets", [0.0, 8.0]),
        ("data_offsets", [0, 8.5]),
        ("data_offsets", ["0", "8"]),
        ("data_offsets", [False, 8]),
        ("data_offsets", [0, 4, 8]),
        ("data_offsets", [8]),
        ("data_offsets", [-8, 0]),
        ("data_offsets", {"begin": 0, "end": 8}),
        ("data_offsets", None),
        ("data_offsets", "0..8"),
        ("dtype", "F8"),
        ("dtype", "f32"),
        ("dtype", 32),
        ("dtype", ["F32"]),
        ("dtype", None),
        ("shape", [2.0]),
        ("shape", [-2]),
        ("shape", ["2"]),
        ("shape", [True, 2]),
        ("shape", 2),
        ("shape", "2"),
        ("shape", None),
        ("shape", [[2]]),
        ("shape", [0, 10**20]),  # no bytes, but torch cannot make the empty tensor
        ("data_offsets", "missing"),
        ("dtype", "missing"),
        ("shape", "missing"),
    ],
)
def test_safetensors_header_fields_are_checked(tmp_path, field, value):
    from minigpt.model.weights import read_tensors

    entry = dict(GOOD_ENTRY)
    if value == "missing":
        del entry[field]
    else:
        entry[field] = value
    if field == "shape" and value == [0, 10**20]:
        entry["data_offsets"] = [0, 0]
    path = _safetensors_with(tmp_path / "w.safetensors", entry)
    with pytest.raises(CheckpointError, match=f"w.safetensors is not a readable safetensors file: .*{field}") as e:
        read_tensors(path)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=field):
        from_pretrained(path)


def test_safetensors_header_table_starts_from_a_readable_file(tmp_path):
    # the cases above differ from this file in one field only
    from minigpt.model.weights import read_tensors

    _, tensors = read_tensors(_safetensors_with(tmp_path / "w.safetensors", GOOD_ENTRY))
    assert [(k, tuple(t.shape)) for k, t in tensors] == [("x", (2,))]


# A config.json whose sizes do not belong to its weights: before, n_embd=1e9 was
# torch's RuntimeError (and n_layer=1e6 built a million layers), now one line before any allocation.
@pytest.mark.parametrize(
    "field, value",
    [("n_embd", 10**9), ("n_layer", 10**6), ("n_positions", 10**9), ("vocab_size", 10**12), ("n_inner", 10**9)],
)
def test_config_far_larger_than_its_weights_is_refused(tmp_path, field, value):
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    config["minigpt"][{"n_positions": "block_size"}.get(field, field)] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"describes a model of [\d,]+ parameters, but the file holds") as e:
        from_pretrained(tmp_path)
    assert "\n" not in str(e.value) and f"{value}" in str(e.value)
    del config["minigpt"]  # transformers' fields alone
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="describes a model of"):
        from_pretrained(tmp_path)
