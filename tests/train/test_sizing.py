"""A budget run that sizes itself (minigpt.train.sizing): the rule at its edges, its constants against
the study they come from, the user's flags over it, its record and --resume, and a run's wall clock."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import ROOT, WORDS, load_script

from minigpt.train import sizing
from minigpt.train.config import TrainConfig
from minigpt.train.sizing import Corpus, SizingError, Speed, choose

train = load_script(ROOT / "train.py")
STUDY = ROOT / "bench" / "results" / "push-study.json"
CPU = Speed(flops_per_s=2e10, eval_tokens_per_s=2e5)  # one CPU thread, about what the study measured
GPU = Speed(flops_per_s=2e14, eval_tokens_per_s=5e7)
SHAKESPEARE = Corpus(train_bytes=1_000_000)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# ----------------------------------------------------------------------------------------------
# The rule


def test_the_constants_are_the_studys_fit():
    from bench.push import compute_optimal

    study = json.loads(STUDY.read_text())
    fit = compute_optimal(study["points"])
    assert sizing.COMPUTE_OPTIMAL_K == pytest.approx(fit["fit"]["k"], rel=0.01)
    assert sizing.COMPUTE_OPTIMAL_A == pytest.approx(fit["fit"]["a"], abs=0.001)
    ratios = []
    for o in fit["optima"]:  # tokens per parameter at each optimum, FLOPs per token interpolated in log
        runs = sorted((p for p in study["points"] if p["budget_s"] == o["budget_s"]), key=lambda p: p["params"])
        logs = [math.log(p["params"]) for p in runs]
        per_token = [math.log(p["flops"] / p["tokens"]) for p in runs]
        import numpy as np

        ratios.append(o["flops"] / math.exp(np.interp(math.log(o["params"]), logs, per_token)) / o["params"])
    assert sizing.TOKENS_PER_PARAM == pytest.approx(sum(ratios) / len(ratios), abs=0.05)
    assert sizing.MIN_TOKENS_PER_PARAM == pytest.approx(
        min(p["tokens"] / p["params"] for p in fit["frontier"]), abs=0.05
    )


@pytest.mark.parametrize(
    "corpus, speed, budget, expect",
    [
        # the study's setting: a 1 MB text, one CPU thread, a minute: ~0.2M parameters, bpe:512, context 32
        (SHAKESPEARE, CPU, dict(time_budget=60), dict(vocab=512, block=32, params=(0.1e6, 0.4e6), lr=3e-3)),
        # a tiny corpus: the smallest model, whatever the budget, and the cap names the corpus
        (Corpus(10_000), CPU, dict(time_budget=600), dict(vocab=512, shape=(1, 32), capped="the corpus")),
        # a huge budget on a GPU and a big corpus: a large model, GPT-2's context, a big BPE and batch
        (Corpus(10**10), GPU, dict(time_budget=86400), dict(params=(1e8, 3e9), block=1024, vocab=(8192, 32768))),
        # a big corpus on a small budget: the embedding share keeps the BPE small
        (Corpus(10**9), CPU, dict(time_budget=60), dict(vocab=512, block=32)),
        # a streamed corpus of unknown size keeps GPT-2's tokenizer
        (Corpus(None), CPU, dict(token_budget=10**6), dict(vocab=50257)),
        # a token budget: TOKENS_PER_PARAM tokens a parameter
        (Corpus(10**9), CPU, dict(token_budget=10**8), dict(params=(10**8 / 5.4 / 2, 10**8 / 5.4 * 2))),
        # a bpe size prepared already is reused when within a factor of 2 of the rule's (not past the corpus's)
        (Corpus(4_000_000, prepared=(1024,)), CPU, dict(time_budget=60), dict(vocab=1024)),
        (Corpus(1_000_000, prepared=(1024,)), CPU, dict(time_budget=60), dict(vocab=512)),
        (Corpus(4_000_000, prepared=(4096,)), CPU, dict(time_budget=60), dict(vocab=512)),
    ],
)
def test_the_rule_at_its_edges(corpus, speed, budget, expect):
    s = choose(corpus, speed, setup_s=3.0, **budget)
    if "vocab" in expect:
        lo, hi = expect["vocab"] if isinstance(expect["vocab"], tuple) else (expect["vocab"],) * 2
        assert lo <= s.vocab_size <= hi, s.why
    if "block" in expect:
        assert s.block_size == expect["block"], s.why
    if "params" in expect:
        lo, hi = expect["params"]
        assert lo <= s.params <= hi, s.why
    if "shape" in expect:
        assert (s.n_layer, s.n_embd) == expect["shape"], s.why
    if "capped" in expect:
        assert f"capped by {expect['capped']}" in s.why
    if "lr" in expect:
        assert s.lr == expect["lr"]
    assert s.n_embd % s.n_head == 0 and s.total_batch_size % (s.batch_size * s.block_size) == 0
    assert s.steps >= sizing.MIN_STEPS and "\n" not in s.why
    share = s.vocab_size * s.n_embd / s.params  # (a prepared BPE within 2x of the rule's may take more)
    assert share <= 2 * sizing.MAX_EMBEDDING_SHARE or s.vocab_size in (512, 50257), s.why
    if "time_budget" in budget:  # the plan fits the wall clock: set-up + steps + reserve = the budget, or less
        assert 3.0 + s.train_s + s.reserve_s <= budget["time_budget"] * 1.01


def test_more_budget_never_buys_a_smaller_model():
    sizes = [choose(SHAKESPEARE, CPU, time_budget=t, setup_s=3.0).params for t in (20, 60, 120, 300, 1200)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    sizes = [choose(Corpus(10**9), CPU, token_budget=d).params for d in (10**5, 10**6, 10**7, 10**8)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_never_more_parameters_than_the_tokens_seen_train():
    for budget in (30, 120, 600, 3600):
        s = choose(SHAKESPEARE, CPU, time_budget=budget, setup_s=3.0)
        seen = min(s.tokens, sizing.MAX_EPOCHS * sizing.estimate_tokens(10**6, s.vocab_size))
        assert seen >= sizing.MIN_TOKENS_PER_PARAM * s.params or (s.n_layer, s.n_embd) == (1, 32), s.why


@pytest.mark.parametrize(
    "budget, setup, match",
    [
        (dict(time_budget=4), 3.0, r"--time-budget 4 is too small to train anything: .* give at least \d+ s"),
        (dict(time_budget=60), 70.0, r"--time-budget 60 is too small"),  # set-up took all of it
        (dict(token_budget=1000), 0.0, r"--token-budget 1,000 is too small to train anything: give at least"),
    ],
)
def test_a_budget_too_small_is_one_line(budget, setup, match):
    with pytest.raises(SizingError, match=match) as e:
        choose(SHAKESPEARE, CPU, setup_s=setup, **budget)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "given, check",
    [
        (dict(n_layer=6), lambda s: s.n_layer == 6),
        (dict(n_embd=48), lambda s: s.n_embd == 48 and 48 % s.n_head == 0),
        (dict(n_head=5), lambda s: s.n_head == 5 and s.n_embd % 5 == 0),
        (dict(n_layer=2, n_head=3), lambda s: (s.n_layer, s.n_head) == (2, 3) and s.n_embd % 3 == 0),
        (dict(block_size=128), lambda s: s.block_size == 128),
        (dict(batch_size=7), lambda s: s.batch_size == 7 and s.total_batch_size % (7 * s.block_size) == 0),
    ],
)
def test_the_rule_sizes_around_given_values(given, check):
    assert check(choose(SHAKESPEARE, CPU, time_budget=120, setup_s=3.0, given=given))


def test_a_given_tokenizer_is_kept():
    s = choose(Corpus(10**9, tokenizer="gpt2", vocab_size=50257), CPU, time_budget=120, setup_s=3.0)
    assert (s.tokenizer, s.vocab_size) == ("gpt2", 50257)


def test_the_wall_clock_left_goes_to_the_steps():
    cfg = TrainConfig(time_budget=50.0, sizing={"budget_s": 60.0, "reserve_s": 4.0})
    assert sizing.fit_to_deadline(cfg, deadline=160.0, now=106.0).time_budget == 50.0  # 160 - 106 - 4
    late = sizing.fit_to_deadline(cfg, deadline=160.0, now=150.0)  # the data took most of it: half the budget
    assert late.time_budget == 30.0 and late.sizing["train_s"] == 30.0


@pytest.mark.parametrize(
    "flags, recipe, resumed, sized",
    [
        (dict(time_budget=60), None, False, True),
        (dict(token_budget=10**6, n_layer=3), None, False, True),  # part of the shape: the rule fills the rest
        (dict(time_budget=60, n_layer=3, n_embd=96), None, False, False),  # the user's model
        (dict(time_budget=60), "cpu", False, False),  # a recipe names the run
        (dict(time_budget=60), None, True, False),  # a resumed run keeps its recorded choice
        (dict(time_budget=60, init="gpt2"), None, False, False),
        (dict(), None, False, False),  # no budget
    ],
)
def test_when_a_run_is_sized(flags, recipe, resumed, sized):
    cfg = TrainConfig(**flags)
    assert sizing.applies(cfg, frozenset(flags), recipe, resumed) is sized


# ----------------------------------------------------------------------------------------------
# train.py


@pytest.fixture
def text(tmp_path, monkeypatch) -> Path:
    """About 20 KB of made-up sentences as a raw text source; prepared data goes under tmp_path."""
    import random

    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache"))
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) + "." for _ in range(800)]
    path = tmp_path / "notes.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_main(argv, capsys) -> tuple[int, str]:
    code = train.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_a_flag_wins_the_choice_is_recorded_and_resume_keeps_it(text, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["--data", text, "--out-dir", out, "--token-budget", 12_000, "--n-layer", 2, "--lr", 1e-3]
    code, err = run_main([*argv, "--stop-at-step", 5], capsys)
    assert code == 0, err
    why = [line for line in err.splitlines() if line.startswith("sized for 12,000 tokens")]
    assert len(why) == 1  # one line says what was chosen and why
    run = json.loads((out / "run.json").read_text())
    cfg = run["train_config"]
    assert cfg["n_layer"] == 2 and cfg["lr"] == 1e-3 and cfg["min_lr"] == pytest.approx(1e-4)  # the user's flags
    assert cfg["tokenizer"] == "bpe:512" and cfg["optimizer"] == "muon"  # the rule's
    assert cfg["sizing"]["why"] == why[0].strip() and cfg["sizing"]["n_embd"] == cfg["n_embd"]

    def no_probe(*args, **kwargs):
        raise AssertionError("a resumed run was sized again")

    monkeypatch.setattr(sizing, "probe", no_probe)
    code, err = run_main(["--out-dir", out, "--resume"], capsys)
    assert code == 0, err
    resumed = json.loads((out / "run.json").read_text())["train_config"]
    assert not any(line.startswith("sized for") for line in err.splitlines())
    assert {k: resumed[k] for k in cfg if k != "stop_at_step"} == {k: cfg[k] for k in cfg if k != "stop_at_step"}


def test_a_budget_too_small_stops_in_one_line(text, tmp_path, capsys):
    code, err = run_main(["--data", text, "--out-dir", tmp_path / "out", "--token-budget", 100], capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]  # (after the data's preparation, which is kept for the next run)
    assert last.startswith("error: --token-budget 100 is too small") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_sized_run_ends_within_its_wall_clock(text, tmp_path):
    """A minute's budget on a prepared corpus: the process ends within 10% + 5 s of it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    base = [sys.executable, str(ROOT / "train.py"), "--data", str(text)]
    prepare = subprocess.run([*base, "--out-dir", str(tmp_path / "first"), "--time-budget", "20"], env=env)
    assert prepare.returncode == 0  # prepares (and caches) the data
    t0 = time.monotonic()
    done = subprocess.run([*base, "--out-dir", str(tmp_path / "out"), "--time-budget", "60"], env=env)
    wall = time.monotonic() - t0
    assert done.returncode == 0
    assert wall <= 60 * 1.1 + 5, wall
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["train_config"]["sizing"]["budget_s"] == 60
