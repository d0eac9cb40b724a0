"""Budget-bound training (--time-budget, --token-budget, the wsd schedule) and --eval-task, on
the CPU with the tiny model of tiny_run.py.

A time budget is measured with the wall clock, so two runs stop after different numbers of
steps; the tests that compare runs step by step give the trainer a fake clock on which every
step takes exactly 0.25 s (minigpt.train.trainer.clock is read twice a step). With it a resumed run
must match the uninterrupted one exactly, as a step-bound run does (test_train.py). The real
clock is used where only the stopping rule is checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
from tiny_run import ROOT, load_script, make_corpus, read_log, tiny_argv

from minigpt.eval.evaluate import evaluate
from minigpt.model.load import from_pretrained
from minigpt.tokenizers import GPT2Tokenizer
from minigpt.train import trainer as trainer_module
from minigpt.train.checkpoint import load_checkpoint
from minigpt.train.config import ConfigError, TrainConfig
from minigpt.train.optim import lr_at

train = load_script(ROOT / "train.py")
TOKENS_PER_STEP = 4 * 32  # tiny_settings: batch 4 x block 32, one process
LR, MIN_LR, WARMUP = 3e-3, 3e-4, 2  # tiny_settings' lr, its default min_lr, its warmup


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("budget_data"))


@pytest.fixture
def fake_clock(monkeypatch):
    """Every training step takes 0.25 s (exact in binary, so sums of it are exact)."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(trainer_module, "clock", lambda: 0.25 * next(ticks))


def run_main(argv, capsys) -> tuple[int, str]:
    code = train.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def wsd(step: int, progress: float, decay_frac: float = 0.2) -> float:
    """The warmup-stable-decay schedule, written out on its own."""
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    if progress >= 1:
        return MIN_LR
    if progress <= 1 - decay_frac:
        return LR
    return LR + (MIN_LR - LR) * (progress - (1 - decay_frac)) / decay_frac


# ----------------------------------------------------------------------------------------------
# The schedule


def test_wsd_schedule_over_the_budget():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4, token_budget=1000, decay_frac=0.25)
    assert cfg.schedule_kind == "wsd" and TrainConfig().schedule_kind == "cosine"
    assert [lr_at(s, cfg, 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # warmup counts steps
    assert lr_at(10, cfg, 0.5) == lr_at(10, cfg, 0.75) == 1.0  # stable
    assert lr_at(10, cfg, 0.875) == pytest.approx(0.55)  # halfway down the decay
    assert lr_at(10, cfg, 1.0) == lr_at(10, cfg, 1.5) == 0.1  # the end value, at the budget
    lrs = [lr_at(10, cfg, p / 100) for p in range(101)]
    assert all(a >= b for a, b in pairwise(lrs))
    # cosine over a budget: the half-wave runs over the progress
    cos = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=0, time_budget=60.0, schedule="cosine")
    assert lr_at(5, cos, 0.5) == pytest.approx(0.5) and lr_at(5, cos, 1.0) == 0.0
    # wsd without a budget runs over the steps after the warmup, like cosine
    steps = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=10, max_steps=110, schedule="wsd", decay_frac=0.5)
    assert lr_at(60, steps) == 1.0 and lr_at(85, steps) == pytest.approx(0.5) and lr_at(110, steps) == 0.0


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(time_budget=10.0, token_budget=100), "not both"),
        (dict(time_budget=0.0), "time_budget must be positive"),
        (dict(time_budget=math.inf), "finite"),
        (dict(token_budget=0), "token_budget"),
        (dict(decay_frac=0.0), "decay_frac"),
        (dict(decay_frac=1.5), "decay_frac"),
        (dict(schedule="linear"), "schedule"),
        (dict(data_order="shuffled"), "data_order"),
    ],
)
def test_bad_budget_settings(bad, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**bad)


# ----------------------------------------------------------------------------------------------
# Token budget: a function of the step, so resuming is exact


def test_token_budget_ends_at_the_budget_and_resumes_exactly(data_dir, tmp_path, capsys):
    budget = int(8.5 * TOKENS_PER_STEP)  # 9 steps, the last one past the budget
    common = dict(token_budget=budget, dropout=0.1, max_steps=None)
    straight, split = tmp_path / "straight", tmp_path / "split"
    code, err = run_main(tiny_argv(data_dir, straight, **common), capsys)
    assert code == 0, err
    assert "9 steps" in err and "wsd schedule" in err
    code, err = run_main(tiny_argv(data_dir, split, stop_at_step=4, **common), capsys)
    assert code == 0 and "--stop-at-step" in err
    code, err = run_main(["--resume", "--out-dir", split], capsys)
    assert code == 0, err

    a, a_eval = read_log(straight)
    b, b_eval = read_log(split)
    assert sorted(a) == sorted(b) == list(range(1, 10))
    for step, record in a.items():
        assert b[step]["loss"] == record["loss"] and b[step]["lr"] == record["lr"]
        assert record["progress"] == step * TOKENS_PER_STEP / budget
        assert record["lr"] == pytest.approx(wsd(step - 1, (step - 1) * TOKENS_PER_STEP / budget), rel=1e-12)
    assert a[8]["progress"] < 1 <= a[9]["progress"]
    assert sorted(a_eval) == [9] and b_eval[9]["val_loss"] == a_eval[9]["val_loss"]  # the final evaluation
    assert [p.name for p in straight.glob("ckpt_*")] == ["ckpt_00000009"]
    code, err = run_main(["--resume", "--out-dir", straight], capsys)
    assert code == 0 and "already complete" in err and "--token-budget" in err


# ----------------------------------------------------------------------------------------------
# Time budget


def test_time_budget_resumes_from_the_saved_training_time(data_dir, tmp_path, capsys, fake_clock):
    common = dict(time_budget=2.0, dropout=0.1, max_steps=None)  # 8 steps of 0.25 s
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_main(tiny_argv(data_dir, straight, **common), capsys)[0] == 0
    assert run_main(tiny_argv(data_dir, split, stop_at_step=3, **common), capsys)[0] == 0
    saved = json.loads((split / "ckpt_00000003" / "train_state.json").read_text())
    assert saved["train_time"] == 0.75
    # More wall clock passes between the runs than the steps took: only the steps count.
    code, err = run_main(["--resume", "--out-dir", split], capsys)
    assert code == 0, err

    a, a_eval = read_log(straight)
    b, b_eval = read_log(split)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step, record in a.items():
        assert record["train_time"] == b[step]["train_time"] == 0.25 * step
        assert b[step]["loss"] == record["loss"] and b[step]["lr"] == record["lr"]
        assert record["lr"] == pytest.approx(wsd(step - 1, 0.25 * (step - 1) / 2.0), rel=1e-12)
    assert a[8]["progress"] == 1.0 and a[7]["lr"] > a[8]["lr"] > MIN_LR  # down the decay, ending at the budget
    assert sorted(a_eval) == [8] and b_eval[8]["val_loss"] == a_eval[8]["val_loss"]
    assert json.loads((straight / "ckpt_00000008" / "train_state.json").read_text())["train_time"] == 2.0
    code, err = run_main(["--resume", "--out-dir", split, "--time-budget", "3"], capsys)  # a larger budget
    assert code == 0, err
    assert max(read_log(split)[0]) == 12


def test_time_budget_on_the_real_clock(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_main(tiny_argv(data_dir, out, time_budget=1.0, max_steps=None, stop_at_step=2), capsys)
    assert code == 0, err
    first = load_checkpoint(out / "ckpt_00000002").state["train_time"]
    code, err = run_main(["--resume", "--out-dir", out], capsys)
    assert code == 0, err
    steps, evals = read_log(out)
    last = max(steps)
    assert steps[2]["train_time"] == first
    times = [steps[s]["train_time"] for s in range(1, last + 1)]
    assert times[-2] < 1.0 <= times[-1]  # it stopped after the step that used up the budget
    for s in range(3, last + 1):  # the resumed run went on from the saved time
        assert steps[s]["train_time"] == pytest.approx(steps[s - 1]["train_time"] + steps[s]["dt"], rel=1e-9)
    assert sorted(evals) == [last] and (out / f"ckpt_{last:08d}").is_dir()


@pytest.mark.slow
def test_two_gloo_processes_stop_at_the_same_step(data_dir, tmp_path):
    out = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(ROOT / "train.py"),
        *tiny_argv(data_dir, out, batch_size=2, time_budget=1.5, max_steps=None),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]  # a rank stopping alone would hang the other
    steps, evals = read_log(out)
    last = max(steps)
    assert steps[last]["train_time"] >= 1.5 > steps[last - 1]["train_time"]
    assert [p.name for p in out.glob("ckpt_*")] == [f"ckpt_{last:08d}"] and sorted(evals) == [last]


# ----------------------------------------------------------------------------------------------
# --eval-task


def test_eval_tasks_are_scored_and_logged_at_each_evaluation(data_dir, tmp_path, capsys):
    mc = tmp_path / "quiz.jsonl"
    rows = [
        {"context": "the cat sat on the", "choices": [" mat", " pond", " tree"], "label": 0},
        {"context": "the bird flew over the", "choices": [" house", " fish"], "label": 0},
        {"context": "a small", "choices": [" dog", " quickly", " and"], "label": 0},
    ]
    mc.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = tmp_path / "held_out.txt"
    text.write_text("the red fish swam under the big blue tree.\n" * 5)
    tasks = [f"mc:{mc}", f"bpb:{text}"]
    out = tmp_path / "run"
    argv = tiny_argv(data_dir, out, max_steps=6, eval_interval=3) + ["--eval-task", tasks[0], "--eval-task", tasks[1]]
    code, err = run_main(argv, capsys)
    assert code == 0, err
    assert f"mc:{mc}/acc " in err and f"bpb:{text}/bpb " in err
    _, evals = read_log(out)
    assert sorted(evals) == [0, 3, 6]
    for record in evals.values():
        assert {f"eval/{tasks[0]}/{m}" for m in ("acc", "acc_norm", "acc_bytes")} <= set(record)
        assert {f"eval/{tasks[1]}/bpb", f"eval/{tasks[1]}/ppl"} <= set(record)
    assert evals[0][f"eval/{tasks[1]}/bpb"] > evals[6][f"eval/{tasks[1]}/bpb"]  # it learned
    # The scores at step 6 are those of the step-6 checkpoint, scored on its own.
    model = from_pretrained(out / "ckpt_00000006")
    direct = evaluate(model, GPT2Tokenizer(), tasks)
    for task in tasks:
        for metric, value in direct[task].items():
            if metric != "n" and isinstance(value, float):
                assert evals[6][f"eval/{task}/{metric}"] == pytest.approx(value, rel=1e-6, abs=1e-9), (task, metric)
    assert (out / "loss.png").stat().st_size > 0
    run = json.loads((out / "run.json").read_text())
    assert run["train_config"]["eval_task"] == tasks


def test_loss_plot_takes_one_metric_per_task():
    from minigpt.train.runlog import eval_curves

    records = [
        {
            "step": 0,
            "val_loss": 5.0,
            "eval/mc:q.jsonl/acc": 0.2,
            "eval/mc:q.jsonl/acc_norm": 0.3,
            "eval/bpb:t.txt/bpb": 4.0,
            "eval/bpb:t.txt/ppl": 90.0,
            "eval/lm-eval:arc/acc,none": 0.25,
        },
        {"step": 1, "loss": 4.0},
        {
            "step": 2,
            "val_loss": 4.5,
            "eval/mc:q.jsonl/acc": 0.4,
            "eval/mc:q.jsonl/acc_norm": 0.5,
            "eval/bpb:t.txt/bpb": 3.0,
            "eval/bpb:t.txt/ppl": 40.0,
            "eval/lm-eval:arc/acc,none": 0.3,
        },
    ]
    assert eval_curves(records) == {
        "mc:q.jsonl acc_norm": [(0, 0.3), (2, 0.5)],
        "bpb:t.txt bpb": [(0, 4.0), (2, 3.0)],
        "lm-eval:arc acc,none": [(0, 0.25), (2, 0.3)],
    }
    assert eval_curves(records[1:2]) == {}
