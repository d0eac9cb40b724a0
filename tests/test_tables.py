"""The extension-point tables: eval task kinds (minigpt.eval.evaluate.TASKS), LR schedules
(minigpt.train.config.SCHEDULES) and recipes (minigpt.train.config.RECIPES).

For each: the help text names every entry, every entry works, and README.md's list names
exactly the table's entries.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from tiny_run import ROOT, load_script

from minigpt.eval.evaluate import TASKS, evaluate, load_task, task_forms, tasks_help
from minigpt.eval.tasks import TaskError
from minigpt.model.config import GPTConfig
from minigpt.model.model import GPT
from minigpt.tokenizers import GPT2Tokenizer
from minigpt.train.config import RECIPES, SCHEDULES, TrainConfig, make_config, recipes_help, schedules_help
from minigpt.train.optim import lr_at

README = (ROOT / "README.md").read_text(encoding="utf-8")
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def kind_of(form: str) -> str:
    """The kind a task form names: "lambada[:PATH]" -> "lambada"."""
    return re.match(r"[\w-]+", form).group(0)


# ----------------------------------------------------------------------------------------------
# Eval task kinds


def test_task_help_names_every_kind():
    for name, kind in TASKS.items():
        form = kind.form(name)
        assert kind_of(form) == name
        assert form in tasks_help() and form in tasks_help(lines=True) and form in task_forms()
        assert kind.description and "\n" not in kind.description
        assert form in FIELDS["eval_task"].metadata["help"]  # train.py --eval-task
    assert len(tasks_help(lines=True).splitlines()) == len(TASKS)


def test_task_errors_come_from_the_table():
    with pytest.raises(TaskError, match=r"unknown task 'squad': expected bpb:PATH, mc:PATH\.jsonl"):
        load_task("squad")
    for name, kind in TASKS.items():
        if not kind.optional:
            with pytest.raises(TaskError, match=f"task '{name}' needs an argument: {re.escape(kind.form(name))}"):
                load_task(name)


def lm_eval_task(root: Path) -> str:
    """A local lm-eval multiple-choice task (YAML over a JSONL); its include path is root/tasks."""
    data = root / "lm_quiz.jsonl"
    data.write_text(json.dumps({"context": "The sky is", "choices": [" blue", " green"], "label": 0}) + "\n")
    (root / "tasks").mkdir()
    (root / "tasks" / "minigpt_tables_quiz.yaml").write_text(
        "task: minigpt_tables_quiz\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        'target_delimiter: ""\nmetric_list:\n  - metric: acc\n',
        encoding="utf-8",
    )
    return "lm-eval:minigpt_tables_quiz"


def tiny_task(kind: str, root: Path) -> tuple[str, str | None]:
    """(spec, include path) of a tiny task of this kind, written under root."""
    files = {
        "bpb": ("t.txt", "The quick brown fox jumps over the lazy dog. " * 3),
        "mc": ("q.jsonl", json.dumps({"context": "2 + 2 =", "choices": [" 4", " 5"], "label": 0}) + "\n"),
        "hellaswag": (
            "h.jsonl",
            json.dumps(
                {
                    "ctx_a": "A man sits.",
                    "ctx_b": "he",
                    "activity_label": "Sitting",
                    "endings": ["stands.", "sleeps.", "eats.", "runs."],
                    "label": "1",
                }
            )
            + "\n",
        ),
        "lambada": ("l.jsonl", json.dumps({"text": "The cat sat on the mat"}) + "\n"),
    }
    if kind == "lm-eval":
        pytest.importorskip("lm_eval")
        return lm_eval_task(root), str(root / "tasks")
    assert kind in files, f"a new task kind {kind!r}: give tests/test_tables.py a tiny task of it"
    name, text = files[kind]
    (root / name).write_text(text, encoding="utf-8")
    return f"{kind}:{root / name}", None


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()


@pytest.mark.parametrize("kind", list(TASKS))
def test_each_task_kind_loads_and_scores(kind, model, tmp_path):
    spec, include_path = tiny_task(kind, tmp_path)
    loaded = load_task(spec, include_path=include_path)
    assert loaded.task.kind == kind
    results = evaluate(model, GPT2Tokenizer(), [loaded], include_path=include_path, batch_size=4)
    assert results
    for key, metrics in results.items():
        assert key == spec or (kind == "lm-eval" and key.startswith("lm-eval:"))
        values = [v for k, v in metrics.items() if k != "n"]
        assert values and all(math.isfinite(v) for v in values), metrics


def readme_task_kinds() -> tuple[set[str], set[str]]:
    """(the kinds of README's Evaluation table, the kinds listed for --eval-task)."""
    table = README.split("| task | what it measures |", 1)[1].split("\n\n", 1)[0]
    rows = {kind_of(m) for m in re.findall(r"^\| `([^`]+)` \|", table, flags=re.M)}
    listed = re.search(r"any `eval.py` task: (.*?)\)", README, flags=re.S).group(1)
    return rows, {kind_of(m) for m in re.findall(r"`([^`]+)`", listed)}


def test_readme_lists_exactly_the_task_kinds():
    rows, listed = readme_task_kinds()
    assert rows == set(TASKS)
    assert listed == set(TASKS)


# ----------------------------------------------------------------------------------------------
# LR schedules


def test_schedule_help_names_every_schedule():
    field = FIELDS["schedule"]
    assert tuple(field.metadata["choices"]) == tuple(SCHEDULES)
    for name, schedule in SCHEDULES.items():
        assert name in schedules_help() and name in field.metadata["help"]
        assert schedule.description in field.metadata["help"]


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_each_schedule_gives_finite_rates(name):
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=5, max_steps=40, schedule=name)
    assert cfg.schedule_kind == name
    lrs = [lr_at(step, cfg) for step in range(50)]
    assert all(math.isfinite(lr) and 0 < lr <= cfg.lr for lr in lrs)
    assert lrs[:5] == pytest.approx([cfg.lr * (s + 1) / 5 for s in range(5)])  # the warmup
    assert lrs[5] == pytest.approx(cfg.lr)  # the decay starts at lr ...
    assert lrs[40:] == [cfg.min_lr] * 10  # ... and ends at min_lr
    after = lrs[5:41]
    assert all(b <= a + 1e-15 for a, b in pairwise(after))  # never up after the warmup
    # over a budget: the same decay, as a function of the progress
    budget = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=2, time_budget=60.0, schedule=name)
    rates = [lr_at(10, budget, p / 20) for p in range(25)]
    assert all(math.isfinite(r) and 0.1 <= r <= 1.0 for r in rates)
    assert rates[0] == pytest.approx(1.0) and rates[20:] == [0.1] * 5


def test_readme_names_only_the_schedules():
    named = set(re.findall(r"--schedule (\w+)", README))
    assert named and named <= set(SCHEDULES)
    paragraph = next(p for p in README.split("\n\n") if "`--schedule" in p)
    for name in SCHEDULES:
        assert re.search(rf"\b{name}\b", paragraph), name


# ----------------------------------------------------------------------------------------------
# Recipes


def test_recipe_help_names_every_recipe():
    for name, recipe in RECIPES.items():
        assert recipe.description and f"{name}: {recipe.description}" in recipes_help()
    parser = load_script(ROOT / "train.py").build_parser()
    action = next(a for a in parser._actions if "--recipe" in a.option_strings)
    assert list(action.choices) == list(RECIPES)


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_makes_a_config(name):
    cfg = make_config(name, {})
    assert cfg.recipe == name
    for key, value in RECIPES[name].items():
        assert getattr(cfg, key) == value


def test_readme_names_only_the_recipes():
    named = set(re.findall(r"--recipe ([\w-]+)", README)) | set(re.findall(r"`([\w-]+)` recipe", README))
    assert named == set(RECIPES)


# ----------------------------------------------------------------------------------------------
# Activations, backends, model families, tokenizer kinds


def test_the_activation_names_are_the_model_table():
    from minigpt.model import config, model

    assert tuple(model.ACTIVATIONS) == config.ACTIVATIONS  # the names a config may hold, in one order
    listed = re.search(r"`activation_function` \((.*?)\)", README, flags=re.S).group(1)
    assert set(re.findall(r"`(\w+)`", listed)) == set(config.ACTIVATIONS)


def test_backend_choices_come_from_the_tables():
    from minigpt.model.backends import ATTENTION, ATTN_BACKENDS, LAYER_NORM, LN_BACKENDS
    from minigpt.train.config import TrainConfig

    assert ATTN_BACKENDS == ("auto", *ATTENTION) and LN_BACKENDS == ("auto", *LAYER_NORM)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert tuple(fields["attn_backend"].metadata["choices"]) == ATTN_BACKENDS
    assert tuple(fields["ln_backend"].metadata["choices"]) == LN_BACKENDS


def test_every_family_reads_back_the_config_it_writes():
    from minigpt.model.config import GPTConfig
    from minigpt.model.families import FAMILIES, family_of

    shape = dict(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=8, n_inner=20, activation="relu")
    neox = dict(position="rope", rotary_pct=0.5, rope_theta=500.0, tie_word_embeddings=False, bos_token_id=0)
    examples = {  # one model of each family, with its switches as the family's reader sets them
        "gpt2": GPTConfig(**shape),
        "gpt_neox": GPTConfig(
            **shape, **neox, model_type="gpt_neox", parallel_residual=True, attn_bias=False, mlp_bias=True
        ),
        "gpt_neox_japanese": GPTConfig(
            **{**shape, "n_inner": 24},
            **neox,
            model_type="gpt_neox_japanese",
            attn_bias=False,
            mlp_bias=False,
            last_attn_proj_bias=True,
        ),
    }
    assert set(examples) == set(FAMILIES)
    for name, family in FAMILIES.items():
        config = examples[name]
        hf = family.config_to_hf(config)
        assert family_of(hf) is family and hf["model_type"] == name
        assert family.config_from_hf(hf) == config, name
    with pytest.raises(ValueError, match="model_type 'gpt_neo'"):
        family_of({"model_type": "gpt_neo"})


def test_readme_lists_exactly_the_tokenizer_kinds():
    from minigpt.tokenizers import KINDS

    flag = re.search(r"`--tokenizer ([\w:|]+)`", README).group(1).split("|")
    assert flag == [k.spelling for k in KINDS.values() if k.trainable]
    bullets = re.findall(r"^- `(\w+)`(?: and `([\w:]+)`)?:", README.split("**Tokenizer.**", 1)[1], flags=re.M)
    assert {name.split(":")[0] for pair in bullets for name in pair if name} == set(KINDS)
