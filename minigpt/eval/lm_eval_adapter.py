"""A minigpt model as an lm-evaluation-harness model (lm_eval.api.model.LM).

    from minigpt.eval.lm_eval_adapter import MiniGPTLM
    lm_eval.simple_evaluate(model=MiniGPTLM(model, tokenizer), tasks=["hellaswag"])

Requests are scored by minigpt.eval.evaluate (batched, only the scored positions through the
softmax), with the tokenization and truncation of lm-evaluation-harness's own `hf` model, so the
log-likelihoods are the ones that model gives on the same checkpoint. This module imports lm_eval
(PyPI `lm-eval`, the `eval` extra); nothing else in minigpt does.
"""

from __future__ import annotations

import os
import sys

import torch
from lm_eval.api.model import LM
from tqdm import tqdm

from minigpt.eval.scoring import encode, encode_pair, fit_window, rolling_rows, score_rows, start_id
from minigpt.generate.simple import generate
from minigpt.model.hub import hub_unreachable
from minigpt.tokenizers import Tokenizer

_checked_hub = False


def offline_if_unreachable() -> bool:
    """Put huggingface_hub and datasets in offline mode when the hub cannot be reached (checked
    once per process, one request, no retries); whether they are offline now.

    Offline, lm-eval's dataset loading retried every request and printed five HF retry lines
    before its error; in offline mode a cached dataset loads and an uncached one fails at once.
    Online nothing changes.
    """
    global _checked_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _checked_hub:
        return bool(constants.HF_HUB_OFFLINE)
    _checked_hub = True
    if hub_unreachable() is None:
        return False
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"  # for what is imported later
    constants.HF_HUB_OFFLINE = True  # and what already read them
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if hasattr(datasets_config, flag):
                setattr(datasets_config, flag, True)
    return True


class MiniGPTLM(LM):
    def __init__(
        self, model, tokenizer: Tokenizer, batch_size: int = 16, max_gen_toks: int = 256, progress: bool = True
    ):
        super().__init__()
        offline_if_unreachable()  # before lm-eval loads its datasets
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks
        self.progress = progress
        self._device = next(model.parameters()).device

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def eot_token_id(self) -> int | None:
        return self.tokenizer.eot_id

    def tok_encode(self, string: str, **kwargs) -> list[int]:
        return encode(self.tokenizer, string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tokenizer.decode(tokens)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        rows = [fit_window(*encode_pair(self.tokenizer, *req.args), self.max_length)[0] for req in requests]
        scores = score_rows(self.model, rows, self.batch_size, self.progress and not disable_tqdm, "loglikelihood")
        out = [(s.logprob, s.greedy) for s in scores]
        for req, answer in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        # Disjoint windows of the full context, the text conditioned on <|endoftext|>.
        rows, owner = [], []
        for i, req in enumerate(requests):
            (text,) = req.args
            windows = rolling_rows([start_id(self.tokenizer)] + self.tok_encode(text), self.max_length, self.max_length)
            rows += windows
            owner += [i] * len(windows)
        scores = score_rows(self.model, rows, self.batch_size, self.progress and not disable_tqdm, "rolling")
        out = [0.0] * len(requests)
        for i, s in zip(owner, scores, strict=True):
            out[i] += s.logprob
        for req, answer in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, answer)
        return out

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, desc="generate_until", disable=not self.progress or disable_tqdm, leave=False):
            context, kwargs = req.args
            text = self._generate(context, dict(kwargs or {}))
            self.cache_hook.add_partial("generate_until", req.args, text)
            out.append(text)
        return out

    def _generate(self, context: str, kwargs: dict) -> str:
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = min(int(kwargs.pop("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
        temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
        # The prompt keeps its last tokens, leaving room for the generation (as lm-eval's hf model).
        eot = self.tokenizer.eot_id
        tokens = self.tok_encode(context)[-(self.max_length - max_new) :] or [start_id(self.tokenizer)]
        prompt_len, generated = len(tokens), ""
        # A chunk at a time, so generation stops soon after a stop string appears.
        while len(tokens) - prompt_len < max_new:
            n = min(32, max_new - (len(tokens) - prompt_len))
            idx = torch.tensor([tokens], device=self._device)
            new = generate(self.model, idx, n, temperature=temperature, eos_id=eot)[0, len(tokens) :]
            new = new.tolist()
            if eot is not None and eot in new:
                tokens += new[: new.index(eot)]
                generated = self.tok_decode(tokens[prompt_len:])
                break
            tokens += new
            generated = self.tok_decode(tokens[prompt_len:])
            if any(s in generated for s in until):
                break
        for s in until:
            generated = generated.split(s)[0] if s else generated
        return generated
