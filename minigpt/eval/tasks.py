"""Evaluation tasks: reading (and downloading once) the data of what `eval.py --task` names.

The kinds of task, each with its loader, its scoring and its help line, are one table:
minigpt.eval.evaluate.TASKS.

Every problem with a task's data is a TaskError whose message names the file and line.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from minigpt.files import atomic_write

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
LAMBADA_URL = "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"


class TaskError(ValueError):
    """Bad task name or data: the message is one line, naming the file and line."""


@dataclass(frozen=True)
class Task:
    kind: str  # a key of minigpt.eval.evaluate.TASKS ("bpb", "mc", ...)
    arg: str | None  # what follows "KIND:", the path (or, for lm-eval, the comma-separated task names)
    name: str  # how results are keyed: the spec as given

    @classmethod
    def parse(cls, spec: str) -> Task:
        """KIND[:ARG] split at the first colon. The kind and its argument are checked against
        minigpt.eval.evaluate.TASKS when the task is loaded (load_task)."""
        kind, sep, arg = spec.partition(":")
        return cls(kind, arg if sep else None, spec)


@dataclass(frozen=True)
class Example:
    """One multiple-choice question: the model scores `delimiter + choice` after `context`.

    `choices` are what the length normalisations count (lm-evaluation-harness counts the choice
    without its target delimiter). `where` ("file:line") names the example in error messages.
    """

    context: str
    choices: tuple[str, ...]
    label: int
    delimiter: str = ""
    where: str = ""


def cache_dir() -> Path:
    """$MINIGPT_EVAL_DIR, else ~/.cache/minigpt/eval: where downloaded task data is kept."""
    root = os.environ.get("MINIGPT_EVAL_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "minigpt" / "eval"


def download(url: str, name: str, task: str) -> Path:
    """The cached copy of url (fetched once, written atomically), or one line saying how to get it."""
    path = cache_dir() / name
    if path.is_file():
        return path

    def fetch(f) -> None:
        with urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                f.write(chunk)

    try:
        atomic_write(path, fetch)  # a failed download leaves no partial file behind
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TaskError(
            f"cannot download {task} ({reason}): fetch {url} on a machine with network into "
            f"{path}, or pass --task {task}:PATH to read a local copy"
        ) from None
    return path


def read_utf8(path: Path) -> str:
    """The UTF-8 text of a task file, or one line (TaskError) saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise TaskError(f"{path}: cannot read ({e.strerror})") from None


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """(where, object) for each non-blank line of a JSONL file."""
    path = Path(path)
    text = read_utf8(path)
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{where}: not a JSON object ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise TaskError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        rows.append((where, obj))
    if not rows:
        raise TaskError(f"{path}: no examples (the file is empty)")
    return rows


def _field(obj: dict, key: str, kind: type, where: str):
    if key not in obj:
        raise TaskError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TaskError(f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def check_example(ex: Example) -> Example:
    if len(ex.choices) < 2:
        raise TaskError(f"{ex.where}: needs at least two choices, got {len(ex.choices)}")
    if not all(isinstance(c, str) for c in ex.choices):
        raise TaskError(f"{ex.where}: every choice must be a string")
    if any(c == "" for c in ex.choices):
        raise TaskError(f"{ex.where}: choice {ex.choices.index('')} is empty")
    if not 0 <= ex.label < len(ex.choices):
        raise TaskError(f"{ex.where}: label {ex.label} is out of range for {len(ex.choices)} choices")
    return ex


def read_multiple_choice(path: str | Path) -> list[Example]:
    """The generic format: {"context": str, "choices": [str, ...], "label": int} per line.

    The choices continue the context exactly as written (a leading space belongs to the
    choice). An empty context is scored after <|endoftext|>, as lm-evaluation-harness does.
    """
    examples = []
    for where, obj in read_jsonl(path):
        context = _field(obj, "context", str, where)
        choices = tuple(_field(obj, "choices", list, where))
        label = _field(obj, "label", int, where)
        examples.append(check_example(Example(context, choices, label, "", where)))
    return examples


def _hellaswag_clean(text: str) -> str:
    # The standard preprocessing (as lm-evaluation-harness's hellaswag task does it): WikiHow's
    # "[title]" markers become sentence breaks, other bracketed artifacts are dropped.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read_hellaswag(path: str | Path) -> list[Example]:
    """HellaSwag's official JSONL (ctx_a, ctx_b, activity_label, endings, label), preprocessed
    and with the endings joined to the context by one space, as lm-evaluation-harness does."""
    examples = []
    for where, obj in read_jsonl(path):
        ctx_a = _field(obj, "ctx_a", str, where)
        ctx_b = _field(obj, "ctx_b", str, where)
        activity = _field(obj, "activity_label", str, where)
        endings = _field(obj, "endings", list, where)
        label = obj.get("label")
        if isinstance(label, str) and label.isdigit():
            label = int(label)
        if not isinstance(label, int) or isinstance(label, bool):
            raise TaskError(f"{where}: field 'label' must be an integer, got {label!r}")
        if not all(isinstance(e, str) for e in endings):
            raise TaskError(f"{where}: every ending must be a string")
        context = _hellaswag_clean(activity + ": " + ctx_a + " " + ctx_b.capitalize())
        choices = tuple(_hellaswag_clean(e) for e in endings)
        examples.append(check_example(Example(context, choices, label, " ", where)))
    return examples


def read_lambada(path: str | Path) -> list[tuple[str, str, str]]:
    """(where, context, target) per passage of OpenAI's LAMBADA JSONL ({"text": ...}): the
    target is the last word with its leading space, as lm-evaluation-harness's lambada_openai."""
    rows = []
    for where, obj in read_jsonl(path):
        text = _field(obj, "text", str, where)
        context, sep, word = text.rpartition(" ")
        if not sep or not word:
            raise TaskError(f"{where}: 'text' needs a context and a last word separated by a space")
        rows.append((where, context, " " + word))
    return rows


def read_text(path: str | Path) -> str:
    path = Path(path)
    text = read_utf8(path)
    if not text:
        raise TaskError(f"{path}: the file is empty")
    return text


def hellaswag_path(task: Task) -> Path:
    return Path(task.arg) if task.arg else download(HELLASWAG_URL, "hellaswag_val.jsonl", "hellaswag")


def lambada_path(task: Task) -> Path:
    return Path(task.arg) if task.arg else download(LAMBADA_URL, "lambada_test.jsonl", "lambada")
