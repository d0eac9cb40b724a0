"""--adapter DIR in sample.py, chat.py and eval.py: a LoRA adapter loaded onto --init's weights and
merged gives what the merged checkpoint gives (with --quantize too: merged, then quantized), a train.py
run directory means its latest checkpoint, and a bad adapter is one line on stderr and exit code 2
before anything is written."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import ROOT, load_script

from minigpt.model.config import GPTConfig
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.model.lora import add_lora, load_adapter, lora_parameters, merge_lora, save_adapter
from minigpt.model.model import GPT

SCRIPTS = {name: load_script(ROOT / f"{name}.py") for name in ("sample", "chat", "eval")}
TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**dict(block_size=64, n_layer=1, n_head=2, n_embd=32), **overrides})).eval()


def write_adapter(base: GPT, directory: Path, targets=("c_attn", "c_proj", "lm_head"), seed: int = 1) -> Path:
    """An adapter with values that matter (B is zero when new) for a copy of base."""
    model = GPT(base.config).eval()
    model.load_state_dict(base.state_dict())
    add_lora(model, rank=4, alpha=8.0, targets=targets)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return save_adapter(model, directory)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A base checkpoint, an adapter for it, the merged checkpoint, and bad adapters."""
    root = tmp_path_factory.mktemp("adapter_flag")
    base = tiny()
    save_pretrained(base, root / "base")
    adapter = write_adapter(base, root / "adapter")
    save_pretrained(merge_lora(_adapted(root / "base", adapter)), root / "merged", transformers_only=False)
    # a LoRA run's checkpoint: merged weights and the adapter in one directory, in a run directory
    run = root / "run" / "ckpt_00000010"
    save_pretrained(merge_lora(_adapted(root / "base", adapter)), run, transformers_only=False)
    write_adapter(base, run)
    (run / "tokenizer_config.json").write_text(json.dumps({"chat_format": "minigpt"}))  # as train.py --sft writes it
    # adapters that do not fit the base
    write_adapter(tiny(n_embd=48), root / "wider")
    write_adapter(tiny(n_layer=3), root / "deeper", targets=("h.2.attn.c_attn",))
    (root / "not-lora").mkdir()
    write_adapter(base, root / "not-lora")
    config = json.loads((root / "not-lora" / "adapter_config.json").read_text())
    (root / "not-lora" / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "PREFIX_TUNING"}))
    (root / "empty").mkdir()
    (root / "file.txt").write_text("not a directory\n")
    (root / "text.txt").write_text(TEXT)
    return {p.name: p for p in root.iterdir()} | {"run": root / "run", "run-ckpt": run}


def _adapted(base_dir: Path, adapter: Path) -> GPT:
    model = from_pretrained(base_dir)
    load_adapter(model, adapter)
    return model


def run(script: str, argv, monkeypatch, capsys, stdin: str = ""):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    try:
        code = SCRIPTS[script].main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    monkeypatch.undo()
    return code, capsys.readouterr()


def argv_for(script: str, files, init: Path, extra=()) -> list:
    """A short greedy run of each script on init."""
    common = ["--init", init, "--device", "cpu", *extra]
    if script == "sample":
        return [*common, "--prompt", "Hello", "--max-new-tokens", "8", "--temperature", "0"]
    if script == "chat":
        return [*common, "--max-new-tokens", "8", "--temperature", "0"]
    return [*common, "--task", f"bpb:{files['text.txt']}", "--no-progress"]


CONVERSATION = json.dumps([{"role": "user", "content": "Hello there"}])


@pytest.mark.parametrize("script", SCRIPTS)
def test_adapter_gives_what_the_merged_checkpoint_gives(script, files, monkeypatch, capsys):
    outputs = {}
    for name, init, extra in [
        ("adapted", files["base"], ["--adapter", files["adapter"]]),
        ("merged", files["merged"], []),
        ("base", files["base"], []),
    ]:
        code, captured = run(script, argv_for(script, files, init, extra), monkeypatch, capsys, CONVERSATION)
        assert code == 0, captured.err
        outputs[name] = captured.out
    assert outputs["adapted"] == outputs["merged"] != outputs["base"]


@pytest.mark.parametrize("script", ["sample", "eval"])
def test_adapter_with_quantize_is_merged_then_quantized(script, files, monkeypatch, capsys):
    q = ["--quantize", "int8"]
    code, adapted = run(
        script, argv_for(script, files, files["base"], [*q, "--adapter", files["adapter"]]), monkeypatch, capsys
    )
    assert code == 0, adapted.err
    code, merged = run(script, argv_for(script, files, files["merged"], q), monkeypatch, capsys)
    assert code == 0, merged.err
    assert adapted.out == merged.out
    code, float_out = run(script, argv_for(script, files, files["merged"]), monkeypatch, capsys)
    assert code == 0
    if script == "eval":  # the rounded weights score differently: the quantization happened
        assert float_out.out != adapted.out


def test_a_run_directory_means_its_latest_checkpoint(files, monkeypatch, capsys):
    code, from_run = run(
        "sample", argv_for("sample", files, files["base"], ["--adapter", files["run"]]), monkeypatch, capsys
    )
    assert code == 0, from_run.err
    code, from_adapter = run(
        "sample", argv_for("sample", files, files["base"], ["--adapter", files["adapter"]]), monkeypatch, capsys
    )
    assert from_run.out == from_adapter.out  # the run's adapter is write_adapter(base)'s, seed 1


def test_chat_takes_the_format_the_adapter_was_trained_in(files, monkeypatch, capsys):
    argv = argv_for("chat", files, files["base"])
    code, plain = run("chat", argv, monkeypatch, capsys, CONVERSATION)
    assert code == 0 and "dialogue format" in plain.err  # the base model names none
    code, adapted = run("chat", [*argv, "--adapter", files["run"]], monkeypatch, capsys, CONVERSATION)
    assert code == 0 and "minigpt format" in adapted.err, adapted.err
    code, chosen = run(
        "chat", [*argv, "--adapter", files["run"], "--format", "dialogue"], monkeypatch, capsys, CONVERSATION
    )
    assert code == 0 and "dialogue format" in chosen.err  # --format wins


BAD = [
    ("missing", "missing", "no such directory"),
    ("a file", "file.txt", "is a file; give the directory that holds adapter_config.json"),
    ("not an adapter (a model)", "base", "holds no adapter_config.json: not a LoRA adapter directory"),
    ("not an adapter (empty)", "empty", "not a LoRA adapter directory"),
    ("another kind of adapter", "not-lora", "is not a LoRA adapter config"),
    ("another model's (wider)", "wider", "is an adapter for another model"),
    ("another model's (deeper)", "deeper", "is an adapter for another model: it adapts transformer.h.2.attn.c_attn"),
    ("merged into --init already", "run-ckpt", "already holds the merged weights of the LoRA run"),
]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("case, adapter, message", BAD, ids=[case for case, _, _ in BAD])
def test_bad_adapters_are_one_line_errors(script, case, adapter, message, files, monkeypatch, capsys, tmp_path):
    init = files["run-ckpt"] if adapter == "run-ckpt" else files["base"]
    path = files.get(adapter, files["base"].parent / adapter)
    extra = ["--adapter", path]
    output = tmp_path / "results.json"
    if script == "eval":
        extra += ["--output", output]
    code, captured = run(script, argv_for(script, files, init, extra), monkeypatch, capsys, CONVERSATION)
    assert code == 2, captured.err
    assert captured.out == ""
    assert captured.err.startswith("error: --") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err
    assert not output.exists()
