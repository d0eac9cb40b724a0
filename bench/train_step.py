"""The CPU training step, side by side with nanoGPT's model.py and the plain loss.

    python bench/train_step.py --nanogpt ~/src/nanoGPT          # JSON to a new bench/runs/ folder
    python bench/train_step.py --nanogpt DIR --update-results   # bench/results/train-step-cpu.json
    python bench/train_step.py --tiny                           # seconds: what the tests run

One process holds every implementation of the same step on the same weights and the same batch:
forward, loss, backward, gradient clipping at 1 and train.py's AdamW (minigpt.train.optim,
the same optimizer for every arm). The arms:

- minigpt: `model(x, y)`, the loss through minigpt.model.loss's fused, chunked head.
- minigpt-plain-loss: the same model with F.cross_entropy over the whole logits tensor.
- nanogpt: the GPT class of nanoGPT's own model.py, imported from the folder --nanogpt names (a
  copy the user fetched; nothing of it is part of this repository), holding minigpt's weights.
  Without --nanogpt the arm is left out and the results say so.

Rounds alternate the arms (A B C A B C ...), a few steps each, so that a machine whose speed drifts
slows them alike; each arm's figure is the median of its rounds and each ratio the median of the
per-round ratios. Before timing, every arm's loss on the batch is checked against minigpt's (the
same computation, within float32 rounding), so the comparison is of one job done three ways. The
top operators of one profiled step of each arm are recorded beside the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `minigpt` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import environment, log, output_dir, write_json  # noqa: E402
from bench.nanogpt import source_id  # noqa: E402
from minigpt.model.model import GPT, GPTConfig  # noqa: E402
from minigpt.train.config import TrainConfig  # noqa: E402
from minigpt.train.optim import configure_optimizer  # noqa: E402

SHAPES = {
    # GPT-2 124M as the README's training-step table runs it, with the exact GELU that nanoGPT's MLP
    # uses (nn.GELU()) in place of GPT-2's tanh form, so that the arms compute one function.
    "124m": dict(config=GPTConfig(activation="gelu"), batch_size=4, block_size=256),
    "tiny": dict(
        config=GPTConfig(block_size=64, vocab_size=317, n_layer=2, n_head=2, n_embd=32, activation="gelu"),
        batch_size=3,
        block_size=17,
    ),
}
NANOGPT_FILES = ("model.py",)


class BenchError(Exception):
    """Bad input to the benchmark: one line for the user."""


def load_nanogpt(folder: Path):
    """nanoGPT's model module, imported from `folder` (its model.py) without touching sys.path."""
    path = Path(folder).expanduser() / "model.py"
    if not path.is_file():
        raise BenchError(f"--nanogpt {folder}: no model.py there (point it at a copy of nanoGPT)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - a broken or foreign model.py: say so in one line
        raise BenchError(f"--nanogpt {folder}: its model.py failed to import: {type(e).__name__}: {e}") from None
    if not hasattr(module, "GPT") or not hasattr(module, "GPTConfig"):
        raise BenchError(f"--nanogpt {folder}: its model.py has no GPT / GPTConfig classes")
    return module


def nanogpt_twin(module, model: GPT):
    """nanoGPT's GPT with the same shape and weights as `model` (a GPT-2 layout: nn.Linear weights,
    tied head, biases, learned positions). Its vocabulary is the real one: nanoGPT's softmax runs over
    every row of its head, where minigpt's cuts off the rows it pads its embedding with."""
    c = model.config
    twin = module.GPT(
        module.GPTConfig(
            block_size=c.block_size,
            vocab_size=c.vocab_size,
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_embd=c.n_embd,
            dropout=0.0,
            bias=c.bias,
        )
    )
    state = dict(model.state_dict())
    state["transformer.wte.weight"] = state["transformer.wte.weight"][: c.vocab_size]
    result = twin.load_state_dict(state, strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise BenchError(f"minigpt's weights do not map onto nanoGPT's GPT: {result}")
    return twin.train()


def arms(shape: dict, nanogpt_dir: Path | None, seed: int = 0) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """{name: (model, loss_fn)} on one set of weights, and the batch (x, y)."""
    torch.manual_seed(seed)
    config, B, T = shape["config"], shape["batch_size"], shape["block_size"]
    data = torch.randint(0, config.vocab_size, (B, T + 1))
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()  # nanoGPT views its targets
    mini = GPT(config).train()
    plain = GPT(config).train()
    plain.load_state_dict(mini.state_dict())

    def plain_loss(x, y):
        logits = plain(x)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))

    out = {"minigpt": (mini, lambda x, y: mini(x, y)), "minigpt-plain-loss": (plain, plain_loss)}
    if nanogpt_dir is not None:
        nano = nanogpt_twin(load_nanogpt(nanogpt_dir), mini)
        out["nanogpt"] = (nano, lambda x, y: nano(x, y)[1])
    return out, x, y


def make_step(model: torch.nn.Module, loss_fn):
    optimizer = configure_optimizer(model, TrainConfig(), "cpu")
    params = list(model.parameters())

    def step(x, y) -> float:
        loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def top_ops(step, x, y, n: int = 8) -> list[dict]:
    """The n operators with the most self CPU time in one profiled step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(x, y)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total, "calls": e.count}
        for e in events[:n]
    ]


def run(shape_name: str, nanogpt_dir: Path | None, rounds: int, steps_per_round: int, profile: bool) -> dict:
    shape = SHAPES[shape_name]
    models, x, y = arms(shape, nanogpt_dir)
    steps = {name: make_step(model, fn) for name, (model, fn) in models.items()}
    # The same job: each arm's first loss on the batch equals minigpt's (same weights, same data).
    losses = {name: step(x, y) for name, step in steps.items()}
    for name, loss in losses.items():
        if abs(loss - losses["minigpt"]) > 1e-4 * max(1.0, abs(losses["minigpt"])):
            raise BenchError(f"{name}'s loss {loss:.6f} differs from minigpt's {losses['minigpt']:.6f}")
    for step in steps.values():  # one more warm-up step each
        step(x, y)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                step(x, y)
            times[name].append((time.perf_counter() - t0) / steps_per_round)
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in times))
    tokens = shape["batch_size"] * shape["block_size"]
    result = {
        name: {
            "step_s": statistics.median(ts),
            "tokens_per_s": tokens / statistics.median(ts),
            "rounds_s": ts,
            "first_loss": losses[name],
        }
        for name, ts in times.items()
    }
    for name in result:
        ratios = [b / a for a, b in zip(times["minigpt"], times[name], strict=True)]  # >1: minigpt is faster
        result[name]["minigpt_speedup"] = statistics.median(ratios)
    if profile:
        for name, step in steps.items():
            result[name]["top_ops"] = top_ops(step, x, y)
    c = shape["config"]
    return {
        "benchmark": "train-step",
        "shape": {
            "model": shape_name,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_embd": c.n_embd,
            "vocab_size": c.vocab_size,
            "batch_size": shape["batch_size"],
            "block_size": shape["block_size"],
            "dtype": "float32",
            "optimizer": "AdamW (minigpt.train.optim), clip 1.0",
        },
        "method": f"{rounds} rounds alternating the arms, {steps_per_round} steps per arm per round, after 2 warm-up "
        "steps; medians; ratios are medians of the per-round ratios",
        "nanogpt": None if nanogpt_dir is None else source_id(Path(nanogpt_dir).expanduser()),
        "threads": torch.get_num_threads(),
        "arms": result,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt", type=Path, default=None, help="a copy of nanoGPT (its model.py is imported)")
    p.add_argument("--tiny", action="store_true", help="a tiny shape, for the tests")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps-per-round", type=int, default=2)
    p.add_argument("--no-profile", action="store_true", help="skip the profiled step of each arm")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: a new bench/runs/ folder)")
    p.add_argument("--update-results", action="store_true", help="write bench/results/train-step-cpu.json")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps_per_round < 1:
        p.error("--rounds and --steps-per-round must be at least 1")
    try:
        record = run(
            "tiny" if args.tiny else "124m", args.nanogpt, args.rounds, args.steps_per_round, not args.no_profile
        )
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    record["environment"] = environment("cpu")
    out = output_dir(args.out, args.update_results, "train-step")
    path = write_json(out / "train-step-cpu.json", record)
    for name, a in record["arms"].items():
        print(f"{name:20s} {a['tokens_per_s']:8.1f} tok/s   minigpt is {a['minigpt_speedup']:.2f}x")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
