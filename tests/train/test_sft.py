"""Supervised fine-tuning: masks, the masked loss, packed rows against each conversation alone,
malformed files, a tiny train.py --sft run (with LoRA, resumed exactly), and the downloader offline."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from tiny_run import ROOT, load_script

from minigpt import GPT, GPTConfig
from minigpt.chat.formats import FORMATS, MINIGPT, chat_format
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.tokenizers.lookup import tokenizer_for
from minigpt.train.sft import IGNORE, SFTData, SFTError, encode, example, pack, read_conversations

CHATS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]},
    {"instruction": "Add two and two.", "input": "", "output": "Four."},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And Japan?"},
            {"role": "assistant", "content": "Tokyo, of course."},
        ]
    },
    {"instruction": "Translate to French", "input": "cat", "output": "chat"},
    {"messages": [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue."}]},
    {"messages": [{"role": "user", "content": "Say yes"}, {"role": "assistant", "content": "Yes."}]},
    {"messages": [{"role": "user", "content": "Count to three"}, {"role": "assistant", "content": "1, 2, 3."}]},
]


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_for("gpt2")


def write_chats(path, chats=CHATS):
    path.write_text("".join(json.dumps(c) + "\n" for c in chats))
    return path


def test_the_mask_is_exactly_the_assistant_replies(tokenizer):
    messages = CHATS[2]["messages"]
    ids, learn = encode(messages, MINIGPT, tokenizer)
    # by hand: the replies and their <|endoftext|> are learned, the rest (system, users, headers, newlines) not
    pieces = [
        ("System: Be brief.\nUser: Capital of France?\nAssistant:", False),
        (" Paris.<|endoftext|>", True),
        ("\nUser: And Japan?\nAssistant:", False),
        (" Tokyo, of course.<|endoftext|>", True),
        ("\n", False),
    ]
    expected_ids, expected_learn = [], []
    for text, learned in pieces:
        piece = tokenizer.encode(text, allow_special=True)
        expected_ids += piece
        expected_learn += [learned] * len(piece)
    assert ids == expected_ids and learn == expected_learn
    assert tokenizer.decode([i for i, k in zip(ids, learn, strict=True) if k]) == (
        " Paris.<|endoftext|> Tokyo, of course.<|endoftext|>"
    )
    assert ids.count(tokenizer.eot_id) == 2  # the end-of-turn marker is the special token, not text
    ex = example(ids, learn, block_size=1000)
    assert ex.inputs == ids[:-1]
    assert ex.targets == [t if k else IGNORE for t, k in zip(ids[1:], learn[1:], strict=True)]


def test_the_instruction_form_is_a_user_and_an_assistant_message(tmp_path):
    path = write_chats(tmp_path / "c.jsonl", [CHATS[3], CHATS[1]])
    first, second = read_conversations(path)
    assert first == [
        {"role": "user", "content": "Translate to French\n\ncat"},
        {"role": "assistant", "content": "chat"},
    ]
    assert second[0]["content"] == "Add two and two."  # an empty input adds nothing


@pytest.mark.parametrize("packed", [True, False])
def test_the_loss_is_a_plain_masked_cross_entropy(tmp_path, tokenizer, packed):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=1, n_head=2, n_embd=32)).eval()
    data = SFTData(write_chats(tmp_path / "c.jsonl"), tokenizer, MINIGPT, 64, 3, packed=packed, val_fraction=0.2)
    x, y, *docs = data.train_loader.next_batch()
    assert (y != IGNORE).any(dim=1).all()  # every row has something to learn
    with torch.no_grad():
        doc_ids = docs[0] if docs else None
        loss = model(x, y, doc_ids=doc_ids)
        logits = model(x, doc_ids=doc_ids)
        ref = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
    assert torch.allclose(loss, ref, atol=1e-5)


def test_packed_rows_give_each_conversation_its_own_logits(tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=96, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)).eval()
    chats = [c for c in CHATS if "messages" in c]
    examples = [example(*encode(c["messages"], MINIGPT, tokenizer), block_size=96) for c in chats]
    rows = pack(examples, 96, tokenizer.eot_id)
    assert len(rows) < len(examples)  # several conversations share a row
    seen = 0
    with torch.no_grad():
        for inputs, targets, docs in rows:
            packed = model(torch.tensor([inputs]), doc_ids=torch.tensor([docs]))[0]
            start = 0
            while start < len(docs) and seen < len(examples):
                ex = examples[seen]
                n = len(ex.inputs)
                if inputs[start : start + n] != ex.inputs:
                    break  # the padding at the row's end
                alone = model(torch.tensor([ex.inputs]))[0]
                assert (packed[start : start + n] - alone).abs().max().item() <= 1e-4
                assert targets[start : start + n] == ex.targets
                assert len(set(docs[start : start + n])) == 1
                start, seen = start + n, seen + 1
            assert all(t == IGNORE for t in targets[start:])  # padding is never a target
    assert seen == len(examples)


@pytest.mark.parametrize(
    "line,message",
    [
        ("{oops", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got a list"),
        ('{"messages": []}', "the conversation has no messages"),
        ('{"messages": "hi"}', "'messages' must be a list"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "unknown role 'robot'"),
        ('{"messages": [{"role": "user", "content": 3}]}', "needs 'content' as a string"),
        ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant reply to learn"),
        ('{"instruction": "x", "output": 5}', "'output' must be a string"),
        ('{"prompt": "x", "completion": "y"}', "expected 'messages' (a conversation) or 'instruction' and 'output'"),
    ],
)
def test_malformed_lines_are_one_line_errors_with_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(CHATS[0]) + "\n\n" + line + "\n")
    with pytest.raises(SFTError) as e:
        read_conversations(path)
    assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value) and "\n" not in str(e.value)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(SFTError, match="no such file"):
        read_conversations(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(SFTError, match="holds no conversations"):
        read_conversations(tmp_path / "empty.jsonl")


def test_the_downloader_offline_says_what_to_run(tmp_path):
    out = tmp_path / "ja.jsonl"
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "minigpt.data.sft_download", "dolly-ja", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and not out.exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot download kunishou/databricks-dolly-15k-ja")
    assert f"run `python -m minigpt.data.sft_download dolly-ja {out}` on a machine with network access" in lines[0]


def test_the_downloader_converts_records(tmp_path):
    from minigpt.data.sft_download import download

    source = tmp_path / "src.json"
    source.write_text(
        json.dumps([{"instruction": "猫は?", "input": "短く", "output": "動物です。"}, {"instruction": ""}])
    )
    n = download("dolly-ja", tmp_path / "out.jsonl", fetch=lambda *a, **k: str(source))
    assert n == 1
    [conversation] = read_conversations(tmp_path / "out.jsonl")
    assert conversation == [
        {"role": "user", "content": "猫は?\n\n短く"},
        {"role": "assistant", "content": "動物です。"},
    ]


def _run(argv):
    return subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
def test_train_sft_with_lora_runs_resumes_exactly_and_chats_without_a_flag(tmp_path):
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)), tmp_path / "b")
    tokenizer_for("gpt2").save(tmp_path / "b")
    chats = write_chats(tmp_path / "chats.jsonl")
    common = ["--init", str(tmp_path / "b"), "--sft", str(chats), "--block-size", "64", "--batch-size", "2"]
    common += ["--max-steps", "4", "--warmup-steps", "1", "--eval-interval", "2", "--eval-steps", "1"]
    common += ["--sample-interval", "0", "--ckpt-interval", "2", "--lora-rank", "4", "--lora-targets", "c_attn,lm_head"]
    split = _run([*common, "--out-dir", str(tmp_path / "a"), "--stop-at-step", "2"])
    assert split.returncode == 0, split.stderr[-2000:]
    resumed = _run(["--resume", "--out-dir", str(tmp_path / "a")])
    whole = _run([*common, "--out-dir", str(tmp_path / "w")])
    assert resumed.returncode == 0 and whole.returncode == 0, (resumed.stderr + whole.stderr)[-2000:]
    assert json.loads(resumed.stdout)["val_loss"] == json.loads(whole.stdout)["val_loss"]
    a, w = tmp_path / "a" / "ckpt_00000004", tmp_path / "w" / "ckpt_00000004"
    from safetensors.torch import load_file

    for name in ("model.safetensors", "adapter_model.safetensors"):
        x, y = load_file(a / name), load_file(w / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert chat_format(a) is FORMATS["minigpt"]  # chat.py --init a needs no --format
    # the checkpoint's weights are base + adapters; the adapter on the base gives the same model
    from minigpt.model.lora import load_adapter

    merged, base = from_pretrained(a), from_pretrained(tmp_path / "b")
    load_adapter(base, a)
    idx = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        assert (merged(idx) - base(idx)).abs().max().item() <= 1e-5
        assert (merged(idx) - from_pretrained(tmp_path / "b")(idx)).abs().max().item() > 0  # it trained


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--sft", "x.jsonl"], "--sft fine-tunes a trained model: give --init"),
        (["--lora-rank", "4"], "--lora-rank adapts a trained model's weights: give --init"),
        (["--init", "gpt2", "--lora-rank", "0"], "LoRA rank must be a positive integer"),
        (["--init", "gpt2", "--lora-rank", "4", "--lora-alpha", "0"], "LoRA alpha must be a positive number"),
        (["--init", "gpt2", "--lora-rank", "4", "--lora-targets", "c_attn,"], "LoRA targets must be layer names"),
        (["--init", "gpt2", "--sft", "x.jsonl", "--sft-val-fraction", "1"], "sft_val_fraction must be in (0, 1)"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, flags, message, capsys):
    train = load_script(ROOT / "train.py")
    code = train.main([*flags, "--out-dir", str(tmp_path / "o")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_a_bad_sft_file_stops_train_py_in_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16)), tmp_path / "b")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(CHATS[0]) + "\n" + '{"messages": [{"role": "bot", "content": "x"}]}\n')
    train = load_script(ROOT / "train.py")
    code = train.main(
        ["--init", str(tmp_path / "b"), "--sft", str(bad), "--block-size", "32", "--out-dir", str(tmp_path / "o")]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[-1].startswith(f"error: {bad}:2: message 0 has an unknown role 'bot'"), lines
    assert not (tmp_path / "o").exists()
