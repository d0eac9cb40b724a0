"""The data pipeline: preparing shards from made-up text, and the DataLoader over them.

Nothing here touches the network (the download test uses a refused local port) or tokenizes
the standard library; every corpus is a few kB written to tmp_path.
"""

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

from minigpt.data import corpus as preparation  # "corpus" is a fixture below
from minigpt.data import loader as loader_module
from minigpt.data.corpus import DataError, DownloadError, bytes_per_token, load_meta, prepare
from minigpt.data.loader import DataLoader
from minigpt.tokenizers import get_encoding

EOT = 50256
REPO = Path(__file__).resolve().parents[2]


def _text(i: int, lines: int) -> str:
    # Varied, deterministic text: prose, code, numbers and some non-ASCII.
    words = ["the", "model", "reads", "tokens", "café", "naïve", "日本語", "🎉", "x = y + 1", "\tindent"]
    out = []
    for j in range(lines):
        n_words = 4 + (i + j) % 5
        out.append(" ".join(words[(i * 7 + j * k) % len(words)] for k in range(1, n_words)) + f" {i}.{j}")
    return "\n".join(out) + "\n"


def _write_corpus(root: Path) -> dict[str, str]:
    """A directory of small documents; returns {relative path: text} of those that count."""
    docs = {f"doc_{i:02d}.txt": _text(i, 3 + i % 4) for i in range(14)}
    docs["notes/readme.md"] = "# Notes\n\nA markdown file, with *emphasis*.\n"
    docs["src/deep/code.py"] = "def f(x):\n    return x + 1  # <|endoftext|> stays plain text\n"
    for rel, text in docs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    # Present but not documents: empty, hidden, cache, unknown suffix, not UTF-8.
    (root / "empty.txt").write_text("")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.txt").write_text("not part of the corpus\n")
    (root / "src" / "__pycache__").mkdir()
    (root / "src" / "__pycache__" / "code.py").write_text("cached = True\n")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02")
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    return docs


def _in_val(key: str, fraction: float) -> bool:
    # The documented rule, written out independently of minigpt.data.
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") < fraction * 2**64


def _split_tokens(out: Path, meta: dict, split: str) -> np.ndarray:
    arrays = [np.load(out / s["file"], mmap_mode="r") for s in meta["splits"][split]["shards"]]
    for a in arrays:
        assert a.dtype == np.uint16 and a.ndim == 1
    return np.concatenate(arrays)


def _documents(tokens: np.ndarray) -> list[str]:
    """Decode a split back into its documents, each of which must start with <|endoftext|>."""
    enc = get_encoding("gpt2")
    assert tokens[0] == EOT
    starts = np.flatnonzero(tokens == EOT).tolist() + [len(tokens)]
    return [enc.decode(tokens[a + 1 : b].tolist()) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def _all_documents(out: Path, meta: dict) -> list[str]:
    return _documents(_split_tokens(out, meta, "train")) + _documents(_split_tokens(out, meta, "val"))


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.npy"))}


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    return root, _write_corpus(root)


@pytest.fixture
def count_tokenize(monkeypatch):
    """Counts calls of preparation._tokenize (in this process, so use workers=1)."""
    calls = []
    original = preparation._tokenize

    def counting(task, tokenizer):
        calls.append(task[0])
        return original(task, tokenizer)

    monkeypatch.setattr(preparation, "_tokenize", counting)
    return calls


# --- preparing ---------------------------------------------------------------------------------


def test_directory_round_trip(corpus, tmp_path, capsys):
    root, docs = corpus
    out = tmp_path / "out"
    meta = prepare(str(root), out, val_fraction=0.25, shard_tokens=97, workers=1)

    assert (out / "meta.json").is_file() and not list(out.glob("*.tmp"))
    assert meta == load_meta(out) == json.loads((out / "meta.json").read_text())
    assert (meta["vocab_size"], meta["eot_id"], meta["tokenizer"], meta["dtype"]) == (50257, EOT, "gpt2", "uint16")
    assert meta["skipped"] == ["latin1.txt (not UTF-8)"]
    assert "warning: skipped 1 file" in capsys.readouterr().err

    val_keys = sorted(k for k in docs if _in_val(k, 0.25))
    assert val_keys and len(val_keys) < len(docs)  # this corpus exercises the hash rule itself
    train_keys = sorted(set(docs) - set(val_keys))
    for split, keys in (("train", train_keys), ("val", val_keys)):
        tokens = _split_tokens(out, meta, split)
        info = meta["splits"][split]
        assert _documents(tokens) == [docs[k] for k in keys]  # in sorted path order
        assert info["tokens"] == len(tokens)
        assert info["documents"] == len(keys)
        assert info["bytes"] == sum(len(docs[k].encode("utf-8")) for k in keys)
        sizes = [s["tokens"] for s in info["shards"]]
        assert all(n == 97 for n in sizes[:-1]) and 0 < sizes[-1] <= 97
        assert [s["file"] for s in info["shards"]] == [f"{split}_{i:06d}.npy" for i in range(len(sizes))]
    # The literal "<|endoftext|>" in code.py is ordinary text, so EOT only marks boundaries.
    assert (_split_tokens(out, meta, "train") == EOT).sum() == len(train_keys)
    assert bytes_per_token(meta) == meta["splits"]["val"]["bytes"] / meta["splits"]["val"]["tokens"]


def test_val_falls_back_to_the_last_document(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    docs = {f"{name}.txt": _text(i, 3) for i, name in enumerate("abcd")}
    for k, text in docs.items():
        (root / k).write_text(text)
    assert not any(_in_val(k, 0.01) for k in docs)
    meta = prepare(str(root), tmp_path / "out", val_fraction=0.01, workers=1, quiet=True)
    assert _documents(_split_tokens(tmp_path / "out", meta, "val")) == [docs["d.txt"]]
    assert _documents(_split_tokens(tmp_path / "out", meta, "train")) == [docs[k] for k in ("a.txt", "b.txt", "c.txt")]


def test_single_file_splits_its_tail_at_a_line(tmp_path):
    text = "".join(_text(i, 5) for i in range(20))
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    meta = prepare(str(path), out, val_fraction=0.1, workers=1, quiet=True)
    (train,) = _documents(_split_tokens(out, meta, "train"))
    (val,) = _documents(_split_tokens(out, meta, "val"))
    assert train + val == text
    assert train.endswith("\n")
    longest_line = max(len(line) for line in text.splitlines(keepends=True))
    assert 0.1 * len(text) <= len(val) < 0.1 * len(text) + longest_line
    assert meta["splits"]["val"]["bytes"] == len(val.encode("utf-8"))

    capped = prepare(str(path), tmp_path / "capped", val_fraction=0.1, max_bytes=1000, workers=1, quiet=True)
    kept = "".join(_documents(_split_tokens(tmp_path / "capped", capped, s))[0] for s in ("train", "val"))
    assert text.startswith(kept) and kept.endswith("\n")
    assert len(kept.encode()) <= 1000 < len(kept.encode()) + longest_line * 4


def test_max_bytes_keeps_a_prefix_of_the_documents(corpus, tmp_path):
    root, docs = corpus
    keys = sorted(docs)
    meta = prepare(str(root), tmp_path / "out", max_bytes=700, workers=1, quiet=True)
    taken = meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"]
    sizes = [len(docs[k].encode()) for k in keys]
    assert sum(sizes[: taken - 1]) < 700 <= sum(sizes[:taken])
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == sum(sizes[:taken])


def test_deterministic_and_independent_of_location_and_workers(corpus, tmp_path):
    root, docs = corpus
    a = prepare(str(root), tmp_path / "a", val_fraction=0.25, shard_tokens=97, workers=1, quiet=True)
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, moved)
    b = prepare(str(moved), tmp_path / "b", val_fraction=0.25, shard_tokens=97, workers=2, quiet=True)
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")
    assert a["splits"] == b["splits"]

    # A new document does not move the others between splits.
    (moved / "aaa_new.txt").write_text("a newcomer\n")
    c = prepare(str(moved), tmp_path / "c", val_fraction=0.25, shard_tokens=97, workers=1, quiet=True)
    for split in ("train", "val"):
        old = _documents(_split_tokens(tmp_path / "a", a, split))
        new = _documents(_split_tokens(tmp_path / "c", c, split))
        assert [d for d in new if d != "a newcomer\n"] == old


def test_complete_directory_is_reused(corpus, tmp_path, capsys, count_tokenize):
    root, docs = corpus
    out = tmp_path / "out"
    first = prepare(str(root), out, workers=1)
    assert count_tokenize
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    count_tokenize.clear()
    capsys.readouterr()

    assert prepare(str(root), out, workers=2) == first  # workers does not change the result
    assert count_tokenize == []
    assert "reusing" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    # Different parameters, or a changed source, are prepared again.
    assert prepare(str(root), out, val_fraction=0.5, workers=1)["val_fraction"] == 0.5
    assert count_tokenize and "different val_fraction" in capsys.readouterr().err
    count_tokenize.clear()
    (root / "doc_00.txt").write_text("changed\n")
    meta = prepare(str(root), out, val_fraction=0.5, workers=1, quiet=True)
    assert count_tokenize
    texts = _all_documents(out, meta)
    assert "changed\n" in texts


def test_interrupted_or_damaged_output_is_redone(corpus, tmp_path, monkeypatch, count_tokenize):
    root, _ = corpus
    reference = tmp_path / "reference"
    prepare(str(root), reference, shard_tokens=50, workers=1, quiet=True)
    expected = _shard_bytes(reference)
    assert len(expected) > 3

    # Interrupt a run after a few documents: shards may exist, meta.json must not.
    out = tmp_path / "out"
    original = preparation._tokenize
    seen = []

    def interrupt(task, tokenizer):
        seen.append(task)
        if len(seen) == 8:
            raise KeyboardInterrupt
        return original(task, tokenizer)

    monkeypatch.setattr(preparation, "_tokenize", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(root), out, shard_tokens=50, workers=1, quiet=True)
    monkeypatch.setattr(preparation, "_tokenize", original)
    assert list(out.glob("train_*.npy")) and not (out / "meta.json").exists()
    with pytest.raises(DataError, match=r"no meta.json.*python -m minigpt.data"):
        load_meta(out)
    prepare(str(root), out, shard_tokens=50, workers=1, quiet=True)
    assert _shard_bytes(out) == expected

    # A half-written leftover, a stray shard from a bigger run, and no meta.json.
    (out / "meta.json").unlink()
    (out / "train_000000.npy.tmp").write_bytes(b"partial")
    (out / "train_000099.npy").write_bytes(b"stale")
    (out / "keep.me").write_text("not ours")
    prepare(str(root), out, shard_tokens=50, workers=1, quiet=True)
    assert _shard_bytes(out) == expected
    assert not (out / "train_000000.npy.tmp").exists() and (out / "keep.me").exists()

    # A truncated shard (meta.json intact) makes the directory incomplete.
    shard = out / "train_000001.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="incomplete: train_000001.npy"):
        load_meta(out)
    count_tokenize.clear()
    prepare(str(root), out, shard_tokens=50, workers=1, quiet=True)
    assert count_tokenize and _shard_bytes(out) == expected


def _unusable(d: Path, case: str) -> str:
    """Builds an unusable source under d; returns its spec."""
    if case == "empty directory":
        return str(d)
    if case == "no text suffix":
        (d / "only.bin").write_bytes(b"abc")
        return str(d)
    if case == "only empty files":
        (d / "e.txt").write_text("")
        (d / "f.md").write_text("")
        return str(d)
    if case == "empty file":
        (d / "e.txt").write_text("")
        return str(d / "e.txt")
    if case == "glob matching nothing":
        return str(d / "*.nothing")
    if case == "missing path":
        return str(d / "missing.txt")
    if case == "binary file":
        (d / "x.txt").write_bytes(b"a\x00b\n")
        return str(d / "x.txt")
    if case == "latin-1 file":
        (d / "x.txt").write_bytes(b"caf\xe9\n")
        return str(d / "x.txt")
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty directory", "nothing to tokenize"),
        ("no text suffix", "nothing to tokenize"),
        ("only empty files", "no text found"),
        ("empty file", "is empty"),
        ("glob matching nothing", "matches no files"),
        ("missing path", "not a file, directory or glob that exists"),
        ("binary file", "binary"),
        ("latin-1 file", "not UTF-8 text"),
    ],
)
def test_unusable_source_is_a_clear_error(tmp_path, case, message):
    src = tmp_path / "src"
    src.mkdir()
    spec = _unusable(src, case)
    with pytest.raises(DataError, match=message) as info:
        prepare(spec, tmp_path / "out", workers=1, quiet=True)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "meta.json").exists()
    if case in ("empty file", "binary file", "latin-1 file", "missing path", "glob matching nothing"):
        assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "bad", [dict(val_fraction=0.0), dict(val_fraction=1.0), dict(shard_tokens=0), dict(workers=0), dict(max_bytes=0)]
)
def test_bad_parameters(corpus, tmp_path, bad):
    with pytest.raises(DataError):
        prepare(str(corpus[0]), tmp_path / "out", **{"workers": 1, **bad})


def test_glob_source(corpus, tmp_path):
    root, docs = corpus
    meta = prepare(str(root / "doc_0*.txt"), tmp_path / "out", workers=1, quiet=True)
    texts = _all_documents(tmp_path / "out", meta)
    assert sorted(texts) == sorted(docs[f"doc_{i:02d}.txt"] for i in range(10))


def test_download_failure_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(preparation, "SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")  # port 9: refused
    with pytest.raises(DownloadError, match="could not download http://127.0.0.1:9/input.txt") as info:
        prepare("shakespeare", tmp_path / "out", quiet=True)
    assert "local path" in str(info.value) and "\n" not in str(info.value)
    # what a train.py user (--data shakespeare, --recipe cpu-push) types, not the module's command
    assert "train.py --data path/to/input.txt" in str(info.value) and "python -m minigpt.data" not in str(info.value)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_streamed_sources_need_datasets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match="pip install datasets"):
        prepare("fineweb-edu", tmp_path / "out", quiet=True)


def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache"))
    assert preparation.default_data_dir("stdlib") == tmp_path / "cache" / "stdlib"
    assert preparation.default_data_dir("shakespeare") == tmp_path / "cache" / "shakespeare"
    one, two = preparation.default_data_dir("/a/my data/"), preparation.default_data_dir("/b/my data")
    assert one.parent == two.parent == tmp_path / "cache"
    assert one != two and one.name.startswith("my-data-") and two.name.startswith("my-data-")
    assert preparation.default_data_dir("data/*.txt").name.startswith("txt-")
    monkeypatch.delenv("MINIGPT_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert preparation.default_data_dir("stdlib") == tmp_path / "home" / ".cache" / "minigpt" / "data" / "stdlib"


def test_stdlib_listing():
    files = preparation._stdlib_files()
    keys = [k for k, _ in files]
    assert keys == sorted(keys) and len(set(keys)) == len(keys) > 500
    assert "os.py" in keys and "json/decoder.py" in keys
    assert all(k.endswith(".py") and "site-packages" not in k for k in keys)
    assert all(path.is_file() for _, path in files)


# --- loading -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """~2,700 tokens in shards of 97 (an odd size), so batches straddle shard boundaries."""
    root = tmp_path_factory.mktemp("loader_corpus")
    for i in range(40):
        (root / f"d{i:02d}.txt").write_text(_text(i, 4))
    out = tmp_path_factory.mktemp("loader_out")
    meta = prepare(str(root), out, val_fraction=0.25, shard_tokens=97, workers=1, quiet=True)
    assert len(meta["splits"]["train"]["shards"]) > 10
    stream = torch.from_numpy(_split_tokens(out, meta, "train").astype(np.int64))
    return out, meta, stream


def _batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def test_batches_follow_the_stream_and_wrap(prepared):
    out, meta, stream = prepared
    B, T = 3, 16
    N = len(stream)
    loader = DataLoader(out, "train", B, T)
    p = 0
    for _ in range((N - 1) // (B * T)):
        x, y = loader.next_batch()
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (B, T)
        assert torch.equal(x.flatten(), stream[p : p + B * T])
        assert torch.equal(y.flatten(), stream[p + 1 : p + B * T + 1])
        assert torch.equal(y[:, :-1], x[:, 1:])
        p += B * T
    assert loader.epoch == 0
    assert p + B * T + 1 > N  # the next batch does not fit: a new epoch starts
    x, y = loader.next_batch()
    assert loader.epoch == 1
    starts = [o for o in range(T) if torch.equal(x.flatten(), stream[o : o + B * T])]
    assert starts and torch.equal(y.flatten(), stream[starts[0] + 1 : starts[0] + B * T + 1])


def test_seed_moves_later_epochs_only(prepared):
    out, meta, stream = prepared
    B, T = 4, 32
    steps = (len(stream) - 1) // (B * T)
    first = {}
    for seed in range(8):
        loader = DataLoader(out, "train", B, T, seed=seed)
        x0, _ = loader.next_batch()
        assert torch.equal(x0.flatten(), stream[: B * T])  # epoch 0 always starts at token 0
        _batches(loader, steps - 1)
        first[seed] = loader.next_batch()[0]
        assert loader.epoch == 1
    assert len({tuple(x[0, :4].tolist()) for x in first.values()}) > 1
    again = DataLoader(out, "train", B, T, seed=3)
    _batches(again, steps)
    assert torch.equal(again.next_batch()[0], first[3])


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_state_dict_resumes_exactly(prepared, order):
    out, meta, stream = prepared
    a = DataLoader(out, "train", 2, 24, seed=5, order=order)
    _batches(a, 3 * len(stream) // (2 * 24) // 2)  # into the second epoch
    assert a.epoch == 1
    state = json.loads(json.dumps(a.state_dict()))  # plain ints and strings
    assert all(isinstance(v, (int, str)) for v in state.values())
    expected = _batches(a, 150)  # runs through several more epochs
    assert a.epoch >= 3
    b = DataLoader(out, "train", 2, 24, seed=5, order=order)
    b.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(expected, _batches(b, 150), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert b.state_dict() == a.state_dict()


def test_state_dict_from_other_data_or_geometry_is_refused(prepared, corpus, tmp_path):
    out, meta, stream = prepared
    state = DataLoader(out, "train", 2, 8).state_dict()
    for other in (
        DataLoader(out, "train", 3, 8),
        DataLoader(out, "train", 2, 16),
        DataLoader(out, "train", 1, 8, world_size=2),
        DataLoader(out, "val", 2, 8),
        DataLoader(out, "train", 2, 8, order="random"),
    ):
        with pytest.raises(DataError, match="state was saved for"):
            other.load_state_dict(state)
    prepare(str(corpus[0]), tmp_path / "other", workers=1, quiet=True)
    with pytest.raises(DataError, match="data="):
        DataLoader(tmp_path / "other", "train", 2, 8).load_state_dict(state)


@pytest.mark.parametrize("order", ["sequential", "random"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_together_read_one_big_batch(prepared, world_size, order):
    out, meta, stream = prepared
    B, T, W = 2, 16, world_size
    ranks = [DataLoader(out, "train", B, T, rank=r, world_size=W, seed=1, order=order) for r in range(W)]
    single = DataLoader(out, "train", W * B, T, seed=1, order=order)
    for _ in range(3 * len(stream) // (W * B * T)):  # about three epochs
        xs, ys = zip(*(r.next_batch() for r in ranks), strict=True)
        x, y = single.next_batch()
        assert torch.equal(torch.cat(xs), x) and torch.equal(torch.cat(ys), y)
    assert {r.epoch for r in ranks} == {single.epoch} and single.epoch >= 2
    assert all(r.state_dict() == {**ranks[0].state_dict(), "world_size": W} for r in ranks)


def test_random_order_covers_every_document_in_an_epoch(prepared):
    out, meta, stream = prepared
    T = 16
    document = np.cumsum(stream.numpy() == EOT) - 1  # the document each token belongs to
    n_windows = (len(stream) - 1) // T
    loader = DataLoader(out, "train", 1, T, seed=3, order="random")
    reads, read = [], loader._read
    loader._read = lambda start, n: reads.append((start, n)) or read(start, n)
    covered = np.zeros(len(stream), dtype=bool)
    for step in range(n_windows):  # one window a step: an epoch is n_windows steps
        x, y = loader.next_batch()
        [(start, n)] = reads[step:]
        assert n == T + 1
        assert torch.equal(x[0], stream[start : start + T]) and torch.equal(y[0], stream[start + 1 : start + T + 1])
        covered[start : start + T + 1] = True
    assert loader.epoch == 0
    starts = [s for s, _ in reads]
    assert sorted(starts) == list(range(0, n_windows * T, T))  # every window once
    assert set(document[covered]) == set(range(document[-1] + 1))  # so every document was seen
    # Shuffled: the first tenth of the epoch already reaches into every quarter of the corpus.
    assert {4 * s // len(stream) for s in starts[: n_windows // 10]} == {0, 1, 2, 3}
    loader.next_batch()
    assert loader.epoch == 1 and reads[-1][0] % T != 0  # a new order, at a new offset


def test_random_order_follows_the_seed(prepared):
    out, meta, stream = prepared

    def first_batches(seed):
        loader = DataLoader(out, "train", 3, 16, seed=seed, order="random")
        return torch.cat([x for x, _ in _batches(loader, 5)])

    assert torch.equal(first_batches(11), first_batches(11))
    assert not torch.equal(first_batches(11), first_batches(12))
    with pytest.raises(DataError, match="unknown data order"):
        DataLoader(out, "train", 3, 16, order="shuffled")


def test_dataset_too_small_for_the_batch(prepared):
    out, meta, stream = prepared
    N = meta["splits"]["train"]["tokens"]
    DataLoader(out, "train", 1, N - 1).next_batch()  # exactly B*T+1 tokens is enough
    with pytest.raises(DataError, match="too few for one step"):
        DataLoader(out, "train", 1, N)
    with pytest.raises(DataError, match="too few"):
        DataLoader(out, "train", 1, N // 2, world_size=2)


def test_val_reset_restarts_evaluation(prepared):
    out, meta, stream = prepared
    val = DataLoader(out, "val", 2, 8)
    first = _batches(val, 3)
    _batches(val, 20)
    val.reset()
    assert (val.epoch, val.position) == (0, 0)
    for (xa, ya), (xb, yb) in zip(first, _batches(val, 3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_meta_records_each_shards_largest_id(prepared):
    out, meta, _ = prepared
    for split in ("train", "val"):
        for shard in meta["splits"][split]["shards"]:
            assert shard["max_id"] == int(np.load(out / shard["file"]).max())


def _copy(prepared, tmp_path) -> tuple[Path, dict]:
    out = tmp_path / "copy"
    shutil.copytree(prepared[0], out)
    return out, json.loads((out / "meta.json").read_text())


MALFORMED_META = {  # a parseable meta.json with the wrong types or values -> the words of the error
    "a list": (lambda m: [m], "format version"),
    "file is a number": (lambda m: m["splits"]["train"]["shards"][0].update(file=5), "shard's file"),
    "file outside the directory": (
        lambda m: m["splits"]["val"]["shards"][0].update(file="../train_000000.npy"),
        "shard's file",
    ),
    "vocab_size is a word": (lambda m: m.update(vocab_size="big"), "vocab_size"),
    "vocab_size too big for uint16": (lambda m: m.update(vocab_size=70000), "vocab_size"),
    "tokens is a string": (lambda m: m["splits"]["train"]["shards"][1].update(tokens="97"), "tokens"),
    "max_id is negative": (lambda m: m["splits"]["train"]["shards"][1].update(max_id=-1), "max_id"),
    "shards is a dict": (lambda m: m["splits"]["val"].update(shards={}), "list of shards"),
    "split tokens disagree": (lambda m: m["splits"]["val"].update(tokens=1), "sum of its shards"),
    "source_id is a list": (lambda m: m.update(source_id=[1]), "source_id"),
}


@pytest.mark.parametrize("case", list(MALFORMED_META))
def test_malformed_meta_is_one_clear_error(prepared, tmp_path, case):
    out, meta = _copy(prepared, tmp_path)
    change, words = MALFORMED_META[case]
    meta = change(meta) or meta
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=words) as e:
        DataLoader(out, "train", 1, 8)
    assert "\n" not in str(e.value) and "python -m minigpt.data" in str(e.value)


def test_token_ids_outside_the_vocabulary_are_refused(prepared, tmp_path):
    from minigpt.data.loader import check_token_ids

    out, meta = _copy(prepared, tmp_path)
    check_token_ids(out, load_meta(out))
    # A shard of the right length whose ids do not fit the vocabulary: refused up front for the
    # first shard of a split (read in full) ...
    first = meta["splits"]["train"]["shards"][0]["file"]
    tokens = np.load(out / first)
    bad = tokens.copy()
    bad[5] = 50300
    np.save(out / first, bad)
    with pytest.raises(DataError, match=f"{first} holds token id 50300, outside the vocabulary of 50257"):
        check_token_ids(out, load_meta(out))
    np.save(out / first, tokens)
    # ... from meta.json's max_id for every shard ...
    meta["splits"]["train"]["shards"][3]["max_id"] = 60000
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="token id 60000 .meta.json."):
        check_token_ids(out, load_meta(out))
    # ... and, for a later shard whose meta.json is stale, when the loader first reads it.
    meta["splits"]["train"]["shards"][3]["max_id"] = 100
    (out / "meta.json").write_text(json.dumps(meta))
    later = meta["splits"]["train"]["shards"][3]["file"]
    bad = np.load(out / later).copy()
    bad[0] = 65535
    np.save(out / later, bad)
    check_token_ids(out, load_meta(out))
    loader = DataLoader(out, "train", 1, 97)
    with pytest.raises(DataError, match=f"{later} holds token id 65535"):
        for _ in range(5):
            loader.next_batch()


def test_loader_needs_a_prepared_directory(tmp_path):
    with pytest.raises(DataError, match="python -m minigpt.data"):
        DataLoader(tmp_path, "train", 1, 8)


# --- command line ------------------------------------------------------------------------------

# The same command line two ways: the script beside train.py, and the package's entry point.
COMMANDS = {"prepare.py": ["prepare.py"], "python -m minigpt.data": ["-m", "minigpt.data"]}


def _cli(*args, env_dir, command="python -m minigpt.data"):
    env = {**os.environ, "MINIGPT_DATA_DIR": str(env_dir)}
    return subprocess.run(
        [sys.executable, *COMMANDS[command], *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("command", list(COMMANDS))
def test_cli_help(tmp_path, command):
    result = _cli("--help", env_dir=tmp_path, command=command)
    assert result.returncode == 0
    for flag in ("--out-dir", "--shard-tokens", "--workers", "--val-fraction", "--max-bytes"):
        assert flag in result.stdout


@pytest.mark.parametrize("command", list(COMMANDS))
def test_cli_missing_path_is_one_error_line(tmp_path, command):
    result = _cli(str(tmp_path / "nope.txt"), env_dir=tmp_path, command=command)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope.txt" in lines[0]
    assert not any(tmp_path.iterdir())  # nothing was written


BAD_FLAGS = {
    "--shard-tokens not a size": (["--shard-tokens", "lots"], 2, "not a size"),
    "--max-bytes not a size": (["--max-bytes", "2X"], 2, "not a size"),
    "--workers not a number": (["--workers", "two"], 2, "--workers"),
    "unknown flag": (["--no-such-flag", "64M"], 2, "--no-such-flag"),
    "--tokenizer names none": (["--tokenizer", "bpe:x"], 1, "tokenizer"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_cli_bad_flag_is_one_error_line(tmp_path, command, case):
    args, code, message = BAD_FLAGS[case]
    source = tmp_path / "src.txt"
    source.write_text("some text\n" * 10, encoding="utf-8")
    result = _cli(str(source), *args, env_dir=tmp_path / "cache", command=command)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert result.stdout == "" and not (tmp_path / "cache").exists()  # nothing was written


def test_random_order_checks_each_shard_once(prepared, monkeypatch):
    out, meta, stream = prepared
    checked = []
    check = loader_module._check_ids
    monkeypatch.setattr(loader_module, "_check_ids", lambda path, *a: checked.append(path.name) or check(path, *a))
    loader = DataLoader(out, "train", 2, 16, order="random")
    _batches(loader, 3 * len(stream) // 32)  # three epochs of rows from all over the shards
    assert sorted(checked) == sorted(s["file"] for s in meta["splits"]["train"]["shards"])
