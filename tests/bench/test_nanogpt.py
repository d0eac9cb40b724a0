"""bench/push.py --nanogpt and bench/nanogpt.py, against a fake nanoGPT written here.

The fake has nanoGPT's interface and nothing else: train.py reads a config file and --key=value
flags, reads data/<dataset>/train.bin and val.bin from its working directory, prints `step` and
`iter` lines (with known times) and writes out_dir/ckpt.pt when told to always save; model.py's GPT
is a bigram table (logits at the last position without targets, at every position with them).
"""

from __future__ import annotations

import json
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import WORDS

from bench import nanogpt, push

FAKE_MODEL = """
import dataclasses

import torch
from torch.nn import functional as F


@dataclasses.dataclass
class GPTConfig:
    block_size: int = 8
    vocab_size: int = 1
    n_layer: int = 1
    n_head: int = 1
    n_embd: int = 1
    dropout: float = 0.0
    bias: bool = False


class GPT(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.table = torch.nn.Embedding(config.vocab_size, config.vocab_size)
        print("number of parameters: (a bigram table)")

    def forward(self, idx, targets=None):
        assert idx.size(1) <= self.config.block_size
        logits = self.table(idx)
        if targets is None:
            return logits[:, [-1], :], None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
"""

FAKE_TRAIN = """
import ast, json, os, sys

import numpy as np
import torch

from model import GPT, GPTConfig

settings = {"out_dir": "out", "dataset": "none", "eval_interval": 2000, "always_save_checkpoint": True}
config_file, *flags = sys.argv[1:]
for node in ast.parse(open(config_file).read()).body:
    settings[node.targets[0].id] = ast.literal_eval(node.value)
for flag in flags:
    key, value = flag[2:].split("=")
    try:
        settings[key] = ast.literal_eval(value)
    except ValueError:
        settings[key] = value
data = os.path.join("data", settings["dataset"])
train = np.fromfile(os.path.join(data, "train.bin"), dtype=np.uint16).astype(np.int64)
val = np.fromfile(os.path.join(data, "val.bin"), dtype=np.uint16)
vocab = int(max(train.max(), val.max())) + 1
args = dict(block_size=settings["block_size"], vocab_size=vocab, n_layer=1, n_head=1, n_embd=1, dropout=0.0, bias=False)
model = GPT(GPTConfig(**args))
counts = np.ones((vocab, vocab))
np.add.at(counts, (train[:-1], train[1:]), 1)
with torch.no_grad():
    model.table.weight.copy_(torch.tensor(np.log(counts / counts.sum(1, keepdims=True))))
os.makedirs(settings["out_dir"], exist_ok=True)
json.dump(sys.argv[1:], open(os.path.join(settings["out_dir"], "argv.json"), "w"))
for it in range(settings["max_iters"] + 1):
    if it % settings["eval_interval"] == 0:
        print(f"step {it}: train loss 2.0000, val loss 2.5000")
        if it > 0 and settings["always_save_checkpoint"]:
            ckpt = {"model": model.state_dict(), "model_args": args, "iter_num": it,
                    "best_val_loss": torch.tensor(2.5), "config": settings}
            torch.save(ckpt, os.path.join(settings["out_dir"], "ckpt.pt"))
    print(f"iter {it}: loss 3.0000, time {2400 + 10 * it:.2f}ms, mfu -100.00%")
"""

FAKE_CONFIG = """out_dir = 'out-fake'
eval_interval = 250
always_save_checkpoint = False
dataset = 'shakespeare_char'
"""


def fake_nanogpt(root: Path, train: str = FAKE_TRAIN) -> Path:
    (root / "config").mkdir(parents=True)
    (root / "train.py").write_text(train)
    (root / "model.py").write_text(FAKE_MODEL)
    (root / "configurator.py").write_text("# read by train.py\n")
    (root / "config" / "train_shakespeare_char.py").write_text(FAKE_CONFIG)
    return root


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    rng = random.Random(0)
    words = [*WORDS, "café", "naïve", "—"]  # characters of 2 and 3 UTF-8 bytes
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) + "." for _ in range(600)]
    path = tmp_path_factory.mktemp("nanogpt_text") / "tiny.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prepare_py(text: str) -> tuple[bytes, bytes, bytes]:
    """train.bin, val.bin and meta.pkl as nanoGPT's data/shakespeare_char/prepare.py computes them."""
    chars = sorted(list(set(text)))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    n = len(text)
    train = np.array([stoi[c] for c in text[: int(n * 0.9)]], dtype=np.uint16)
    val = np.array([stoi[c] for c in text[int(n * 0.9) :]], dtype=np.uint16)
    return train.tobytes(), val.tobytes(), pickle.dumps({"vocab_size": len(chars), "itos": itos, "stoi": stoi})


@pytest.mark.parametrize("sample", ["abc\nab", "héllo wörld —\n" * 7 + "x", "a"])
def test_prepare_writes_what_prepare_py_writes(sample, tmp_path):
    info = nanogpt.prepare(sample, tmp_path)
    train, val, meta = prepare_py(sample)
    assert (tmp_path / "train.bin").read_bytes() == train
    assert (tmp_path / "val.bin").read_bytes() == val
    assert (tmp_path / "meta.pkl").read_bytes() == meta  # the same pickle, byte for byte: never unpickled here
    assert info["cut"] == int(len(sample) * 0.9) and info["vocab_size"] == len(set(sample))


def test_train_args_are_the_readme_command(tmp_path):
    copy = fake_nanogpt(tmp_path / "nano")
    readme = (
        "config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 "
        "--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 "
        "--lr_decay_iters=2000 --dropout=0.0"
    ).split()
    assert nanogpt.train_args(copy) == [*readme, "--always_save_checkpoint=True"]
    # A shortened run still evaluates (and saves) at its last iteration.
    short = nanogpt.train_args(copy, 50)
    assert "--max_iters=50" in short and "--lr_decay_iters=50" in short and short[-1] == "--eval_interval=50"
    assert nanogpt.train_args(copy, 500)[-1] == "--always_save_checkpoint=True"  # 500 is a multiple of 250
    assert nanogpt.out_dir(copy, short) == copy / "out-fake"
    assert nanogpt.out_dir(copy, [*short, "--out_dir=elsewhere"]) == copy / "elsewhere"


def test_parse_log_sums_the_iteration_times():
    stdout = (
        "tokens per iteration will be: 768\nOverriding: max_iters = 3\n"
        "step 0: train loss 4.1676, val loss 4.1649\n"
        "iter 0: loss 4.1828, time 1348.50ms, mfu -100.00%\n"
        "iter 1: loss 4.1373, time 38.25ms, mfu -100.00%\n"
        "iteration notes that are not iter lines\n"
        "iter 2: loss 4.1347, time 36.00ms, mfu -100.00%\n"
        "step 3: train loss 3.9000, val loss 3.9500\nsaving checkpoint to out\n"
        "iter 3: loss 4.0995, time 191.75ms, mfu 0.01%\n"
    )
    got = nanogpt.parse_log(stdout)
    assert got["train_s"] == pytest.approx(1.6145)
    assert (got["iterations"], got["last_iter"], got["final_train_loss"]) == (4, 3, 4.0995)
    assert got["evals"] == [
        {"step": 0, "train_loss": 4.1676, "val_loss": 4.1649},
        {"step": 3, "train_loss": 3.9, "val_loss": 3.95},
    ]
    with pytest.raises(nanogpt.NanoGPTError, match="no `iter"):
        nanogpt.parse_log("Traceback\n")


def bigram_bpb(table: torch.Tensor, stoi: dict, text: str, before: str) -> float:
    """Bits per byte of text under a bigram table, each character given the one before: the
    reference for any windowing, since a bigram model sees one character of context."""
    logp = torch.log_softmax(table.double(), dim=-1)
    prev = [stoi[before]] + [stoi[c] for c in text[:-1]]
    nll = -sum(logp[p, stoi[c]].item() for p, c in zip(prev, text, strict=True))
    return nll / math.log(2) / len(text.encode("utf-8"))


def test_nanogpt_beside_a_sized_minigpt_run(text, tmp_path):
    source = fake_nanogpt(tmp_path / "nano")
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    out = tmp_path / "out"
    argv = ["--nanogpt", str(source), "--nanogpt-max-iters", "4", "--text", str(text)]
    assert push.main([*argv, "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before  # DIR is never written
    r = json.loads((out / "nanogpt-real-tiny-cpu.json").read_text())
    copy = tmp_path / "work" / "nanogpt"
    whole = text.read_text(encoding="utf-8")

    # nanoGPT's data, command, times and checkpoint.
    train, val, meta = prepare_py(whole)
    data = copy / "data" / "shakespeare_char"
    assert [(data / f).read_bytes() for f in ("train.bin", "val.bin", "meta.pkl")] == [train, val, meta]
    assert json.loads((copy / "out-fake" / "argv.json").read_text()) == nanogpt.train_args(copy, 4)
    nano = r["arms"]["nanogpt"]
    assert nano["train_s"] == pytest.approx(2.4 + 2.41 + 2.42 + 2.43 + 2.44) == r["minigpt_budget_s"]
    assert (nano["steps"], nano["iterations_printed"]) == (4, 5)
    assert nano["process_wall_s"] > 0 and nano["evals"][-1] == {"step": 4, "train_loss": 2.0, "val_loss": 2.5}

    # Both scored on the same bytes: nanoGPT's val part, which minigpt's split holds out too.
    cut = int(len(whole) * 0.9)
    assert r["text"]["scored_from"] == cut and r["text"]["minigpt_val_from"] <= cut
    assert r["text"]["held_out_bytes"] == len(whole[cut:].encode("utf-8")) > r["text"]["held_out_chars"]
    ckpt = torch.load(copy / "out-fake" / "ckpt.pt", weights_only=True)
    stoi = {ch: i for i, ch in enumerate(sorted(set(whole)))}
    want = bigram_bpb(ckpt["model"]["table.weight"], stoi, whole[cut:], whole[cut - 1])
    assert nano["bpb"] == pytest.approx(want, rel=1e-5)
    assert nano["num_params"] == len(stoi) ** 2 and r["settings"]["scoring"]["window"] == 64

    # minigpt: the budget and nothing else about the model, scored with push.score.
    mini = r["arms"]["minigpt"]
    command = r["settings"]["minigpt_command"]
    assert command[command.index("--time-budget") + 1] == f"{r['minigpt_budget_s']:g}"
    assert not {"--n-layer", "--n-embd", "--block-size", "--lr", "--recipe"} & set(command)
    assert mini["settings"]["tokenizer"] == "bpe:512" and mini["sizing"]["budget_s"] == r["minigpt_budget_s"]
    assert 0 < mini["bpb"] < 20 and mini["steps"] > 0 and mini["process_wall_s"] > 0
    assert r["bpb_ratio_minigpt_to_nanogpt"] == pytest.approx(mini["bpb"] / nano["bpb"])
    assert r["nanogpt"]["commit"] == "sha256:" + r["nanogpt"]["sha256"] and r["nanogpt"]["git_commit"] is None
    assert set(r) >= {"environment", "text", "settings", "arms", "budget_meaning", "scored_model", "notes"}
    assert "| nanoGPT train.py |" in push.nanogpt_markdown(r)


FAILING = "import sys\nprint('iter 0: loss 1.0, time 1.00ms, mfu 0%')\nsys.exit('boom: no data here')\n"
NO_CHECKPOINT = "print('iter 0: loss 1.0, time 1.00ms, mfu 0%')\n"


def bad_nanogpt(case: str, tmp: Path) -> Path:
    if case == "missing":
        return tmp / "nowhere"
    if case == "empty":
        (tmp / "empty").mkdir()
        return tmp / "empty"
    if case == "no model.py":
        (fake_nanogpt(tmp / "nano") / "model.py").unlink()
        return tmp / "nano"
    return fake_nanogpt(tmp / "nano", {"failing": FAILING, "no checkpoint": NO_CHECKPOINT}.get(case, FAKE_TRAIN))


# Texts that cannot be split the same way for both, or at all.
ODD_TEXTS = {
    "crlf": b"first line\r\nsecond line\r\n" * 50,
    "latin-1": "caf\xe9\n".encode("latin-1") * 50,
    "one character": b"a",
}


@pytest.mark.parametrize(
    "case, odd_text, flags, message",
    [
        ("missing", None, [], "nowhere: no such directory"),
        ("empty", None, [], "has no train.py, model.py, configurator.py, config/train_shakespeare_char.py"),
        ("no model.py", None, [], "is not a copy of nanoGPT: it has no model.py"),
        ("fake", None, ["--nanogpt-max-iters", "0"], "--nanogpt-max-iters must be at least 1, got 0"),
        ("work not empty", None, [], "is not empty"),
        ("fake", "crlf", [], "has carriage returns"),
        ("fake", "latin-1", [], "is not UTF-8 text"),
        ("fake", "one character", [], "too short to split into train and val"),
        ("failing", None, [], "nanoGPT's train.py failed (exit 1: boom: no data here)"),
        ("no checkpoint", None, [], "nanoGPT's train.py wrote no checkpoint at"),
    ],
)
def test_bad_input_is_one_line(case, odd_text, flags, message, text, tmp_path, capsys):
    source, work, out = bad_nanogpt(case, tmp_path), tmp_path / "work", tmp_path / "out"
    if case == "work not empty":
        work.mkdir()
        (work / "keep.txt").write_text("mine")
    if odd_text is not None:
        text = tmp_path / "odd.txt"
        text.write_bytes(ODD_TEXTS[odd_text])
    argv = ["--nanogpt", str(source), "--text", str(text), "--work", str(work), "--out", str(out), *flags]
    with pytest.raises(SystemExit) as e:
        push.main(argv)
    code = e.value.code
    said = (code if isinstance(code, str) else capsys.readouterr().err).strip()
    assert code not in (0, None)
    assert said.startswith("error: ") and "\n" not in said and message in said, said
    assert not list(out.glob("nanogpt-real-*"))  # no results from a failed run
    if case == "work not empty":
        assert [p.name for p in work.iterdir()] == ["keep.txt"] and (work / "keep.txt").read_text() == "mine"
