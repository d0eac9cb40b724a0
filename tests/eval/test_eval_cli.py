"""eval.py from the command line: results on stdout and in JSON; every bad input is one line, exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigpt import GPT, GPTConfig
from minigpt.model.load import save_pretrained

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"context": "The sky is", "choices": [" blue", " green"], "label": 0}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("ckpt")
    save_pretrained(GPT(GPTConfig(block_size=16, vocab_size=50257, n_layer=1, n_head=2, n_embd=16)), directory)
    return directory


def run_cli(args, env=None, cwd=None):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


def jsonl(*rows):
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


def test_mc_and_bpb_table_and_json(ckpt, tmp_path):
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text(
        jsonl(
            GOOD,
            {"context": "質問: 猫は?", "choices": ["ねこ", "いぬ", "とり"], "label": 1},
            {"context": "word " * 30, "choices": [" yes", " no"], "label": 1},
        ),
        encoding="utf-8",
    )
    text = tmp_path / "t.txt"
    text.write_text("Hello world. " * 20, encoding="utf-8")
    out = tmp_path / "r.json"
    r = run_cli(
        [
            "--init",
            str(ckpt),
            "--task",
            f"mc:{quiz}",
            "--task",
            f"bpb:{text}",
            "--stride",
            "5",
            "--output",
            str(out),
            "--batch-size",
            "2",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert "acc_bytes" in r.stdout and "bpb" in r.stdout and "Traceback" not in r.stderr
    payload = json.loads(out.read_text(encoding="utf-8"))
    assert set(payload) >= {"model", "results", "device", "versions", "commit", "date"}
    mc = payload["results"][f"mc:{quiz}"]
    assert mc["n"] == 3 and mc["truncated"] == 1 and set(mc) >= {"acc", "acc_norm", "acc_bytes"}
    assert payload["results"][f"bpb:{text}"]["stride"] == 5
    assert payload["versions"]["torch"] == torch.__version__


def write(path: Path, content) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def no_lm_eval(tmp_path_factory):
    """A directory that, first on the path, makes `import lm_eval` fail as if it were not installed."""
    d = tmp_path_factory.mktemp("no_lm_eval")
    (d / "lm_eval").mkdir()
    (d / "lm_eval" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'lm_eval'\")\n")
    return d


OFFLINE = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}

# name, files written to tmp_path, arguments after --init, extra environment, what the one stderr line says
CASES = [
    ("missing file", {}, ["--task", "mc:{tmp}/nope.jsonl"], {}, "nope.jsonl: no such file"),
    (
        "not JSONL",
        {"q.jsonl": jsonl(GOOD, "{not json")},
        ["--task", "mc:{tmp}/q.jsonl"],
        {},
        "q.jsonl:2: not a JSON object",
    ),
    (
        "not an object",
        {"q.jsonl": jsonl([1, 2])},
        ["--task", "mc:{tmp}/q.jsonl"],
        {},
        "q.jsonl:1: expected a JSON object",
    ),
    (
        "label out of range",
        {"q.jsonl": jsonl(GOOD, dict(GOOD, label=2))},
        ["--task", "mc:{tmp}/q.jsonl"],
        {},
        "q.jsonl:2: label 2 is out of range for 2 choices",
    ),
    (
        "negative label",
        {"q.jsonl": jsonl(dict(GOOD, label=-1))},
        ["--task", "mc:{tmp}/q.jsonl"],
        {},
        "q.jsonl:1: label -1",
    ),
    (
        "one choice",
        {"q.jsonl": jsonl(dict(GOOD, choices=[" x"]))},
        ["--task", "mc:{tmp}/q.jsonl"],
        {},
        "q.jsonl:1: needs at least two choices",
    ),
    (
        "empty choice",
        {"q.jsonl": jsonl(dict(GOOD, choices=[" x", ""]))},
        ["--task", "mc:{tmp}/q.jsonl"],
        {},
        "q.jsonl:1: choice 1 is empty",
    ),
    (
        "missing label",
        {"q.jsonl": jsonl({"context": "a", "choices": ["b", "c"]})},
        ["--task", "mc:{tmp}/q.jsonl"],
        {},
        "q.jsonl:1: missing field 'label'",
    ),
    (
        "label not an int",
        {"q.jsonl": jsonl(dict(GOOD, label="0"))},
        ["--task", "mc:{tmp}/q.jsonl"],
        {},
        "q.jsonl:1: field 'label' must be int",
    ),
    (
        "choice not a string",
        {"q.jsonl": jsonl(dict(GOOD, choices=["a", 3]))},
        ["--task", "mc:{tmp}/q.jsonl"],
        {},
        "q.jsonl:1: every choice must be a string",
    ),
    ("empty file", {"q.jsonl": ""}, ["--task", "mc:{tmp}/q.jsonl"], {}, "q.jsonl: no examples"),
    ("not UTF-8", {"t.txt": b"caf\xe9"}, ["--task", "bpb:{tmp}/t.txt"], {}, "t.txt: not UTF-8"),
    ("missing text", {}, ["--task", "bpb:{tmp}/none.txt"], {}, "none.txt: no such file"),
    (
        "continuation too long",
        {"q.jsonl": jsonl(dict(GOOD, choices=[" x", " y" * 40]))},
        ["--task", "mc:{tmp}/q.jsonl"],
        {},
        "q.jsonl:1: the continuation alone is 40 tokens",
    ),
    ("unknown task", {}, ["--task", "squad"], {}, "unknown task 'squad'"),
    ("task without path", {}, ["--task", "mc"], {}, "task 'mc' needs an argument"),
    (
        "bad batch size",
        {"q.jsonl": jsonl(GOOD)},
        ["--task", "mc:{tmp}/q.jsonl", "--batch-size", "0"],
        {},
        "--batch-size must be at least 1",
    ),
    ("bad checkpoint", {"q.jsonl": jsonl(GOOD)}, ["--task", "mc:{tmp}/q.jsonl"], {}, "nothing-here: no such file"),
    ("hellaswag offline", {}, ["--task", "hellaswag"], OFFLINE, "cannot download hellaswag"),
    ("lambada offline", {}, ["--task", "lambada"], OFFLINE, "--task lambada:PATH"),
    ("lm-eval missing", {}, ["--task", "lm-eval:hellaswag"], {"NO_LM_EVAL": "1"}, "pip install 'minigpt[eval]'"),
    (
        "--output is the task file",
        {"q.jsonl": jsonl(GOOD)},
        ["--task", "mc:{tmp}/q.jsonl", "--output", "{tmp}/../{tmp.name}/q.jsonl"],
        {},
        "is also an input",
    ),
    (
        "--output is a directory",
        {"q.jsonl": jsonl(GOOD)},
        ["--task", "mc:{tmp}/q.jsonl", "--output", "{tmp}"],
        {},
        "is a directory; name a file",
    ),
]


@pytest.mark.parametrize("name,files,args,env,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(ckpt, tmp_path, no_lm_eval, name, files, args, env, message):
    for filename, content in files.items():
        write(tmp_path / filename, content)
    env = dict(env, MINIGPT_EVAL_DIR=str(tmp_path / "cache"))
    if env.pop("NO_LM_EVAL", None):
        env["PYTHONPATH"] = f"{no_lm_eval}{os.pathsep}{ROOT}"
    init = str(tmp_path / "nothing-here") if name == "bad checkpoint" else str(ckpt)
    r = run_cli(["--init", init, "--no-progress", *[a.format(tmp=tmp_path) for a in args]], env=env)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == errors[0]
    assert r.stdout == ""
    for filename, content in files.items():  # no input was touched
        path = tmp_path / filename
        assert (path.read_bytes() if isinstance(content, bytes) else path.read_text(encoding="utf-8")) == content


@pytest.mark.slow
def test_lm_eval_unknown_task_is_one_line(ckpt):
    pytest.importorskip("lm_eval")
    r = run_cli(["--init", str(ckpt), "--task", "lm-eval:no_such_task_anywhere"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("error: unknown lm-eval task(s) no_such_task_anywhere")


def test_local_hellaswag_and_lambada(ckpt, tmp_path):
    hs = tmp_path / "hs.jsonl"
    hs.write_text(
        jsonl(
            {
                "activity_label": "Cooking",
                "ctx_a": "A man cuts onions.",
                "ctx_b": "he",
                "endings": ["cries.", "sings.", "runs [title] away.", "sleeps."],
                "label": 0,
            }
        )
    )
    lam = tmp_path / "lambada.jsonl"
    lam.write_text(jsonl({"text": "She handed him the cup and said thank you"}))
    r = run_cli(
        ["--init", str(ckpt), "--task", f"hellaswag:{hs}", "--task", f"lambada:{lam}", "--no-progress"],
        env={**OFFLINE, "MINIGPT_EVAL_DIR": str(tmp_path / "cache")},
    )
    assert r.returncode == 0, r.stderr
    assert f"hellaswag:{hs}" in r.stdout and f"lambada:{lam}" in r.stdout


@pytest.mark.slow
def test_eval_speed_bench_runs(tmp_path):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    out = tmp_path / "speed.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "eval_speed.py"),
            "--shape",
            "tiny",
            "--examples",
            "3",
            "--repeats",
            "1",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["accuracies_agree"] and data["examples"] == 3 and data["commit"] and data["device"]
    assert set(data["speedup_vs_lm_eval_hf"]) == {"lm-eval hf", "lm-eval minigpt", "minigpt mc"}


def test_output_json_is_strict_and_a_symlink_stays_a_link(ckpt, tmp_path):
    """Text without whitespace is one word: its word_ppl overflows a float and is written as null
    (JSON has no Infinity); a long task name keeps the table's columns in line; --output through
    a symlink replaces the file it names and keeps the link."""
    long_dir = tmp_path / ("a_directory_with_a_long_name_" * 3)
    long_dir.mkdir()
    text = long_dir / "nospace.txt"
    text.write_text("x" * 3000, encoding="utf-8")
    target = tmp_path / "results.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    r = run_cli(["--init", str(ckpt), "--task", f"bpb:{text}", "--no-progress", "--output", str(link)])
    assert r.returncode == 0, r.stderr

    def no_constants(name):
        raise AssertionError(f"not JSON: {name}")

    payload = json.loads(target.read_text(encoding="utf-8"), parse_constant=no_constants)
    assert payload["results"][f"bpb:{text}"]["word_ppl"] is None and link.is_symlink()
    rows = r.stdout.rstrip("\n").splitlines()
    assert len(rows) >= 3 and rows[0].startswith("task ")
    assert len({len(row) for row in rows}) == 1, rows  # every column right-aligned at the same place
    assert len({row.index(" bpb ") for row in rows if " bpb " in row} | {rows[0].index(" metric ")}) == 1, rows
    assert any(row.split()[-2] == "inf" for row in rows if row.split()[1] == "word_ppl"), rows


def test_output_to_a_device_is_written_through(ckpt, tmp_path):
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text(jsonl(GOOD), encoding="utf-8")
    r = run_cli(["--init", str(ckpt), "--task", f"mc:{quiz}", "--no-progress", "--output", os.devnull])
    assert r.returncode == 0, r.stderr
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)
    assert not [p for p in Path(os.devnull).parent.glob(".null.*")]  # no temporary left beside it
