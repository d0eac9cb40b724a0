"""--optimizer muon: torch.optim.Muon for the blocks' matrices, AdamW for the rest.

One Muon update is checked against a plain float64 restatement of the algorithm as torch
documents it (momentum B = mu B + g, Nesterov g + mu B, five quintic Newton-Schulz steps
X <- aX + (bA + cA^2)X with A = XX^T on the transposed wide form, decoupled weight decay, lr
scaled by sqrt(max(1, rows/cols))). torch keeps its momentum as an average (a multiple of B by
(1 - mu)) and runs Newton-Schulz in bf16; the first is undone by the normalisation, the second
leaves errors of a few bf16 ulps, amplified by the iteration (up to 7% of the update's norm on
these gradients, 1.6% on random matrices): the update is held to 12% of its norm, while
dropping the Nesterov term, the lr scale or the weight decay moves it by 37-88%.

Resumes must be bitwise: the same float operations run in the same order.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import ROOT, load_script, make_corpus, read_log, tiny_argv

from minigpt.model.config import GPTConfig
from minigpt.model.model import GPT
from minigpt.train.checkpoint import latest_checkpoint
from minigpt.train.config import ConfigError, TrainConfig
from minigpt.train.optim import Optimizers, configure_optimizer, muon_parameters, set_hyperparameters

train = load_script(ROOT / "train.py")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

NS = (3.4445, -4.7750, 2.0315)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("optim_data"))


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The reference orthogonalisation, in float64."""
    x = g.double()
    wide = x.shape[0] > x.shape[1]
    if wide:
        x = x.T
    x = x / max(x.norm().item(), 1e-7)
    a, b, c = NS
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if wide else x


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    # Odd widths: 3 heads of 12, a 97-token vocabulary.
    return GPT(GPTConfig(block_size=16, vocab_size=97, n_layer=2, n_head=3, n_embd=36))


def loss_of(model: GPT, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 97, (3, 16), generator=g)
    return model(idx, torch.roll(idx, -1, dims=1))


def test_muon_takes_the_block_matrices_only():
    names = set(muon_parameters(tiny_model()))
    assert names == {
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    cfg = TrainConfig(optimizer="muon")
    opt = configure_optimizer(tiny_model(), cfg, "cpu")
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in muon.param_groups) == 8
    assert [p.dim() for p in adamw.param_groups[0]["params"]] == [2, 2]  # wte, wpe
    plain = configure_optimizer(tiny_model(), TrainConfig(), "cpu")
    assert isinstance(plain, torch.optim.AdamW)


def test_schedule_scales_both_optimizers_alike():
    cfg = TrainConfig(optimizer="muon", lr=2e-3, muon_lr=0.05)
    opt = configure_optimizer(tiny_model(), cfg, "cpu")
    set_hyperparameters(opt, cfg, lr=5e-4)  # a quarter of the peak
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.0125), 5e-4, 5e-4]


def test_muon_steps_match_the_reference():
    # A large weight decay, so that its term is a good part of the update.
    cfg = TrainConfig(optimizer="muon", muon_lr=0.03, weight_decay=3.0, muon_momentum=0.9)
    model = tiny_model()
    opt = configure_optimizer(model, cfg, "cpu")
    set_hyperparameters(opt, cfg, lr=cfg.lr)
    params = dict(model.named_parameters())
    names = muon_parameters(model)
    buf = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    mu, lr, wd = cfg.muon_momentum, cfg.muon_lr, cfg.weight_decay
    for step in range(3):  # the later steps have momentum to carry
        opt.zero_grad()
        loss_of(model, seed=step).backward()
        before = {n: params[n].detach().double().clone() for n in names}
        grads = {n: params[n].grad.double().clone() for n in names}
        opt.step()
        for n in names:
            g = grads[n]
            buf[n] = mu * buf[n] + g
            update = newton_schulz(g + mu * buf[n])
            rows, cols = g.shape
            want = before[n] * (1 - lr * wd) - lr * math.sqrt(max(1.0, rows / cols)) * update
            got = params[n].detach().double()
            err = (got - want).norm() / (want - before[n]).norm()
            assert err < 0.12, (step, n, err.item())


def test_muon_and_fsdp_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="--parallel fsdp"):
        TrainConfig(optimizer="muon", parallel="fsdp")
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        TrainConfig(optimizer="sgd")


def test_state_dict_round_trip_numbers_parameters_across_optimizers():
    cfg = TrainConfig(optimizer="muon")
    a, b = tiny_model(), tiny_model()
    opt_a, opt_b = configure_optimizer(a, cfg, "cpu"), configure_optimizer(b, cfg, "cpu")
    loss_of(a, 0).backward()
    opt_a.step()
    sd = opt_a.state_dict()
    n_params = len(list(a.parameters()))
    assert sorted(sd["state"]) == list(range(n_params))
    assert set(sd["state"][0]) == {"momentum_buffer"}  # Muon's parameters come first
    assert set(sd["state"][n_params - 1]) == {"step", "exp_avg", "exp_avg_sq"}
    opt_b.load_state_dict(sd)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        for key, value in opt_a.state[p].items():
            assert torch.equal(value, opt_b.state[q][key])
    with pytest.raises(ValueError, match="parameter groups"):
        configure_optimizer(tiny_model(), TrainConfig(), "cpu").load_state_dict(sd)
    assert isinstance(opt_a, Optimizers)


def test_muon_resume_is_bitwise(data_dir, tmp_path, capsys):
    common = dict(max_steps=12, optimizer="muon", muon_lr=0.02, dropout=0.1)
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train.main(tiny_argv(data_dir, straight, **common)) == 0
    assert train.main(tiny_argv(data_dir, split, stop_at_step=6, **common)) == 0
    assert train.main(["--resume", "--out-dir", str(split)]) == 0
    a, b = read_log(straight)[0], read_log(split)[0]
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in a]
    assert a[12]["loss"] < a[1]["loss"] - 1.0  # it learned
    wa = load_file(str(latest_checkpoint(straight) / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(split) / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = load_file(str(latest_checkpoint(straight) / "train_state.safetensors"))
    sb = load_file(str(latest_checkpoint(split) / "train_state.safetensors"))
    moments = [k for k in sa if k.endswith("momentum_buffer")]
    assert len(moments) == 8 and all(torch.equal(sa[k], sb[k]) for k in moments)


def test_resuming_an_adamw_checkpoint_with_muon_is_one_line(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(tiny_argv(data_dir, out, max_steps=4, stop_at_step=2)) == 0
    capsys.readouterr()
    assert train.main(["--resume", "--out-dir", str(out), "--optimizer", "muon"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("was trained with --optimizer adamw; resume it with the same")


@pytest.mark.slow
def test_muon_two_gloo_processes_match_one(data_dir, tmp_path):
    common = dict(batch_size=4, total_batch_size=256, max_steps=4, optimizer="muon")
    one, two = tmp_path / "one", tmp_path / "two"
    assert train.main(tiny_argv(data_dir, one, **common)) == 0
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(ROOT / "train.py"),
        *tiny_argv(data_dir, two, **common),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_log(one)[0], read_log(two)[0]
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    # The gradients are summed in another order (a few fp32 ulps), which bf16 Newton-Schulz may
    # round differently: 1e-4 relative, against the ~1e-2 a wrong batch or a missed all-reduce moves.
    for step in a:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-4, abs=0)
