"""The command line of data preparation: `python prepare.py` and `python -m minigpt.data` run main().

`run` prepares the corpus (minigpt.data.corpus does the work) and reports in one line. The
sources, the layout of a prepared directory and the train/val split: minigpt/data/corpus.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minigpt.cli import OneLineParser
from minigpt.data.corpus import (
    DEFAULT_SHARD_TOKENS,
    DEFAULT_TOKENIZER,
    DEFAULT_VAL_FRACTION,
    NAMED_SOURCES,
    DataError,
    bytes_per_token,
    default_data_dir,
    prepare,
)
from minigpt.files import check_not_input
from minigpt.tokenizers import kinds_help


def parse_size(text: str) -> int:
    """'1000', '64M', '2G', '2**24' -> int."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
    text = text.strip().lower()
    try:
        if "**" in text:
            base, exp = text.split("**")
            return int(base) ** int(exp)
        if text[-1:] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1000000, 64M or 2**24)") from None


def run(
    source: str,
    out_dir: Path | None,
    *,
    tokenizer: str,
    shard_tokens: int,
    workers: int | None,
    val_fraction: float,
    max_bytes: int | None,
    quiet: bool,
) -> int:
    """Prepare `source` into out_dir (None: its default directory) and print one line about it.

    Returns the exit code: 0 done, 1 a DataError (printed as one line on stderr), 2 an --out-dir that
    is the source itself, 130 interrupted (143 by SIGTERM).
    """
    try:
        out_dir = out_dir if out_dir is not None else default_data_dir(source, tokenizer)
        check_not_input(out_dir, [source], "--out-dir")  # its shards and meta.json would land among the sources
    except DataError as e:  # a --tokenizer that names none
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        meta = prepare(
            source,
            out_dir,
            val_fraction=val_fraction,
            shard_tokens=shard_tokens,
            workers=workers,
            quiet=quiet,
            max_bytes=max_bytes,
            tokenizer=tokenizer,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM where the script turns it into one (minigpt.entrypoint)
        print(f"error: interrupted; {out_dir} is incomplete and will be prepared again next time", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    splits = meta["splits"]
    print(
        f"{out_dir} ({meta['tokenizer_kind']} tokenizer): {splits['train']['tokens']:,} train tokens in "
        f"{len(splits['train']['shards'])} shard(s), {splits['val']['tokens']:,} val tokens, "
        f"{bytes_per_token(meta, 'train'):.2f} bytes/token"
    )
    return 0


def build_parser(prog: str | None = None) -> OneLineParser:
    parser = OneLineParser(
        prog=prog,
        description="Tokenize a text corpus (with GPT-2's BPE, or a char or BPE tokenizer trained on its "
        "train split) into uint16 shards for training.",
    )
    parser.add_argument(
        "source",
        nargs="?",
        default="stdlib",
        help=f"{', '.join(NAMED_SOURCES)}, or a local text file, directory or quoted glob (default: stdlib)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where to write the shards (default: $MINIGPT_DATA_DIR/<name> or "
        "~/.cache/minigpt/data/<name>; <name>-char, <name>-bpe4096, ... for other tokenizers)",
    )
    parser.add_argument(
        "--tokenizer", default=DEFAULT_TOKENIZER, help=f"{kinds_help()}; N <= 65536 (default: {DEFAULT_TOKENIZER})"
    )
    parser.add_argument(
        "--shard-tokens",
        type=parse_size,
        default=DEFAULT_SHARD_TOKENS,
        help=f"tokens per shard file (default: 2**24 = {DEFAULT_SHARD_TOKENS:,})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="tokenizer processes (default: min(cpu count, 8); 1 = no subprocesses)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULT_VAL_FRACTION,
        help=f"share of documents (or of a single file's tail) held out for "
        f"validation (default: {DEFAULT_VAL_FRACTION})",
    )
    parser.add_argument(
        "--max-bytes",
        type=parse_size,
        default=None,
        help="keep only the first documents, up to this many bytes of text, e.g. 2G "
        "for a slice of fineweb-edu (default: everything)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages on stderr")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line: `python prepare.py ARGV` (prog names it in messages)."""
    args = build_parser(prog).parse_args(argv)
    return run(
        args.source,
        args.out_dir,
        tokenizer=args.tokenizer,
        shard_tokens=args.shard_tokens,
        workers=args.workers,
        val_fraction=args.val_fraction,
        max_bytes=args.max_bytes,
        quiet=args.quiet,
    )


if __name__ == "__main__":
    from minigpt import entrypoint

    entrypoint.start()
    sys.exit(entrypoint.run(main))
