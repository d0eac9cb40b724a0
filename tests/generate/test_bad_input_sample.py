"""sample.py and the Python sampling API given bad input.

Every CLI case exits with code 2, writes exactly one line on stderr ("error: ...") and nothing
on stdout, and leaves the files it was pointed at byte-identical. They run through
sample.main(argv) in this process; what needs real file descriptors (a closed stdin or
stdout, a reader that goes away) runs as real processes. The API cases raise ValueError or
CheckpointError with a message that says what is wrong.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_run import ROOT, load_script, tree_hashes

from minigpt.generate.decoder import Decoder
from minigpt.generate.simple import complete, generate, generate_uncached, stream
from minigpt.model import hub
from minigpt.model.config import GPTConfig
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.model.model import GPT
from minigpt.rundir import CheckpointError
from minigpt.tokenizers import GPT2Tokenizer

sample = load_script(ROOT / "sample.py")

TINY = dict(block_size=64, n_layer=1, n_head=2, n_embd=16)  # GPT-2's vocabulary: 50257 ids, 50304 rows
NAN_KEY = "transformer.h.0.mlp.c_fc.weight"


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sample_ckpt") / "model"
    save_pretrained(GPT(GPTConfig(**TINY)), path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint) -> GPT:
    return from_pretrained(checkpoint)


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints (shared by the CLI and API tables)


def _copy(src: Path, tmp: Path) -> Path:
    dst = tmp / "init"
    shutil.copytree(src, dst)
    return dst


def _set_tensor(path: Path, key: str, change) -> None:
    sd = load_file(path / "model.safetensors")
    meta = {"format": "pt"}
    sd[key] = sd[key].clone()
    change(sd[key])
    save_file(sd, str(path / "model.safetensors"), metadata=meta)


def _raw_safetensors(path: Path, header: bytes) -> None:
    (path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)


def _nan(t):
    t.view(-1)[7] = float("nan")


def _inf(t):
    t.view(-1)[0] = float("-inf")


def _big(t):
    t.view(-1)[0] = 1e6  # finite in float32, beyond float16's 65504


DAMAGE = {
    "NaN weights": lambda p: _set_tensor(p, NAN_KEY, _nan),
    "inf weights": lambda p: _set_tensor(p, NAN_KEY, _inf),
    "config.json a list": lambda p: (p / "config.json").write_text("[1, 2]"),
    "config.json a string": lambda p: (p / "config.json").write_text('"gpt2"'),
    "config.json 'minigpt' entry a list": lambda p: (p / "config.json").write_text('{"minigpt": [1]}'),
    "config.json n_layer a string": lambda p: (p / "config.json").write_text('{"n_layer": "1", "n_embd": 16}'),
    "config.json layer_norm_epsilon a string": lambda p: (p / "config.json").write_text(
        json.dumps(dict(json.loads((p / "config.json").read_text())["minigpt"], layer_norm_epsilon="small"))
    ),
    "config.json garbled": lambda p: (p / "config.json").write_text('{"n_layer": '),
    "safetensors header a list": lambda p: _raw_safetensors(p, b"[1, 2]"),
    "safetensors header a number": lambda p: _raw_safetensors(p, b"12345"),
    "safetensors __metadata__ a list": lambda p: _raw_safetensors(p, b'{"__metadata__": [1]}'),
    "safetensors tensor entry a string": lambda p: _raw_safetensors(p, b'{"wte.weight": "F32"}'),
    "safetensors truncated": lambda p: (p / "model.safetensors").write_bytes(
        (p / "model.safetensors").read_bytes()[:5000]
    ),
    "safetensors garbage": lambda p: (p / "model.safetensors").write_bytes(b"not a safetensors file" * 3),
}

# (damage, what the one-line message must say)
DAMAGE_MESSAGES = {
    "NaN weights": f"tensor {NAN_KEY} holds NaN or infinite values",
    "inf weights": f"tensor {NAN_KEY} holds NaN or infinite values",
    "config.json a list": "config.json holds a JSON array, not an object",
    "config.json a string": "config.json holds a JSON string, not an object",
    "config.json 'minigpt' entry a list": "'minigpt' entry is a JSON array",
    "config.json n_layer a string": "n_layer must be a positive integer",
    "config.json layer_norm_epsilon a string": "layer_norm_epsilon must be a finite number",
    "config.json garbled": "cannot read .*config.json",
    "safetensors header a list": "model.safetensors is not a readable safetensors file: the header is a JSON array",
    "safetensors header a number": "the header is a JSON number",
    "safetensors __metadata__ a list": "__metadata__ is a JSON array",
    "safetensors tensor entry a string": "entry of tensor wte.weight is a JSON string",
    "safetensors truncated": "model.safetensors",
    "safetensors garbage": "model.safetensors is not a readable safetensors file",
}


def _index_with(content) -> callable:
    def damage(p: Path) -> None:
        (p / "model.safetensors").rename(p / "model-00001-of-00001.safetensors")
        (p / "model.safetensors.index.json").write_text(json.dumps(content))

    return damage


DAMAGE["index.json weight_map a list"] = _index_with({"weight_map": ["model-00001-of-00001.safetensors"]})
DAMAGE["index.json a list"] = _index_with([{"weight_map": {}}])
DAMAGE_MESSAGES["index.json weight_map a list"] = (
    "index.json is not a shard index: it has a weight_map that is a JSON array"
)
DAMAGE_MESSAGES["index.json a list"] = "index.json is not a shard index: it has no weight_map"


def _pickle_bin(p: Path) -> None:
    class Boom:
        def __reduce__(self):
            return (exec, (f"open({str(p / 'pwned')!r}, 'w').write('pwned')",))

    (p / "model.safetensors").unlink()
    torch.save({"wte.weight": Boom()}, p / "pytorch_model.bin")


DAMAGE["a pickle that runs code"] = _pickle_bin
DAMAGE_MESSAGES["a pickle that runs code"] = "refused to unpickle"


# ----------------------------------------------------------------------------------------------
# The command line


class Case:
    def __init__(self, checkpoint: Path, tmp: Path, monkeypatch):
        self.checkpoint, self.tmp, self.monkeypatch = checkpoint, tmp, monkeypatch

    def argv(self, *flags, init: Path | None = None) -> list[str]:
        return ["--init", str(init or self.checkpoint), "--device", "cpu", "--max-new-tokens", "4", *flags]

    def damaged(self, name: str) -> list[str]:
        path = _copy(self.checkpoint, self.tmp)
        DAMAGE[name](path)
        return self.argv("--temperature", "0", init=path)  # greedy: NaN logits would not trip the sampler

    def with_tokenizer_file(self, content: bytes) -> list[str]:
        path = _copy(self.checkpoint, self.tmp)
        (path / "minigpt_tokenizer.json").write_bytes(content)
        return self.argv(init=path)

    def file(self, name: str, content: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content)
        return path

    def stdin(self, content: bytes | None) -> None:
        self.monkeypatch.setattr(sys, "stdin", None if content is None else io.TextIOWrapper(io.BytesIO(content)))


NOT_UTF8 = b"def f():\n    return '\xff\xfe'\n"

CLI_CASES = {
    # --init
    "--init does not exist": lambda c: c.argv(init=c.tmp / "nothing-here"),
    "--init a directory without weights": lambda c: (c.tmp / "empty").mkdir() or c.argv(init=c.tmp / "empty"),
    "--init not a preset or a path": lambda c: ["--init", "gpt3", "--device", "cpu"],
    **{f"--init with {name}": (lambda name: lambda c: c.damaged(name))(name) for name in DAMAGE},  # noqa: B023
    # the tokenizer saved beside the weights
    "--init with a corrupt minigpt_tokenizer.json": lambda c: c.with_tokenizer_file(b"{oops"),
    "--init with a tokenizer of another vocabulary": lambda c: c.with_tokenizer_file(
        b'{"kind": "char", "alphabet": "ab"}'
    ),
    "--init with a bpe tokenizer but no tokenizer.json": lambda c: c.with_tokenizer_file(b'{"kind": "bpe:300"}'),
    # the prompt
    "--prompt longer than the context": lambda c: c.argv("--prompt", "word " * 100),
    "--prompt + --max-new-tokens beyond the context": lambda c: c.argv(
        "--prompt", "word " * 30, "--max-new-tokens", "40"
    ),
    "--prompt empty": lambda c: c.argv("--prompt", ""),
    "--prompt-file missing": lambda c: c.argv("--prompt-file", str(c.tmp / "nope.txt")),
    "--prompt-file a directory": lambda c: c.argv("--prompt-file", str(c.tmp)),
    "--prompt-file not UTF-8": lambda c: c.argv("--prompt-file", str(c.file("bin.txt", NOT_UTF8))),
    "--prompt-file - not UTF-8 (stdin)": lambda c: c.stdin(NOT_UTF8) or c.argv("--prompt-file", "-"),
    "--prompt-file - with stdin closed": lambda c: c.stdin(None) or c.argv("--prompt-file", "-"),
    "stdout closed": lambda c: c.monkeypatch.setattr(sys, "stdout", None) or c.argv(),
    # sampling settings
    "--temperature -1": lambda c: c.argv("--temperature", "-1"),
    "--temperature nan": lambda c: c.argv("--temperature", "nan"),
    "--temperature inf": lambda c: c.argv("--temperature", "inf"),
    "--top-p 0": lambda c: c.argv("--top-p", "0"),
    "--top-p 1.5": lambda c: c.argv("--top-p", "1.5"),
    "--top-p nan": lambda c: c.argv("--top-p", "nan"),
    "--top-k 0": lambda c: c.argv("--top-k", "0"),
    "--top-k -3": lambda c: c.argv("--top-k", "-3"),
    "--top-k 2.5": lambda c: c.argv("--top-k", "2.5"),
    "--max-new-tokens -1": lambda c: c.argv("--max-new-tokens", "-1"),
    "--max-new-tokens ten": lambda c: c.argv("--max-new-tokens", "ten"),
    "--num-samples 0": lambda c: c.argv("--num-samples", "0"),
    "--num-samples 0 --stream": lambda c: c.argv("--num-samples", "0", "--stream"),
    "--num-samples -2": lambda c: c.argv("--num-samples", "-2"),
    "--seed beyond 64 bits": lambda c: c.argv("--seed", str(2**64)),
    "--stop empty": lambda c: c.argv("--stop", ""),
    "--stop unknown escape": lambda c: c.argv("--stop", r"C:\path"),
    "--stop lone trailing backslash": lambda c: c.argv("--stop", "end\\"),
    "--stop short \\u escape": lambda c: c.argv("--stop", r"\u12"),
    "--stop a lone surrogate": lambda c: c.argv("--stop", r"\ud800"),
    "--stop beyond Unicode": lambda c: c.argv("--stop", r"\U00110000"),
    # choices
    "--decode unknown": lambda c: c.argv("--decode", "turbo"),
    "--dtype unknown": lambda c: c.argv("--dtype", "float8"),
    "--attn-backend unknown": lambda c: c.argv("--attn-backend", "flash"),
    "--device nonsense": lambda c: c.argv() + ["--device", "tpu"],
    "--device cuda:x": lambda c: c.argv() + ["--device", "cuda:x"],
    "--device cuda without CUDA": lambda c: (
        pytest.skip("CUDA is available") if torch.cuda.is_available() else c.argv() + ["--device", "cuda"]
    ),
    "--device cuda:7 beyond the GPUs": lambda c: (
        c.argv() + ["--device", "cuda:7"] if torch.cuda.device_count() < 8 else pytest.skip("8 GPUs")
    ),
    "unknown flag": lambda c: c.argv("--temprature", "0"),
    # quantization (the tiny model is 16 wide)
    "--quantize int3": lambda c: c.argv("--quantize", "int3"),
    "--quantize int4 group size 48": lambda c: c.argv("--quantize", "int4", "--quantize-group-size", "48"),
    "--quantize int4 group size not dividing the width": lambda c: c.argv(
        "--quantize", "int4", "--quantize-group-size", "32"
    ),
    "--quantize-group-size without --quantize": lambda c: c.argv("--quantize-group-size", "32"),
    "--quantize-group-size with --quantize int8": lambda c: c.argv("--quantize", "int8", "--quantize-group-size", "16"),
}


def snapshot(root: Path) -> dict[str, str]:
    return {**tree_hashes(root), **{str(p.relative_to(root)): "dir" for p in root.rglob("*") if p.is_dir()}}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input_is_one_line(case, checkpoint, tmp_path, monkeypatch, capsys):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    argv = [str(a) for a in CLI_CASES[case](Case(checkpoint, scratch, monkeypatch))]
    before, before_ckpt = snapshot(scratch), snapshot(checkpoint)
    capsys.readouterr()
    try:
        code = sample.main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    monkeypatch.undo()  # stdout/stdin back before reading what was captured
    captured = capsys.readouterr()
    err = captured.err
    if err.startswith("loaded "):  # the model loaded: its info line comes first
        err = err.split("\n", 1)[1]
    assert code == 2, captured.err
    assert err.startswith("error: ") and err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert snapshot(scratch) == before and snapshot(checkpoint) == before_ckpt
    assert not (scratch / "init" / "pwned").exists()


def _run(cmd: str, **kwargs) -> subprocess.CompletedProcess:
    """A shell command line (for redirections like <&-) with this Python and this checkout."""
    return subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


def _sample_cmd(checkpoint: Path) -> str:
    return f"'{sys.executable}' sample.py --init '{checkpoint}' --device cpu --max-new-tokens 4"


@pytest.mark.parametrize(
    "redirect, message",
    [
        ("--prompt-file - <&-", "standard input is closed"),
        (">&-", "standard output is closed"),
        ("--device cuda", "CUDA"),
        ("--num-samples 0 --stream", "--num-samples must be >= 1"),
    ],
)
def test_real_process_bad_input_is_one_line(checkpoint, redirect, message):
    if redirect == "--device cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available")
    proc = _run(f"{_sample_cmd(checkpoint)} {redirect}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr and proc.stdout == ""


def test_reader_going_away_stops_quietly(tmp_path):
    """`sample.py --stream | head -c1`: exit 141 (as a SIGPIPE'd Unix tool), no traceback, no error."""
    torch.manual_seed(0)
    path = tmp_path / "long"
    save_pretrained(GPT(GPTConfig(block_size=512, n_layer=1, n_head=2, n_embd=16)), path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "sample.py",
            "--init",
            str(path),
            "--device",
            "cpu",
            "--stream",
            "--max-new-tokens",
            "500",
            "--ignore-eot",
            "--prompt",
            "x",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.read(1) == b"x"
    proc.stdout.close()  # what head does after its byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception" not in err and "error" not in err, err


# ----------------------------------------------------------------------------------------------
# --stop escapes


@pytest.mark.parametrize(
    "given, meant",
    [
        (r"\n\n", "\n\n"),
        (r"a\tb", "a\tb"),
        (r"\r\n", "\r\n"),
        (r"C:\\path", "C:\\path"),
        (r"\u3002", "\u3002"),
        ("。", "。"),
        ("ＥＮＤ", "ＥＮＤ"),
        (r"\U0001F600", "\U0001f600"),
        ("plain", "plain"),
        (r"\\n", "\\n"),
    ],
)
def test_stop_escapes(given, meant):
    assert sample.unescape_stop(given) == meant


@pytest.mark.parametrize(
    "given, shown",
    [(r"C:\path", r'"C:\path"'), ("end\\", r'"end\"'), (r"\u12", r'"\u12"'), ("a\nb\\q", r"'a\nb\\q'")],
)
def test_stop_error_shows_the_text_as_typed(given, shown):
    """The error quotes --stop as the user typed it: repr would double every backslash (C:\\path)."""
    with pytest.raises(ValueError) as e:
        sample.unescape_stop(given)
    assert str(e.value).startswith(f"--stop {shown}") and "\n" not in str(e.value), str(e.value)


@pytest.mark.slow
def test_stop_escapes_reach_the_stop_matcher(checkpoint):
    """The greedy text, then the same run stopped at its 3rd character given as \\uXXXX and as itself."""
    cmd = [
        sys.executable,
        "sample.py",
        "--init",
        str(checkpoint),
        "--device",
        "cpu",
        "--temperature",
        "0",
        "--ignore-eot",
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "20",
    ]
    full = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    generated = full.removeprefix("Hello")
    char = generated[2]
    expected = "Hello" + generated[: generated.find(char)]
    for stop in (f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}", char):
        out = subprocess.run(cmd + ["--stop", stop], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert out == expected, (stop, out, full)
    help_ = subprocess.run(
        [sys.executable, "sample.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "\\uXXXX" in help_ and "141" in help_


# A reply the fake model below spells out token by token, and (--stop, what follows the prompt).
REPLY = "答えは「はい」。\n次の行\tです"
STOPS = [
    ([], REPLY),
    (["「"], "答えは"),
    (["。"], "答えは「はい」"),
    ([r"\n"], "答えは「はい」。"),
    ([r"。\n"], "答えは「はい」"),
    ([r"\u300c"], "答えは"),
    ([r"\t"], "答えは「はい」。\n次の行"),
    (["ＥＮＤ", "行"], "答えは「はい」。\n次の"),
]


@pytest.fixture(scope="module")
def char_checkpoint(tmp_path_factory) -> Path:
    """A tiny model with a char tokenizer that lacks the Japanese characters (byte fallback)."""
    from minigpt.tokenizers import CharTokenizer

    tokenizer = CharTokenizer("abcdefghij \n")
    path = tmp_path_factory.mktemp("char_ckpt") / "model"
    config = GPTConfig(block_size=256, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16)
    save_pretrained(GPT(config), path)
    tokenizer.save(path)
    return path


@pytest.mark.parametrize("stream_flag", [[], ["--stream"]])
@pytest.mark.parametrize("stops, kept", STOPS, ids=[repr(s) for s, _ in STOPS])
def test_multiline_japanese_prompt_file_and_full_width_stops(
    stops, kept, stream_flag, char_checkpoint, tmp_path, monkeypatch, capsys
):
    """--prompt-file is read exactly (several lines of Japanese), and --stop matches full-width text
    and escapes in what the checkpoint's own tokenizer decodes, streamed or not."""
    from minigpt.tokenizers import load_tokenizer

    prompt = "一行目です。\n二行目「引用」\n\n  三行目 😀\n"
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_bytes(prompt.encode("utf-8"))
    tokens = load_tokenizer(char_checkpoint).encode(REPLY)

    def fake_stream(model, idx, max_new_tokens, *args, **kwargs):
        assert load_tokenizer(char_checkpoint).decode(idx[0].tolist()) == prompt
        for t in tokens[:max_new_tokens]:
            yield torch.full((idx.size(0),), t)

    monkeypatch.setattr("minigpt.generate.simple.stream", fake_stream)
    argv = [
        "--init",
        str(char_checkpoint),
        "--device",
        "cpu",
        "--prompt-file",
        str(prompt_file),
        "--max-new-tokens",
        str(len(tokens)),
        *stream_flag,
    ]
    for stop in stops:
        argv += ["--stop", stop]
    assert sample.main(argv) == 0
    assert capsys.readouterr().out == prompt + kept


def test_utf8_stdin_is_still_a_prompt(checkpoint):
    proc = _run(f"printf 'caf\\xc3\\xa9' | {_sample_cmd(checkpoint)} --prompt-file - --temperature 0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("café")


# ----------------------------------------------------------------------------------------------
# The Python API


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_checkpoint_is_a_checkpoint_error(name, checkpoint, tmp_path):
    path = _copy(checkpoint, tmp_path)
    DAMAGE[name](path)
    with pytest.raises(CheckpointError, match=DAMAGE_MESSAGES[name]) as e:
        from_pretrained(path)
    assert "\n" not in str(e.value)
    assert not (path / "pwned").exists()


def test_float16_overflow_is_named(checkpoint, tmp_path):
    path = _copy(checkpoint, tmp_path)
    _set_tensor(path, NAN_KEY, _big)
    with pytest.raises(CheckpointError, match=f"tensor {NAN_KEY} overflows float16"):
        from_pretrained(path, dtype=torch.float16)
    assert from_pretrained(path, dtype=torch.float32) is not None  # finite as stored


def test_metadata_config_of_the_wrong_type(checkpoint, tmp_path):
    sd = load_file(checkpoint / "model.safetensors")
    only = tmp_path / "weights.safetensors"  # no config.json beside it: the config comes from the metadata
    save_file(sd, str(only), metadata={"format": "pt", "minigpt_config": "[1, 2]"})
    with pytest.raises(CheckpointError, match="minigpt_config metadata is a JSON array"):
        from_pretrained(only)


def _ids(*rows):
    return torch.tensor(rows, dtype=torch.long)


VOCAB = "outside the model's vocabulary"
IDS = "must have shape \\(batch, time\\)"
API_CASES = {
    "generate: a padding-row id (50257)": (lambda m: generate(m, _ids([1, 50257]), 2), VOCAB),
    "generate: the last padding row (50303)": (lambda m: generate(m, _ids([50303]), 2), VOCAB),
    "generate: a negative id": (lambda m: generate(m, _ids([-1, 5]), 2), VOCAB),
    "generate: ids beyond the table": (lambda m: generate(m, _ids([60000]), 2), VOCAB),
    "generate (decoder_mode): a padding-row id": (lambda m: generate(m, _ids([50300]), 2, decoder_mode="auto"), VOCAB),
    "stream: a padding-row id": (lambda m: list(stream(m, _ids([50300]), 2)), VOCAB),
    "stream (decoder_mode): a padding-row id": (
        lambda m: list(stream(m, _ids([50300]), 2, decoder_mode="eager")),
        VOCAB,
    ),
    "Decoder.generate: a padding-row id": (lambda m: Decoder(m, 1, 8).generate(_ids([3, 50280]), 2), VOCAB),
    "Decoder.stream: a negative id": (lambda m: list(Decoder(m, 1, 8).stream(_ids([-5]), 2)), VOCAB),
    "generate_uncached: a padding-row id": (lambda m: generate_uncached(m, _ids([50300]), 2), VOCAB),
    "generate: 1-D ids": (lambda m: generate(m, torch.tensor([1, 2, 3]), 2), IDS + ".*ids\\[None\\]"),
    "generate: 3-D ids": (lambda m: generate(m, torch.zeros(1, 1, 3, dtype=torch.long), 2), IDS),
    "generate: a Python list": (lambda m: generate(m, [[1, 2, 3]], 2), "must be a torch.Tensor.*got a list"),
    "generate: float ids": (lambda m: generate(m, torch.tensor([[1.0, 2.0]]), 2), "integer tensor.*float32"),
    "generate: bool ids": (lambda m: generate(m, torch.tensor([[True]]), 2), "integer tensor.*bool"),
    "Decoder.generate: 1-D ids": (lambda m: Decoder(m, 1, 8).generate(torch.tensor([1, 2]), 2), IDS),
    "generate: float max_new_tokens": (
        lambda m: generate(m, _ids([1, 2]), 2.0),
        "max_new_tokens must be an integer >= 0, got 2.0 \\(float\\)",
    ),
    "generate: str max_new_tokens": (lambda m: generate(m, _ids([1, 2]), "2"), "max_new_tokens must be an integer"),
    "generate: negative max_new_tokens": (lambda m: generate(m, _ids([1, 2]), -1), "max_new_tokens must be >= 0"),
    "generate (decoder_mode): float max_new_tokens": (
        lambda m: generate(m, _ids([1, 2]), 2.5, decoder_mode="auto"),
        "max_new_tokens must be an integer",
    ),
    "generate: an empty prompt": (lambda m: generate(m, torch.zeros(1, 0, dtype=torch.long), 2), "the prompt is empty"),
    "generate: temperature nan": (lambda m: generate(m, _ids([1]), 2, temperature=float("nan")), "temperature"),
    "generate: temperature -1": (lambda m: generate(m, _ids([1]), 2, temperature=-1.0), "temperature"),
    "generate: top_k 0": (lambda m: generate(m, _ids([1]), 2, top_k=0), "top_k"),
    "generate: top_k 2.5": (lambda m: generate(m, _ids([1]), 2, top_k=2.5), "top_k"),
    "generate: top_p nan": (lambda m: generate(m, _ids([1]), 2, top_p=float("nan")), "top_p"),
    "Decoder.generate: temperature nan": (
        lambda m: Decoder(m, 1, 8).generate(_ids([1]), 2, temperature=float("nan")),
        "temperature",
    ),
    "complete: num_samples 0": (lambda m: complete(m, GPT2Tokenizer(), ["x"], 2, num_samples=0), "num_samples"),
    "complete: an empty stop string": (lambda m: complete(m, GPT2Tokenizer(), ["x"], 2, stop=[""]), "stop"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_bad_input_is_a_value_error(case, model):
    call, message = API_CASES[case]
    with pytest.raises(ValueError, match=message) as e:
        call(model)
    assert "\n" not in str(e.value)


def test_complete_with_a_smaller_vocabulary_than_the_tokenizer():
    model = GPT(GPTConfig(block_size=16, vocab_size=300, n_layer=1, n_head=2, n_embd=16)).eval()
    with pytest.raises(ValueError, match="token id \\d+ is outside the model's vocabulary \\(0..299\\)"):
        complete(model, GPT2Tokenizer(), ["zebra crossing"], 2)


def test_ids_at_the_edge_of_the_vocabulary_are_accepted(model):
    out = generate(model, _ids([0, 50256]), 2, temperature=0)
    assert out.shape == (1, 4) and int(out.max()) < 50257
    assert torch.equal(Decoder(model, 1, 8).generate(_ids([0, 50256]), 2, temperature=0), out)


def test_download_cli_offline_does_not_suggest_itself(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert hub.main(["download", "gpt2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "minigpt.model.hub download" not in err  # the very command that just failed
    assert "network" in err and str(tmp_path / "empty-cache") in err and "HF_HUB_OFFLINE" in err
