"""bench/push.py's logic on tiny settings: the arms, the analysis, and the shape of its results."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from tiny_run import ROOT, WORDS, load_script

from bench import push
from minigpt.train.optim import lr_at

train = load_script(ROOT / "train.py")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) + "." for _ in range(600)]
    path = tmp_path_factory.mktemp("push_text") / "text.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def nanogpt_lr(it: int) -> float:
    """nanoGPT's train.py get_lr with the CPU recipe's numbers, restated."""
    lr, min_lr, warmup, decay_iters = 1e-3, 1e-4, 100, 2000
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_the_nanogpt_arm_is_nanogpts_cpu_recipe(tmp_path):
    cfg = push.Arm("nanogpt", push.NANOGPT).config(tmp_path / "data", tmp_path / "out")
    assert (cfg.tokenizer, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.batch_size) == (
        "char",
        4,
        4,
        128,
        64,
        12,
    )
    assert (cfg.lr, cfg.min_lr, cfg.max_steps, cfg.warmup_steps, cfg.schedule_kind) == (1e-3, 1e-4, 2000, 100, "cosine")
    assert (cfg.optimizer, cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.grad_clip, cfg.dropout) == (
        "adamw",
        0.9,
        0.99,
        0.1,
        1.0,
        0.0,
    )
    assert cfg.total_batch_size is None and cfg.grad_accum_steps(1) == 1 and not cfg.budgeted
    model = cfg.model_config(vocab_size=65)
    assert (model.position, model.bias, model.tie_word_embeddings, model.qk_norm, model.activation) == (
        "learned",
        False,
        True,
        False,
        "gelu_new",
    )
    assert push.VAL_FRACTION == 0.1
    # The schedule is nanoGPT's after the warmup, and within its (it+1)/(warmup+1) during it.
    for it in range(0, 2001, 7):
        want = nanogpt_lr(it)
        assert lr_at(it, cfg) == pytest.approx(want, rel=1e-9 if it >= 100 else 1.1e-2)


def test_the_minigpt_arm_runs_to_a_time_budget(tmp_path):
    cfg = push.Arm("minigpt", {**push.MINIGPT, "time_budget": 60.0}).config(tmp_path / "d", tmp_path / "o")
    assert cfg.budgeted and cfg.time_budget == 60.0
    assert cfg.tokenizer == push.MINIGPT["tokenizer"]


def test_arm_flags_are_the_settings(tmp_path):
    settings = {**push.NANOGPT, "bias": True, "tie_word_embeddings": False, "qk_norm": True, "time_budget": 12.5}
    argv = push.Arm("x", settings).argv(tmp_path / "data", tmp_path / "out")
    args = train.build_parser().parse_args(argv)
    for key, value in {**push.QUIET, **settings}.items():
        if key == "tokenizer":
            assert "--tokenizer" not in argv  # the prepared directory holds it
        elif isinstance(value, bool) and value == getattr(push.TrainConfig, key):
            assert getattr(args, key) is None  # left at the default
        else:
            assert getattr(args, key) == value, key


def test_time_to_reach_interpolates_between_checkpoints():
    traj = [
        {"step": 10, "train_time": 10.0, "bpb": 3.0},
        {"step": 20, "train_time": 20.0, "bpb": 2.5},
        {"step": 30, "train_time": 30.0, "bpb": 2.0},
    ]
    got = push.time_to_reach(traj, 2.25)
    assert got == {"checkpoint_s": 30.0, "step": 30, "interpolated_s": pytest.approx(25.0)}
    assert push.time_to_reach(traj, 3.5)["interpolated_s"] == 10.0  # already there at the first one
    assert push.time_to_reach(traj, 1.0) is None


def chinchilla_points(alpha=0.34, beta=0.28, budgets=(1e12, 1e13, 1e14, 1e15)):
    """Loss E + A/N^alpha + B/D^beta with D = C / 6N: the optimum is N ~ C^(beta/(alpha+beta))."""
    points = []
    for c in budgets:
        for n in [10 ** (e / 4) for e in range(16, 37)]:  # 1e4 .. 1e9 parameters
            d = c / (6 * n)
            points.append({"budget_s": c, "params": n, "flops": c, "bpb": 1.7 + 406.4 / n**alpha + 410.7 / d**beta})
    return points


def test_compute_optimal_fit_recovers_the_exponent():
    result = push.compute_optimal(chinchilla_points())
    assert [o["how"] for o in result["optima"]] == ["parabola vertex"] * 4
    assert result["fit"]["a"] == pytest.approx(0.28 / (0.34 + 0.28), abs=0.03)
    assert result["fit"]["r2"] > 0.99
    # Each budget's optimum lies between its best run's neighbours.
    for o in result["optima"]:
        runs = sorted((p for p in chinchilla_points() if p["budget_s"] == o["budget_s"]), key=lambda p: p["bpb"])
        assert runs[0]["params"] / 10**0.25 <= o["params"] <= runs[0]["params"] * 10**0.25


def test_compute_optimal_with_two_sizes_takes_the_best_run():
    pts = [
        {"budget_s": 30, "params": 1e5, "flops": 1e12, "bpb": 3.0},
        {"budget_s": 30, "params": 1e6, "flops": 2e12, "bpb": 2.5},
        {"budget_s": 60, "params": 1e5, "flops": 2e12, "bpb": 2.8},
        {"budget_s": 60, "params": 1e6, "flops": 4e12, "bpb": 2.2},
    ]
    result = push.compute_optimal(pts)
    assert [(o["params"], o["flops"], o["how"]) for o in result["optima"]] == [
        (1e6, pytest.approx(2e12), "best run"),
        (1e6, pytest.approx(4e12), "best run"),
    ]
    # The frontier: lower bpb for each larger FLOP count; (2e12, 2.8) loses to (2e12, 2.5).
    assert [(p["flops"], p["bpb"]) for p in result["frontier"]] == [(1e12, 3.0), (2e12, 2.5), (4e12, 2.2)]


def test_power_law_fit():
    fit = push.fit_power_law([1, 10, 100], [3, 30 * 10**-0.5, 300 * 10**-1])
    assert fit["a"] == pytest.approx(0.5) and fit["k"] == pytest.approx(3) and fit["r2"] == pytest.approx(1)


TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=2, warmup_steps=2, eval_steps=2)


@pytest.mark.slow
def test_push_end_to_end_on_tiny_settings(text, tmp_path):
    nanogpt = {**push.NANOGPT, **TINY, "max_steps": 8}
    minigpt = {**push.MINIGPT, **TINY}
    result = push.push(
        text, tmp_path / "work", nanogpt=nanogpt, minigpt=minigpt, pilot_steps=3, points=2, pilot_budget=1.0
    )
    nano, mini, third = result["arms"]["nanogpt"], result["arms"]["minigpt"], result["third_budget"]
    assert nano["steps"] == 8 and nano["tokens"] == 8 * 2 * 16
    assert [p["step"] for p in nano["trajectory"]] == [4, 8]
    assert mini["train_time"] == mini["trajectory"][-1]["train_time"]
    assert result["settings"]["minigpt"]["tokenizer"] == "bpe:512" and third["bpb"] > 0
    for run in (nano, mini, third):
        assert 0 < run["bpb"] < 20 and run["num_params"] > 0
    assert result["bpb_ratio"] == pytest.approx(mini["bpb"] / nano["bpb"])
    assert result["text"]["held_out_bytes"] == pytest.approx(0.1 * result["text"]["bytes"], rel=0.05)
    held = push.held_out_text(tmp_path / "work" / "data" / "char")
    assert text.read_text().endswith(held) and held.startswith(next(iter(held.split()))) and held[0] != "\n"
    env = {"cpu_model": "test CPU", "cpu_count": 2, "torch": "x", "commit": "y", "date": "z"}
    payload = json.loads(json.dumps({"environment": env, **result}))  # JSON-able as written
    assert set(payload) >= {
        "environment",
        "text",
        "settings",
        "load",
        "arms",
        "bpb_ratio",
        "bpb_reduction",
        "time_to_nanogpt_bpb",
        "third_budget",
        "targets",
    }
    assert "| nanoGPT recipe |" in push.push_markdown(result, env)
    push.plot_push(result, tmp_path / "push.png")
    assert (tmp_path / "push.png").stat().st_size > 1000


@pytest.mark.slow
def test_study_and_ab_on_tiny_settings(text, tmp_path):
    base = {**push.MINIGPT, **TINY}
    r = push.study(text, tmp_path / "study", base, sizes=[(1, 2, 16), (1, 2, 32)], budgets=[1.0])
    assert len(r["points"]) == 2 and r["points"][1]["params"] > r["points"][0]["params"]
    assert len(r["optima"]) == 1 and r["fit"] is None
    env = {"cpu_model": "test CPU", "cpu_count": 2, "torch": "x", "commit": "y", "date": "z"}
    assert "| 1 s | 1 x 32 |" in push.study_markdown(r, env)
    push.plot_study(r, tmp_path / "study.png")
    ab = push.run_ab(text, tmp_path / "ab", 1.0, base, [("bad", dict(n_head=5)), ("lr up", dict(lr=3e-3))])
    assert [x["name"] for x in ab["results"]] == ["bad", "lr up"]
    assert "divisible" in ab["results"][0]["error"]  # refused before anything ran
    x = ab["results"][1]
    assert x["kept"] == (x["b"]["bpb"] < x["a"]["bpb"]) and x["a"]["steps"] > 0
    assert ab["winner"]["lr"] == (3e-3 if x["kept"] else base["lr"])
    assert "| lr up |" in push.ab_markdown(ab, env)


def test_model_switches_reach_a_new_models_config(tmp_path):
    argv = ["--position", "rope", "--qk-norm", "--activation", "relu2", "--no-tie-word-embeddings", "--no-bias"]
    args = train.build_parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("position", "qk_norm", "activation", "tie_word_embeddings", "bias")}
    config = push.make_config("cpu", overrides).model_config(vocab_size=100)
    assert (config.position, config.qk_norm, config.activation, config.tie_word_embeddings, config.bias) == (
        "rope",
        True,
        "relu2",
        False,
        False,
    )
    default = push.make_config("cpu", {}).model_config()
    assert (default.position, default.qk_norm, default.activation, default.tie_word_embeddings, default.bias) == (
        "learned",
        False,
        "gelu_new",
        True,
        True,
    )


def test_the_cpu_push_recipe_is_the_measured_minigpt_arm():
    cfg = push.make_config("cpu-push", {})
    for key, value in push.MINIGPT.items():
        assert getattr(cfg, key) == value, key
    assert cfg.data == "shakespeare" and cfg.budgeted


def test_stdlib_text_is_the_second_corpus_and_is_reproducible(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = push.find_text(Path("stdlib"), tmp_path / "a")
    second = push.find_text(Path("stdlib"), tmp_path / "b")
    text = first.read_text(encoding="utf-8")
    assert len(text) == push.STDLIB_CHARS and "\r" not in text
    assert "def " in text and "import " in text  # Python source
    assert second.read_bytes() == first.read_bytes()


def test_rule_error_compares_the_sizing_rule_with_each_measured_optimum():
    from minigpt.train import sizing

    points = [{**p, "n_layer": 2, "n_embd": 64, "steps": 100} for p in chinchilla_points()]
    optimal = push.compute_optimal(points)
    constants = {"k": sizing.COMPUTE_OPTIMAL_K, "a": sizing.COMPUTE_OPTIMAL_A}
    rule = push.rule_error(optimal["optima"], points, **constants)
    assert [e["budget_s"] for e in rule] == [o["budget_s"] for o in optimal["optima"]]
    for e, o in zip(rule, optimal["optima"], strict=True):
        assert e["rule_params"] == pytest.approx(sizing.COMPUTE_OPTIMAL_K * o["flops"] ** sizing.COMPUTE_OPTIMAL_A)
        assert e["ratio"] == pytest.approx(e["rule_params"] / o["params"])
        assert e["bpb_cost"] >= -1e-9  # the parabola's vertex is its lowest point: the rule's size costs >= 0
    env = {"cpu_model": "test CPU", "cpu_count": 2, "torch": "x", "commit": "y", "date": "z"}
    r = {**optimal, "points": points, "rule": rule, "rule_constants": constants}
    assert "bpb cost of the rule's size" in push.study_markdown(r, env)


@pytest.mark.parametrize(
    "parse, text, expected",
    [
        (push.budget_list, "30,60,120", [30.0, 60.0, 120.0]),
        (push.budget_list, "1800", [1800.0]),
        (push.size_list, "2x64,3x96", [(2, 2, 64), (3, 3, 96)]),
        (push.size_list, "4x160,1X48", [(4, 5, 160), (1, 3, 48)]),
    ],
)
def test_study_lists_parse(parse, text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    "parse, text, message",
    [
        (push.budget_list, "30,sixty", "seconds separated by commas"),
        (push.budget_list, "0.5", ">= 1"),
        (push.budget_list, "nan", ">= 1"),
        (push.budget_list, "", "seconds separated by commas"),
        (push.size_list, "4-128", "LAYERSxWIDTH"),
        (push.size_list, "0x64", "at least 1 layer"),
        (push.size_list, "2x40", "multiple of 16"),
    ],
)
def test_bad_study_lists_are_one_line(parse, text, message):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)
