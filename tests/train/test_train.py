"""train.py and the minigpt training modules on the CPU, with a tiny model on a tiny made-up corpus.

Runs go through train.main(argv) in this process (train.py loaded from its file), except the
two that need real processes: the 2-process gloo run (torchrun) and Ctrl-C (a signal to a child).
Losses are compared through the log.jsonl files the runs write.

Tolerances: a resumed run replays the same float operations in the same order, so its
losses must match the uninterrupted run exactly (checked to 1e-6). Gradient accumulation
and 2 processes sum the same per-row gradients in a different order, which in fp32 moves
the losses and gradient norms by a few ulps (1e-7 relative seen over 5 steps); 1e-5
relative leaves a wide margin, while a wrong batch (a skipped or repeated row) or a
mis-scaled gradient changes them in the third digit or earlier.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from tiny_run import ROOT, load_script, make_corpus, read_log, tiny_argv, tiny_settings, tree_hashes

from minigpt.data.corpus import load_meta
from minigpt.data.loader import DataLoader, unigram_entropy
from minigpt.model.config import GPTConfig, preset
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.model.model import GPT
from minigpt.train import checkpoint
from minigpt.train.checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints
from minigpt.train.config import TrainConfig, make_config
from minigpt.train.flops import PEAK_FLOPS, device_peak_flops, flops_per_token
from minigpt.train.optim import configure_optimizer, lr_at
from minigpt.train.trainer import Trainer

train = load_script(ROOT / "train.py")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """About 40 KB of made-up sentences, tokenized (roughly 9k train / 1k val tokens)."""
    return make_corpus(tmp_path_factory.mktemp("train_data"))


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """train.main(argv) -> (exit code, stderr)."""
    code = train.main(argv)
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Pieces


def test_lr_schedule_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(5.5e-4)  # halfway through the cosine
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert lr_at(500, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in pairwise(lrs))
    assert TrainConfig(lr=2e-3).min_lr == pytest.approx(2e-4)  # default: 10% of lr


def test_weight_decay_on_matrices_only():
    model = GPT(GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=2, n_embd=8))
    opt = configure_optimizer(model, TrainConfig(weight_decay=0.1), "cpu")
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert "transformer.wte.weight" in decayed_names and "transformer.wpe.weight" in decayed_names
    assert "transformer.h.0.attn.c_attn.weight" in decayed_names
    assert "transformer.h.0.attn.c_attn.bias" in plain_names and "transformer.ln_f.weight" in plain_names
    assert len(decayed_names) + len(plain_names) == len(list(model.parameters()))
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_flops_per_token_of_gpt2_124m():
    config = preset("gpt2")
    n = 124_439_808 - 1024 * 768  # every parameter but the position embedding
    assert flops_per_token(config, 1024) == 6 * n + 12 * 12 * 768 * 1024


def test_peak_flops_table(monkeypatch):
    assert device_peak_flops(torch.device("cpu")) == (None, device_peak_flops(torch.device("cpu"))[1])
    assert device_peak_flops(torch.device("cpu"), 1e12)[0] == 1e12
    names = {
        "NVIDIA H100 80GB HBM3": 989e12,
        "NVIDIA H100 PCIe": 756e12,
        "NVIDIA H200": 989e12,
        "NVIDIA A100-SXM4-80GB": 312e12,
        "NVIDIA A10G": 125e12,
        "NVIDIA L4": 121e12,
        "NVIDIA L40S": 362e12,
        "NVIDIA GeForce RTX 4090": 165e12,
        "Tesla V100-SXM2-16GB": 125e12,
        "Some Future GPU": None,
    }
    for name, peak in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert device_peak_flops(torch.device("cuda", 0))[0] == peak, name
    assert all(flops > 0 for _, flops in PEAK_FLOPS)


def test_unigram_entropy_matches_a_direct_count(data_dir):
    import numpy as np

    meta = load_meta(data_dir)
    entropy, counted = unigram_entropy(data_dir, meta)
    tokens = np.concatenate([np.load(data_dir / s["file"]) for s in meta["splits"]["train"]["shards"]])
    _, counts = np.unique(tokens, return_counts=True)
    p = counts / counts.sum()
    assert counted == len(tokens)
    assert entropy == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)
    assert 0 < entropy < math.log(len(counts)) + 1e-9


def test_recipes():
    cfg = make_config("gpt2-124m", {})
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.batch_size) == (12, 12, 768, 1024, 64)
    assert (cfg.total_batch_size, cfg.warmup_steps, cfg.max_steps, cfg.data) == (2**19, 715, 19073, "fineweb-edu")
    assert (cfg.lr, cfg.min_lr, cfg.weight_decay, cfg.beta1, cfg.beta2) == (6e-4, 6e-5, 0.1, 0.9, 0.95)
    assert cfg.grad_accum_steps(1) == 8 and cfg.grad_accum_steps(8) == 1
    cfg = make_config("gpt2-124m", {"lr": 1e-3, "batch_size": 32})
    assert cfg.min_lr == pytest.approx(1e-4) and cfg.grad_accum_steps(1) == 16
    assert make_config("cpu", {}).data == "stdlib"


# ----------------------------------------------------------------------------------------------
# Training


@pytest.mark.slow
def test_overfits_a_single_batch(data_dir):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32))
    x, y = DataLoader(data_dir, "train", 4, 32).next_batch()
    opt = configure_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.0), "cpu")
    losses = []
    for _ in range(150):
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[0] > 10.0  # ln(50257) = 10.8 at init
    assert losses[-1] < 0.1, losses[-10:]


@pytest.mark.slow
def test_resume_continues_exactly(data_dir, tmp_path, capsys):
    # Dropout makes the RNG state part of what must be restored.
    common = dict(max_steps=20, dropout=0.1, eval_interval=10, eval_steps=2)
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_main(tiny_argv(data_dir, straight, **common), capsys)[0] == 0
    code, err = run_main(tiny_argv(data_dir, split, stop_at_step=10, **common), capsys)
    assert code == 0 and "--stop-at-step" in err
    assert sorted(p.name for p in split.glob("ckpt_*")) == ["ckpt_00000010"]
    code, err = run_main(["--resume", "--out-dir", str(split)], capsys)
    assert code == 0, err
    assert "resumed from" in err

    a, a_eval = read_log(straight)
    b, b_eval = read_log(split)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for step in a:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-6, rel=0), step
        assert b[step]["lr"] == a[step]["lr"]
    assert b_eval[20]["val_loss"] == pytest.approx(a_eval[20]["val_loss"], abs=1e-6, rel=0)
    assert a[20]["loss"] < a[1]["loss"] - 1.0  # it did learn something


@pytest.mark.slow
def test_gradient_accumulation_matches_one_big_batch(data_dir, tmp_path, capsys):
    losses = {}
    for batch_size in (8, 4, 2):  # 1, 2 and 4 micro-batches per step of 256 tokens
        out = tmp_path / f"b{batch_size}"
        argv = tiny_argv(data_dir, out, batch_size=batch_size, total_batch_size=256, max_steps=5)
        assert run_main(argv, capsys)[0] == 0
        steps = read_log(out)[0]
        # AdamW hardly notices a gradient scaled by a constant, so compare the norm as well.
        losses[batch_size] = [(r["loss"], r["grad_norm"]) for r in steps.values()]
        assert steps[5]["tokens"] == 5 * 256
    for batch_size in (4, 2):
        for got, want in zip(losses[batch_size], losses[8], strict=True):
            assert got == pytest.approx(want, rel=1e-5, abs=0)
    assert losses[8][-1][0] < losses[8][0][0]


@pytest.mark.slow
def test_two_gloo_processes_match_one(data_dir, tmp_path, capsys):
    common = dict(batch_size=4, total_batch_size=256, max_steps=5, eval_interval=5, eval_steps=2)
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_main(tiny_argv(data_dir, one, **common), capsys)[0] == 0  # 2 micro-steps x 1 process
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(ROOT / "train.py"),
        *tiny_argv(data_dir, two, **common),
    ]  # 1 micro-step x 2 processes
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 process(es)" in proc.stderr
    a, a_eval = read_log(one)
    b, b_eval = read_log(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in a:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5, abs=0)
        assert b[step]["grad_norm"] == pytest.approx(a[step]["grad_norm"], rel=1e-5, abs=0)
    assert b_eval[5]["val_loss"] == pytest.approx(a_eval[5]["val_loss"], rel=1e-5, abs=0)
    assert sorted(p.name for p in two.glob("ckpt_*")) == ["ckpt_00000005"]  # written once, by rank 0


def test_checkpoint_loads_with_from_pretrained(data_dir, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(make_config("cpu", tiny_settings(data_dir, out, max_steps=4)))
    try:
        assert trainer.fit() == 0
    finally:
        trainer.close()
    x = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(1))
    loaded = from_pretrained(out)
    assert loaded.config == trainer.raw_model.config
    trainer.raw_model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), trainer.raw_model(x))
    names = {p.name for p in (out / "ckpt_00000004").iterdir()}
    assert names == {
        "model.safetensors",
        "config.json",
        "train_state.safetensors",
        "train_state.json",
        "minigpt_tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
    }
    assert not list(out.glob(".tmp_*"))
    assert (out / "loss.png").stat().st_size > 0


def test_keeps_the_last_k_checkpoints(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(tiny_argv(data_dir, out, max_steps=6, ckpt_interval=1, keep_checkpoints=2), capsys)[0] == 0
    assert sorted(p.name for p in out.glob("ckpt_*")) == ["ckpt_00000005", "ckpt_00000006"]


def names(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("ckpt_*"))


def same_weights(a: Path, b: Path) -> bool:
    x = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(from_pretrained(a).eval()(x), from_pretrained(b).eval()(x))


def test_resume_from_an_older_checkpoint_starts_a_branch(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(tiny_argv(data_dir, out, max_steps=6, ckpt_interval=2, keep_checkpoints=2), capsys)[0] == 0
    assert names(out) == ["ckpt_00000004", "ckpt_00000006"]
    old_log = (out / "log.jsonl").read_text()
    old_6 = tree_hashes(out / "ckpt_00000006")

    # Resume ckpt_4, keep 2, one more step: ckpt_4 (resumed from) and ckpt_5 (new) stay; the
    # old run's ckpt_6 is moved aside with its log, not deleted, and is no longer "latest".
    code, err = run_main(["--resume", str(out / "ckpt_00000004"), "--stop-at-step", "5"], capsys)
    assert code == 0, err
    assert names(out) == ["ckpt_00000004", "ckpt_00000005"]
    [aside] = (out / "superseded").iterdir()
    assert aside.name.endswith("-after-ckpt_00000004") and "moved to " + str(aside) in err
    assert tree_hashes(aside / "ckpt_00000006") == old_6
    assert (aside / "log.jsonl").read_text() == old_log
    assert sorted(read_log(out)[0]) == [1, 2, 3, 4, 5]
    # The summary, --resume and from_pretrained(out_dir) all mean the same checkpoint.
    assert latest_checkpoint(out) == out / "ckpt_00000005"
    assert (out / "latest").read_text() == "ckpt_00000005\n"
    assert same_weights(out, out / "ckpt_00000005") and not same_weights(out, aside / "ckpt_00000006")
    code, err = run_main(["--resume", "--out-dir", str(out), "--stop-at-step", "6"], capsys)
    assert code == 0 and f"resumed from {out / 'ckpt_00000005'} at step 5" in err
    # keep 2 from this run (5 and 6); ckpt_5 was resumed from, ckpt_4 is neither.
    assert names(out) == ["ckpt_00000005", "ckpt_00000006"]


def test_resuming_an_older_checkpoint_of_an_extended_run_starts_a_branch(data_dir, tmp_path, capsys):
    # README: "`--resume out/ckpt_00000400` while `out/` also holds later checkpoints starts a new
    # branch of the run". ckpt_4 recorded --max-steps 4 (the run was extended to
    # 6 later), so resuming it said "already complete" and branched nothing.
    out = tmp_path / "run"
    assert run_main(tiny_argv(data_dir, out, max_steps=4, ckpt_interval=2), capsys)[0] == 0
    assert run_main(["--resume", "--out-dir", str(out), "--max-steps", "6"], capsys)[0] == 0
    assert names(out) == ["ckpt_00000002", "ckpt_00000004", "ckpt_00000006"]
    old_6 = tree_hashes(out / "ckpt_00000006")
    code, err = run_main(["--resume", str(out / "ckpt_00000004")], capsys)
    assert code == 0, err
    assert "already complete" not in err and "a new branch of the run" in err
    [aside] = (out / "superseded").iterdir()
    assert tree_hashes(aside / "ckpt_00000006") == old_6
    assert latest_checkpoint(out) == out / "ckpt_00000006" and load_checkpoint(out / "ckpt_00000006").step == 6
    assert sorted(read_log(out)[0]) == [1, 2, 3, 4, 5, 6]  # trained to the run's end, step 6
    assert json.loads((out / "run.json").read_text())["train_config"]["max_steps"] == 6


def test_stop_after_a_branch_keeps_the_checkpoint_it_saved(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(tiny_argv(data_dir, out, max_steps=6, ckpt_interval=2), capsys)[0] == 0
    assert names(out) == ["ckpt_00000002", "ckpt_00000004", "ckpt_00000006"]
    code = train.main(["--resume", str(out / "ckpt_00000002"), "--stop-at-step", "3", "--keep-checkpoints", "2"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"saved {out / 'ckpt_00000003'}" in captured.err
    assert names(out) == ["ckpt_00000002", "ckpt_00000003"]
    assert json.loads(captured.out)["checkpoint"] == str(out / "ckpt_00000003")  # the summary
    [aside] = (out / "superseded").iterdir()
    assert sorted(p.name for p in aside.glob("ckpt_*")) == ["ckpt_00000004", "ckpt_00000006"]


def test_the_checkpoint_resumed_from_is_never_pruned(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = tiny_argv(data_dir, out, max_steps=8, ckpt_interval=1, keep_checkpoints=2)
    assert run_main(argv + ["--stop-at-step", "4"], capsys)[0] == 0
    assert names(out) == ["ckpt_00000003", "ckpt_00000004"]
    assert run_main(["--resume", "--out-dir", str(out)], capsys)[0] == 0
    assert names(out) == ["ckpt_00000004", "ckpt_00000007", "ckpt_00000008"]


def test_pruning_renames_before_it_deletes(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        (tmp_path / f"ckpt_{step:08d}").mkdir()
        for name in ("model.safetensors", "config.json", "train_state.json", "train_state.safetensors"):
            (tmp_path / f"ckpt_{step:08d}" / name).write_text("x")
    rmtree = shutil.rmtree

    def killed_halfway(path, *args, **kwargs):  # deletes one file, then the process "dies"
        next(Path(path).iterdir()).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(tmp_path, keep=2)
    assert names(tmp_path) == ["ckpt_00000002", "ckpt_00000003"]  # no partial ckpt_00000001
    assert [p.name for p in tmp_path.glob(".trash_*")] == [".trash_ckpt_00000001"]
    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000003"
    prune_checkpoints(tmp_path, keep=2)  # the next prune (or the next start) clears the leftover
    assert not list(tmp_path.glob(".trash_*"))


def test_latest_pointer_wins_over_a_higher_step(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"ckpt_{step:08d}").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000006"  # no pointer: the highest step
    checkpoint.write_latest(tmp_path, 4)
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000004"
    checkpoint.write_latest(tmp_path, 5)  # killed between the pointer and the rename of ckpt_5
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000004"
    (tmp_path / "latest").write_text("garbage\n")
    with pytest.raises(checkpoint.CheckpointError, match="should name a ckpt_<step>"):
        latest_checkpoint(tmp_path)


def test_disk_full_during_a_checkpoint(data_dir, tmp_path, capsys, monkeypatch):
    save_file = checkpoint.save_file
    calls = 0

    def full_disk(tensors, filename, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:  # the second checkpoint (step 4): half of its files are written
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    out = tmp_path / "run"
    code, err = run_main(tiny_argv(data_dir, out, max_steps=8, ckpt_interval=2), capsys)
    assert code == 1
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "No space left on device" in line and f"the last checkpoint is still {out / 'ckpt_00000002'}" in line
    assert names(out) == ["ckpt_00000002"] and not list(out.glob(".tmp_*"))
    assert load_checkpoint(out / "ckpt_00000002").step == 2
    assert max(read_log(out)[0]) == 4  # it stopped at the step it could not save


def test_resume_of_a_finished_run_says_it_is_complete(finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = tree_hashes(out)
    code, err = run_main(["--resume", "--out-dir", str(out)], capsys)
    assert code == 0
    assert err.count("\n") == 1 and "already complete" in err and "--max-steps 4" in err
    assert tree_hashes(out) == before


def test_log_records(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_main(tiny_argv(data_dir, out, max_steps=4, eval_interval=2, peak_flops=1e12), capsys)
    assert code == 0
    steps, evals = read_log(out)
    assert sorted(evals) == [0, 2, 4] and sorted(steps) == [1, 2, 3, 4]
    for r in steps.values():
        assert {"step", "loss", "lr", "tokens_per_sec", "grad_norm", "dt", "mfu"} <= set(r)
        assert r["tokens_per_sec"] > 0 and 0 < r["mfu"] < 1
    meta = json.loads((data_dir / "meta.json").read_text())["splits"]["val"]
    for r in evals.values():
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2) * meta["tokens"] / meta["bytes"])
    run = json.loads((out / "run.json").read_text())
    assert 0 < run["unigram_entropy"] < 10
    assert "unigram entropy" in err and "--- sample at step 4 ---" in err


def test_init_from_pretrained_weights(data_dir, tmp_path, capsys):
    torch.manual_seed(3)
    source = GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=16))
    save_pretrained(source, tmp_path / "init")
    x, y = DataLoader(data_dir, "train", 4, 32, seed=7, order="random").next_batch()  # what the run reads
    with torch.no_grad():
        expected = source(x, y).item()

    out = tmp_path / "run"
    argv = tiny_argv(data_dir, out, init=tmp_path / "init", n_layer=None, n_head=None, n_embd=None, max_steps=3)
    code, err = run_main(argv, capsys)
    assert code == 0, err
    assert read_log(out)[0][1]["loss"] == pytest.approx(expected, rel=1e-6)  # step 1 ran on those weights
    run = json.loads((out / "run.json").read_text())
    assert run["model_config"] == source.config.to_dict()
    assert (run["train_config"]["n_layer"], run["train_config"]["n_embd"]) == (1, 16)
    assert from_pretrained(out).config == source.config

    code, err = run_main(tiny_argv(data_dir, tmp_path / "run2", init=tmp_path / "init"), capsys)
    assert code == 2 and "n_layer=1" in err and err.startswith("error: ")  # explicit sizes must match


# ----------------------------------------------------------------------------------------------
# Failures


def test_nan_loss_stops_training(data_dir, tmp_path, capsys, monkeypatch):
    calls = 0
    forward = GPT.forward

    def poisoned(self, idx, targets=None, **kwargs):
        nonlocal calls
        value = forward(self, idx, targets, **kwargs)
        if targets is None:  # logits, not a loss
            return value
        calls += 1
        return value * float("nan") if calls == 5 else value  # the 5th step's forward

    monkeypatch.setattr(GPT, "forward", poisoned)
    out = tmp_path / "run"
    code, err = run_main(tiny_argv(data_dir, out, max_steps=10, ckpt_interval=2), capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "nan" in lines[0] and "step 5" in lines[0]
    # ckpt_4's weights gave the nan of step 5: resuming from it would repeat that step.
    assert "sane loss is " + str(out / "ckpt_00000002") in lines[0]
    assert sorted(p.name for p in out.glob("ckpt_*")) == ["ckpt_00000002", "ckpt_00000004"]
    assert max(read_log(out)[0]) == 4


def test_divergence_names_the_last_checkpoint_with_a_sane_loss(data_dir, tmp_path, capsys, monkeypatch):
    calls = 0
    forward = GPT.forward

    def blowing_up(self, idx, targets=None, **kwargs):
        nonlocal calls
        value = forward(self, idx, targets, **kwargs)
        if targets is None:
            return value
        calls += 1
        # Finite but absurd losses from step 5 on (the weights of ckpt_4 and ckpt_6), nan at step 8.
        return value * (float("nan") if calls == 8 else 1e6 if calls >= 5 else 1.0)

    monkeypatch.setattr(GPT, "forward", blowing_up)
    out = tmp_path / "run"
    code, err = run_main(tiny_argv(data_dir, out, max_steps=10, ckpt_interval=2), capsys)
    assert code == 1
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "sane loss is " + str(out / "ckpt_00000002") in line, line
    assert sorted(p.name for p in out.glob("ckpt_*")) == ["ckpt_00000002", "ckpt_00000004", "ckpt_00000006"]
    state = json.loads((out / "ckpt_00000006" / "train_state.json").read_text())
    assert state["loss"] == read_log(out)[0][6]["loss"] > 1e6  # each checkpoint records its step's loss


def test_divergence_with_no_sane_checkpoint_says_so(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_main(tiny_argv(data_dir, out, lr=1e3, warmup_steps=0, ckpt_interval=1, max_steps=30), capsys)
    assert code == 1
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "no checkpoint has a sane loss" in line, line
    assert list(out.glob("ckpt_*"))


def test_huge_learning_rate_diverges(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_main(tiny_argv(data_dir, out, lr=1e30, grad_clip=0, warmup_steps=0, ckpt_interval=50), capsys)
    assert code == 1
    assert "error: the loss became" in err and "no checkpoint was written" in err
    assert not list(out.glob("ckpt_*"))


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train.main(tiny_argv(data_dir, out, max_steps=4, ckpt_interval=2)) == 0
    return out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BREAKAGES = {
    "model config differs from the flags": (None, ["--n-embd", "48"]),
    "truncated model.safetensors": (lambda c: _truncate(c / "model.safetensors"), []),
    "truncated train state": (lambda c: _truncate(c / "train_state.safetensors"), []),
    "missing train_state.json": (lambda c: (c / "train_state.json").unlink(), []),
    "garbled train_state.json": (lambda c: (c / "train_state.json").write_text('{"step": '), []),
    "swapped config.json": (
        lambda c: (c / "config.json").write_text(
            (c / "config.json").read_text().replace('"n_layer": 2', '"n_layer": 3')
        ),
        [],
    ),
    "different batch size": (None, ["--batch-size", "2"]),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_bad_checkpoint_is_a_clear_error_and_touches_nothing(finished_run, tmp_path, capsys, breakage):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    damage, flags = BREAKAGES[breakage]
    if damage is not None:
        damage(out / "ckpt_00000004")
    before = tree_hashes(out)
    code, err = run_main(["--resume", "--out-dir", str(out), "--max-steps", "8", *flags], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert tree_hashes(out) == before


def test_half_written_checkpoint_is_ignored(finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    original = read_log(out)[0]
    partial = out / ".tmp_ckpt_00000006"  # what kill -9 during a save leaves behind
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")
    assert from_pretrained(out).config.n_embd == 32  # the latest complete one, ckpt_00000004

    # Resume an older checkpoint by path: a new branch; steps 3 and 4 are replayed and the old
    # ckpt_00000004 is moved aside, not overwritten.
    old_4 = tree_hashes(out / "ckpt_00000004")
    code, err = run_main(["--resume", str(out / "ckpt_00000002"), "--max-steps", "6"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("ckpt_*")) == ["ckpt_00000002", "ckpt_00000004", "ckpt_00000006"]
    [aside] = (out / "superseded").glob("*/ckpt_00000004")
    assert tree_hashes(aside) == old_4
    assert not partial.exists()
    resumed = read_log(out)[0]
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in (1, 2):
        assert resumed[step] == original[step]
    # Same losses for steps 3-4 only up to the schedule: max_steps changed from 4 to 6.
    assert resumed[3]["loss"] == pytest.approx(original[3]["loss"], abs=1e-6)


def test_refuses_to_start_over_existing_checkpoints(finished_run, tmp_path, capsys, data_dir):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = tree_hashes(out)
    code, err = run_main(tiny_argv(data_dir, out), capsys)
    assert code == 2 and "--resume" in err
    assert tree_hashes(out) == before
    code, err = run_main(["--resume", "--out-dir", str(tmp_path / "empty")], capsys)
    assert code == 2 and err.startswith("error: ")


def test_bad_flags_are_one_line_errors(data_dir, tmp_path, capsys):
    code, err = run_main(tiny_argv(data_dir, tmp_path / "a", total_batch_size=100), capsys)
    assert code == 2 and err.startswith("error: total_batch_size 100 is not a multiple") and err.count("\n") == 1
    code, err = run_main(tiny_argv(data_dir, tmp_path / "b", n_embd=30, n_head=4), capsys)
    assert code == 2 and "divisible" in err and err.count("\n") == 1
    if not torch.cuda.is_available():
        code, err = run_main(tiny_argv(data_dir, tmp_path / "c", device="cuda"), capsys)
        assert code == 2 and "CUDA" in err and err.count("\n") == 1
    if importlib.util.find_spec("wandb") is None:
        code, err = run_main(tiny_argv(data_dir, tmp_path / "e") + ["--wandb"], capsys)
        assert code == 2 and "pip install wandb" in err
    code, err = run_main(tiny_argv(tmp_path / "no-such-data", tmp_path / "d"), capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not any((tmp_path / name).exists() for name in "abcde")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits(data_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *tiny_argv(data_dir, out, max_steps=100000, warmup_steps=10)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        log = out / "log.jsonl"
        while not (log.exists() and len(log.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    [ckpt] = out.glob("ckpt_*")
    last_step = max(read_log(out)[0])
    assert ckpt.name == f"ckpt_{last_step:08d}"
    assert f"saved {ckpt}" in err
    assert from_pretrained(out).config.n_embd == 32


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [1, 0])
def test_a_frozen_rank_stops_the_other_within_the_timeout(data_dir, tmp_path, frozen):
    """A rank stopped with SIGSTOP left the other blocked in a collective for
    gloo's 30-minute default. With --dist-timeout 5 the survivor exits 1 in one line naming it."""
    out, port = tmp_path / "run", 29500 + os.getpid() % 1000 + frozen
    argv = tiny_argv(data_dir, out, max_steps=10_000, dist_timeout=5)
    procs, events = [], []
    for rank in (0, 1):
        events.append(tmp_path / f"events{rank}")
        events[rank].write_text("")
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "FAULT_EVENTS": str(events[rank]),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "fault_hooks.py"), *argv],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.monotonic() + 120
        while events[frozen].read_text().count("step") < 3:
            assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
            assert time.monotonic() < deadline, "the run never reached step 3"
            time.sleep(0.05)
        procs[frozen].send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        survivor = procs[1 - frozen]
        _, err = survivor.communicate(timeout=60)
        waited = time.monotonic() - stopped_at
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert survivor.returncode == 1, err[-2000:]
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert f"rank {1 - frozen}: rank {frozen} stopped answering" in line and "--dist-timeout 5 s" in line, err
    assert waited < 40, waited


@pytest.mark.slow
def test_a_rank_that_stops_answering_during_set_up_is_one_line(data_dir, tmp_path):
    """Rank 1 stalls before the first set-up collective (rank 0's checks sent to every rank):
    rank 0 gives up after --dist-timeout in one line naming rank 1, not a traceback."""
    out, port = tmp_path / "run", 29700 + os.getpid() % 1000
    argv = tiny_argv(data_dir, out, max_steps=10, dist_timeout=5)
    procs = []
    for rank in (0, 1):
        events = tmp_path / f"events{rank}"
        events.write_text("")
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "FAULT_EVENTS": str(events),
            **({"FAULT_AT": "setup:1"} if rank == 1 else {}),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "fault_hooks.py"), *argv],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        _, err = procs[0].communicate(timeout=90)
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert procs[0].returncode == 1, err[-2000:]
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "rank 0: rank 1 stopped answering" in line and "--dist-timeout 5 s" in line, err
