"""The lm-evaluation-harness adapter against lm-eval's own `hf` model, on a local custom task.

Tolerance: log-likelihoods within LOGITS_ATOL (fp32); accuracies exactly equal.
"""

import json

import pytest
import torch
from reference import LOGITS_ATOL
from test_evaluate import TEXT, models, tok  # noqa: F401  (fixtures)

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's hf model needs it (the lm-eval[hf] extra)

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from minigpt.eval.evaluate import bits_per_byte, evaluate  # noqa: E402
from minigpt.eval.lm_eval_adapter import MiniGPTLM  # noqa: E402
from minigpt.tokenizers import GPT2Tokenizer  # noqa: E402

ROWS = [
    {"context": "The capital of France is", "choices": [" Paris", " London", " a city of lights"], "label": 0},
    {"context": "Question: what colour is the sky? Answer: ", "choices": ["blue", "green", "red"], "label": 2},
    {"context": "質問: 日本の首都はどこですか? 答え:", "choices": ["東京", "大阪", "京都", "札幌"], "label": 0},
    {"context": "A long preamble that does not fit. " * 12 + "so", "choices": [" yes", " no"], "label": 1},
    {"context": "2 + 2 =", "choices": [" 4", " four", " 5", " 22", " fish"], "label": 0},
]


@pytest.fixture(scope="module")
def custom_task(tmp_path_factory):
    """A multiple-choice task in lm-eval's YAML over a local JSONL (the generic mc format)."""
    root = tmp_path_factory.mktemp("lm_eval_task")
    data = root / "quiz.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    (root / "tasks").mkdir()
    (root / "tasks" / "minigpt_quiz.yaml").write_text(
        "task: minigpt_quiz\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n  - metric: acc_bytes\n",
        encoding="utf-8",
    )
    return data, root / "tasks"


def run_task(lm, include_path):
    out = simple_evaluate(
        model=lm,
        tasks=["minigpt_quiz"],
        task_manager=TaskManager(include_path=str(include_path)),
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = sorted(out["samples"]["minigpt_quiz"], key=lambda s: s["doc_id"])
    return out["results"]["minigpt_quiz"], [[r[0][0] for r in s["resps"]] for s in samples]


@pytest.fixture(scope="module")
def hflm(models):  # noqa: F811
    _, _, directory = models
    return HFLM(pretrained=str(directory), batch_size=4, device="cpu")


@pytest.mark.slow
def test_multiple_choice_equals_lm_eval_hf(models, custom_task, hflm, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    _, model, _ = models
    data, include = custom_task
    want, want_lls = run_task(hflm, include)
    got, got_lls = run_task(MiniGPTLM(model, GPT2Tokenizer(), batch_size=3, progress=False), include)
    for a, b in zip(got_lls, want_lls, strict=True):
        assert a == pytest.approx(b, abs=LOGITS_ATOL)
    for metric in ("acc,none", "acc_norm,none", "acc_bytes,none"):
        assert got[metric] == want[metric]
    # minigpt's own mc task on the same file gives the same accuracies
    ours = evaluate(model, GPT2Tokenizer(), [f"mc:{data}"])[f"mc:{data}"]
    assert {k: ours[k] for k in ("acc", "acc_norm", "acc_bytes")} == {
        k: want[k + ",none"] for k in ("acc", "acc_norm", "acc_bytes")
    }
    # ... and so does the lm-eval: task of evaluate()
    through = evaluate(model, GPT2Tokenizer(), ["lm-eval:minigpt_quiz"], include_path=str(include))
    assert through["lm-eval:minigpt_quiz"]["acc"] == want["acc,none"]
    assert through["lm-eval:minigpt_quiz"]["n"] == len(ROWS)


def requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihood_rolling_and_bpb_equal_lm_eval_hf(models, hflm):  # noqa: F811
    _, model, _ = models
    enc = GPT2Tokenizer()
    texts = [TEXT, "short", TEXT[:150]]
    want = hflm.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in texts]), disable_tqdm=True)
    lm = MiniGPTLM(model, enc, batch_size=2, progress=False)
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in texts]))
    assert got == pytest.approx(want, abs=LOGITS_ATOL * 10)
    # bits per byte with disjoint windows is lm-eval's rolling log-likelihood
    window = model.config.block_size
    bpb = bits_per_byte(model, enc, TEXT, window=window, stride=window)
    assert -bpb["nll"] * bpb["tokens"] == pytest.approx(want[0], abs=LOGITS_ATOL * 10)


def test_loglikelihood_with_empty_context_equals_lm_eval_hf(models, hflm):  # noqa: F811
    _, model, _ = models
    args = [("", " hello there"), ("", "<|endoftext|> after the marker"), ("Some ", "text"), ("x" * 300, " y")]
    want = hflm.loglikelihood(requests("loglikelihood", args), disable_tqdm=True)
    got = MiniGPTLM(model, GPT2Tokenizer(), progress=False).loglikelihood(requests("loglikelihood", args))
    for (a, ga), (b, gb) in zip(got, want, strict=True):
        assert a == pytest.approx(b, abs=LOGITS_ATOL) and ga == gb


@torch.no_grad()
def test_generate_until_equals_lm_eval_hf(models, hflm):  # noqa: F811
    _, model, _ = models
    args = [
        ("Once upon a time", {"until": ["\n"], "max_gen_toks": 12, "do_sample": False}),
        ("The list: 1, 2,", {"until": [","], "max_gen_toks": 40, "do_sample": False}),
    ]
    want = hflm.generate_until(requests("generate_until", args), disable_tqdm=True)
    got = MiniGPTLM(model, GPT2Tokenizer(), progress=False).generate_until(requests("generate_until", args))
    assert got == want


def test_unreachable_hub_puts_hf_offline_once(monkeypatch):
    # Offline, lm-eval's dataset loading printed five HF retry lines before its
    # error; with the hub unreachable (a closed loopback port here) it goes to offline mode at once
    import time

    import datasets.config
    import huggingface_hub.constants as constants

    from minigpt.eval import lm_eval_adapter

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # restored afterwards, as the rest
        monkeypatch.setattr(datasets.config, flag, False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(lm_eval_adapter, "_checked_hub", False)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    start = time.monotonic()
    assert lm_eval_adapter.offline_if_unreachable() is True
    assert time.monotonic() - start < 15
    assert constants.HF_HUB_OFFLINE is True
    assert __import__("os").environ["HF_DATASETS_OFFLINE"] == "1"
    assert datasets.config.HF_HUB_OFFLINE is True


def test_hub_check_is_skipped_when_already_offline(monkeypatch):
    import huggingface_hub.constants as constants

    from minigpt.eval import lm_eval_adapter

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(lm_eval_adapter, "_checked_hub", False)
    monkeypatch.setattr(lm_eval_adapter, "hub_unreachable", lambda: pytest.fail("the hub was asked although offline"))
    assert lm_eval_adapter.offline_if_unreachable() is True
