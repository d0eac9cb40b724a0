"""GPT-2-architecture checkpoints with their own tokenizers, end to end: a random-init
GPT2LMHeadModel written by transformers beside a sentencepiece model in rinna's layout, a
byte-level tokenizer.json or a byte-fallback one. sample.py on such a directory prints what
transformers' generate + decode give, and eval.py scores it without any tokenizer flag."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_hub_tokenizers import auto, byte_fallback_bpe, bytelevel_bpe, rinna_tokenizer
from tiny_run import ROOT

from minigpt.generate.simple import prompt_ids
from minigpt.model.load import from_pretrained
from minigpt.tokenizers.lookup import tokenizer_for

transformers = pytest.importorskip("transformers")

LAYOUTS = {"sentencepiece": rinna_tokenizer, "tokenizer.json": bytelevel_bpe, "byte-fallback": byte_fallback_bpe}
PROMPT = "吾輩は猫である。名前は"  # every character is in the test tokenizers' training text


@pytest.fixture(scope="module", params=list(LAYOUTS))
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    LAYOUTS[request.param](directory)
    hf_tok = auto(directory)
    config = transformers.GPT2Config(
        vocab_size=len(hf_tok),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_inner=72,
        activation_function="gelu",
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        hf.lm_head.weight.mul_(20)  # spread the logits so greedy decoding visits many tokens
    hf.save_pretrained(directory)
    return directory, hf, hf_tok


def test_the_tokenizer_is_found_from_the_directory(checkpoint):
    directory, _, hf_tok = checkpoint
    ours = tokenizer_for(directory)
    assert ours.kind in ("sentencepiece", "hf") and ours.vocab_size == len(hf_tok)
    assert ours.eot_id == hf_tok.eos_token_id


@pytest.mark.slow
def test_sample_py_greedy_prints_what_transformers_generates(checkpoint):
    directory, hf, hf_tok = checkpoint
    ids = hf_tok(PROMPT)["input_ids"]
    if ids and ids[-1] == hf_tok.eos_token_id:  # a tokenizer that appends an end-of-text: not before generating
        ids = ids[:-1]
    assert prompt_ids(tokenizer_for(directory), PROMPT) == ids
    idx = torch.tensor([ids])
    ref = hf.generate(
        idx, attention_mask=torch.ones_like(idx), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    new = ref[0, idx.size(1) :].tolist()
    if (directory / "spiece.model").exists():
        # transformers 5's T5Tokenizer prints byte pieces as "<0xNN>" text; sentencepiece, which the
        # model was trained with, decodes them to bytes (tests/test_hub_tokenizers.py says more)
        import sentencepiece

        expected = PROMPT + sentencepiece.SentencePieceProcessor(model_file=str(directory / "spiece.model")).decode(new)
    else:
        expected = PROMPT + hf_tok.decode(new)
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sample.py"),
            "--init",
            str(directory),
            "--prompt",
            PROMPT,
            "--temperature",
            "0",
            "--max-new-tokens",
            "20",
            "--ignore-eot",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == expected


def test_logits_equal_transformers(checkpoint):
    directory, hf, _ = checkpoint
    model = from_pretrained(directory)
    idx = torch.randint(0, model.config.vocab_size, (2, 11))
    with torch.no_grad():
        assert torch.allclose(model(idx), hf(idx).logits, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_eval_py_scores_without_a_tokenizer_flag(checkpoint, tmp_path):
    directory, hf, hf_tok = checkpoint
    text = tmp_path / "held_out.txt"
    text.write_text(PROMPT * 3 + "\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), "--init", str(directory), "--task", f"bpb:{text}", "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "bpb" in out.stdout


def test_a_checkpoint_without_a_tokenizer_is_one_line(tmp_path):
    config = transformers.GPT2Config(vocab_size=500, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    out = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "--init", str(tmp_path), "--prompt", "a", "--max-new-tokens", "2"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and out.stderr.startswith("error:") and out.stderr.count("\n") == 1
    assert "tokenizer" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("seed", range(3))
def test_text_stream_of_any_ids_adds_up_to_decode(checkpoint, seed):
    """Random ids, half of them byte-fallback ids where the tokenizer has them: invalid UTF-8 runs
    are where a stream and a whole decode part most easily (a run of byte ids decodes as one)."""
    from minigpt.tokenizers import TextStream

    directory, _, _ = checkpoint
    tokenizer = tokenizer_for(directory)
    g = torch.Generator().manual_seed(seed)
    byte_ids = sorted(tokenizer.byte_ids)
    assert bool(byte_ids) == (directory.name.startswith(("sentencepiece", "byte-fallback")))
    ids = []
    for _ in range(300):
        if byte_ids and torch.rand(1, generator=g).item() < 0.5:
            ids.append(byte_ids[torch.randint(len(byte_ids), (1,), generator=g).item()])
        else:
            ids.append(torch.randint(tokenizer.vocab_size, (1,), generator=g).item())
    stream = TextStream(tokenizer)
    text = "".join(stream.push(i) for i in ids) + stream.flush()
    assert text == tokenizer.decode(ids)
