"""bench/big_model.py on tiny shapes: the whole path (write, load in a child, decode, record, delete),
the hand-written shards against transformers, and its bad inputs."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from tiny_run import ROOT

from minigpt.model.load import from_pretrained

sys.path.insert(0, str(ROOT))
from bench import big_model  # noqa: E402

SCRIPT = ROOT / "bench" / "big_model.py"

RUN_FIELDS = {
    "load_s",
    "load_cpu_s",
    "first_token_s",
    "launch_to_first_token_s",
    "decode_tokens_per_s",
    "peak_rss_bytes",
    "peak_rss_after_load_bytes",
    "model_bytes",
}


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("big")
    out, scratch = tmp / "big.json", tmp / "scratch"
    done = script(
        "--tiny", "--models", "2.7b", "--precisions", "bf16,int4", "--out", str(out), "--scratch", str(scratch)
    )
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), scratch


def test_tiny_run_records_every_figure_and_deletes_the_checkpoints(tiny_run):
    result, scratch = tiny_run
    assert result["tiny"] is True and result["goals_20b_int4"] is None
    assert result["environment"]["device_type"] == "cpu" and result["cpu"] and result["threads"] == 2
    assert [m["model"] for m in result["models"]] == ["2.7b"]
    for m in result["models"]:
        assert m["checkpoint_bytes"] == big_model.checkpoint_bytes(m["config"]) and positive(m["write_s"] + 1)
        assert [r["precision"] for r in m["runs"]] == ["bf16", "int4"]
        for r in m["runs"]:
            assert all(positive(r[f]) for f in RUN_FIELDS), r
            assert r["peak_rss_bytes"] >= r["peak_rss_after_load_bytes"] > r["model_bytes"]
            assert len(r["tokens"]) == r["new_tokens"] == big_model.NEW_TOKENS
            assert all(0 <= t < m["config"]["vocab_size"] for t in r["tokens"])
        bf16, int4 = m["runs"]
        assert int4["model_bytes"] < bf16["model_bytes"]
    assert list(scratch.iterdir()) == []  # each checkpoint deleted after its loads


@pytest.mark.parametrize("key", list(big_model.MODELS))
def test_written_checkpoint_is_what_transformers_loads(key, tmp_path):
    """The hand-written shards and index: safetensors reads them, transformers loads every tensor
    (none missing or unexpected), and minigpt's logits of them equal transformers'."""
    import transformers

    shape = big_model.tiny(big_model.MODELS[key])
    total = big_model.write_checkpoint(shape.config, tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == total == big_model.checkpoint_bytes(shape.config)
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(hf).__name__ == shape.config["architectures"][0]
    model = from_pretrained(tmp_path)
    idx = torch.randint(0, shape.config["vocab_size"], (1, 13))
    with torch.no_grad():
        assert (hf.eval()(idx).logits - model(idx)).abs().max().item() <= 1e-4


Usage = namedtuple("Usage", "total used free")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "13b"], "--models '13b': expected a comma-separated list of 20b, 2.7b, 3.6b"),
        (["--models", ""], "--models '': expected"),
        (["--precisions", "fp8"], "--precisions 'fp8': expected a comma-separated list of bf16, int8, int4"),
    ],
)
def test_bad_lists_are_one_line_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        big_model.main(["--tiny", "--scratch", str(tmp_path), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert list(tmp_path.iterdir()) == []


def test_scratch_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert (
        big_model.main(["--tiny", "--scratch", str(tmp_path / "file" / "sub"), "--out", str(tmp_path / "o.json")]) == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --scratch ") and not (tmp_path / "o.json").exists()


def test_a_failed_load_is_recorded_and_the_exit_status_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        big_model, "run_child", lambda directory, precision: {"precision": precision, "error": "exit status 1: boom"}
    )
    argv = ["--tiny", "--models", "2.7b", "--precisions", "int8", "--scratch", str(tmp_path / "s")]
    assert big_model.main([*argv, "--out", str(tmp_path / "o.json")]) == 1
    assert "error: a load failed (2.7b int8)" in capsys.readouterr().err
    result = json.loads((tmp_path / "o.json").read_text())
    assert result["models"][0]["runs"] == [{"precision": "int8", "error": "exit status 1: boom"}]
    assert list((tmp_path / "s").iterdir()) == []


def test_too_little_disk_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    need = big_model.checkpoint_bytes(big_model.MODELS["20b"].config) + big_model.MARGIN_BYTES
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 0, need - 1))
    assert big_model.main(["--models", "20b", "--scratch", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "41.1 GB + 5 GB to spare" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_checkpoint_is_deleted_on_an_error_or_ctrl_c(failure, tmp_path, monkeypatch):
    seen = []

    def fail(directory: Path, precision: str):
        seen.append(sorted(p.name for p in directory.iterdir()))
        raise failure("stopped")

    monkeypatch.setattr(big_model, "run_child", fail)
    with pytest.raises(failure):
        big_model.main(["--tiny", "--models", "3.6b", "--scratch", str(tmp_path), "--out", str(tmp_path / "o.json")])
    assert "model.safetensors.index.json" in seen[0] and "config.json" in seen[0]
    assert list(tmp_path.iterdir()) == []


def test_readme_table_is_the_committed_results():
    """README's GPT-NeoX memory table states the figures of bench/results/big-model-cpu.json."""
    result = json.loads((ROOT / "bench" / "results" / "big-model-cpu.json").read_text(encoding="utf-8"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert result["tiny"] is False and result["cpu"] in readme
    for m in result["models"]:
        for r in m["runs"]:
            row = (
                f"| {m['shape_of']} ({m['checkpoint_bytes'] / 1e9:.1f} GB fp16) | {r['precision']} | "
                f"{r['model_bytes'] / 1e9:.2f} GB | **{r['peak_rss_bytes'] / 1e9:.2f} GB** | {r['load_s']:.0f} s"
            )
            assert row in readme, row
            assert f"| {r['launch_to_first_token_s']:.0f} s | {r['decode_tokens_per_s']:.2f} tokens/s |" in readme
    goals = result["goals_20b_int4"]
    assert set(goals) == set(big_model.GOALS) and goals["peak_rss_under_14_gb"] is True
