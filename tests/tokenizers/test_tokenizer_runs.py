"""Training, sampling and evaluating with the char and bpe:N tokenizers, end to end on the CPU.

A tiny run trains its tokenizer on the train split of a made-up corpus (with Japanese and
emoji), saves it with the data and every checkpoint, and sample.py / eval.py / --resume find
it from the run's directory with no tokenizer flag.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from tiny_run import ROOT, load_script, read_log, tiny_argv

from minigpt.data.corpus import data_tokenizer, default_data_dir, load_meta, prepare
from minigpt.eval.evaluate import bits_per_byte
from minigpt.model.load import from_pretrained
from minigpt.tokenizers import TOKENIZER_FILE, CharTokenizer, GPT2Tokenizer, load_tokenizer

train = load_script(ROOT / "train.py")
sample = load_script(ROOT / "sample.py")
eval_cli = load_script(ROOT / "eval.py")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

WORDS = "the cat sat on a mat 猫 が 座った 「はい」 。 and then ran".split()
VAL_ONLY = "富士山に登った 😀🎉 ünïcödé ЖЖ"  # characters the train split never shows


def corpus_text(lines: int = 600) -> str:
    rng = random.Random(1)
    body = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(lines)]
    return "\n".join(body) + "\n"


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text(), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["char", "bpe:300"])
def test_run_then_sample_and_eval_with_its_own_tokenizer(kind, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        train.main(
            tiny_argv(
                corpus,
                out,
                tokenizer=kind,
                max_steps=4,
                ckpt_interval=2,
                eval_interval=4,
                sample_interval=4,
                sample_prompt="猫",
            )
        )
        == 0
    )
    data_dir = default_data_dir(str(corpus), kind)
    assert data_dir.name.endswith("-char" if kind == "char" else "-bpe300")
    meta = load_meta(data_dir)
    tokenizer = data_tokenizer(data_dir)
    assert meta["tokenizer"] == kind and meta["tokenizer_kind"] == tokenizer.kind
    assert tokenizer.kind.split(":")[0] == kind.split(":")[0] and tokenizer.vocab_size == meta["vocab_size"]
    # bits per byte count the UTF-8 bytes of the text, whatever the tokenizer
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == len(corpus.read_bytes())
    _, evals = read_log(out)
    val = meta["splits"]["val"]
    assert evals[4]["val_bpb"] == pytest.approx(evals[4]["val_loss"] / math.log(2) / (val["bytes"] / val["tokens"]))

    for step in (2, 4):  # every checkpoint carries the tokenizer, with the model's vocabulary
        ckpt = out / f"ckpt_{step:08d}"
        assert (ckpt / TOKENIZER_FILE).is_file()
        assert load_tokenizer(ckpt).encode(VAL_ONLY) == tokenizer.encode(VAL_ONLY)
        assert from_pretrained(ckpt).config.vocab_size == tokenizer.vocab_size
    assert json.loads((out / "ckpt_00000004" / "train_state.json").read_text())["train_config"]["tokenizer"] == kind
    capsys.readouterr()

    prompt = "猫が「"
    assert (
        sample.main(["--init", str(out), "--prompt", prompt, "--max-new-tokens", "6", "--seed", "1", "--device", "cpu"])
        == 0
    )
    captured = capsys.readouterr()
    assert captured.out.startswith(prompt) and f"{tokenizer.kind} tokenizer" in captured.err

    text_file = tmp_path / "text.txt"
    text = corpus_text(20) + VAL_ONLY
    text_file.write_text(text, encoding="utf-8")
    result_file = tmp_path / "result.json"
    assert (
        eval_cli.main(
            [
                "--init",
                str(out),
                "--task",
                f"bpb:{text_file}",
                "--device",
                "cpu",
                "--no-progress",
                "--output",
                str(result_file),
            ]
        )
        == 0
    )
    got = json.loads(result_file.read_text())["results"][f"bpb:{text_file}"]
    model = from_pretrained(out)
    want = bits_per_byte(model, tokenizer, text)
    assert got["bytes"] == len(text.encode("utf-8")) and got["tokens"] == len(tokenizer.encode(text))
    assert got["bpb"] == pytest.approx(want["bpb"], rel=1e-6)


def test_resume_with_a_trained_tokenizer_equals_straight(corpus, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train.main(tiny_argv(corpus, straight, tokenizer="char", max_steps=6)) == 0
    assert train.main(tiny_argv(corpus, split, tokenizer="char", max_steps=6, stop_at_step=3)) == 0
    assert train.main(["--resume", "--out-dir", str(split)]) == 0  # no --tokenizer: the checkpoint's
    a, _ = read_log(straight)
    b, _ = read_log(split)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-6), step


def test_fine_tuning_keeps_the_checkpoint_tokenizer(corpus, tmp_path, capsys):
    first, tuned = tmp_path / "first", tmp_path / "tuned"
    assert train.main(tiny_argv(corpus, first, tokenizer="char", max_steps=2)) == 0
    other = tmp_path / "other.txt"
    other.write_text("a different text, with letters the first corpus never had: xyzq 😀\n" * 80, encoding="utf-8")
    assert train.main(tiny_argv(other, tuned, init=first, max_steps=2, n_layer=None, n_head=None, n_embd=None)) == 0
    original = load_tokenizer(first / "ckpt_00000002")
    assert load_tokenizer(tuned / "ckpt_00000002").encode("xyzq 猫") == original.encode("xyzq 猫")
    assert "x" not in original.alphabet  # so "xyzq" above went through the byte fallback


@pytest.mark.parametrize("kind", ["gpt2", "char", "bpe:300"])
def test_round_trip_through_the_data_pipeline(kind, tmp_path):
    """Japanese and emoji that only the val split holds come back exactly from the shards (char
    and bpe spell them in bytes), and the tokenizer learned from train alone."""
    source = tmp_path / "corpus.txt"
    text = corpus_text(300) + "\n".join([VAL_ONLY] * 20) + "\n"
    source.write_text(text, encoding="utf-8")
    out = tmp_path / "prepared"
    meta = prepare(str(source), out, tokenizer=kind, val_fraction=0.1, workers=2, quiet=True, shard_tokens=500)
    tokenizer = data_tokenizer(out)
    decoded = []
    for split in ("train", "val"):
        ids = np.concatenate([np.load(out / s["file"]) for s in meta["splits"][split]["shards"]])
        assert ids.dtype == np.uint16 and ids[0] == tokenizer.eot_id
        decoded.append(tokenizer.decode(ids[1:].tolist()))
    assert decoded[0] + decoded[1] == text
    assert VAL_ONLY in decoded[1] and VAL_ONLY not in decoded[0]
    if isinstance(tokenizer, CharTokenizer):
        assert not set("富士山😀ü") & set(tokenizer.alphabet)
    if kind == "bpe:300":  # no merge of val-only text: each of its characters is spelled in bytes
        assert len(tokenizer.encode("富士山")) == len("富士山".encode())


def test_each_tokenizer_has_its_own_directory_and_a_changed_one_is_prepared_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache"))
    dirs = {default_data_dir("stdlib", k) for k in ("gpt2", "char", "bpe:300", "bpe:301")}
    assert len(dirs) == 4 and default_data_dir("stdlib").name == "stdlib"
    source = tmp_path / "corpus.txt"
    source.write_text(corpus_text(100), encoding="utf-8")
    out = tmp_path / "prepared"
    prepare(str(source), out, tokenizer="bpe:300", workers=1)
    prepare(str(source), out, tokenizer="gpt2", workers=1)
    assert (out / "merges.txt").exists()
    prepare(str(source), out, tokenizer="char", workers=1)
    assert "prepared with different tokenizer" in capsys.readouterr().err
    assert load_meta(out)["tokenizer"] == "char"
    assert not (out / "merges.txt").exists() and not (out / "vocab.json").exists()  # nothing of gpt2's is left
    assert json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"] == []
    assert isinstance(data_tokenizer(out), CharTokenizer)


def test_data_command_line_tokenizer_flag(tmp_path, monkeypatch, capsys):
    from minigpt.data import prepare as data

    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache"))
    source = tmp_path / "corpus.txt"
    source.write_text(corpus_text(100), encoding="utf-8")
    assert data.main([str(source), "--tokenizer", "char", "--workers", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{default_data_dir(str(source), 'char')} (char tokenizer)")
    for bad in ("foo", "bpe:256", "bpe:x"):
        assert data.main([str(source), "--tokenizer", bad, "--quiet"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "tokenizer" in err


def test_a_gpt2_directory_prepared_before_tokenizer_files_is_still_gpt2(tmp_path):
    """Data prepared by an older minigpt has meta.json and shards but no tokenizer file."""
    source = tmp_path / "corpus.txt"
    source.write_text(corpus_text(20), encoding="utf-8")
    out = tmp_path / "prepared"
    prepare(str(source), out, tokenizer="gpt2", workers=1)
    for p in out.iterdir():
        if p.suffix in (".json", ".txt") and p.name != "meta.json":
            p.unlink()
    assert isinstance(data_tokenizer(out), GPT2Tokenizer)


def test_a_swapped_tokenizer_file_is_refused_on_load(corpus, tmp_path, capsys):
    """A tokenizer file replaced by another of the same size (here the same characters in another
    order) is refused by sample.py and eval.py: the checkpoint records the sha1 of its files."""
    out = tmp_path / "out"
    assert train.main(tiny_argv(corpus, out, tokenizer="char", max_steps=2)) == 0
    ckpt = out / "ckpt_00000002"
    original = load_tokenizer(ckpt)
    state = json.loads((ckpt / "train_state.json").read_text())
    assert isinstance(state["tokenizer_sha1"], str)
    alphabet = list(original.alphabet)
    random.Random(0).shuffle(alphabet)
    CharTokenizer("".join(alphabet)).save(ckpt)  # same ids, same sizes, another meaning
    assert load_tokenizer(ckpt).vocab_size == original.vocab_size
    capsys.readouterr()
    text_file = tmp_path / "text.txt"
    text_file.write_text(corpus_text(5), encoding="utf-8")
    for run, argv in (
        (sample.main, ["--init", str(out), "--prompt", "猫", "--max-new-tokens", "2", "--device", "cpu"]),
        (eval_cli.main, ["--init", str(out), "--task", f"bpb:{text_file}", "--device", "cpu", "--no-progress"]),
    ):
        assert run(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "sha1" in err, err
    # a checkpoint that recorded no hash (written before the record existed) still loads
    del state["tokenizer_sha1"]
    (ckpt / "train_state.json").write_text(json.dumps(state))
    assert sample.main(["--init", str(out), "--prompt", "猫", "--max-new-tokens", "2", "--device", "cpu"]) == 0
