"""bench/run.py: a tiny run completes and writes complete, well-formed results."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minigpt.model.load import save_pretrained

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"

ENVIRONMENT = {"device", "device_type", "torch", "triton", "transformers", "python", "commit", "date"}
TRAIN = {
    "model",
    "params",
    "batch_size",
    "block_size",
    "attn",
    "ln",
    "compile",
    "dtype",
    "step_ms",
    "tokens_per_s",
    "flops_per_token",
    "mfu",
    "matmul_fraction",
    "peak_memory_bytes",
    "memory_added_bytes",
    "memory_kind",
    "times_s",
    "contention",
}
SAMPLE_SIDE = {
    "prefill_s",
    "prefill_tokens_per_s",
    "ttft_s",
    "decode_s",
    "decode_tokens_per_s",
    "peak_memory_bytes",
    "memory_added_bytes",
    "memory_kind",
    "timings",
}


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")

    def ours_in_results():  # what bench/run.py would write there, with modification times
        return {p.name: p.stat().st_mtime_ns for p in RESULTS.glob("e2e-*")} if RESULTS.is_dir() else {}

    before = ours_in_results()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--suite",
            "train,sample",
            "--tiny",
            "--device",
            "cpu",
            "--threads",
            "2",
            "--max-contention",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ours_in_results() == before, "a test run wrote into bench/results"
    return out, proc


def test_tiny_run_writes_every_field(tiny_run):
    out, _ = tiny_run
    data = json.loads((out / "e2e-cpu.json").read_text())
    assert data["benchmark"] == "e2e"
    assert ENVIRONMENT <= set(data["environment"]) and data["environment"]["device_type"] == "cpu"
    assert data["environment"]["torch"] and data["environment"]["date"]
    settings = data["settings"]
    assert settings["suites"] == ["train", "sample"] and settings["size"] == "tiny" and settings["threads"] == 2
    assert settings["plan"]["train"] and settings["plan"]["sample"] and "loadavg_at_start" in settings
    assert positive(data["matmul"]["flops"]) and positive(data["peak"]["flops"]) and data["peak"]["source"]

    assert len(data["train"]) == len(settings["plan"]["train"])
    for r in data["train"]:
        assert TRAIN <= set(r), TRAIN - set(r)
        for key in ("step_ms", "tokens_per_s", "flops_per_token", "mfu", "peak_memory_bytes"):
            assert positive(r[key]), (key, r[key])
    assert {r["attn"] for r in data["train"]} == {"math", "sdpa"}

    batch_sizes = [b for _, sizes, _, _ in settings["plan"]["sample"] for b in sizes]
    assert [r["batch_size"] for r in data["sample"]] == batch_sizes
    for r in data["sample"]:
        assert {
            "model",
            "params",
            "prompt_len",
            "new_tokens",
            "dtype",
            "decode_mode",
            "ours",
            "transformers",
            "ratio",
            "greedy_tokens_equal",
        } <= set(r)
        for side in ("ours", "transformers"):
            assert SAMPLE_SIDE <= set(r[side]), SAMPLE_SIDE - set(r[side])
            for key in ("prefill_tokens_per_s", "ttft_s", "decode_tokens_per_s", "peak_memory_bytes"):
                assert positive(r[side][key]), (side, key, r[side][key])
        # Ratios of timings: numbers, but their values belong in results, not assertions
        # (a tiny model's decode time is a difference of two noisy timings).
        assert all(isinstance(r["ratio"][k], float) for k in ("decode", "prefill", "ttft"))
        assert r["greedy_tokens_equal"] is True  # same fp32 weights, greedy: the same tokens


def test_tiny_run_is_marked_complete_with_every_part_and_its_wall_time(tiny_run):
    out, proc = tiny_run
    data = json.loads((out / "e2e-cpu.json").read_text())
    assert data["complete"] is True
    assert data["parts"] == data["parts_done"] == ["train", "sample"]
    assert list(data["wall_s"]) == ["train", "sample"] and all(positive(s) for s in data["wall_s"].values())
    for part in ("train", "sample"):
        assert f"e2e {part}: done in " in proc.stderr
    assert "suite train,sample: done in " in proc.stderr
    md = (out / "e2e-cpu.md").read_text()
    assert "Partial results" not in md and "Wall time per part: train " in md


def test_tiny_run_writes_markdown_plot_and_a_table(tiny_run):
    out, proc = tiny_run
    md = (out / "e2e-cpu.md").read_text()
    data = json.loads((out / "e2e-cpu.json").read_text())
    assert "| model | B | T | attn |" in md and "| model | B | prompt | new |" in md
    table_rows = [line for line in md.splitlines() if line.startswith("| tiny |")]
    assert len(table_rows) == len(data["train"]) + len(data["sample"])
    assert data["environment"]["torch"] in md
    assert (out / "e2e-cpu.png").stat().st_size > 1000
    assert "train" in proc.stdout and "sample" in proc.stdout and "tok/s" in proc.stdout


def _log_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("[")]  # bench.common.log: "[HH:MM:SS] ..."


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_its_finished_parts(tmp_path, signum):
    """Ctrl-C (or SIGTERM) after the train part was written: one line, 130 (143), and the partial files stay."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--suite",
            "train,sample,kernels",
            "--tiny",
            "--device",
            "cpu",
            "--threads",
            "2",
            "--max-contention",
            "1",
            "--no-plot",
            "--out",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = tmp_path / "e2e-cpu.json"
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if path.exists() and json.loads(path.read_text())["parts_done"]:  # written atomically: whole or absent
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before the signal: " + proc.stderr.read()[-3000:]
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    assert _log_lines(stderr) == [f"error: interrupted; the results measured so far are in {path}"]
    assert stderr.splitlines()[-1].startswith("error: interrupted")
    data = json.loads(path.read_text())
    assert data["complete"] is False and data["parts"] == ["train", "sample", "kernels"]
    assert data["parts_done"][0] == "train" and "kernels" not in data["parts_done"]
    assert len(data["train"]) == len(data["settings"]["plan"]["train"])
    assert all(positive(r["tokens_per_s"]) for r in data["train"]) and positive(data["wall_s"]["train"])
    assert "Partial results" in (tmp_path / "e2e-cpu.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e2e-cpu.json", "e2e-cpu.md"]  # no temporary left


def test_partial_results_are_written_as_each_part_finishes(monkeypatch, tmp_path):
    """PartialResults with run_cpu_targets (its measurements faked): a file at the start, another after each part."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import report, run

    monkeypatch.setattr(run.e2e, "matmul_peak", lambda *a, **k: {"flops": 1e9, "n": 8, "times_s": [1.0]})
    monkeypatch.setattr(run, "_cpu_decode", lambda out, d, mc: out["decode"].append("decoded"))
    monkeypatch.setattr(run, "_cpu_train", lambda out, spec, matmuls, mc: out.update(train="trained"))
    seen = []

    def write(payload, final):
        seen.append((json.loads(json.dumps(payload)), final))
        return [tmp_path / "x.json"]

    payload = {"benchmark": "cpu-targets", "settings": {}}
    results = run.PartialResults(payload, ["decode", "train"], write, "cpu-targets")
    assert results.path == tmp_path / "x.json"
    run.run_cpu_targets(1.0, ("decode", "train"), out=payload, part=results.part)
    results.finish()
    assert [(p["parts_done"], p["complete"], final) for p, final in seen] == [
        ([], False, False),
        (["decode"], False, False),
        (["decode", "train"], False, False),
        (["decode", "train"], True, True),
    ]
    assert seen[1][0]["decode"] == ["decoded"] and seen[1][0]["train"] is None and seen[2][0]["train"] == "trained"
    assert set(seen[-1][0]["wall_s"]) == {"decode", "train"}

    with pytest.raises(KeyboardInterrupt):  # an interrupted part is neither done nor written again
        with results.part("more"):
            raise KeyboardInterrupt
    assert "more" not in payload["parts_done"] and len(seen) == 4

    # the Markdown of a cpu-targets file begun but with nothing measured yet
    env = {k: "x" for k in ("device", "torch", "triton", "transformers", "commit", "date")}
    begun = {"environment": env, "settings": {"threads": 2}, "complete": False, "parts": ["decode", "train"]}
    begun["parts_done"] = []
    md = report.cpu_targets_markdown(begun)
    assert "Partial results" in md and "Done: none; not done: decode, train" in md


def test_bad_suite_is_a_usage_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--suite", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown suite" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_results_go_to_a_run_folder_unless_asked(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import run
    from bench.common import RESULTS_DIR, RUNS_DIR

    default = run.parse_args(["--suite", "train,sample"]).out
    assert default.parent == RUNS_DIR and default.name.endswith("-train-sample") and not default.exists()
    assert run.parse_args(["--update-results"]).out == RESULTS_DIR
    assert run.parse_args(["--out", str(tmp_path)]).out == tmp_path
    with pytest.raises(SystemExit) as e:
        run.parse_args(["--out", str(tmp_path), "--update-results"])
    assert e.value.code == 2 and "not both" in capsys.readouterr().err
    assert subprocess.run(["git", "check-ignore", "-q", str(default / "e2e-cpu.json")], cwd=ROOT).returncode == 0
    assert (
        "--update-results"
        in subprocess.run(
            [sys.executable, str(ROOT / "bench" / "kernel_speed.py"), "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )


def test_kernels_suite_without_bench_kernels(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import run

    monkeypatch.setitem(sys.modules, "bench.kernel_speed", None)  # as if the file were not there
    result = run.run_kernels(__import__("torch").device("cpu"), quick=True)
    assert "skipped" in result and "bench/kernel_speed.py" in result["skipped"]


@pytest.mark.parametrize("implementation", ["minigpt", "minigpt-plain-loss", "transformers"])
def test_train_step_of_each_implementation(monkeypatch, implementation):
    monkeypatch.syspath_prepend(str(ROOT))
    import torch

    from bench import e2e
    from minigpt import GPTConfig

    config = GPTConfig(block_size=16, vocab_size=97, n_layer=1, n_head=2, n_embd=32)
    r = e2e.bench_train(
        config,
        batch_size=2,
        block_size=16,
        attn="sdpa",
        ln="torch",
        compile=False,
        device=torch.device("cpu"),
        dtype=torch.float32,
        steps=1,
        repeats=1,
        warmup=1,
        peak=1e9,
        implementation=implementation,
    )
    assert r["implementation"] == implementation and r["attn"]
    assert TRAIN - {"model", "matmul_fraction"} <= set(r)
    assert positive(r["tokens_per_s"]) and positive(r["peak_memory_bytes"])
    with pytest.raises(ValueError, match="unknown implementation"):
        e2e.bench_train(
            config,
            batch_size=2,
            block_size=16,
            attn="sdpa",
            ln="torch",
            compile=False,
            device=torch.device("cpu"),
            dtype=torch.float32,
            steps=1,
            repeats=1,
            warmup=1,
            peak=1e9,
            implementation="nope",
        )


def test_quantize_quality_scores_every_variant_with_the_models_tokenizer(tmp_path):
    """bench/quantize_quality.py end to end on a tiny char model and a corpus prepared for it."""
    import torch

    from bench import quantize_quality
    from minigpt.data.corpus import data_tokenizer, prepare
    from minigpt.model.config import GPTConfig
    from minigpt.model.model import GPT

    source = tmp_path / "corpus.txt"
    source.write_text("".join(f"document {i}: the quick brown fox, 富士山.\n" for i in range(400)), encoding="utf-8")
    data = tmp_path / "data"
    prepare(str(source), data, tokenizer="char", workers=1, quiet=True)
    tokenizer = data_tokenizer(data)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=64))
    init = tmp_path / "model"
    save_pretrained(model, init)
    tokenizer.save_pretrained(init)
    out = tmp_path / "results"
    assert (
        quantize_quality.main(
            ["--init", str(init), "--data", str(data), "--max-bytes", "2000", "--group-sizes", "32", "--out", str(out)]
        )
        == 0
    )
    payload = json.loads((out / "quantize-quality.json").read_text())
    assert [r["model"] for r in payload["results"]] == ["float32", "bfloat16", "int8", "int4-g32"]
    assert payload["config"]["vocab_size"] == tokenizer.vocab_size
    assert all(math.isfinite(r["bpb"]) and r["bpb"] > 0 for r in payload["results"])


def test_update_results_gets_only_complete_files(monkeypatch, tmp_path):
    """With --update-results the partial files are written to a run folder, and bench/results
    (here a stand-in) receives the files only once they are complete."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import common, report, run

    results, runs = tmp_path / "results", tmp_path / "runs"
    monkeypatch.setattr(common, "RESULTS_DIR", results)
    monkeypatch.setattr(common, "RUNS_DIR", runs)
    seen = []  # (folder, complete?) of every JSON write while the run goes on
    write_json = report.write_json

    def spy(path, payload, **kw):
        seen.append((Path(path).parent, payload.get("complete")))
        return write_json(path, payload, **kw)

    monkeypatch.setattr(report, "write_json", spy)
    args = ["--suite", "train", "--tiny", "--no-transformers", "--threads", "1", "--update-results"]
    assert run.main(args) == 0
    assert json.loads((results / "e2e-cpu.json").read_text())["complete"] is True
    partial = [folder for folder, complete in seen if complete is False]
    assert partial and all(folder.parent == runs for folder in partial)  # never in bench/results
