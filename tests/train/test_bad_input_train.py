"""train.py given bad input: every case exits with code 2 and exactly one line on stderr
("error: ..."), and leaves every file it was pointed at byte-identical (nothing created,
nothing changed). Runs go through train.main(argv) in this process; two cases run as real
processes to show that nothing prints a traceback there either.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import ROOT, load_script, make_corpus, tiny_argv

from minigpt.model.config import GPTConfig
from minigpt.model.load import save_pretrained
from minigpt.model.model import GPT

train = load_script(ROOT / "train.py")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("bad_input_data"))


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory) -> Path:
    """A complete 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("bad_input_run") / "run"
    assert train.main(tiny_argv(data_dir, out, max_steps=4, ckpt_interval=2)) == 0
    return out


class Case:
    """What one case is given: the shared data and run, and a scratch directory to set up in."""

    def __init__(self, data_dir: Path, finished: Path, tmp: Path, monkeypatch):
        self.data, self.finished, self.tmp, self.monkeypatch = data_dir, finished, tmp, monkeypatch
        self.out = tmp / "out"  # where a new run would write
        self.expect = ""  # a part of the error line, if the case names one

    def new(self, **overrides) -> list[str]:
        """The flags of a new tiny run into self.out."""
        return tiny_argv(self.data, self.out, max_steps=4, **overrides)

    def run(self) -> Path:
        """A copy of the finished run to resume."""
        shutil.copytree(self.finished, self.tmp / "run")
        return self.tmp / "run"

    def data_copy(self, change_meta=None) -> Path:
        copy = self.tmp / "data"
        shutil.copytree(self.data, copy)
        if change_meta is not None:
            meta = json.loads((copy / "meta.json").read_text())
            (copy / "meta.json").write_text(json.dumps(change_meta(meta) or meta))
        return copy

    def weights(self, **config) -> Path:
        torch.manual_seed(0)
        save_pretrained(GPT(GPTConfig(**config)), self.tmp / "init")
        return self.tmp / "init"


def _new_with_data(c: Case, change_meta) -> list[str]:
    return tiny_argv(c.data_copy(change_meta), c.out, max_steps=4)


def _shard_out_of_vocabulary(c: Case) -> list[str]:
    data = c.data_copy()
    shard = data / "train_000000.npy"
    tokens = np.load(shard)
    tokens[100] = 50300  # the right length, an id the tokenizer does not have
    np.save(shard, tokens)
    return tiny_argv(data, c.out, max_steps=4)


def _read_only_out_dir(c: Case) -> list[str]:
    parent = c.tmp / "locked"
    parent.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: deny the way a read-only mount would
        access = os.access
        c.monkeypatch.setattr(
            "minigpt.train.trainer.os.access", lambda p, mode: False if Path(p) == parent else access(p, mode)
        )
    else:
        parent.chmod(0o555)
    return tiny_argv(c.data, parent / "out", max_steps=4)


def _out_dir_in_use(c: Case, fresh: bool) -> list[str]:
    """An out dir whose lock a live process holds (this one, through another open file: flock
    locks belong to the open file, so the run's own attempt is refused as another process's is)."""
    out = c.out if fresh else c.run()
    out.mkdir(exist_ok=True)
    lock = open(out / ".lock", "w")  # noqa: SIM115 (held until the case ends)
    lock.write("4242\n")
    lock.flush()
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    c.held, c.expect = lock, f"process 4242 holds {out / '.lock'}"
    return c.new() if fresh else ["--resume", "--out-dir", str(out), "--max-steps", "8"]


def _resume_with(*flags: str):
    return lambda c: ["--resume", "--out-dir", str(c.run()), *flags]


def _file(c: Case, name: str, content: bytes = b"x") -> Path:
    path = c.tmp / name
    path.write_bytes(content)
    return path


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _broken_run(c: Case, damage) -> list[str]:
    run = c.run()
    damage(run)
    return ["--resume", "--out-dir", str(run), "--max-steps", "8"]


CASES = {
    # float settings: nan, inf and out-of-range values
    "--grad-clip nan": lambda c: c.new(grad_clip="nan"),
    "--grad-clip inf": lambda c: c.new(grad_clip="inf"),
    "--grad-clip -1": lambda c: c.new(grad_clip=-1),
    "--weight-decay nan": lambda c: c.new(weight_decay="nan"),
    "--weight-decay -0.1": lambda c: c.new(weight_decay=-0.1),
    "--lr nan": lambda c: c.new(lr="nan"),
    "--lr inf": lambda c: c.new(lr="inf"),
    "--lr 0": lambda c: c.new(lr=0),
    "--lr -1e-3": lambda c: c.new(lr=-1e-3),
    "--min-lr nan": lambda c: c.new(min_lr="nan"),
    "--min-lr above --lr": lambda c: c.new(min_lr=1.0),
    "--beta1 nan": lambda c: c.new(beta1="nan"),
    "--beta2 1": lambda c: c.new(beta2=1.0),
    "--beta1 -0.5": lambda c: c.new(beta1=-0.5),
    "--dropout nan": lambda c: c.new(dropout="nan"),
    "--dropout 1.5": lambda c: c.new(dropout=1.5),
    "--dropout -0.1": lambda c: c.new(dropout=-0.1),
    "--peak-flops inf": lambda c: c.new(peak_flops="inf"),
    "--peak-flops 0": lambda c: c.new(peak_flops=0),
    "--dist-timeout 0": lambda c: c.new(dist_timeout=0),
    "--dist-timeout nan": lambda c: c.new(dist_timeout="nan"),
    # the optimizer and the architecture switches of a new model
    "--optimizer sgd": lambda c: c.new() + ["--optimizer", "sgd"],
    "--muon-lr 0": lambda c: c.new(optimizer="muon", muon_lr=0),
    "--muon-lr nan": lambda c: c.new(optimizer="muon", muon_lr="nan"),
    "--muon-momentum 1": lambda c: c.new(optimizer="muon", muon_momentum=1.0),
    "--optimizer muon --parallel fsdp": lambda c: c.new(optimizer="muon", parallel="fsdp"),
    "--position alibi": lambda c: c.new() + ["--position", "alibi"],
    "--activation mish": lambda c: c.new() + ["--activation", "mish"],
    # other settings
    "unknown recipe": lambda c: c.new() + ["--recipe", "gpt5"],
    "unknown flag": lambda c: c.new() + ["--learning-rate", "1"],
    "--max-steps not a number": lambda c: c.new() + ["--max-steps", "ten"],
    "--max-steps 0": lambda c: tiny_argv(c.data, c.out, max_steps=0),
    "--keep-checkpoints -1": lambda c: c.new(keep_checkpoints=-1),
    "--stop-at-step past --max-steps": lambda c: c.new(stop_at_step=9),
    "--total-batch-size not a multiple": lambda c: c.new(total_batch_size=100),
    "--n-embd not divisible by --n-head": lambda c: c.new(n_embd=30, n_head=4),
    "--batch-size too big for the data": lambda c: c.new(batch_size=1000),
    "--device nonsense": lambda c: c.new(device="tpu"),
    "--device cuda without CUDA": lambda c: (
        pytest.skip("CUDA is available") if torch.cuda.is_available() else c.new(device="cuda")
    ),
    # budgets, schedule, data order
    "--time-budget 0": lambda c: c.new(time_budget=0),
    "--time-budget nan": lambda c: c.new(time_budget="nan"),
    "--token-budget 0": lambda c: c.new(token_budget=0),
    "--time-budget with --token-budget": lambda c: c.new(time_budget=10, token_budget=1000),
    "--decay-frac 0": lambda c: c.new(decay_frac=0),
    "--schedule unknown": lambda c: c.new(schedule="linear"),
    "--data-order unknown": lambda c: c.new(data_order="shuffled"),
    # --eval-task: read before anything is written
    "--eval-task unknown": lambda c: c.new() + ["--eval-task", "squad"],
    "--eval-task a missing file": lambda c: c.new() + ["--eval-task", f"mc:{c.tmp / 'missing.jsonl'}"],
    "--eval-task not JSONL": lambda c: c.new() + ["--eval-task", f"mc:{_file(c, 'quiz.jsonl', b'{oops')}"],
    "--eval-task a label out of range": lambda c: (
        c.new()
        + [
            "--eval-task",
            "mc:" + str(_file(c, "quiz.jsonl", b'{"context": "a", "choices": [" b", " c"], "label": 2}\n')),
        ]
    ),
    "--eval-task bpb of a missing file": lambda c: c.new() + ["--eval-task", f"bpb:{c.tmp / 'none.txt'}"],
    # the out dir
    "--out-dir is a file": lambda c: tiny_argv(c.data, _file(c, "taken"), max_steps=4),
    "--out-dir under a file": lambda c: tiny_argv(c.data, _file(c, "taken") / "out", max_steps=4),
    "--out-dir read-only": _read_only_out_dir,
    "--out-dir holds checkpoints, no --resume": lambda c: tiny_argv(c.data, c.run(), max_steps=4),
    "--out-dir locked by a live run (new)": lambda c: _out_dir_in_use(c, fresh=True),
    "--out-dir locked by a live run (--resume)": lambda c: _out_dir_in_use(c, fresh=False),
    # the data
    "--data does not exist": lambda c: tiny_argv(c.tmp / "no-such-data", c.out),
    "--data an empty file": lambda c: tiny_argv(_file(c, "empty.txt", b""), c.out),
    "--data a binary file": lambda c: tiny_argv(_file(c, "blob.txt", bytes(range(256)) * 4), c.out),
    'meta.json "file": 5': lambda c: _new_with_data(c, lambda m: m["splits"]["train"]["shards"][0].update(file=5)),
    'meta.json "vocab_size": "big"': lambda c: _new_with_data(c, lambda m: m.update(vocab_size="big")),
    "meta.json a list": lambda c: _new_with_data(c, lambda m: [m]),
    "meta.json max_id beyond the vocabulary": lambda c: _new_with_data(
        c, lambda m: m["splits"]["val"]["shards"][0].update(max_id=50257)
    ),
    "meta.json garbled": lambda c: tiny_argv(_garble(c.data_copy()), c.out),
    "a shard with ids beyond the vocabulary": _shard_out_of_vocabulary,
    "a shard of the wrong length": lambda c: tiny_argv(_shorten_shard(c.data_copy()), c.out),
    # --tokenizer
    "--tokenizer bpe:0": lambda c: c.new(tokenizer="bpe:0"),
    "--tokenizer bpe:abc": lambda c: c.new(tokenizer="bpe:abc"),
    "--tokenizer bpe:100 (below the byte alphabet)": lambda c: c.new(tokenizer="bpe:100"),
    "--tokenizer bpe: beyond uint16": lambda c: c.new(tokenizer="bpe:70000"),
    "--tokenizer foo": lambda c: c.new(tokenizer="foo"),
    "--tokenizer char on an empty corpus": lambda c: (
        (c.tmp / "corpus").mkdir(),
        _file(c, "corpus/a.txt", b""),
        _file(c, "corpus/b.txt", b""),
        tiny_argv(c.tmp / "corpus", c.out, tokenizer="char"),
    )[3],
    "--init whose minigpt_tokenizer.json is corrupt": lambda c: (
        (c.weights(block_size=64, n_layer=2, n_head=2, n_embd=32) / "minigpt_tokenizer.json").write_text("{oops"),
        c.new(init=c.tmp / "init"),
    )[1],
    "--tokenizer char for --data prepared with gpt2": lambda c: c.new(tokenizer="char"),
    "--tokenizer char with --init of a gpt2 model": lambda c: c.new(
        init=c.weights(block_size=64, n_layer=2, n_head=2, n_embd=32), tokenizer="char"
    ),
    "--resume a checkpoint with a corrupt minigpt_tokenizer.json": lambda c: _broken_run(
        c, lambda r: (r / "ckpt_00000004" / "minigpt_tokenizer.json").write_text("{oops")
    ),
    "--resume a checkpoint whose tokenizer has another vocabulary": lambda c: _broken_run(
        c, lambda r: (r / "ckpt_00000004" / "minigpt_tokenizer.json").write_text('{"kind": "char", "alphabet": "abc"}')
    ),
    "--resume a checkpoint with an unknown tokenizer kind": lambda c: _broken_run(
        c, lambda r: (r / "ckpt_00000004" / "minigpt_tokenizer.json").write_text('{"kind": "wordpiece"}')
    ),
    # --init
    "--init does not exist": lambda c: c.new(init=c.tmp / "nothing-here"),
    "--init a directory without weights": lambda c: (c.tmp / "empty").mkdir() or c.new(init=c.tmp / "empty"),
    "--init a truncated model.safetensors": lambda c: (
        _truncated(c.weights(block_size=64, n_layer=1, n_head=2, n_embd=16) / "model.safetensors"),
        c.new(init=c.tmp / "init", n_layer=None, n_head=None, n_embd=None),
    )[1],
    "--init a model with other sizes than the flags": lambda c: c.new(
        init=c.weights(block_size=64, n_layer=1, n_head=2, n_embd=16)
    ),
    "--block-size beyond the --init model's context": lambda c: c.new(
        init=c.weights(block_size=16, n_layer=1, n_head=2, n_embd=16), n_layer=None, n_head=None, n_embd=None
    ),
    # --resume
    "--resume a path that does not exist": lambda c: ["--resume", str(c.tmp / "nope")],
    "--resume an out dir without checkpoints": lambda c: ["--resume", "--out-dir", str(c.tmp)],
    "--resume a truncated model.safetensors": lambda c: _broken_run(
        c, lambda r: _truncated(r / "ckpt_00000004" / "model.safetensors")
    ),
    "--resume a truncated train state": lambda c: _broken_run(
        c, lambda r: _truncated(r / "ckpt_00000004" / "train_state.safetensors")
    ),
    "--resume a garbled train_state.json": lambda c: _broken_run(
        c, lambda r: (r / "ckpt_00000004" / "train_state.json").write_text('{"step": ')
    ),
    "--resume without train_state.json": lambda c: _broken_run(
        c, lambda r: (r / "ckpt_00000004" / "train_state.json").unlink()
    ),
    "--resume with a garbled latest pointer": lambda c: _broken_run(c, lambda r: (r / "latest").write_text("x")),
    "--resume into an --out-dir holding another run": lambda c: (
        shutil.copytree(c.finished, c.tmp / "other"),
        ["--resume", str(c.run() / "ckpt_00000002"), "--out-dir", str(c.tmp / "other"), "--max-steps", "8"],
    )[1],
    "--resume with another --recipe": lambda c: ["--resume", "--out-dir", str(c.run()), "--recipe", "gpt2-124m"],
    "--resume with other model sizes": lambda c: [
        "--resume",
        "--out-dir",
        str(c.run()),
        "--max-steps",
        "8",
        "--n-embd",
        "48",
    ],
    # every model setting the checkpoint holds (these were trained unchanged)
    **{
        f"--resume with {' '.join(flags)}": _resume_with(*flags)
        for flags in (
            ["--position", "rope"],
            ["--no-bias"],
            ["--qk-norm"],
            ["--activation", "relu"],
            ["--no-tie-word-embeddings"],
            ["--dropout", "0.1"],
            ["--init", "gpt2"],
        )
    },
    "--init with --position rope (the model has learned positions)": lambda c: c.new(
        init=c.weights(block_size=64, n_layer=2, n_head=2, n_embd=32), position="rope"
    ),
    "--resume with another batch size": lambda c: [
        "--resume",
        "--out-dir",
        str(c.run()),
        "--max-steps",
        "8",
        "--batch-size",
        "2",
    ],
    "--resume with --max-steps below the checkpoint": lambda c: [
        "--resume",
        "--out-dir",
        str(c.run()),
        "--max-steps",
        "3",
    ],
    "--resume with --stop-at-step not after it": lambda c: [
        "--resume",
        "--out-dir",
        str(c.run()),
        "--max-steps",
        "8",
        "--stop-at-step",
        "4",
    ],
}


def _garble(data: Path) -> Path:
    (data / "meta.json").write_text('{"format_version": 1, "splits": ')
    return data


def _shorten_shard(data: Path) -> Path:
    np.save(data / "train_000000.npy", np.load(data / "train_000000.npy")[:-10])
    return data


def snapshot(root: Path) -> dict[str, str]:
    """Every file's bytes and every directory under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(case, data_dir, finished, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache"))  # where --data SOURCE would be prepared
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    given = Case(data_dir, finished, scratch, monkeypatch)
    argv = [str(a) for a in CASES[case](given)]
    before = snapshot(scratch)
    capsys.readouterr()
    try:
        code = train.main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert given.expect in err
    assert snapshot(scratch) == before


@pytest.mark.parametrize("flags", [["--grad-clip", "nan"], ["--recipe", "nope"]])
def test_bad_input_in_a_real_process(flags, data_dir, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *tiny_argv(data_dir, out), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not out.exists()
