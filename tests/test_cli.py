"""minigpt.cli: the command-line layer the top-level scripts share, and that they do share it."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigpt import cli
from minigpt.generate.sampling import SamplingSettings
from minigpt.model.backends import ATTN_BACKENDS

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train.py", "sample.py", "eval.py", "prepare.py", "chat.py", "serve.py"]


def parser() -> cli.OneLineParser:
    p = cli.OneLineParser(prog="x")
    cli.add_device_flags(p)
    cli.add_attn_backend_flag(p)
    cli.add_sampling_flags(p)
    return p


def test_defaults():
    args = parser().parse_args([])
    assert (args.device, args.dtype, args.attn_backend) == ("auto", "auto", "auto")
    assert (args.temperature, args.top_k, args.top_p, args.seed) == (1.0, None, None, None)
    assert cli.sampling_settings(args) == SamplingSettings()


def test_attn_backend_choices_are_the_backend_table():
    action = next(a for a in parser()._actions if a.dest == "attn_backend")
    assert tuple(action.choices) == ATTN_BACKENDS


@pytest.mark.parametrize("argv", [["--dtype", "float8"], ["--attn-backend", "flash"], ["--top-k", "2.5"], ["--nope"]])
def test_usage_error_is_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "(see --help)" in err


@pytest.mark.parametrize(
    "flags, name", [(["--temperature", "-1"], "temperature"), (["--top-p", "0"], "top_p"), (["--top-k", "0"], "top_k")]
)
def test_bad_sampling_flags(flags, name):
    with pytest.raises(ValueError, match=name):
        cli.sampling_settings(parser().parse_args(flags))


def test_resolve_device():
    assert cli.resolve_device("cpu") == torch.device("cpu")
    assert cli.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a device"):
        cli.resolve_device("cuda:x")
    with pytest.raises(ValueError, match="cpu, cuda or mps"):
        cli.resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="asks for CUDA"):
            cli.resolve_device("cuda")
    if torch.cuda.device_count() < 8:
        with pytest.raises(ValueError, match="CUDA" if not torch.cuda.is_available() else "CUDA device"):
            cli.resolve_device("cuda:7")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS"):
            cli.resolve_device("mps")


def test_resolve_dtype():
    cpu = torch.device("cpu")
    assert cli.resolve_dtype("auto", cpu) == torch.float32
    for name, dtype in cli.DTYPES.items():
        assert cli.resolve_dtype(name, cpu) == dtype
    with pytest.raises(ValueError, match="--dtype"):
        cli.resolve_dtype("float8", cpu)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        assert cli.resolve_dtype("auto", gpu) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)


def test_one_definition_each():
    """The shared pieces are defined once in the whole tree, and no script hard-codes backend choices."""
    sources = [p for d in ("minigpt", "bench") for p in (ROOT / d).rglob("*.py")] + [ROOT / s for s in SCRIPTS]
    once = {
        "class OneLineParser": "minigpt/cli.py",
        "\nDTYPES = ": "minigpt/device.py",
        "def resolve_device": "minigpt/device.py",
        "def resolve_dtype": "minigpt/device.py",
        "def cpu_model": "minigpt/provenance.py",
        "\ndef log(": "bench/common.py",
        "\ndef atomic_write(": "minigpt/files.py",
    }
    for definition, home in once.items():
        found = sorted(str(p.relative_to(ROOT)) for p in sources if definition in p.read_text())
        if definition == "\ndef atomic_write(":  # bench's wrapper: makes the folder, then calls minigpt.files'
            found = [f for f in found if f != "bench/common.py"]
        assert found == [home], (definition, found)
    for script in SCRIPTS:
        assert '"triton"]' not in (ROOT / script).read_text(), script


def test_only_command_lines_import_cli():
    """Nothing in the package imports minigpt.cli but the command lines run with `python -m`."""
    forms = ("from minigpt.cli", "import minigpt.cli", "from minigpt import cli")
    importers = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "minigpt").rglob("*.py")
        if p.name != "cli.py" and any(form in p.read_text() for form in forms)
    ]
    assert sorted(importers) == ["minigpt/data/prepare.py", "minigpt/export/__main__.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_help(script):
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
    if script in ("sample.py", "eval.py"):
        for flag in ("--device", "--dtype", "--attn-backend"):
            assert flag in r.stdout


# --- an output that is one of the command's inputs is refused (every option that writes) --------

# script, its arguments ({d}: a directory of text that is the input, {q}: a task file in it), what the line says
OUTPUT_IS_INPUT = [
    ("eval.py", ["--init", "{ckpt}", "--task", "mc:{q}", "--output", "{q}"], "--output"),
    ("eval.py", ["--init", "{ckpt}", "--task", "mc:{q}", "--output", "{d}/../{dname}/alias.jsonl"], "--output"),
    ("prepare.py", ["{d}", "--out-dir", "{d}"], "--out-dir"),
    ("train.py", ["--data", "{d}", "--out-dir", "{d}/.", "--device", "cpu"], "--out-dir"),
    ("train.py", ["--data", "stdlib", "--eval-task", "mc:{q}", "--out-dir", "{q}", "--device", "cpu"], "--out-dir"),
]


@pytest.mark.parametrize(
    "script, args, flag", OUTPUT_IS_INPUT, ids=[f"{c[0]} {c[2]} {i}" for i, c in enumerate(OUTPUT_IS_INPUT)]
)
def test_output_that_is_an_input_is_refused(tmp_path, script, args, flag):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "a.txt").write_text("hello world\n" * 50)
    q = d / "quiz.jsonl"
    q.write_text('{"context": "The sky is", "choices": [" blue", " green"], "label": 0}\n')
    (d / "alias.jsonl").symlink_to(q)
    ckpt = tmp_path / "ckpt"
    if script == "eval.py":
        from minigpt import GPT, GPTConfig
        from minigpt.model.load import save_pretrained

        save_pretrained(GPT(GPTConfig(block_size=16, vocab_size=50257, n_layer=1, n_head=2, n_embd=16)), ckpt)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    argv = [a.format(d=d, q=q, ckpt=ckpt, dname=d.name) for a in args]
    env = {**os.environ, "MINIGPT_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, script, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"error: {flag} ") and r.stderr.count("\n") == 1, r.stderr
    assert "is also an input" in r.stderr and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # nothing added, changed or removed


@pytest.mark.parametrize(
    "quantize, message",
    [
        (None, "not without --quantize"),
        ("int8", "not with --quantize int8"),
        ("int8-dynamic", "not with --quantize int8-dynamic"),
    ],
)
def test_group_size_outside_int4_is_refused_saying_why(quantize, message):
    from minigpt.cli import quantize_settings

    args = argparse.Namespace(quantize=quantize, quantize_group_size=32)
    with pytest.raises(ValueError, match="--quantize-group-size is for --quantize int4 only") as e:
        quantize_settings(args)
    assert str(e.value).endswith(message)
