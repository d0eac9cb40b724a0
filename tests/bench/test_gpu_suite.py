"""bench/gpu_suite.py: the rehearsal runs every stage on the CPU, records failures and timeouts
and still runs the rest, and the summary holds every figure beside its target."""

import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "bench" / "gpu_suite.py"
RESULTS = ROOT / "bench" / "results"
STATUSES = {"ok", "partial", "failed", "timeout", "skipped", "not run", "interrupted"}

sys.path.insert(0, str(ROOT))
from bench import gpu_suite, supervisor  # noqa: E402


def run_suite(*args, timeout=420):
    def ours_in_results():
        return sorted(p.name for p in RESULTS.glob("gpu-*")) if RESULTS.is_dir() else []

    before = ours_in_results()
    proc = subprocess.run(
        [sys.executable, str(SUITE), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    assert ours_in_results() == before, "a rehearsal wrote into bench/results"
    return proc


def check_well_formed(out: Path, stages: list[str]) -> dict:
    """summary.json and summary.md agree, every stage has a status, every figure a value or a reason."""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rehearse"] is True and summary["device"] == "rehearsal-cpu"
    assert [s["name"] for s in summary["stages"]] == stages
    for s in summary["stages"]:
        assert s["status"] in STATUSES, s
        assert (s["status"] == "ok") == (s["reason"] is None), s
    md = (out / "summary.md").read_text()
    assert md.startswith("# GPU check: rehearsal-cpu") and "**Rehearsal**" in md
    assert "| stage | status | seconds | note |" in md and "| figure | measured | target | meets | note |" in md
    for s in summary["stages"]:
        assert f"| {s['name']} | {s['status']} |" in md
    assert summary["figures"]
    for f in summary["figures"]:
        if f["value"] is None:
            assert f["missing"].startswith("not measured ("), f
        else:
            assert isinstance(f["value"], (int, float)) and math.isfinite(f["value"]) and f["missing"] is None, f
        assert f"| {f['name']} |" in md
    return summary


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-suite") / "results"
    tar = out.parent / "suite.tar.gz"
    proc = run_suite("--rehearse", "--out", str(out), "--archive", str(tar), "--budget-s", "400")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, tar, proc


@pytest.mark.slow
def test_rehearsal_runs_every_stage(rehearsal):
    out, tar, proc = rehearsal
    summary = check_well_formed(out, list(gpu_suite.STAGES))
    assert {s["name"]: s["status"] for s in summary["stages"]} == dict.fromkeys(gpu_suite.STAGES, "ok")
    assert "| figure | measured | target |" in proc.stdout  # the summary is printed last

    env = json.loads((out / "env.json").read_text())
    assert env["matmul_bf16"]["tflops"] > 0 and env["copy"]["gbps"] > 0 and env["environment"]["torch"]
    assert supervisor.junit_counts(out / "pytest-cuda.xml")["skipped"] > 0  # no GPU: every CUDA test skips

    kernels = json.loads((out / "kernels.json").read_text())
    measured = {
        (r["op"], r["provider"], r["mode"]) for c in kernels["cases"] for r in c["result"]["records"] if r["ms"] > 0
    }
    for provider in ("triton", "sdpa", "math"):  # triton ran in the interpreter
        assert {("attention", provider, "fwd"), ("attention", provider, "fwd+bwd")} <= measured
    assert {("layer_norm", p, m) for p in ("triton", "torch") for m in ("fwd", "fwd+bwd")} <= measured

    train = json.loads((out / "train.json").read_text())["cases"]
    backends = {(c["result"]["attn"], c["result"]["ln"], c["result"]["compile"]) for c in train}
    assert {
        ("math", "torch", False),
        ("sdpa", "torch", False),
        ("triton", "triton", False),
        ("sdpa", "torch", True),
    } <= backends
    assert all(c["result"]["tokens_per_s"] > 0 and c["result"]["mfu"] > 0 for c in train)

    decode = json.loads((out / "decode.json").read_text())["cases"]
    assert [c["result"]["role"] for c in decode] == ["b1", "b64", "xl-b1"]
    assert all(c["result"]["greedy_tokens_equal"] for c in decode)  # fp32, greedy: transformers agrees

    with tarfile.open(tar) as archive:
        names = archive.getnames()
    assert f"{out.name}/summary.md" in names and f"{out.name}/kernels.json" in names


@pytest.mark.slow
def test_a_failing_stage_and_a_timeout_are_recorded_and_the_rest_run(tmp_path):
    out = tmp_path / "results"
    proc = run_suite(
        "--rehearse",
        "--out",
        str(out),
        "--stages",
        "env,pytest,decode",
        "--fail",
        "env",
        "--case-timeout",
        "decode=0.5",
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = check_well_formed(out, ["env", "pytest", "decode"])
    status = {s["name"]: s for s in summary["stages"]}
    assert status["env"]["status"] == "failed" and "injected failure" in status["env"]["reason"]
    assert status["pytest"]["status"] == "ok"  # ran after the failure
    assert status["decode"]["status"] == "timeout" and status["decode"]["cases_ok"] == 0
    cases = json.loads((out / "decode.json").read_text())["cases"]
    assert len(cases) == 3 and all("case's timeout" in c["reason"] for c in cases)  # each one, in a fresh child
    figures = {f["name"]: f for f in summary["figures"]}
    matmul = next(f for name, f in figures.items() if name.startswith("bf16 matmul"))
    assert "injected failure" in matmul["missing"]
    assert all(
        f["missing"] and "not selected" in f["missing"] for name, f in figures.items() if name.startswith("attention")
    )
    assert (
        "not measured (stage failed: RuntimeError: injected failure (--fail env))" in (out / "summary.md").read_text()
    )


def test_zero_stage_timeout_is_a_timeout_and_the_summary_is_written(tmp_path):
    out = tmp_path / "results"
    proc = run_suite("--rehearse", "--out", str(out), "--stages", "kernels", "--stage-timeout", "kernels=0", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = check_well_formed(out, ["kernels"])
    assert summary["stages"][0]["status"] == "timeout"
    assert all(c["status"] == "not run" for c in json.loads((out / "kernels.json").read_text())["cases"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stages", "env,nope"], "unknown stage"),
        (["--stage-timeout", "env"], "STAGE=SECONDS"),
        (["--fail", "nope"], "invalid choice"),
        (["--budget-s", "0"], "--budget-s must be positive"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(tmp_path, args, message):
    proc = run_suite("--rehearse", "--out", str(tmp_path / "r"), *args, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA GPU")
def test_without_a_gpu_the_real_mode_says_to_rehearse(tmp_path):
    proc = run_suite("--out", str(tmp_path / "r"), timeout=60)
    assert proc.returncode == 2 and "--rehearse" in proc.stderr and "Traceback" not in proc.stderr


def fake_suite(tmp_path, results: dict) -> "gpu_suite.Suite":
    args = gpu_suite.parse_args(["--out", str(tmp_path)])
    suite = gpu_suite.Suite(args, tmp_path, "NVIDIA H200", {}, {"status": "skipped", "reason": "", "wheels": []})
    suite.selected = list(gpu_suite.STAGES)
    suite.results = results
    suite.stages = {s: {"name": s, "status": "ok", "reason": None} for s in results}
    return suite


def test_figures_are_held_to_the_issue_targets(tmp_path):
    def attention(provider, T, fwd, fwd_bwd):
        return {
            "case": {"op": "attention", "T": T, "D": 64, "provider": provider},
            "status": "ok",
            "result": {
                "records": [
                    {"op": "attention", "provider": provider, "mode": m, "T": T, "D": 64, "ms": 1.0, "tflops": v}
                    for m, v in (("fwd", fwd), ("fwd+bwd", fwd_bwd))
                ]
            },
        }

    def norm(provider, N, gbps):
        return {
            "case": {"op": "layer_norm", "N": N, "provider": provider},
            "status": "ok",
            "result": {
                "records": [
                    {"op": "layer_norm", "provider": provider, "mode": m, "N": N, "ms": 1.0, "gbps": gbps}
                    for m in ("fwd", "fwd+bwd")
                ]
            },
        }

    def train(attn, tok_s):
        case = dict(model="124M", batch_size=16, block_size=1024, attn=attn, ln="torch", compile=False)
        return {
            "case": case,
            "status": "ok",
            "result": {
                **case,
                "tokens_per_s": tok_s,
                "mfu": 0.4,
                "peak_source": "datasheet",
                "matmul_fraction": 0.5,
                "step_ms": 30.0,
            },
        }

    kernels = [
        attention("triton", 2048, 350.0, 200.0),
        attention("sdpa", 2048, 300.0, 260.0),
        norm("triton", 768, 2600.0),
        norm("torch", 768, 1800.0),
    ]
    decode = {
        "case": {"role": "b1", "model": "124M", "batch_size": 1, "new_tokens": 128},
        "status": "ok",
        "result": {
            "ours": {"decode_tokens_per_s": 6000.0},
            "transformers": {"decode_tokens_per_s": 400.0},
            "ratio": {"decode": 15.0},
            "decode_mode": "graph",
            "greedy_tokens_equal": True,
        },
    }
    suite = fake_suite(
        tmp_path,
        {
            "kernels": kernels,
            "train": [train("sdpa", 500_000.0), train("triton", 650_000.0)],
            "decode": [
                decode,
                {
                    "case": {"role": "b64", "model": "124M", "batch_size": 64, "new_tokens": 128},
                    "status": "failed",
                    "reason": "OutOfMemoryError: boom",
                },
            ],
        },
    )
    suite.stages["decode"].update(status="partial", reason="OutOfMemoryError: boom")
    figures = {f["name"]: f for f in gpu_suite.collect_figures(suite)}
    assert figures["attention fwd, triton, T=2048, d=64, causal"]["meets"] is True
    assert figures["attention fwd+bwd, triton, T=2048, d=64, causal"]["meets"] is False
    assert figures["attention fwd, triton, T=1024, d=64, causal"]["value"] is None  # not in the fake results
    ln = figures["LayerNorm fwd+bwd, N=768: triton / torch"]
    assert ln["value"] == pytest.approx(2600 / 1800) and ln["target"] == 1.3 and ln["meets"] is True
    best = figures["train 124M: best of the cases above"]
    assert best["value"] == 650_000.0 and best["meets"] is True and "attn=triton" in best["note"]
    assert figures["decode 124M, B=1, 128 new tokens: minigpt"]["meets"] is True
    assert figures["decode 124M, B=1, 128 new tokens: minigpt / transformers"]["meets"] is False
    assert (
        figures["decode 124M, B=64, 128 new tokens: minigpt"]["missing"]
        == "not measured (case failed: OutOfMemoryError: boom)"
    )
    assert figures["pytest -m cuda: failures + errors"]["missing"].startswith("not measured (stage not run")

    payload = {
        "rehearse": False,
        "device": "NVIDIA H200",
        "date": "2026-12-03T00:00:00+00:00",
        "elapsed_s": 1.0,
        "budget_s": 470.0,
        "stages": list(suite.stages.values()),
        "figures": list(figures.values()),
    }
    md = gpu_suite.render_markdown(payload)
    assert "| attention fwd, triton, T=2048, d=64, causal | 350.0 TFLOPS | >= 340.0 TFLOPS | yes |" in md
    assert "| attention fwd+bwd, triton, T=2048, d=64, causal | 200.0 TFLOPS | >= 250.0 TFLOPS | **no** |" in md
    assert "| train 124M: best of the cases above | 650,000 tok/s | >= 600,000 tok/s | yes |" in md


@pytest.mark.parametrize("value, expected", [("2", [2, 2, 2]), ("0", None), ("three", "error")])
def test_autotune_cap_keeps_the_first_candidates(value, expected):
    code = (
        'import importlib, json\nfa = importlib.import_module("minigpt_kernels.flash_attention")\n'
        "print(json.dumps([[str(c) for c in t.configs] for t in "
        "(fa._attn_fwd_tuned, fa._attn_bwd_dkdv_tuned, fa._attn_bwd_dq_tuned)]))\n"
        "print(json.dumps([[str(c) for c in l] for l in (fa._FWD_CONFIGS, fa._DKDV_CONFIGS, fa._DQ_CONFIGS)]))"
    )
    env = {**os.environ, "MINIGPT_AUTOTUNE_MAX_CONFIGS": value, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    if expected == "error":
        assert proc.returncode != 0 and "must be a non-negative integer" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    tuned, full = (json.loads(line) for line in proc.stdout.splitlines())
    assert [len(t) for t in tuned] == (expected or [len(f) for f in full])
    assert all(t == f[: len(t)] for t, f in zip(tuned, full, strict=True))  # the first ones, in order


@pytest.mark.parametrize("rehearse", [False, True], ids=["gpu", "rehearse"])
def test_every_planned_case_fits_the_benchmark_functions(rehearse):
    """The GPU plan cannot run here: check that its cases still bind to what they call."""
    import inspect

    from bench import e2e, kernel_speed

    plans = gpu_suite.stage_plans(rehearse)
    assert set(plans) == set(gpu_suite.STAGES)
    for stage in ("train", "train-compile"):
        for case in plans[stage]["cases"]:
            config = gpu_suite._model_config(case["model"])
            inspect.signature(e2e.bench_train).bind(
                config, device="cuda", dtype=None, peak=1.0, **gpu_suite.train_kwargs(case)
            )
            assert case["compile"] == (stage == "train-compile")
    for case in plans["decode"]["cases"]:
        config = gpu_suite._model_config(case["model"])
        assert case["prompt_len"] + case["new_tokens"] + 1 <= config.block_size
        inspect.signature(e2e.bench_sample).bind(None, **gpu_suite.decode_kwargs(case))
    k = plans["kernels"]
    inspect.signature(kernel_speed.bench_attention).bind(
        "cuda", None, k["attention"]["batch"], k["attention"]["width"], (1,), (64,), {}, None
    )
    inspect.signature(kernel_speed.bench_layer_norm).bind("cuda", None, k["layer_norm"]["rows"], (1,), {}, None)
    assert k["target_T"] in {c["T"] for c in k["cases"] if c["op"] == "attention"}
    if not rehearse:  # the sizes the targets are stated at
        assert k["target_T"] == 2048 and {c["D"] for c in k["cases"] if c["op"] == "attention"} == {64}
        assert {c["T"] for c in k["cases"] if c["op"] == "attention"} == {1024, 2048, 4096}
        assert [c["model"] for c in plans["decode"]["cases"]] == ["124M", "124M", "1.5B"]
        assert [c["batch_size"] for c in plans["decode"]["cases"]] == [1, 64, 1]
        assert {(c["attn"], c["compile"]) for s in ("train", "train-compile") for c in plans[s]["cases"]} >= {
            ("math", False),
            ("sdpa", False),
            ("triton", False),
            ("sdpa", True),
            ("triton", True),
        }


def test_carried_wheels_are_installed_without_an_index(tmp_path):
    import zipfile

    wheels = tmp_path / "whl"
    wheels.mkdir()
    assert supervisor.install_wheels(wheels, tmp_path / "site", tmp_path / "log")["status"] == "skipped"
    info = "suiteprobe-0.1.dist-info"
    with zipfile.ZipFile(wheels / "suiteprobe-0.1-py3-none-any.whl", "w") as whl:
        whl.writestr("suiteprobe.py", "ANSWER = 42\n")
        whl.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: suiteprobe\nVersion: 0.1\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    result = supervisor.install_wheels(wheels, tmp_path / "site", tmp_path / "log")
    assert result == {"status": "ok", "reason": None, "wheels": ["suiteprobe-0.1-py3-none-any.whl"]}, (
        tmp_path / "log"
    ).read_text()
    assert (tmp_path / "site" / "suiteprobe.py").read_text() == "ANSWER = 42\n"
