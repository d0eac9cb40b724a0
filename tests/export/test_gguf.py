"""minigpt.export.gguf: GGUF files read back with the gguf package's own reader.

Two tiny random GPT-2s, saved in the test: one with GPT-2's tokenizer and a tied lm_head, one with
a bpe tokenizer trained here, an untied lm_head and rows that are not a whole number of
quantization blocks (n_embd 48). Each is exported at every type and read back: tensor names,
shapes and types (by llama.cpp's rule, restated here), metadata and the tokenizer, and every
tensor dequantized against the model's own within the format's error. A numpy forward pass
written from llama.cpp's gpt2 graph on the f32 file's tensors gives the model's logits, which
checks the layout llama.cpp reads (tensor names, fused qkv order, transposes). Bad inputs are
one table, each a one-line ValueError that leaves no file behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from minigpt.export.gguf import TYPES, export_gguf
from minigpt.model.config import GPTConfig
from minigpt.model.load import save_pretrained
from minigpt.model.model import GPT
from minigpt.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer, local_vocab_files

ROOT = Path(__file__).resolve().parents[2]
Q = gguf.GGMLQuantizationType
TEXT = ["the quick brown fox jumps over the lazy dog. " * 4, "pack my box with five dozen liquor jugs! " * 4]


def save(directory: Path, config: GPTConfig, tokenizer, seed: int = 0, transformers_only: bool = True) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():  # biases and norms away from their 0 / 1 init, so a mix-up would show
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    save_pretrained(model, directory, transformers_only=transformers_only)
    tokenizer.save_pretrained(directory)
    return model


def neox(vocab_size: int, **switches) -> GPTConfig:
    return GPTConfig(
        model_type="gpt_neox",
        block_size=20,
        vocab_size=vocab_size,
        n_layer=2,
        n_head=2,
        n_embd=64,
        position="rope",
        rope_theta=500.0,
        attn_bias=True,
        mlp_bias=True,
        activation="gelu",
        pad_vocab_multiple=1,
        **switches,
    )


GPT2_MODELS = ("tied", "untied")
NEOX_MODELS = ("neox", "neox-tied")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (directory, model, tokenizer) of the tiny GPT-2s."""
    root = tmp_path_factory.mktemp("models")
    bpe_tok = BPETokenizer.train(TEXT, 300)
    configs = {
        "tied": (GPTConfig(block_size=32, vocab_size=bpe_tok.vocab_size, n_layer=2, n_head=2, n_embd=64), bpe_tok),
        "untied": (
            GPTConfig(
                block_size=24,
                vocab_size=bpe_tok.vocab_size,
                n_layer=2,
                n_head=3,
                n_embd=48,
                n_inner=96,
                tie_word_embeddings=False,
                activation="gelu_pytorch_tanh",
            ),
            bpe_tok,
        ),
        # GPT-2's own tokenizer: its 50257 tokens make a file the reader takes seconds to open, so once
        "gpt2-vocab": (GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32), GPT2Tokenizer()),
        # GPT-NeoX (llama.cpp's gptneox): a quarter of each head rotated, parallel residual, untied...
        "neox": (neox(bpe_tok.vocab_size, rotary_pct=0.25, parallel_residual=True, tie_word_embeddings=False), bpe_tok),
        # ...and every channel rotated, sequential residual, tied (the file then holds `output` too)
        "neox-tied": (
            neox(bpe_tok.vocab_size, rotary_pct=1.0, parallel_residual=False, tie_word_embeddings=True),
            bpe_tok,
        ),
    }
    return {
        name: (root / name, save(root / name, config, tok, seed=seed), tok)
        for seed, (name, (config, tok)) in enumerate(configs.items())
    }


def expected_tensors(config: GPTConfig, model: GPT) -> dict[str, np.ndarray]:
    """llama.cpp's name -> the values it should hold (numpy layout: nn.Linear's (out, in))."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    V = config.vocab_size
    out = {
        "token_embd.weight": sd["transformer.wte.weight"][:V],
        "output_norm.weight": sd["transformer.ln_f.weight"],
        "output_norm.bias": sd["transformer.ln_f.bias"],
    }
    if config.position == "learned":
        out["position_embd.weight"] = sd["transformer.wpe.weight"]
    if not config.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"][:V]
    elif config.model_type == "gpt_neox":  # llama.cpp's gptneox loads `output` always
        out["output.weight"] = sd["transformer.wte.weight"][:V]
    ours = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm"}
    ours |= {"mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(config.n_layer):
        for mine, theirs in ours.items():
            for suffix in ("weight", "bias"):
                out[f"blk.{i}.{theirs}.{suffix}"] = sd[f"transformer.h.{i}.{mine}.{suffix}"]
    return out


def expected_type(name: str, shape: tuple[int, ...], type_name: str, tied: bool) -> Q:
    """llama.cpp's rule, written out: norms, biases, 1-D tensors and positions f32; the output matrix
    (token_embd when tied) q8_0 in a q4_0 file; a row that is not whole blocks of 32 f16."""
    if len(shape) == 1 or name == "position_embd.weight":
        return Q.F32
    wanted = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[type_name]
    if wanted == Q.Q4_0 and (name == "output.weight" or (tied and name == "token_embd.weight")):
        wanted = Q.Q8_0
    if wanted in (Q.Q8_0, Q.Q4_0) and shape[-1] % 32:
        wanted = Q.F16
    return wanted


def within_format_error(got: np.ndarray, want: np.ndarray, qtype: Q) -> None:
    """got equals want within what qtype can hold: exact for f32, f16's rounding for f16. q8_0 and
    q4_0 store per block of 32 a scale d (as f16) and integers q: q8_0 d = max|x| / 127, error at
    most d/2; q4_0 d = (the value of largest magnitude) / -8, error at most |d| (that value maps to
    -8 exactly, the other end is clipped at +7); each plus |q| times the f16 rounding of d."""
    if qtype == Q.F32:
        np.testing.assert_array_equal(got, want)
        return
    if qtype == Q.F16:
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-7)
        return
    blocks = want.astype(np.float64).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / (127 if qtype == Q.Q8_0 else 8)
    rounding = np.abs(d - d.astype(np.float16).astype(np.float64))
    bound = d / 2 + 127 * rounding if qtype == Q.Q8_0 else d + 8 * rounding
    err = np.abs(got.astype(np.float64).reshape(-1, 32) - blocks)
    assert (err <= bound * (1 + 1e-6) + 1e-12).all(), f"error {(err / bound).max():.3f} x the bound"
    assert err.max() > 0  # it was quantized


_READ: dict[Path, tuple[dict, dict]] = {}


def read(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> ReaderTensor) of a GGUF file (each file read once)."""
    if path not in _READ:
        reader = gguf.GGUFReader(str(path))
        fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        _READ[path] = fields, {t.name: t for t in reader.tensors}
    return _READ[path]


def dequantized(t) -> np.ndarray:
    """The tensor's float32 values in numpy's layout (the reverse of ggml's shape)."""
    shape = tuple(int(n) for n in reversed(t.shape))
    return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """(model name, type) -> the exported file, each written once."""
    out = tmp_path_factory.mktemp("gguf")
    files = {(name, t): (models[name][0], out / f"{name}-{t}.gguf") for name in GPT2_MODELS for t in TYPES}
    files |= {(name, t): (models[name][0], out / f"{name}-{t}.gguf") for name in NEOX_MODELS for t in ("f32", "q4_0")}
    files["gpt2-vocab", "f16"] = models["gpt2-vocab"][0], out / "gpt2-vocab-f16.gguf"
    return {key: export_gguf(directory, path, key[1]) for key, (directory, path) in files.items()}


@pytest.mark.parametrize(
    ("name", "type_name"),
    [*((n, t) for n in GPT2_MODELS for t in TYPES), *((n, t) for n in NEOX_MODELS for t in ("f32", "q4_0"))],
)
def test_tensors_read_back_within_the_format_error(models, exported, name, type_name):
    _, model, _ = models[name]
    config = model.config
    _, tensors = read(exported[name, type_name])
    want = expected_tensors(config, model)
    assert set(tensors) == set(want)
    for tname, values in want.items():
        t = tensors[tname]
        assert tuple(int(n) for n in t.shape) == values.shape[::-1], tname  # ggml's order: {in, out}
        qtype = expected_type(tname, values.shape, type_name, "output.weight" not in want)
        assert t.tensor_type == qtype, (tname, t.tensor_type.name, qtype.name)
        within_format_error(dequantized(t), values, qtype)


def test_the_rule_covers_each_case(models, exported):
    """The two models between them exercise every branch of the rule at q4_0."""
    _, tensors = read(exported["untied", "q4_0"])
    assert tensors["output.weight"].tensor_type == Q.F16  # 48-wide rows: not whole blocks
    assert tensors["blk.0.ffn_down.weight"].tensor_type == Q.Q4_0  # 96-wide rows
    _, tensors = read(exported["tied", "q4_0"])
    assert tensors["token_embd.weight"].tensor_type == Q.Q8_0  # the tied output matrix
    assert tensors["blk.1.attn_qkv.weight"].tensor_type == Q.Q4_0
    assert tensors["position_embd.weight"].tensor_type == Q.F32


FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE values


@pytest.mark.parametrize(
    ("name", "type_name"), [*((n, t) for n in ("tied", "untied") for t in TYPES), ("gpt2-vocab", "f16")]
)
def test_metadata(models, exported, name, type_name):
    _, model, tok = models[name]
    c = model.config
    fields, _ = read(exported[name, type_name])
    assert fields["general.architecture"] == "gpt2"
    assert fields["general.type"] == "model"
    assert fields["general.file_type"] == FILE_TYPES[type_name]
    assert fields["general.quantization_version"] == gguf.GGML_QUANT_VERSION
    assert fields["gpt2.context_length"] == c.block_size
    assert fields["gpt2.embedding_length"] == c.n_embd
    assert fields["gpt2.block_count"] == c.n_layer
    assert fields["gpt2.feed_forward_length"] == c.mlp_width
    assert fields["gpt2.attention.head_count"] == c.n_head
    assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(c.layer_norm_epsilon)
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.bos_token_id"] == tok.bos_id
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_id
    assert fields["tokenizer.ggml.add_bos_token"] is False


@pytest.mark.parametrize("name", NEOX_MODELS)
def test_neox_metadata(models, exported, name):
    _, model, tok = models[name]
    c = model.config
    fields, _ = read(exported[name, "q4_0"])
    assert fields["general.architecture"] == "gptneox"
    assert fields["general.file_type"] == FILE_TYPES["q4_0"]
    assert fields["gptneox.context_length"] == c.block_size
    assert fields["gptneox.embedding_length"] == c.n_embd
    assert fields["gptneox.block_count"] == c.n_layer
    assert fields["gptneox.feed_forward_length"] == c.mlp_width
    assert fields["gptneox.attention.head_count"] == c.n_head
    assert fields["gptneox.rope.dimension_count"] == int(c.rotary_pct * c.head_dim)
    assert fields["gptneox.rope.freq_base"] == pytest.approx(c.rope_theta)
    assert fields["gptneox.use_parallel_residual"] is c.parallel_residual
    assert fields["tokenizer.ggml.model"] == "gpt2" and len(fields["tokenizer.ggml.tokens"]) == tok.vocab_size


def test_gpt2_vocabulary_is_openai_files(exported):
    fields, _ = read(exported["gpt2-vocab", "f16"])
    vocab_bpe, encoder_json = local_vocab_files()
    encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == 50257
    assert all(tokens[i] == t for t, i in encoder.items())
    merges = [line for line in Path(vocab_bpe).read_text(encoding="utf-8").splitlines()[1:] if line]
    assert fields["tokenizer.ggml.merges"] == merges
    types = fields["tokenizer.ggml.token_type"]
    assert types[50256] == gguf.TokenType.CONTROL and set(types[:50256]) == {gguf.TokenType.NORMAL}


def test_bpe_vocabulary(models, exported):
    _, _, tok = models["untied"]
    fields, _ = read(exported["untied", "q8_0"])
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == tok.vocab_size
    assert {t: i for i, t in enumerate(tokens)} == tok.tokenizer.get_vocab(with_added_tokens=True)
    data = json.loads(tok.tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    assert fields["tokenizer.ggml.merges"] == merges and len(merges) > 0


# ----------------------------------------------------------------------------------------------
# llama.cpp's gpt2 graph in numpy, from the file's tensors alone


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rope_neox(x: np.ndarray, n_rot: int, theta: float) -> np.ndarray:
    """llama.cpp's NEOX rotation of x (H, T, hs): channel j pairs with j + n_rot/2, the rest pass."""
    T, half = x.shape[1], n_rot // 2
    angles = np.arange(T)[:, None] * theta ** (-np.arange(half) / half)  # (T, n_rot/2)
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2 = x[..., :half], x[..., half:n_rot]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., n_rot:]], axis=-1)


def gguf_logits(path: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's gpt2 or gptneox graph (src/models/gpt2.cpp, gptneox.cpp), from the file alone."""
    fields, tensors = read(path)
    arch = fields["general.architecture"]
    W = {name: dequantized(t).astype(np.float64) for name, t in tensors.items()}
    C, H = fields[f"{arch}.embedding_length"], fields[f"{arch}.attention.head_count"]
    eps, hs, T = fields[f"{arch}.attention.layer_norm_epsilon"], C // H, len(ids)
    x = W["token_embd.weight"][ids]
    if arch == "gpt2":
        x = x + W["position_embd.weight"][:T]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(fields[f"{arch}.block_count"]):
        p = f"blk.{i}."
        h = layer_norm(x, W[p + "attn_norm.weight"], W[p + "attn_norm.bias"], eps)
        qkv = h @ W[p + "attn_qkv.weight"].T + W[p + "attn_qkv.bias"]  # (T, 3C): q, k, v
        q, k, v = (qkv[:, j * C : (j + 1) * C].reshape(T, H, hs).transpose(1, 0, 2) for j in range(3))
        if arch == "gptneox":
            n_rot, theta = fields["gptneox.rope.dimension_count"], fields["gptneox.rope.freq_base"]
            q, k = rope_neox(q, n_rot, theta), rope_neox(k, n_rot, theta)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hs) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v  # (H, T, hs)
        attn = a.transpose(1, 0, 2).reshape(T, C) @ W[p + "attn_output.weight"].T + W[p + "attn_output.bias"]
        parallel = arch == "gptneox" and fields["gptneox.use_parallel_residual"]
        ffn_in = x if parallel else x + attn
        h = layer_norm(ffn_in, W[p + "ffn_norm.weight"], W[p + "ffn_norm.bias"], eps)
        u = h @ W[p + "ffn_up.weight"].T + W[p + "ffn_up.bias"]
        u = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u**3)))  # ggml_gelu: the tanh form
        x = x + attn + u @ W[p + "ffn_down.weight"].T + W[p + "ffn_down.bias"]
    x = layer_norm(x, W["output_norm.weight"], W["output_norm.bias"], eps)
    return x @ W.get("output.weight", W["token_embd.weight"]).T


@pytest.mark.parametrize("name", [*GPT2_MODELS, *NEOX_MODELS])
def test_llama_cpp_graph_on_the_file_gives_the_models_logits(models, exported, name):
    _, model, _ = models[name]
    ids = torch.randint(
        0, model.config.vocab_size, (model.config.block_size - 3,), generator=torch.Generator().manual_seed(5)
    )
    with torch.no_grad():
        want = model(ids[None])[0].double().numpy()  # (T, vocab_size)
    got = gguf_logits(exported[name, "f32"], ids.tolist())
    # the NeoX models' exact GELU against the tanh form llama.cpp computes: within 1e-3 per activation
    tol = 1e-4 if model.config.activation != "gelu" else 2e-3
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------
# Refusals: one line each, nothing written


def _variant(tmp_path: Path, **switches) -> Path:
    directory = tmp_path / "variant"
    config = GPTConfig(block_size=16, vocab_size=50257, n_layer=1, n_head=2, n_embd=32, **switches)
    save(directory, config, GPT2Tokenizer(), transformers_only=False)
    return directory


def _neox_variant(tmp_path: Path, **switches) -> Path:
    directory = tmp_path / "neox-variant"
    config = dataclasses.replace(neox(50257, tie_word_embeddings=False, rotary_pct=0.5), pad_vocab_multiple=64)
    save(directory, dataclasses.replace(config, **switches), GPT2Tokenizer(), transformers_only=False)
    return directory


def _char_model(tmp_path: Path) -> Path:
    tok = CharTokenizer.train(TEXT)
    directory = tmp_path / "char"
    save(directory, GPTConfig(block_size=16, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32), tok)
    return directory


BAD = {
    "unknown type": (lambda m, tmp: (m, tmp / "o.gguf", "q5_k"), "unknown GGUF type 'q5_k'"),
    "existing output": (lambda m, tmp: (m, tmp / "exists.gguf", "f16"), "exists; the exporter never overwrites"),
    "no output folder": (lambda m, tmp: (m, tmp / "nowhere" / "o.gguf", "f16"), "is not a directory"),
    "rope": (lambda m, tmp: (_variant(tmp, position="rope"), tmp / "o.gguf", "f16"), "position='rope'"),
    "qk_norm": (lambda m, tmp: (_variant(tmp, qk_norm=True), tmp / "o.gguf", "f16"), "qk_norm=True"),
    "no bias": (lambda m, tmp: (_variant(tmp, bias=False), tmp / "o.gguf", "f16"), "bias=False"),
    "relu": (lambda m, tmp: (_variant(tmp, activation="relu"), tmp / "o.gguf", "f16"), "activation='relu'"),
    "silu": (lambda m, tmp: (_variant(tmp, activation="silu"), tmp / "o.gguf", "f16"), "activation='silu'"),
    "layer-scaled scores": (
        lambda m, tmp: (_variant(tmp, scale_attn_by_inverse_layer_idx=True), tmp / "o.gguf", "f16"),
        "not scaled by 1/sqrt(head_dim)",
    ),
    "unscaled scores": (
        lambda m, tmp: (_variant(tmp, scale_attn_weights=False), tmp / "o.gguf", "f16"),
        "not scaled by 1/sqrt(head_dim)",
    ),
    "parallel residual": (
        lambda m, tmp: (_variant(tmp, parallel_residual=True), tmp / "o.gguf", "f16"),
        "GPT-NeoX switch",
    ),
    "neox without attention biases": (
        lambda m, tmp: (_neox_variant(tmp, attn_bias=False), tmp / "o.gguf", "f16"),
        "without bias (llama.cpp's gptneox has every bias)",
    ),
    "gpt_neox_japanese": (
        lambda m, tmp: (
            _neox_variant(
                tmp, model_type="gpt_neox_japanese", attn_bias=False, mlp_bias=False, last_attn_proj_bias=True
            ),
            tmp / "o.gguf",
            "f16",
        ),
        "cannot export model_type 'gpt_neox_japanese' to GGUF",
    ),
    "char tokenizer": (lambda m, tmp: (_char_model(tmp), tmp / "o.gguf", "f16"), "char tokenizer cannot go in"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_are_refused_in_one_line(models, tmp_path, case):
    make, message = BAD[case]
    (tmp_path / "exists.gguf").write_bytes(b"keep me")
    source, out, type_name = make(models["tied"][0], tmp_path)
    before = sorted(p.name for p in out.parent.iterdir()) if out.parent.is_dir() else None
    with pytest.raises(ValueError) as e:
        export_gguf(source, out, type_name)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert (tmp_path / "exists.gguf").read_bytes() == b"keep me"
    after = sorted(p.name for p in out.parent.iterdir()) if out.parent.is_dir() else None
    assert after == before  # no output, no temporary left behind


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "minigpt.export", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_writes_a_file_and_refuses_an_existing_one_in_one_line(models, tmp_path):
    out = tmp_path / "m.gguf"
    r = _cli("gguf", str(models["untied"][0]), str(out), "--type", "q8_0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    fields, _ = read(out)
    assert fields["general.file_type"] == FILE_TYPES["q8_0"]
    size = out.stat().st_size
    r = _cli("gguf", str(models["untied"][0]), str(out), "--type", "q4_0")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and out.stat().st_size == size
