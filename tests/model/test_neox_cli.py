"""The GPT-NeoX family through the command lines, against transformers.

Each checkpoint is a random-init model written by transformers' save_pretrained beside a tokenizer
in the layout its real checkpoints ship (tests/tokenizers/test_neox_tokenizers.py builds them):

- pythia: GPTNeoXForCausalLM with a byte-level BPE tokenizer.json (GPTNeoXTokenizer), its
  vocabulary padded past the tokenizer's as Pythia's is (the padding rows of embed_out zero);
- rinna: GPTNeoXForCausalLM (sequential residual, full rotary) with a sentencepiece spiece.model
  and rinna's T5Tokenizer settings;
- abeja: GPTNeoXJapaneseForCausalLM with vocab.txt + emoji.json.

sample.py prints the prompt and exactly transformers' greedy continuation as its tokenizer decodes it
(rinna's: sentencepiece's, see Reference), and with --quantize int8 the int8 model's greedy text;
eval.py's mc: task gives the accuracies that transformers' log-likelihoods give; train.py fine-tunes
the checkpoint (its vocabulary padded past the tokenizer's for Pythia, refused when smaller), and the
result saves back to a directory transformers loads with the same logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference import LOGITS_ATOL
from tiny_run import ROOT, load_script

from minigpt.eval.evaluate import choice_metrics, score_multiple_choice
from minigpt.eval.tasks import read_multiple_choice
from minigpt.generate.simple import generate
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.tokenizers import load_tokenizer

transformers = pytest.importorskip("transformers")
sentencepiece = pytest.importorskip("sentencepiece")
builders = load_script(ROOT / "tests" / "tokenizers" / "test_neox_tokenizers.py")
sample = load_script(ROOT / "sample.py")
eval_cli = load_script(ROOT / "eval.py")
train = load_script(ROOT / "train.py")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

RINNA_PROMPT = "ユーザー: 日本のおすすめの観光地を教えてください。<NL>システム: "
PROMPTS = {"pythia": "The quick brown fox", "rinna": RINNA_PROMPT, "abeja": "吾輩は猫である。名前は"}
QUESTIONS = [  # JCommonsenseQA-style: a question, five answers, the context ending where an answer begins
    (
        "雨の日に出かけるとき、濡れないように持っていくものは？",
        ["扇風機", "冷蔵庫", "傘", "布団", "黒板"],
    ),
    ("田んぼに植えるものは何？", ["稲", "猫", "車", "雪", "本"]),
    ("東京にあるものは？", ["富士山", "東京タワー", "大阪城", "金閣寺", "海"]),
    ("The cat sat on the", ["mat", "moon", "dog", "tree", "English"]),
    ("名前はまだ", ["無い", "ある", "猫", "犬", "東京"]),
    ("吾輩は", ["猫である", "犬である", "東京", "大学", "ねこ"]),
]


def rinna_spiece(directory: Path) -> None:
    """A unigram model as rinna's GPT-NeoX tokenizer was trained, with rinna's tokenizer_config.json."""
    builders.rinna_neox_spiece(directory, builders.RINNA_TEXTS[:6] + [q for q, _ in QUESTIONS], "identity")


def write_tokenizer(kind: str, directory: Path) -> None:
    if kind == "pythia":
        builders.neox_tokenizer(directory)
    elif kind == "rinna":
        rinna_spiece(directory)
    else:
        builders.abeja_tokenizer(directory)


def model_rows(kind: str, vocab_size: int) -> int:
    """The model's vocabulary: Pythia's is padded past its tokenizer's ids (to a multiple of 64, and more)."""
    return -(-vocab_size // 64) * 64 + 64 if kind == "pythia" else vocab_size


def hf_model(kind: str, vocab_size: int, padded: int):
    """A random-init transformers model of the kind's family and switches; rows past the tokenizer's
    ids (padding, as Pythia's 50304 rows for 50277 ids) are zero in the output layer."""
    torch.manual_seed({"pythia": 0, "rinna": 1, "abeja": 2}[kind])
    common = dict(
        vocab_size=padded, hidden_size=64, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=128
    )
    if kind == "abeja":
        config = transformers.GPTNeoXJapaneseConfig(**common, intermediate_multiple_size=2, bos_token_id=0)
        model = transformers.GPTNeoXJapaneseForCausalLM(config)
    else:
        switches = dict(rotary_pct=0.25) if kind == "pythia" else dict(rotary_pct=1.0, use_parallel_residual=False)
        config = transformers.GPTNeoXConfig(**common, **switches, intermediate_size=160, tie_word_embeddings=False)
        model = transformers.GPTNeoXForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 or name.endswith("bias"):
                p.normal_(0, 0.3 if p.dim() == 2 else 0.5)
        model.get_output_embeddings().weight[vocab_size:] = 0
    model.config._attn_implementation = "eager"
    return model.eval()


class Reference:
    """transformers' tokenizer for a kind (sentencepiece itself for rinna: transformers 5 reads its
    spiece.model with a dummy prefix that rinna's model was not trained with; see test_neox_tokenizers.py)."""

    def __init__(self, kind: str, directory: Path):
        self.kind = kind
        if kind == "rinna":
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "spiece.model"))
        else:
            self.hf = transformers.AutoTokenizer.from_pretrained(str(directory))

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text) if self.kind == "rinna" else self.hf(text)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids) if self.kind == "rinna" else self.hf.decode(ids)


@pytest.fixture(scope="module", params=["pythia", "rinna", "abeja"])
def checkpoint(request, tmp_path_factory):
    """(kind, transformers model, its directory with the tokenizer, reference tokenizer)."""
    kind = request.param
    directory = tmp_path_factory.mktemp(kind)
    write_tokenizer(kind, directory)
    vocab_size = load_tokenizer(directory).vocab_size
    hf = hf_model(kind, vocab_size, model_rows(kind, vocab_size))
    hf.save_pretrained(directory)  # replaces the tokenizer builder's placeholder config.json
    return kind, hf, directory, Reference(kind, directory)


def run(main, argv: list[str], capsys) -> str:
    """A script's main() in this process: its stdout, after asserting exit status 0."""
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    hf.generation_config.eos_token_id = None  # sample.py --ignore-eot: no early end
    hf.generation_config.pad_token_id = 0
    idx = torch.tensor([ids])
    out = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()


def test_sample_prints_transformers_greedy_continuation(checkpoint, capsys):
    kind, hf, directory, ref = checkpoint
    prompt = PROMPTS[kind]
    ids = ref.encode(prompt)
    assert load_tokenizer(directory).encode(prompt, allow_special=True) == ids
    new = hf_greedy(hf, ids, 12)
    argv = ["--init", str(directory), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "12"]
    out = run(sample.main, [*argv, "--ignore-eot", "--device", "cpu"], capsys)
    assert out == prompt + ref.decode(new), (ids, new)


def test_sample_quantized_int8_is_the_quantized_models_greedy_text(checkpoint, capsys):
    kind, hf, directory, ref = checkpoint
    ids = torch.tensor([ref.encode(PROMPTS[kind])])
    quantized = from_pretrained(directory, quantize="int8")
    new = generate(quantized, ids, 8, temperature=0)[0, ids.size(1) :].tolist()
    argv = ["--init", str(directory), "--prompt", PROMPTS[kind], "--max-new-tokens", "8", "--temperature", "0"]
    out = run(sample.main, [*argv, "--quantize", "int8", "--ignore-eot", "--device", "cpu"], capsys)
    assert out == PROMPTS[kind] + ref.decode(new), new


def hf_loglikelihood(hf, ref: Reference, context: str, choice: str) -> float:
    """log p(choice | context) from transformers' logits, split as lm-evaluation-harness splits them."""
    ctx, whole = ref.encode(context), ref.encode(context + choice)
    assert whole[: len(ctx)] == ctx and len(whole) > len(ctx)
    with torch.no_grad():
        logprobs = hf(torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return sum(logprobs[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))


def test_eval_multiple_choice_scores_as_transformers(checkpoint, capsys, tmp_path):
    kind, hf, directory, ref = checkpoint
    contexts = [f"質問: {q}\n答え:" if i % 2 else q for i, (q, _) in enumerate(QUESTIONS)]
    lls = [
        [hf_loglikelihood(hf, ref, c, " " + a) for a in answers]
        for c, (_, answers) in zip(contexts, QUESTIONS, strict=True)
    ]
    # the label is transformers' best choice in every other question and its worst in the rest: acc is 0.5 exactly
    labels = [
        max(range(5), key=ll.__getitem__) if i % 2 else min(range(5), key=ll.__getitem__) for i, ll in enumerate(lls)
    ]
    lines = [
        {"context": c, "choices": [" " + a for a in answers], "label": label}
        for c, (_, answers), label in zip(contexts, QUESTIONS, labels, strict=True)
    ]
    data = tmp_path / "jcommonsenseqa.jsonl"
    data.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")

    examples = read_multiple_choice(data)
    ours, _ = score_multiple_choice(from_pretrained(directory), load_tokenizer(directory), examples)
    assert torch.tensor(ours) == pytest.approx(torch.tensor(lls), abs=1e-3)
    want = [choice_metrics(ex, ll) for ex, ll in zip(examples, lls, strict=True)]

    result = tmp_path / "result.json"
    argv = ["--init", str(directory), "--task", f"mc:{data}", "--output", str(result), "--no-progress"]
    run(eval_cli.main, [*argv, "--device", "cpu"], capsys)
    got = json.loads(result.read_text())["results"][f"mc:{data}"]
    assert got["n"] == len(QUESTIONS) and got["acc"] == 0.5
    for metric in ("acc", "acc_norm", "acc_bytes"):
        assert got[metric] == pytest.approx(sum(w[metric] for w in want) / len(want)), metric


TRAIN_TEXT = "吾輩は猫である。名前はまだ無い。The quick brown fox jumps over the lazy dog.\n" * 400


@pytest.mark.parametrize("kind", ["pythia", "abeja", "rinna"])
def test_train_fine_tunes_and_saves_what_transformers_loads(kind, tmp_path_factory, capsys, monkeypatch):
    tmp = tmp_path_factory.mktemp(f"train-{kind}")
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp / "data"))  # where --data TEXT is tokenized
    directory = tmp / "init"
    directory.mkdir()
    write_tokenizer(kind, directory)
    vocab_size = load_tokenizer(directory).vocab_size
    padded = model_rows(kind, vocab_size)
    hf = hf_model(kind, vocab_size, padded)
    with torch.no_grad():  # a trainable scale: the wide weights of the sampling tests saturate the softmax
        for p in hf.parameters():
            if p.dim() == 2:
                p.mul_(0.1)
    hf.save_pretrained(directory)
    text = tmp / "text.txt"
    text.write_text(TRAIN_TEXT, encoding="utf-8")
    out = tmp / "run"
    argv = ["--init", str(directory), "--data", str(text), "--out-dir", str(out), "--max-steps", "6"]
    argv += ["--batch-size", "4", "--block-size", "32", "--lr", "3e-3", "--warmup-steps", "1", "--eval-interval", "0"]
    argv += ["--sample-interval", "0", "--ckpt-interval", "0", "--seed", "1", "--device", "cpu"]
    run(train.main, [*argv, "--stop-at-step", "3"], capsys)
    run(train.main, ["--resume", "--out-dir", str(out)], capsys)  # with the tokenizer its checkpoint carries
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 6 and losses[-1] < losses[0]

    model = from_pretrained(out)
    assert model.config.model_type == hf.config.model_type and model.config.vocab_size == padded
    before = from_pretrained(directory)
    assert (model.transformer.h[0].mlp.c_fc.weight - before.transformer.h[0].mlp.c_fc.weight).abs().max() > 0
    export = tmp / "export"
    save_pretrained(model, export)
    back = transformers.AutoModelForCausalLM.from_pretrained(export, attn_implementation="eager").eval()
    assert type(back).__name__ == type(hf).__name__
    idx = torch.randint(0, vocab_size, (2, 19))
    with torch.no_grad():
        assert (back(idx).logits - model(idx)).abs().max().item() <= LOGITS_ATOL


@pytest.mark.parametrize("short", [1, 40])
def test_train_refuses_a_tokenizer_with_more_ids_than_the_model(short, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "data"))
    directory = tmp_path / "init"
    directory.mkdir()
    write_tokenizer("pythia", directory)
    ids = load_tokenizer(directory).vocab_size
    hf_model("pythia", ids - short, ids - short).save_pretrained(directory)
    text = tmp_path / "text.txt"
    text.write_text(TRAIN_TEXT, encoding="utf-8")
    argv = ["--init", str(directory), "--data", str(text), "--out-dir", str(tmp_path / "run"), "--max-steps", "1"]
    assert train.main([*argv, "--block-size", "32", "--batch-size", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and f"has {ids} token ids, the model only {ids - short}" in err
    assert not (tmp_path / "run" / "log.jsonl").exists()
