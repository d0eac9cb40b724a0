"""--parallel fsdp (FSDP2) and --activation-checkpointing, on the CPU with gloo and a tiny model.

The multi-process runs go through torchrun in child processes, as in test_train.py; the
1-process runs and the bad-input checks run train.main in this process.

Tolerances. A run split by a checkpoint and resumed replays the same float operations in the
same order as the straight run (the shards hold the exact fp32 values), so its losses match to
1e-6 absolute, as for DDP. Against 1 process and DDP, FSDP sums the same per-row gradients in
another order (1 process adds the micro-batches in one tensor, DDP all-reduces whole buckets,
FSDP reduce-scatters each block's flat gradient); the gradients then agree to a few ulps and the
losses to ~1e-7 relative (seen), so 1e-5 relative leaves a wide margin while a missing gradient
sync, a wrong accumulation scale or a skipped row moves them in the third digit or earlier. The
gradient norm is looser, 1e-3 relative: clip_grad_norm_ sums ~1.6M fp32 squares (wte alone),
and on whole tensors (1 process, DDP) that sum is itself off by ~4e-5 relative from a float64
sum, while FSDP's per-shard partial sums land elsewhere within that error (1.2e-4 apart seen
after a few steps). A doubled or halved gradient (a sync applied twice, or not averaged) would
still be 100% off; AdamW hides such a scale from the losses, so the norm is the check for it.
Activation checkpointing recomputes the very same operations, so its losses and gradients are
bitwise those of the plain model.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import ROOT, load_script, make_corpus, read_log, tiny_argv

from minigpt.model.config import GPTConfig
from minigpt.model.load import from_pretrained
from minigpt.model.model import GPT
from minigpt.train.parallel import checkpoint_activations

train = load_script(ROOT / "train.py")

# Every micro-batch of 4 x 32 tokens; 512 tokens per step: 4 micro-steps in 1 process, 2 in each of 2.
COMMON = dict(batch_size=4, total_batch_size=512, max_steps=6, eval_interval=6, eval_steps=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("fsdp_data"))


def torchrun(argv: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(ROOT / "train.py"),
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fsdp_run(data_dir, tmp_path_factory):
    """A 2-process FSDP run of 6 steps (2 micro-steps each), sampling and checkpointing at the end."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    proc = torchrun(tiny_argv(data_dir, out, parallel="fsdp", sample_interval=6, **COMMON))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 process(es)" in proc.stderr and "FSDP" in proc.stderr
    assert "--- sample at step 6 ---" in proc.stderr
    return out


@pytest.fixture
def one_rank_group(monkeypatch):
    """The environment torchrun gives a 1-process run (train.main then starts a gloo group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in dict(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    ).items():
        monkeypatch.setenv(key, value)


def assert_same_steps(got: dict, want: dict, loss_tol: dict, norm_tol: dict) -> None:
    assert sorted(got) == sorted(want) == list(range(1, 7))
    for step in want:
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], **loss_tol), step
        assert got[step]["grad_norm"] == pytest.approx(want[step]["grad_norm"], **norm_tol), step


@pytest.mark.slow
def test_fsdp_matches_one_process_and_ddp(fsdp_run, data_dir, tmp_path, capsys):
    one, ddp = tmp_path / "one", tmp_path / "ddp"
    assert train.main(tiny_argv(data_dir, one, **COMMON)) == 0
    capsys.readouterr()
    proc = torchrun(tiny_argv(data_dir, ddp, **COMMON))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, a_eval = read_log(one)
    b, b_eval = read_log(ddp)
    c, c_eval = read_log(fsdp_run)
    assert_same_steps(c, a, dict(rel=1e-5, abs=0), dict(rel=1e-3, abs=0))
    assert_same_steps(c, b, dict(rel=1e-5, abs=0), dict(rel=1e-3, abs=0))
    assert c_eval[6]["val_loss"] == pytest.approx(a_eval[6]["val_loss"], rel=1e-5, abs=0)
    assert c[6]["loss"] < c[1]["loss"] - 0.3  # it learned


@pytest.mark.slow
def test_fsdp_resume_from_shards_equals_straight_training(fsdp_run, data_dir, tmp_path):
    split = tmp_path / "split"
    proc = torchrun(tiny_argv(data_dir, split, parallel="fsdp", stop_at_step=3, **COMMON))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in split.glob("ckpt_*")) == ["ckpt_00000003"]
    proc = torchrun(["--resume", "--out-dir", str(split)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "FSDP" in proc.stderr  # --parallel came from the checkpoint
    a, a_eval = read_log(fsdp_run)
    b, b_eval = read_log(split)
    exact = dict(abs=1e-6, rel=0)
    assert_same_steps(b, a, exact, exact)
    assert b_eval[6]["val_loss"] == pytest.approx(a_eval[6]["val_loss"], abs=1e-6, rel=0)


# what GPT2Tokenizer.save_pretrained writes: transformers reads the export's tokenizer too
GPT2_TOKENIZER_FILES = ("minigpt_tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")


@pytest.mark.slow
def test_fsdp_checkpoint_layout_and_full_export(fsdp_run):
    from transformers import GPT2LMHeadModel

    ckpt = fsdp_run / "ckpt_00000006"
    assert sorted(p.name for p in fsdp_run.glob("ckpt_*")) == [ckpt.name]
    assert {p.name for p in ckpt.iterdir()} == {
        "model.safetensors",
        "config.json",
        "train_state.json",
        "train_state.safetensors",
        "sharded",
        *GPT2_TOKENIZER_FILES,
    }
    assert not list(fsdp_run.glob(".tmp_*"))
    # The export is the two ranks' shards put back together (wte without its padding rows).
    shards = [load_file(str(p)) for p in sorted((ckpt / "sharded").glob("*.safetensors"))]
    assert len(shards) == 2
    model = from_pretrained(fsdp_run)  # what sample.py --init does
    for name, value in model.state_dict().items():
        whole = torch.cat([s[f"model.{name}"] for s in shards if f"model.{name}" in s])
        n = model.config.vocab_size if name == "transformer.wte.weight" else value.size(0)
        assert torch.equal(whole[:n], value[:n]), name
    assert "optimizer.transformer.h.0.mlp.c_fc.weight.exp_avg" in shards[0]

    x = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(1))
    hf = GPT2LMHeadModel.from_pretrained(ckpt).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-4, atol=1e-4)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    config = GPTConfig(block_size=24, n_layer=3, n_head=2, n_embd=40, vocab_size=203, dropout=0.1)
    plain = GPT(config)
    recomputed = GPT(config)
    recomputed.load_state_dict(plain.state_dict())
    checkpoint_activations(recomputed)
    assert recomputed.state_dict().keys() == plain.state_dict().keys()  # checkpoints keep their names
    x = torch.randint(0, 203, (3, 23))
    y = torch.randint(0, 203, (3, 23))
    calls = []  # the recompute runs each inner block's forward again in the backward pass
    for block in recomputed.transformer.h:
        block._checkpoint_wrapped_module.register_forward_pre_hook(lambda *_: calls.append(1))
    losses = []
    for model in (plain, recomputed):
        torch.manual_seed(1)  # the same dropout masks: the recompute replays the RNG state
        loss = model(x, y)
        loss.backward()
        losses.append(loss.detach())
    assert len(calls) == 2 * config.n_layer
    assert torch.equal(losses[0], losses[1])
    grads = {name.replace("_checkpoint_wrapped_module.", ""): p.grad for name, p in recomputed.named_parameters()}
    assert grads.keys() == dict(plain.named_parameters()).keys()
    for name, p in plain.named_parameters():
        assert torch.equal(p.grad, grads[name]), name


def test_activation_checkpointing_run_matches_a_plain_run(data_dir, tmp_path, capsys):
    plain, ac = tmp_path / "plain", tmp_path / "ac"
    assert train.main(tiny_argv(data_dir, plain, max_steps=3)) == 0
    assert train.main([*tiny_argv(data_dir, ac, max_steps=3), "--activation-checkpointing"]) == 0
    assert "activation checkpointing" in capsys.readouterr().err
    a, b = read_log(plain)[0], read_log(ac)[0]
    assert [r["loss"] for r in a.values()] == [r["loss"] for r in b.values()]
    assert [r["grad_norm"] for r in a.values()] == [r["grad_norm"] for r in b.values()]
    assert from_pretrained(ac).state_dict().keys() == from_pretrained(plain).state_dict().keys()


def test_fsdp_without_torchrun_is_a_one_line_error(data_dir, tmp_path, capsys):
    code = train.main(tiny_argv(data_dir, tmp_path / "run", parallel="fsdp"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "launch it with torchrun" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_sharded_checkpoint_on_another_world_size_is_a_one_line_error(fsdp_run, one_rank_group, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in fsdp_run.rglob("*")}
    code = train.main(["--resume", "--out-dir", str(fsdp_run), "--max-steps", "8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "was written by 2 process(es), this run has 1" in err
    assert {p: p.stat().st_mtime_ns for p in fsdp_run.rglob("*")} == before


def test_one_rank_fsdp_runs_and_refuses_a_ddp_checkpoint(data_dir, one_rank_group, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(tiny_argv(data_dir, out, parallel="fsdp", max_steps=2)) == 0
    assert (out / "ckpt_00000002" / "sharded").is_dir()
    ddp = tmp_path / "ddp"
    assert train.main(tiny_argv(data_dir, ddp, max_steps=2)) == 0
    capsys.readouterr()
    code = train.main(["--resume", "--out-dir", str(ddp), "--max-steps", "3", "--parallel", "fsdp"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "was written with --parallel ddp; resume it with the same" in err


def test_full_disk_while_writing_shards_is_one_line(data_dir, one_rank_group, tmp_path, capsys, monkeypatch):
    from minigpt.train import parallel

    def no_space(self, plan, planner):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(parallel.dcp.HuggingFaceStorageWriter, "write_data", no_space)
    out = tmp_path / "run"
    code = train.main(tiny_argv(data_dir, out, parallel="fsdp", max_steps=2))
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.splitlines()[-1] == (
        f"error: cannot write the checkpoint of step 2 in {out} (No space left on device); no earlier checkpoint exists"
    )
    assert not list(out.glob("ckpt_*")) and not list(out.glob(".tmp_*"))
