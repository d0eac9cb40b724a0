"""Public instruction datasets from the Hugging Face hub as conversations JSONL for train.py --sft.

    python -m minigpt.data.sft_download dolly data/dolly.jsonl        # English, 15k instructions
    python -m minigpt.data.sft_download dolly-ja data/dolly-ja.jsonl  # the same, in Japanese

Each record becomes one line {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}; the
context of a record (when it has one) follows its instruction in the user message.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from minigpt.files import atomic_write


@dataclass(frozen=True)
class Source:
    repo: str  # a hub dataset repository
    filename: str  # the file in it
    description: str
    fields: tuple[str, str, str]  # (instruction, context, reply) keys of a record


# The datasets `python -m minigpt.data.sft_download NAME` knows; a new one is one entry.
SOURCES: dict[str, Source] = {
    "dolly": Source(
        "databricks/databricks-dolly-15k",
        "databricks-dolly-15k.jsonl",
        "15k English instructions and replies written by Databricks employees (CC BY-SA 3.0)",
        ("instruction", "context", "response"),
    ),
    "dolly-ja": Source(
        "kunishou/databricks-dolly-15k-ja",
        "databricks-dolly-15k-ja.json",
        "the same 15k instructions machine-translated to Japanese (CC BY-SA 3.0)",
        ("instruction", "input", "output"),
    ),
}


class DownloadError(RuntimeError):
    pass


def records(path: Path) -> Iterator[dict]:
    """The records of a .json (one array) or .jsonl file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        yield from json.loads(text)
    else:
        yield from (json.loads(line) for line in text.splitlines() if line.strip())


def to_messages(record: dict, fields: tuple[str, str, str]) -> dict | None:
    instruction, context, reply = (record.get(k) or "" for k in fields)
    if not (isinstance(instruction, str) and isinstance(reply, str) and instruction.strip() and reply.strip()):
        return None
    prompt = instruction.strip() + (f"\n\n{context.strip()}" if isinstance(context, str) and context.strip() else "")
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply.strip()}]}


def download(name: str, out: Path, fetch: Callable[..., str] | None = None) -> int:
    """Write dataset `name` to out as conversations JSONL; returns the number of conversations."""
    if name not in SOURCES:
        raise DownloadError(f"unknown dataset {name!r}; choose one of {', '.join(SOURCES)}")
    source = SOURCES[name]
    if out.exists():
        raise DownloadError(f"{out} already exists; remove it or choose another file")
    if fetch is None:
        from huggingface_hub import hf_hub_download

        fetch = hf_hub_download
    try:
        local = Path(fetch(source.repo, source.filename, repo_type="dataset"))
    except Exception as e:  # offline, DNS, HTTP: all one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DownloadError(
            f"cannot download {source.repo} from the Hugging Face hub ({reason[:120]}); run "
            f"`python -m minigpt.data.sft_download {name} {out}` on a machine with network access"
        ) from None
    lines = [json.dumps(m, ensure_ascii=False) for r in records(local) if (m := to_messages(r, source.fields))]
    atomic_write(out, ("\n".join(lines) + "\n").encode("utf-8"))
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minigpt.data.sft_download",
        description="Download an instruction dataset as conversations JSONL for train.py --sft.",
        epilog="datasets:\n" + "\n".join(f"  {k}: {s.repo}: {s.description}" for k, s in SOURCES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help=f"one of {', '.join(SOURCES)}")
    parser.add_argument("out", type=Path, help="the JSONL file to write")
    args = parser.parse_args(argv)
    try:
        n = download(args.name, args.out)
    except (DownloadError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} conversations to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from minigpt import entrypoint

    entrypoint.start()
    sys.exit(entrypoint.run(main))
