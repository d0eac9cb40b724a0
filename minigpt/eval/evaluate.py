"""Scoring a model on the benchmarks the field reports.

Everything is built on one operation, `score_rows` (minigpt/scoring.py): the log-likelihood of the last n tokens
of each of many token rows, batched (rows sorted by length, padded on the right, one forward
per batch; causal attention keeps the padding out of every real position, so batching does not
change a score; only the scored positions get logits, `scored_logits`, and a softmax). On top of it:

- `bits_per_byte`: a text scored with a sliding window. The text is preceded by <|endoftext|>
  so every one of its tokens is predicted; the first window predicts `window` tokens, each later
  one `stride` new tokens with the full window of left context (stride = window gives the
  disjoint windows of lm-evaluation-harness's `loglikelihood_rolling`).
- `score_multiple_choice` / `multiple_choice`: zero-shot multiple choice by the log-likelihood
  of each choice after the context, with lm-evaluation-harness 0.4's metrics: `acc` (the sum),
  `acc_norm` (divided by the choice's length in characters) and `acc_bytes` (divided by its
  length in UTF-8 bytes).
- `lambada`: last-word accuracy (the whole target word is the greedy continuation) and
  perplexity, exp(-mean log-likelihood of the target), as lambada_openai defines them.
- `lm_eval_tasks`: any lm-evaluation-harness task through `MiniGPTLM` (minigpt/lm_eval_adapter.py).

Context and continuation are tokenized the way lm-evaluation-harness does it: a trailing space
of the context moves to the continuation, the two are encoded together, and the continuation is
what follows the context's own tokens. An example longer than the context window loses tokens
from the left of its context, and the results count how many examples were truncated.

`evaluate(model, tokenizer, tasks)` (tokenizer: a minigpt.tokenizers.Tokenizer) runs a list of task
specs and returns {task: {metric: value, ..., "n": examples}}. The kinds of task a spec names
(bpb:PATH, mc:PATH.jsonl, ...) are one table, TASKS: each with its loader (reading minigpt.eval.tasks),
its scorer and its help line (tasks_help, for eval.py --task and train.py --eval-task).
"""

from __future__ import annotations

import json
import math
import platform
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from minigpt.eval.scoring import encode, encode_pair, fit_window, rolling_rows, safe_exp, score_rows, start_id
from minigpt.eval.tasks import (
    Example,
    Task,
    TaskError,
    hellaswag_path,
    lambada_path,
    read_hellaswag,
    read_lambada,
    read_multiple_choice,
    read_text,
)
from minigpt.provenance import device_name, git_commit, package_version, utc_now

# ----------------------------------------------------------------------------------------------
# Bits per byte


def bits_per_byte(
    model,
    tokenizer,
    text: str,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
    desc: str | None = None,
) -> dict:
    """{"bpb", "ppl" (per token), "word_ppl" (per whitespace-separated word), "nll" (nats/token),
    "tokens", "bytes", "words", "n": 1} of a text.

    The bytes are the text's UTF-8 bytes, whatever the tokenizer, so figures of models with
    different tokenizers compare."""
    window = window or model.config.block_size
    if not 1 <= window <= model.config.block_size:
        raise ValueError(f"window must be between 1 and the context window ({model.config.block_size}), got {window}")
    stride = stride or max(1, window // 2)
    tokens = [start_id(tokenizer)] + encode(tokenizer, text)
    rows = rolling_rows(tokens, window, stride)
    nll = -sum(s.logprob for s in score_rows(model, rows, batch_size, progress, desc))
    n_tokens, n_bytes = len(tokens) - 1, len(text.encode("utf-8"))
    n_words = len(re.split(r"\s+", text))  # as lm-evaluation-harness counts words for word_perplexity
    return {
        "bpb": nll / math.log(2) / n_bytes,
        "ppl": safe_exp(nll / n_tokens),
        "word_ppl": safe_exp(nll / n_words),
        "nll": nll / n_tokens,
        "tokens": n_tokens,
        "bytes": n_bytes,
        "words": n_words,
        "window": window,
        "stride": stride,
        "n": 1,
    }


# ----------------------------------------------------------------------------------------------
# Multiple choice


def score_multiple_choice(
    model, tokenizer, examples: Sequence[Example], batch_size: int = 16, progress: bool = False, desc: str | None = None
) -> tuple[list[list[float]], int]:
    """The log-likelihood of every choice of every example, and how many examples were cut
    to fit the context window. Every choice of every example is one row of `score_rows`."""
    rows, owner, truncated = [], [], set()
    for i, ex in enumerate(examples):
        for choice in ex.choices:
            context, continuation = encode_pair(tokenizer, ex.context, ex.delimiter + choice)
            row, cut = fit_window(context, continuation, model.config.block_size, ex.where)
            rows.append(row)
            owner.append(i)
            if cut:
                truncated.add(i)
    scores = score_rows(model, rows, batch_size, progress, desc)
    lls: list[list[float]] = [[] for _ in examples]
    for i, s in zip(owner, scores, strict=True):
        lls[i].append(s.logprob)
    return lls, len(truncated)


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # the first of equal maxima, as numpy's


def choice_metrics(ex: Example, lls: Sequence[float]) -> dict[str, float]:
    """acc, acc_norm and acc_bytes of one example, as lm-evaluation-harness 0.4 computes them."""
    chars = [len(c) for c in ex.choices]
    nbytes = [len(c.encode("utf-8")) for c in ex.choices]
    return {
        "acc": float(_argmax(lls) == ex.label),
        "acc_norm": float(_argmax([ll / n for ll, n in zip(lls, chars, strict=True)]) == ex.label),
        "acc_bytes": float(_argmax([ll / n for ll, n in zip(lls, nbytes, strict=True)]) == ex.label),
    }


def multiple_choice(
    model, tokenizer, examples: Sequence[Example], batch_size: int = 16, progress: bool = False, desc: str | None = None
) -> dict:
    """{"acc", "acc_norm", "acc_bytes", "n", "truncated"} over the examples."""
    if not examples:
        raise TaskError("no examples to score")
    lls, truncated = score_multiple_choice(model, tokenizer, examples, batch_size, progress, desc)
    per = [choice_metrics(ex, ll) for ex, ll in zip(examples, lls, strict=True)]
    out = {k: sum(p[k] for p in per) / len(per) for k in ("acc", "acc_norm", "acc_bytes")}
    return {**out, "n": len(examples), "truncated": truncated}


# ----------------------------------------------------------------------------------------------
# LAMBADA


def lambada(
    model,
    tokenizer,
    passages: Sequence[tuple[str, str, str]],
    batch_size: int = 16,
    progress: bool = False,
    desc: str | None = None,
) -> dict:
    """{"acc", "ppl", "n", "truncated"} of (where, context, target word) passages."""
    if not passages:
        raise TaskError("no examples to score")
    rows, truncated = [], 0
    for where, context, target in passages:
        row, cut = fit_window(*encode_pair(tokenizer, context, target), model.config.block_size, where)
        rows.append(row)
        truncated += cut
    scores = score_rows(model, rows, batch_size, progress, desc)
    mean_ll = sum(s.logprob for s in scores) / len(scores)
    return {
        "acc": sum(s.greedy for s in scores) / len(scores),
        "ppl": safe_exp(-mean_ll),
        "n": len(scores),
        "truncated": truncated,
    }


# ----------------------------------------------------------------------------------------------
# Running task specs


def import_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise TaskError(
            "lm-eval tasks need EleutherAI's lm-evaluation-harness: pip install 'minigpt[eval]' "
            "(or pip install lm-eval)"
        ) from None
    return lm_eval


def lm_eval_manager(names: Sequence[str], include_path: str | None = None):
    """lm-eval's TaskManager, once the names are known to it (one line if lm-eval is missing)."""
    import_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise TaskError(f"--include-path {include_path}: no such directory")
    manager = TaskManager(include_path=include_path)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise TaskError(
            f"unknown lm-eval task(s) {', '.join(unknown)} (lm-eval lists its tasks with "
            f"`lm-eval ls tasks`; custom YAMLs are read from --include-path)"
        )
    return manager


def lm_eval_tasks(
    model,
    tokenizer,
    names: Sequence[str],
    limit: int | None = None,
    batch_size: int = 16,
    include_path: str | None = None,
    num_fewshot: int | None = None,
    progress: bool = False,
    manager=None,
) -> dict[str, dict]:
    """lm-evaluation-harness tasks run with lm_eval.simple_evaluate on this model:
    {"lm-eval:task": {metric: value, ..., "n": examples}} (metrics keyed without lm-eval's ",none")."""
    lm_eval = import_lm_eval()
    from minigpt.eval.lm_eval_adapter import MiniGPTLM

    manager = manager or lm_eval_manager(names, include_path)
    lm = MiniGPTLM(model, tokenizer, batch_size=batch_size, progress=progress)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(names),
        limit=limit,
        num_fewshot=num_fewshot,
        task_manager=manager,
        log_samples=False,
        bootstrap_iters=0,
    )
    results = {}
    for task, metrics in out["results"].items():
        row = {}
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            row[metric if filt == "none" else key] = float(value)
        n = out.get("n-samples", {}).get(task, {}).get("effective")
        results[f"lm-eval:{task}"] = {**row, **({"n": n} if n is not None else {})}
    return results


@dataclass(frozen=True)
class ScoreOptions:
    """How evaluate() was asked to score: what a TaskKind's scorer may use."""

    limit: int | None = None
    batch_size: int = 16
    window: int | None = None
    stride: int | None = None
    include_path: str | None = None
    num_fewshot: int | None = None
    progress: bool = False


@dataclass(frozen=True)
class TaskKind:
    """One kind of task that `--task KIND[:ARG]` names: how its data is read and how it is scored."""

    arg: str  # what follows "KIND:" in the help ("PATH", ...)
    optional: bool  # True: the arg may be left out (the data is then downloaded once)
    description: str  # one line, for --help
    load: Callable[[Task, int | None, str | None], object]  # (task, limit, include_path) -> its data
    score: Callable[..., dict[str, dict]]  # (model, tokenizer, task, data, ScoreOptions) -> {result key: metrics}

    def form(self, kind: str) -> str:
        return f"{kind}[:{self.arg}]" if self.optional else f"{kind}:{self.arg}"


def lm_eval_names(task: Task) -> list[str]:
    return [n.strip() for n in task.arg.split(",") if n.strip()]


def _score_bpb(model, tokenizer, task: Task, data, o: ScoreOptions) -> dict[str, dict]:
    return {task.name: bits_per_byte(model, tokenizer, data, o.window, o.stride, o.batch_size, o.progress, task.name)}


def _score_choices(model, tokenizer, task: Task, data, o: ScoreOptions) -> dict[str, dict]:
    return {task.name: multiple_choice(model, tokenizer, data, o.batch_size, o.progress, task.name)}


def _score_lambada(model, tokenizer, task: Task, data, o: ScoreOptions) -> dict[str, dict]:
    return {task.name: lambada(model, tokenizer, data, o.batch_size, o.progress, task.name)}


def _score_lm_eval(model, tokenizer, task: Task, data, o: ScoreOptions) -> dict[str, dict]:
    return lm_eval_tasks(
        model,
        tokenizer,
        lm_eval_names(task),
        o.limit,
        o.batch_size,
        o.include_path,
        o.num_fewshot,
        o.progress,
        manager=data,
    )


# The kinds of task: `--task KIND[:ARG]`. A new kind is one entry here; load_task, evaluate and
# the help of eval.py --task and train.py --eval-task (tasks_help) read this table.
TASKS: dict[str, TaskKind] = {
    "bpb": TaskKind(
        "PATH",
        False,
        "bits per byte and per-token perplexity of a UTF-8 text (sliding window)",
        lambda task, limit, include_path: read_text(task.arg)[:limit],
        _score_bpb,
    ),
    "mc": TaskKind(
        "PATH.jsonl",
        False,
        'multiple choice, one {"context", "choices", "label"} object a line: '
        "acc, acc_norm (per character), acc_bytes (per byte)",
        lambda task, limit, include_path: read_multiple_choice(task.arg)[:limit],
        _score_choices,
    ),
    "hellaswag": TaskKind(
        "PATH",
        True,
        "HellaSwag's validation set (10,042 examples; downloaded once, or a local copy)",
        lambda task, limit, include_path: read_hellaswag(hellaswag_path(task))[:limit],
        _score_choices,
    ),
    "lambada": TaskKind(
        "PATH",
        True,
        "OpenAI's LAMBADA test set (5,153 passages; downloaded once, or a local copy): "
        "last-word accuracy and perplexity",
        lambda task, limit, include_path: read_lambada(lambada_path(task))[:limit],
        _score_lambada,
    ),
    "lm-eval": TaskKind(
        "TASK[,TASK...]",
        False,
        "tasks of EleutherAI's lm-evaluation-harness (pip install 'minigpt[eval]')",
        lambda task, limit, include_path: lm_eval_manager(lm_eval_names(task), include_path),
        _score_lm_eval,
    ),
}


def task_forms() -> str:
    """The forms of --task, e.g. "bpb:PATH, mc:PATH.jsonl, ... or lm-eval:TASK[,TASK...]"."""
    forms = [kind.form(name) for name, kind in TASKS.items()]
    return ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else forms[0]


def tasks_help(lines: bool = False) -> str:
    """The help of a --task flag: "FORM: description" per kind of TASKS, joined with "; " (for
    argparse, which rewraps a flag's help), or with lines=True one aligned line per kind."""
    forms = {name: kind.form(name) for name, kind in TASKS.items()}
    if lines:
        width = max(map(len, forms.values())) + 2
        return "\n".join(f"{forms[name]:<{width}}{kind.description}" for name, kind in TASKS.items())
    return "; ".join(f"{forms[name]}: {kind.description}" for name, kind in TASKS.items())


def task_kind(task: Task) -> TaskKind:
    """The TASKS entry of a parsed task, once its argument is there if it needs one."""
    kind = TASKS.get(task.kind)
    if kind is None:
        raise TaskError(f"unknown task {task.name!r}: expected {task_forms()}")
    if not kind.optional and not task.arg:
        raise TaskError(f"task {task.name!r} needs an argument: {kind.form(task.kind)}")
    return kind


@dataclass(frozen=True)
class LoadedTask:
    task: Task
    data: object  # what the task kind's load returned: a text, Examples, passages, a TaskManager


def load_task(task: str | Task, limit: int | None = None, include_path: str | None = None) -> LoadedTask:
    """Read (or download once) a task's data, so that bad data fails before any scoring.
    limit keeps the first N examples (bpb: the first N characters of the text)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    task = task if isinstance(task, Task) else Task.parse(task)
    return LoadedTask(task, task_kind(task).load(task, limit, include_path))


def evaluate(
    model,
    tokenizer,
    tasks: Sequence[str | Task | LoadedTask],
    limit: int | None = None,
    batch_size: int = 16,
    window: int | None = None,
    stride: int | None = None,
    include_path: str | None = None,
    num_fewshot: int | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """Score model on each task ("bpb:PATH", "mc:PATH", "hellaswag", "lambada:PATH",
    "lm-eval:hellaswag,arc_easy", or what load_task returned):
    {task: {metric: value, ..., "n": examples}}. The model is left in the mode it was in.

    limit keeps the first N examples of each task (bpb: the first N characters of the text).
    """
    loaded = [t if isinstance(t, LoadedTask) else load_task(t, limit, include_path) for t in tasks]
    options = ScoreOptions(limit, batch_size, window, stride, include_path, num_fewshot, progress)
    was_training = model.training
    model.eval()
    results: dict[str, dict] = {}
    try:
        for lt in loaded:
            results.update(task_kind(lt.task).score(model, tokenizer, lt.task, lt.data, options))
    finally:
        model.train(was_training)
    return results


# ----------------------------------------------------------------------------------------------
# Reporting


def format_table(results: dict[str, dict]) -> str:
    """One line per task and metric: task, metric, value, examples; each column as wide as its
    widest entry, so a long task name (a path) does not push its row out of line."""
    rows = []
    for task, metrics in results.items():
        n = metrics.get("n", "")
        for metric, value in metrics.items():
            if metric in ("n", "window", "stride", "tokens", "bytes", "words", "nll"):
                continue
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            rows.append((task, metric, shown, str(n)))
    header = ("task", "metric", "value", "n")
    minimums = (32, 12, 10, 7)  # the widths of a table of short names
    widths = [max([minimums[i], len(header[i]), *(len(r[i]) for r in rows)]) for i in range(4)]
    return "\n".join(
        f"{t:<{widths[0]}} {m:<{widths[1]}} {v:>{widths[2]}} {n:>{widths[3]}}".rstrip()
        for t, m, v, n in [header, *rows]
    )


def json_safe(value):
    """value with every infinite or NaN float replaced by None (JSON null): a perplexity too large
    for a float (word_ppl of a text without whitespace) is `Infinity`, which JSON has no word for."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def results_json(payload: dict) -> str:
    """payload as strictly valid JSON text (non-finite numbers are null), indented, ending in a newline."""
    return json.dumps(json_safe(payload), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def run_info(device: torch.device | str) -> dict:
    """device, versions, commit and date: recorded beside every result."""
    return {
        "device": device_name(device),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            **{d: package_version(d) for d in ("minigpt", "tiktoken", "lm_eval", "transformers")},
        },
        "commit": git_commit(),
        "date": utc_now(),
    }
