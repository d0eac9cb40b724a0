"""Corpus preparation: text -> tokens in uint16 shards plus meta.json (minigpt.data.loader reads them).

`prepare(source, out_dir)` reads a named corpus, a file, a directory or a glob, trains the run's
tokenizer on the train split if it is a char or BPE one (never on val), splits documents into
train and val by a hash of their names, and writes the shards atomically, meta.json last, so a
directory is complete exactly when its meta.json says so. `python prepare.py` is its command line.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import itertools
import json
import multiprocessing
import os
import re
import signal
import sys
import sysconfig
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minigpt.files import atomic_write
from minigpt.tokenizers import (
    OWN_TOKENIZER_FILES,
    TOKENIZER_FILE,
    GPT2Tokenizer,
    Tokenizer,
    load_tokenizer,
    parse_tokenizer_kind,
    tokenizer_hash,
    train_tokenizer,
)

FORMAT_VERSION = 1
DEFAULT_TOKENIZER = "gpt2"
MAX_VOCAB = 2**16  # the shards are uint16
DEFAULT_VAL_FRACTION = 0.05  # nanoGPT's shakespeare uses 0.1; pass --val-fraction 0.1 to match
DEFAULT_SHARD_TOKENS = 2**24  # 32 MiB per shard
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_BYTES = 1_115_394  # its size, for sizing a run before the download
HF_SOURCES = {  # name -> (Hugging Face dataset repo, config name)
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT"),
    "openwebtext": ("Skylion007/openwebtext", None),
}
NAMED_SOURCES = ("stdlib", "shakespeare", *HF_SOURCES)
TEXT_SUFFIXES = frozenset(
    ".txt .text .md .markdown .rst .tex .py .pyi .c .h .cc .cpp .hpp .rs .go .java .js .ts .sh".split()
)
_SHARD_NAME = re.compile(r"(train|val)_\d{6}\.npy(\.tmp)?")


class DataError(ValueError):
    """The data asked for cannot be prepared or loaded; the message says why in one line."""


class DownloadError(DataError):
    """A downloadable source could not be fetched (usually: no network)."""


# --- where prepared data lives -----------------------------------------------------------------


def default_data_dir(source: str, tokenizer: str | Tokenizer = DEFAULT_TOKENIZER) -> Path:
    """$MINIGPT_DATA_DIR/<name>, else ~/.cache/minigpt/data/<name>, for a source spec and tokenizer.

    A named source keeps its name; a local path or glob gets a slug of its last component plus
    8 hex digits of the sha1 of its absolute form, so two `data/` directories do not collide.
    Any tokenizer but gpt2 adds its own suffix (stdlib-char, stdlib-bpe4096, ...), so data of
    different tokenizers never share a directory.
    """
    root = os.environ.get("MINIGPT_DATA_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "minigpt" / "data"
    key = tokenizer_key(tokenizer)
    suffix = "" if key == DEFAULT_TOKENIZER else "-" + re.sub(r"[^A-Za-z0-9]+", "", key.replace("@", "-"))
    if source in NAMED_SOURCES:
        return base / (source + suffix)
    absolute = os.path.abspath(os.path.expanduser(source))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(absolute.rstrip(os.sep))).strip("-.")
    return base / f"{slug[:40] or 'data'}-{_sha1(absolute)[:8]}{suffix}"


def tokenizer_key(tokenizer: str | Tokenizer) -> str:
    """What meta.json records as "tokenizer": the --tokenizer value ("gpt2", "char", "bpe:N") for
    one trained on the data, or the kind and a hash of the saved files ("char@1a2b3c4d5e6f") for
    a given Tokenizer (a fine-tuned model's). DataError for a value that names no tokenizer."""
    if isinstance(tokenizer, Tokenizer):
        return DEFAULT_TOKENIZER if tokenizer.kind == "gpt2" else f"{tokenizer.kind}@{tokenizer_hash(tokenizer)[:12]}"
    try:
        name, size = parse_tokenizer_kind(tokenizer)
    except ValueError as e:
        raise DataError(str(e)) from None
    return name if size is None else f"{name}:{size}"


def data_tokenizer(data_dir: str | Path, meta: dict | None = None) -> Tokenizer:
    """The tokenizer a prepared directory's shards were made with (GPT-2's for a directory prepared
    before tokenizers were saved with the shards); DataError if it is unreadable or does not have
    the vocabulary meta.json records."""
    data_dir = Path(data_dir)
    meta = load_meta(data_dir) if meta is None else meta
    if meta.get("tokenizer", "gpt2") == "gpt2" and not (data_dir / TOKENIZER_FILE).exists():
        tokenizer: Tokenizer = GPT2Tokenizer()  # prepared before the shards carried their tokenizer
    else:
        try:
            tokenizer = load_tokenizer(data_dir)
        except ValueError as e:
            raise DataError(f"{e}; prepare {data_dir} again") from None
    if tokenizer.vocab_size != meta["vocab_size"]:
        raise DataError(
            f"{data_dir}: its tokenizer has {tokenizer.vocab_size} ids, meta.json says "
            f"{meta['vocab_size']}; prepare it again"
        )
    return tokenizer


def load_meta(data_dir: str | Path) -> dict:
    """meta.json of a completely prepared directory; DataError if it is missing or incomplete."""
    data_dir = Path(data_dir)
    redo = f"run `python -m minigpt.data SOURCE --out-dir {data_dir}` first"
    try:
        meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"no prepared data in {data_dir} (no meta.json); {redo}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {data_dir / 'meta.json'} ({e}); {redo}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{data_dir / 'meta.json'} is not format version {FORMAT_VERSION}; {redo}")
    try:
        shards = [s for split in ("train", "val") for s in meta["splits"][split]["shards"]]
    except (KeyError, TypeError):
        raise DataError(f"{data_dir / 'meta.json'} lacks the train/val shard lists; {redo}") from None
    if not all(isinstance(meta["splits"][split]["shards"], list) for split in ("train", "val")):
        raise DataError(f"{data_dir / 'meta.json'}: each split should hold a list of shards; {redo}")
    problem = _meta_problem(meta, shards)
    if problem:
        raise DataError(f"{data_dir / 'meta.json'}: {problem}; {redo}")
    for shard in shards:
        found = _shard_length(data_dir / shard["file"])
        if found != shard["tokens"]:
            what = "is missing or unreadable" if found is None else f"holds {found} tokens"
            raise DataError(
                f"{data_dir} is incomplete: {shard['file']} {what}, meta.json says {shard['tokens']}; {redo}"
            )
    return meta


def _is_int(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _meta_problem(meta: dict, shards: list) -> str | None:
    """What is wrong with the types and values of a parsed meta.json, or None."""
    if not _is_int(meta.get("vocab_size"), 1) or meta["vocab_size"] > 2**16:
        return f"vocab_size should be an integer in [1, 65536], got {meta.get('vocab_size')!r}"
    if not _is_int(meta.get("eot_id")) or meta["eot_id"] >= meta["vocab_size"]:
        return f"eot_id should be an integer below vocab_size, got {meta.get('eot_id')!r}"
    for key in ("source_id", "source_fingerprint"):
        if not isinstance(meta.get(key), str):
            return f"{key} should be a string, got {meta.get(key)!r}"
    for shard in shards:
        if not isinstance(shard, dict):
            return f"a shard entry should be an object, got {shard!r:.40}"
        name = shard.get("file")
        if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name) or name.endswith(".tmp"):
            return f"a shard's file should be a name like train_000000.npy, got {name!r:.40}"
        if not _is_int(shard.get("tokens")):
            return f"{name}: tokens should be a non-negative integer, got {shard.get('tokens')!r}"
        if "max_id" in shard and not _is_int(shard["max_id"]):
            return f"{name}: max_id should be a non-negative integer, got {shard['max_id']!r}"
    for split in ("train", "val"):
        entry = meta["splits"][split]
        for key in ("tokens", "bytes", "documents"):
            if not _is_int(entry.get(key)):
                return f"splits.{split}.{key} should be a non-negative integer, got {entry.get(key)!r}"
        if entry["tokens"] != sum(s["tokens"] for s in entry["shards"]):
            return f"splits.{split}.tokens is not the sum of its shards' tokens"
    return None


def bytes_per_token(meta: dict, split: str = "val") -> float:
    """UTF-8 bytes of source text per token of a split.

    A loss of L nats per token is L / ln(2) / bytes_per_token bits per byte, a figure that does
    not depend on the tokenizer. Token counts include the <|endoftext|> separators, which are
    predicted like any token and stand for no bytes.
    """
    s = meta["splits"][split]
    return s["bytes"] / s["tokens"]


# --- preparing ---------------------------------------------------------------------------------


def prepare(
    source: str,
    out_dir: str | Path,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    workers: int | None = None,
    quiet: bool = False,
    max_bytes: int | None = None,
    tokenizer: str | Tokenizer = DEFAULT_TOKENIZER,
) -> dict:
    """Tokenize `source` into shards in `out_dir` and return its meta dict.

    Sources (the SOURCE string is called a "spec" below):
      stdlib        every *.py file of the running interpreter's standard library, offline. The
                    `test` packages are kept (they are real code, and most of the bytes);
                    site-packages/dist-packages are not. Files that are not UTF-8 (a handful of
                    encoding tests) are skipped with a warning.
      shakespeare   karpathy/char-rnn's tinyshakespeare input.txt, downloaded into the output dir.
      fineweb-edu   HuggingFaceFW/fineweb-edu, sample-10BT, streamed with `datasets`.
      openwebtext   Skylion007/openwebtext, streamed with `datasets`.
      a file        one document (so is a directory or glob that finds just one file).
      a directory   every file below it whose suffix is in TEXT_SUFFIXES; names starting with "."
                    (.git, .venv, ...) and __pycache__ are skipped. To use a local path that is
                    spelled like a named source, write it as ./stdlib.
      a glob        e.g. 'data/*.txt' (quoted; ** recurses); every matching file, whatever its suffix.
    Empty files are ignored; files that cannot be read or are not UTF-8 text are skipped with a
    warning when they are part of a bigger source, and are an error when they are the source.

    Layout of a prepared directory: train_000000.npy, train_000001.npy, ..., val_000000.npy, ...
    (1-D uint16 .npy arrays of `shard_tokens` tokens, the last of each split shorter), the tokenizer
    the shards were made with (minigpt_tokenizer.json, plus tokenizer.json for a BPE: what
    minigpt.tokenizers.load_tokenizer reads) and meta.json, which names the tokenizer ("tokenizer":
    the --tokenizer value, "tokenizer_kind", vocab_size, eot_id) and lists each shard's file, length
    and largest token id ("max_id": the ids are checked against the vocabulary before training
    without reading the shards).
    Every document is preceded by the end-of-text id (GPT-2's <|endoftext|>, 50256), so the shards of
    a split are one stream of documents that may run across shard boundaries.

    Writes are atomic (a shard is written to NAME.tmp, then renamed) and meta.json is written last,
    so a directory is complete exactly when meta.json exists, matches what was asked for, and lists
    shards that exist with the right length. Anything else is prepared again from scratch; a
    complete directory is reused without tokenizing anything.

    `tokenizer` is a --tokenizer value ("gpt2", "char", "bpe:N"; char and bpe are trained on the
    train split) or a Tokenizer to use as it is (the one of a model being fine-tuned).
    Reuses `out_dir` if it already holds a complete preparation of the same source (same files,
    sizes and mtimes for local sources) with the same tokenizer, val_fraction, shard_tokens and
    max_bytes.
    `workers` processes tokenize (default min(cpu count, 8); 1 tokenizes in this process).
    `max_bytes` keeps only the first documents, in order, until their text reaches that many
    bytes (a single file is cut at the last line break before it): a deterministic cap for
    the streamed corpora. Call it from one process only (rank 0 under DDP).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be positive, got {shard_tokens}")
    if max_bytes is not None and max_bytes < 1:
        raise DataError(f"max_bytes must be positive, got {max_bytes}")
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    if workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)

    ident, files, fingerprint = _identify(source)
    wanted = {  # compared with an existing meta.json to decide whether out_dir can be reused
        "format_version": FORMAT_VERSION,
        "source_id": ident,
        "source_fingerprint": fingerprint,
        "tokenizer": tokenizer_key(tokenizer),
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "max_bytes": max_bytes,
    }
    try:
        meta = load_meta(out_dir)
    except DataError as e:
        reason = str(e).split(";")[0] if (out_dir / "meta.json").exists() else None
    else:
        stale = [k for k, v in wanted.items() if meta.get(k) != v]
        if not stale:
            _info(quiet, f"reusing {source} tokens in {out_dir} (already prepared)")
            return meta
        reason = f"it was prepared with different {', '.join(stale)}"
    if reason:
        _info(quiet, f"preparing {out_dir} again: {reason}")

    # A single file is read and split first: an empty or binary one fails before anything is written.
    single = _split_single_file(files[0][1], val_fraction, max_bytes) if files is not None and len(files) == 1 else None
    if isinstance(tokenizer, str):
        name, size = parse_tokenizer_kind(tokenizer)
        if size is not None and size > MAX_VOCAB:
            raise DataError(f"--tokenizer {tokenizer}: the shards hold uint16 ids, at most {MAX_VOCAB} tokens")
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_outputs(out_dir)

    if source == "shakespeare":
        files = [("input.txt", _download(SHAKESPEARE_URL, out_dir / "shakespeare.txt"))]

    def tasks_and_total() -> tuple[Iterable[tuple], int | None]:
        if files is None:
            return ((str(i), None, text) for i, text in enumerate(_hf_texts(source))), None
        if len(files) == 1:
            tasks = single if single is not None else _split_single_file(files[0][1], val_fraction, max_bytes)
            return tasks, sum(len(text.encode("utf-8")) for _, _, text in tasks)
        return [(key, None, path) for key, path in files], sum(path.stat().st_size for _, path in files)

    if isinstance(tokenizer, str) and name != "gpt2":
        seen = 0

        def texts() -> Iterator[str]:  # streamed: the corpus is never held whole
            nonlocal seen
            for text in _train_texts(tasks_and_total()[0], val_fraction, max_bytes):
                seen += len(text)
                yield text

        tok = train_tokenizer(tokenizer, texts())
        if not seen:
            raise DataError(f"no text in the train split of {source} to train a {tokenizer} tokenizer on")
        _info(quiet, f"trained a {tok.kind} tokenizer ({tok.vocab_size} ids) on the train split of {source}")
    else:
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else GPT2Tokenizer()
    if tok.vocab_size > MAX_VOCAB:
        raise DataError(
            f"the {tok.kind} tokenizer has {tok.vocab_size} ids, more than the {MAX_VOCAB} a uint16 shard holds"
        )
    if tok.eot_id is None:
        raise DataError(f"the {tok.kind} tokenizer has no end-of-text id to separate documents with")
    tok.save(out_dir)

    tasks, total = tasks_and_total()
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenizing {source}", disable=quiet, file=sys.stderr)
    with bar:
        splits, skipped = _write_shards(
            _tokenize_all(tasks, workers, tok, out_dir), out_dir, val_fraction, shard_tokens, max_bytes, bar
        )

    if skipped:
        shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        message = f"skipped {len(skipped)} file(s) of {source} that are not readable UTF-8 text: {shown}"
        if source == "stdlib":  # a few encoding tests are not UTF-8 on purpose: expected, no warning
            _info(quiet, message)
        else:
            _warn(message)
    if splits["val"]["documents"] == 0:
        raise DataError(f"no text found in {source}: every file is empty or was skipped")
    if splits["train"]["documents"] == 0:
        raise DataError(f"every document of {source} fell in the val split; add documents or lower val_fraction")
    meta = {
        **wanted,
        "source": source,
        "tokenizer_kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": "uint16",
        "skipped": skipped,
        "splits": splits,
    }
    atomic_write(out_dir / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False).encode())
    _info(quiet, f"wrote {splits['train']['tokens']:,} train and {splits['val']['tokens']:,} val tokens to {out_dir}")
    return meta


def source_bytes(source: str) -> int | None:
    """Bytes of a source's text before preparing it: its local files' sizes, tinyshakespeare's
    (downloaded or not), None for a streamed corpus. DataError for a spec that names nothing."""
    if source == "shakespeare":
        return SHAKESPEARE_BYTES
    files = _identify(source)[1]
    return None if files is None else sum(path.stat().st_size for _, path in files)


def _identify(source: str) -> tuple[str, list[tuple[str, Path]] | None, str]:
    """(identity, local files as [(key, path)] or None, fingerprint of the content) of a spec."""
    if source == "stdlib":
        files = _stdlib_files()
        return "stdlib", files, _fingerprint(files)
    if source == "shakespeare":
        return "shakespeare", None, SHAKESPEARE_URL
    if source in HF_SOURCES:
        return source, None, "/".join(map(str, HF_SOURCES[source]))
    ident, files = _local_files(source)
    return ident, files, _fingerprint(files)


def _write_shards(
    results: Iterable[tuple], out_dir: Path, val_fraction: float, shard_tokens: int, max_bytes: int | None, bar: tqdm
) -> tuple[dict, list[str]]:
    """Route tokenized documents to the train and val shards; ({split: summary}, skipped)."""
    writers = {split: _ShardWriter(out_dir, split, shard_tokens) for split in ("train", "val")}
    skipped = []
    held = None  # the latest train document, kept back in case val ends up empty
    taken = 0
    for key, split, tokens, n_bytes, problem in results:
        bar.update(n_bytes)
        if problem:
            skipped.append(f"{key} ({problem})")
            continue
        if tokens is None:  # an empty document
            continue
        if split is None:
            split = "val" if _in_val(key, val_fraction) else "train"
        if split == "train":
            if held is not None:
                writers["train"].write(*held)
            held = (tokens, n_bytes)
        else:
            writers["val"].write(tokens, n_bytes)
        taken += n_bytes
        if max_bytes is not None and taken >= max_bytes:
            break
    if held is not None:
        writers["val" if writers["val"].documents == 0 else "train"].write(*held)
    for w in writers.values():
        w.close()
    return {split: w.summary() for split, w in writers.items()}, skipped


def _read(task: tuple) -> tuple:
    """(key, split, path or text) -> (key, split, text or None, n_bytes, problem or None).

    text is None for an empty document or a skipped file; problem says why a file was skipped.
    """
    key, split, item = task
    if isinstance(item, str):
        text = item
        n_bytes = len(text.encode("utf-8"))
    else:
        try:
            raw = item.read_bytes()
        except OSError as e:
            return key, split, None, 0, f"unreadable: {e.strerror or e}"
        n_bytes = len(raw)
        if b"\0" in raw:
            return key, split, None, n_bytes, "binary"
        try:
            text = raw.decode("utf-8")  # strict: the bytes are then exactly the text's UTF-8
        except UnicodeDecodeError:
            return key, split, None, n_bytes, "not UTF-8"
    if not text:
        return key, split, None, 0, None
    return key, split, text, n_bytes, None


def _train_texts(tasks: Iterable[tuple], val_fraction: float, max_bytes: int | None) -> Iterator[str]:
    """The texts of the documents _write_shards sends to the train split, routed the same way."""
    held, val_seen, taken = None, False, 0
    for task in tasks:
        key, split, text, n_bytes, problem = _read(task)
        if problem or text is None:
            continue
        if split is None:
            split = "val" if _in_val(key, val_fraction) else "train"
        if split == "train":
            if held is not None:
                yield held
            held = text
        else:
            val_seen = True
        taken += n_bytes
        if max_bytes is not None and taken >= max_bytes:
            break
    if held is not None and val_seen:  # else the last document goes to val (see _write_shards)
        yield held


def _tokenize(task: tuple, tokenizer: Tokenizer) -> tuple:
    """(key, split, path or text) -> (key, split, tokens or None, n_bytes, problem or None).

    tokens is uint16 with the end-of-text id first, or None for an empty document or a
    skipped file.
    """
    key, split, text, n_bytes, problem = _read(task)
    if text is None:
        return key, split, None, n_bytes, problem
    # allow_special=False: a literal "<|endoftext|>" inside a document stays ordinary text, so
    # the end-of-text id in a shard is always a document boundary.
    # Every id is below vocab_size <= 2**16 (checked in prepare); numpy also refuses any that is not.
    tokens = np.array([tokenizer.eot_id, *tokenizer.encode(text)], dtype=np.uint16)
    return key, split, tokens, n_bytes, None


_worker_tokenizer: Tokenizer | None = None  # a worker process's tokenizer, read from the data directory


def _start_worker(directory: str) -> None:
    # The parent stops the pool (Pool.terminate sends SIGTERM) when it is interrupted: a worker
    # ignores Ctrl-C, which a terminal sends to the whole process group, and dies quietly at
    # SIGTERM instead of running a handler it inherited from the parent (or printing a traceback).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(directory)


def _tokenize_in_worker(task: tuple) -> tuple:
    return _tokenize(task, _worker_tokenizer)


def _tokenize_all(tasks: Iterable[tuple], workers: int, tokenizer: Tokenizer, out_dir: Path) -> Iterator[tuple]:
    """_tokenize over tasks, results in task order, in `workers` processes (which read the
    tokenizer saved in out_dir)."""
    if workers == 1:
        yield from (_tokenize(task, tokenizer) for task in tasks)
        return
    # Feed the pool a bounded batch at a time: Pool.imap would otherwise pull a whole
    # streamed dataset into its task queue as fast as it downloads.
    with multiprocessing.Pool(workers, initializer=_start_worker, initargs=(str(out_dir),)) as pool:
        tasks = iter(tasks)
        while batch := list(itertools.islice(tasks, 128 * workers)):
            yield from pool.imap(_tokenize_in_worker, batch, chunksize=4)


def _in_val(key: str, val_fraction: float) -> bool:
    """Whether a document goes to val.

    The train/val split is deterministic. A source with several documents sends a document to val
    when the sha1 of its key (path relative to the source root, or its index in a stream) falls in
    the lowest `val_fraction` of the hash range; that depends only on the document's own name, so
    adding files never moves others between splits. If no document lands in val, the last one does.
    A single file is split by position: val is its last `val_fraction`, starting at a line.
    """
    h = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")
    return h < val_fraction * 2**64


class _ShardWriter:
    """Appends token arrays to one split, writing a shard each time `shard_tokens` are buffered."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int):
        self.out_dir, self.split = out_dir, split
        self.buf = np.empty(shard_tokens, dtype=np.uint16)
        self.fill = 0
        self.shards: list[dict] = []
        self.tokens = self.bytes = self.documents = 0

    def write(self, tokens: np.ndarray, n_bytes: int) -> None:
        self.documents += 1
        self.bytes += n_bytes
        while len(tokens):
            n = min(len(tokens), len(self.buf) - self.fill)
            self.buf[self.fill : self.fill + n] = tokens[:n]
            self.fill += n
            tokens = tokens[n:]
            if self.fill == len(self.buf):
                self._flush()

    def close(self) -> None:
        if self.fill:
            self._flush()

    def _flush(self) -> None:
        name = f"{self.split}_{len(self.shards):06d}.npy"
        tokens = self.buf[: self.fill]
        atomic_write(self.out_dir / name, lambda f: np.save(f, tokens))
        self.shards.append({"file": name, "tokens": self.fill, "max_id": int(tokens.max())})
        self.tokens += self.fill
        self.fill = 0

    def summary(self) -> dict:
        return {"tokens": self.tokens, "bytes": self.bytes, "documents": self.documents, "shards": self.shards}


def _remove_outputs(out_dir: Path) -> None:
    """Delete meta.json first, then the tokenizer, shards and leftovers, and nothing else in out_dir."""
    for name in ("meta.json", "meta.json.tmp", *OWN_TOKENIZER_FILES):
        (out_dir / name).unlink(missing_ok=True)
    for p in out_dir.iterdir():
        if _SHARD_NAME.fullmatch(p.name):
            p.unlink()


def _shard_length(path: Path) -> int | None:
    """Length of a 1-D uint16 .npy file whose size matches its header, else None."""
    try:
        tokens = np.load(path, mmap_mode="r")
    except (OSError, ValueError):  # missing, not .npy, or shorter than its header says
        return None
    if tokens.dtype != np.uint16 or tokens.ndim != 1 or path.stat().st_size != tokens.offset + tokens.nbytes:
        return None
    return len(tokens)


# --- sources -----------------------------------------------------------------------------------


def _stdlib_files() -> list[tuple[str, Path]]:
    """(path relative to the stdlib, path) of every *.py of this interpreter's stdlib, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Third-party packages are not the stdlib (and can be large); prune them unvisited.
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")]
        for name in filenames:
            path = Path(dirpath, name)
            if name.endswith(".py") and path.is_file():
                files.append((path.relative_to(root).as_posix(), path))
    if not files:
        raise DataError(f"found no *.py files in the standard library at {root}")
    return sorted(files)


def _local_files(spec: str) -> tuple[str, list[tuple[str, Path]]]:
    """(identity, sorted [(key, path)]) of a local file, directory or glob."""
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path.resolve()), [(path.name, path)]
    if path.is_dir():
        found = []
        for dirpath, dirnames, filenames in os.walk(path):
            # Prune .git, .venv, __pycache__ and the like instead of walking through them.
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
            found += [
                Path(dirpath, name)
                for name in filenames
                if not name.startswith(".") and Path(name).suffix.lower() in TEXT_SUFFIXES
            ]
        found = [p for p in found if p.is_file()]
        root = path
        kind = f"no files with a text suffix ({' '.join(sorted(TEXT_SUFFIXES))})"
    elif any(c in spec for c in "*?["):
        found = [Path(os.path.abspath(p)) for p in glob.glob(os.path.expanduser(spec), recursive=True)]
        found = [p for p in found if p.is_file()]
        root = Path(os.path.commonpath([p.parent for p in found])) if found else None
        kind = "no files"
    elif path.exists():
        raise DataError(f"{spec} is neither a regular file nor a directory")
    else:
        raise DataError(
            f"{spec} is not a file, directory or glob that exists, nor one of the named sources "
            f"({', '.join(NAMED_SOURCES)})"
        )
    if not found:
        raise DataError(f"{spec} matches {kind}: nothing to tokenize")
    files = sorted((p.relative_to(root).as_posix(), p) for p in found)
    return os.path.abspath(os.path.expanduser(spec)), files


def _fingerprint(files: list[tuple[str, Path]]) -> str:
    """Changes when a file is added, removed, renamed, or its size or mtime changes."""
    h = hashlib.sha1()
    for key, path in files:
        st = path.stat()
        h.update(f"{key}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _split_single_file(path: Path, val_fraction: float, max_bytes: int | None) -> list[tuple]:
    """[train task, val task] of one file: val is its last val_fraction, starting at a line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if max_bytes is not None and len(raw) > max_bytes:
        cut = raw.rfind(b"\n", 0, max_bytes) + 1
        if cut == 0:
            raise DataError(f"max_bytes={max_bytes} is shorter than the first line of {path}")
        raw = raw[:cut]
    if b"\0" in raw:
        raise DataError(f"{path} looks binary (it contains NUL bytes), not text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if len(text.strip()) < 2:
        raise DataError(f"{path} is empty (or too short to split into train and val)")
    target = max(1, int(len(text) * (1.0 - val_fraction)))
    cut = text.rfind("\n", 0, target) + 1  # the start of the line holding `target`
    if cut == 0:  # no line break before it: take the next line start, else cut mid-line
        cut = text.find("\n", target) + 1
        if cut in (0, len(text)):
            cut = target
    return [(path.name, "train", text[:cut]), (path.name, "val", text[cut:])]


def _network_errors() -> tuple[type[BaseException], ...]:
    # urllib, requests and huggingface_hub's HTTP errors are OSErrors; httpx's are not.
    errors: list[type[BaseException]] = [OSError, http.client.HTTPException]
    for name in ("httpx", "httpx2"):
        module = sys.modules.get(name)  # only if the hub client already imported it
        if module is not None:
            errors.append(module.HTTPError)
    return tuple(errors)


def _download(url: str, dest: Path) -> Path:
    """Fetch url to dest once (atomically); a network failure is a one-line DownloadError."""
    if dest.is_file():
        return dest
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
    except (OSError, http.client.HTTPException) as e:
        reason = _one_line(getattr(e, "reason", None) or e)  # URLError keeps the cause in .reason
        raise DownloadError(
            f"could not download {url} ({reason}); if you are offline, fetch the file elsewhere "
            f"and pass its local path instead: train.py --data path/to/{Path(url).name} "
            f"(or prepare.py path/to/{Path(url).name})"
        ) from None
    atomic_write(dest, body)
    return dest


def _hf_texts(name: str) -> Iterator[str]:
    """The "text" field of every row of a Hugging Face dataset, streamed.

    Opening the stream happens now, so a missing `datasets` or an unreachable hub is reported
    before any work starts; a failure later in the stream is reported the same way.
    """
    repo, config = HF_SOURCES[name]
    try:
        import datasets  # lazy and optional: only the streamed corpora need it
    except ImportError:
        raise DataError(f"the {name} source is streamed with the `datasets` library: pip install datasets") from None

    def failed(e: BaseException) -> DownloadError:
        return DownloadError(
            f"could not stream {repo} from the Hugging Face hub ({type(e).__name__}: {_one_line(e)}); "
            f"if you are offline, pass a local text file, directory or glob instead"
        )

    try:
        rows = datasets.load_dataset(repo, name=config, split="train", streaming=True)
    except _network_errors() as e:
        raise failed(e) from None

    def texts() -> Iterator[str]:
        try:
            for row in rows:
                yield row["text"]
        except _network_errors() as e:
            raise failed(e) from None

    return texts()


def _one_line(e: object) -> str:
    return " ".join(str(e).split())


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()


def _info(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
