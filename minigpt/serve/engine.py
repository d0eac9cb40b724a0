"""Continuous batching: one decode loop per model, over a KV cache whose rows sit at their own positions.

A request joins at a step boundary: its prompt is prefilled alone, in one single-row forward written
into a free row of the shared cache, and from the next step it decodes together with every other
row (one batched `model(tokens, cache=cache)` per step, each row at its own position, a mask hiding
the keys a row has not written). A row leaves when it is done (its token budget, the end-of-text
token or a stop string) or when its client goes away; the last row moves into its place so the
rows in the forward stay 0..n-1.

Every row has its own SamplingSettings and torch.Generator, and tokens are chosen by
minigpt.generate.sampling (SamplingSettings.sample, with the row's prompt and tokens so far for
repetition_penalty, no_repeat_ngram_size and min_new_tokens), so a request with a seed draws what
sample.py --seed draws, and a greedy request gets the tokens it gets alone, whatever else is in the batch.

    engine = Engine(model, tokenizer, max_batch=8, max_queue=32)
    job = engine.submit(GenerationRequest(ids, max_new_tokens=50, sampling=SamplingSettings(temperature=0)))
    completion = job.result()          # or job.events() as they come, from another thread
    engine.close()
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from minigpt.generate.sampling import SamplingSettings, check_length
from minigpt.generate.simple import Completion, CompletionText
from minigpt.model.model import GPT
from minigpt.tokenizers import Tokenizer

MAX_LOGPROBS = 5  # the most likely alternatives a token's log-probabilities may list, as OpenAI allows


class QueueFull(RuntimeError):
    """The engine holds as many requests as its rows and queue allow."""


class EngineClosed(RuntimeError):
    """The engine is shutting down and takes no new requests."""


# ----------------------------------------------------------------------------------------------
# The cache


class BatchKVCache:
    """Keys and values of up to max_batch rows, each row at its own position (model.py's KV cache
    interface with per-row positions: positions(B, T) is (B, T), visible() a (B, 1, Tq, Tk) mask).

    The forward runs over rows 0..B-1; row b's next tokens go to positions lengths[b], ... The time
    dimension grows (doubling, up to the context window) as the longest row needs it, so a server
    whose requests are short never holds block_size positions per row.
    """

    def __init__(self, config, max_batch: int, device=None, dtype=None, capacity: int = 128):
        self.config, self.max_batch, self.device, self.dtype = config, max_batch, device, dtype
        self.capacity = min(capacity, config.block_size)
        self.k = self._zeros(self.capacity)
        self.v = self._zeros(self.capacity)
        self.lengths = [0] * max_batch  # positions written per row (host side: no device reads)
        self.batch = 0  # rows in the next forward

    def _zeros(self, capacity: int) -> torch.Tensor:
        c = self.config
        shape = (c.n_layer, self.max_batch, c.n_head, capacity, c.head_dim)
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    def reserve(self, length: int) -> None:
        """Room for `length` positions per row (at most the context window)."""
        if length > self.config.block_size:
            raise ValueError(f"{length} positions exceed the context window of {self.config.block_size}")
        if length <= self.capacity:
            return
        capacity = self.capacity
        while capacity < length:
            capacity *= 2
        capacity = min(capacity, self.config.block_size)
        k, v = self._zeros(capacity), self._zeros(capacity)
        k[..., : self.capacity, :] = self.k
        v[..., : self.capacity, :] = self.v
        self.k, self.v, self.capacity = k, v, capacity

    # --- the interface GPT.hidden_states calls ---

    def positions(self, B: int, T: int) -> torch.Tensor:
        """(B, T) absolute positions of the next T tokens of rows 0..B-1."""
        if B != self.batch:
            raise ValueError(f"the cache has {self.batch} rows in this step, not {B}")
        lengths = self.lengths[:B]
        self.reserve(max(lengths) + T)
        start = torch.tensor(lengths, device=self.device)
        self._uniform = min(lengths) == max(lengths)
        self._keys = max(lengths) + T
        positions = start[:, None] + torch.arange(T, device=self.device)  # (B, T)
        # where update() writes each row's keys: [row, :, position], the same for every layer
        self._rows = torch.arange(B, device=self.device)[:, None].expand(B, T)
        self._cols = positions
        return positions

    def visible(self, positions: torch.Tensor) -> torch.Tensor | None:
        """None (causal) when every row is at the same position, else (B, 1, Tq, Tk): key j is
        visible to row b's query at position p where j <= p."""
        if self._uniform:
            return None
        keys = torch.arange(self._keys, device=self.device)
        return (keys[None, None, :] <= positions[:, :, None])[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = k.size(0), k.size(2)
        if self._uniform:
            start = self.lengths[0]
            self.k[layer, :B, :, start : start + T] = k
            self.v[layer, :B, :, start : start + T] = v
        else:
            self.k[layer][self._rows, :, self._cols] = k.transpose(1, 2)  # (B, T, nh, hs) at [row, :, position]
            self.v[layer][self._rows, :, self._cols] = v.transpose(1, 2)
        return self.k[layer, :B, :, : self._keys], self.v[layer, :B, :, : self._keys]

    def advance(self, T: int) -> None:
        for b in range(self.batch):
            self.lengths[b] += T

    # --- rows joining and leaving ---

    def row(self, b: int) -> _RowPrefill:
        """A single-row cache that writes a new prompt into row b from position 0."""
        self.lengths[b] = 0
        return _RowPrefill(self, b)

    def move(self, src: int, dst: int) -> None:
        """Row src's keys and values into row dst (a row left; the last one takes its place)."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n


class _RowPrefill:
    """One row of a BatchKVCache seen as a one-row cache starting empty: a prompt's prefill."""

    def __init__(self, cache: BatchKVCache, b: int):
        self.cache, self.b = cache, b

    def positions(self, B: int, T: int) -> torch.Tensor:
        if B != 1:
            raise ValueError(f"a prefill fills one row, not {B}")
        self.cache.reserve(self.cache.lengths[self.b] + T)
        start = self.cache.lengths[self.b]
        return torch.arange(start, start + T, device=self.cache.device)

    def visible(self, positions: torch.Tensor) -> None:
        return None  # causal over the row's written prefix

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, b = self.cache, self.b
        start, end = c.lengths[b], c.lengths[b] + k.size(2)
        c.k[layer, b : b + 1, :, start:end] = k
        c.v[layer, b : b + 1, :, start:end] = v
        return c.k[layer, b : b + 1, :, :end], c.v[layer, b : b + 1, :, :end]

    def advance(self, T: int) -> None:
        self.cache.lengths[self.b] += T


# ----------------------------------------------------------------------------------------------
# Requests


@dataclasses.dataclass
class GenerationRequest:
    """One sample to generate. logprobs: None, or k >= 0: each token's log-probability and its k
    most likely alternatives (under the model's distribution, before temperature and top-p)."""

    prompt_ids: Sequence[int]
    max_new_tokens: int
    sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)
    stop: Sequence[str] = ()
    stop_at_eot: bool = True
    logprobs: int | None = None


@dataclasses.dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # (token, logprob), most likely first


@dataclasses.dataclass
class Event:
    """What a job reports, in order: kind "text" (new text, and the logprobs of the tokens sampled
    since the last text), then one "done" (finish_reason "length", "eot", "stop", "cancelled") or "error"."""

    kind: str
    text: str = ""
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    message: str = ""


class Job:
    """A submitted request: its events (to on_event, or the job's own queue), its result, cancel()."""

    def __init__(self, request: GenerationRequest, index: int, on_event: Callable[[int, Event], None] | None):
        self.request, self.index = request, index
        self.completion = Completion(0, 0)
        self.logprobs: list[TokenLogprob] = []
        self.prompt_tokens = len(request.prompt_ids)
        self.cancelled = False
        self.finished = threading.Event()
        self.error: str | None = None
        self._queue: queue.SimpleQueue[Event] | None = None if on_event else queue.SimpleQueue()
        self._on_event = on_event

    def cancel(self) -> None:
        """Stop generating (the row leaves at the next step boundary; a queued job never starts)."""
        self.cancelled = True

    def end_cancelled(self) -> None:
        self.completion.finish_reason = "cancelled"
        self.emit(Event("done", finish_reason="cancelled"))

    def emit(self, event: Event) -> None:
        if event.kind in ("done", "error"):
            if event.kind == "error":
                self.error = event.message
            self.finished.set()
        if self._on_event is None:
            self._queue.put(event)
        else:
            self._on_event(self.index, event)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """The job's events as they come (only for a job submitted without on_event)."""
        if self._queue is None:
            raise ValueError("this job reports to its on_event callback")
        while True:
            event = self._queue.get(timeout=timeout)
            yield event
            if event.kind in ("done", "error"):
                return

    def result(self, timeout: float | None = None) -> Completion:
        """Wait for the job; its Completion (RuntimeError if it failed)."""
        if not self.finished.wait(timeout):
            raise TimeoutError("the job did not finish in time")
        if self.error is not None:
            raise RuntimeError(self.error)
        return self.completion


class _Row:
    """A job being decoded: its text (cut at stop strings), the logits its next token comes from."""

    def __init__(self, job: Job, tokenizer: Tokenizer):
        self.job = job
        self.pending_logprobs: list[TokenLogprob] = []
        self.text = CompletionText(job.completion, tokenizer, job.request.stop, self.on_text)
        self.eot = tokenizer.eot_id if job.request.stop_at_eot else None
        self.steps = 0
        self.logits: torch.Tensor | None = None  # (1, V)
        self.history = list(job.request.prompt_ids)  # the prompt and the tokens chosen, for the decoding controls

    def choose(self) -> int:
        """The next token from self.logits, as simple.stream chooses it for a row alone."""
        s = self.job.request.sampling
        if not s.uses_history:
            return int(s.sample(self.logits)[0])
        history = torch.tensor([self.history], dtype=torch.long, device=self.logits.device)
        token = int(s.sample(self.logits, history, len(self.job.request.prompt_ids), self.eot)[0])
        self.history.append(token)
        return token

    def on_text(self, completion: Completion, text: str) -> None:
        self.job.emit(Event("text", text, self.pending_logprobs))
        self.pending_logprobs = []

    def finish(self, reason: str) -> None:
        self.text.finish(reason)
        if self.pending_logprobs:
            self.job.emit(Event("text", "", self.pending_logprobs))
            self.pending_logprobs = []
        self.job.emit(Event("done", finish_reason=self.job.completion.finish_reason))


def token_logprobs(logits: torch.Tensor, token: int, k: int) -> TokenLogprob:
    """The log-probability of token under logits (1, V), and the k most likely tokens'."""
    lp = F.log_softmax(logits[0].float(), dim=-1)
    top = []
    if k:
        values, ids = torch.topk(lp, k)
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(lp[token]), top)


# ----------------------------------------------------------------------------------------------
# The engine


class Engine:
    """A background thread decoding every running request of one model together.

    max_batch: rows decoded together; max_queue: requests waiting for a row beyond those. submit
    raises QueueFull when both are taken, EngineClosed after close().
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, max_batch: int = 8, max_queue: int = 32, name: str = "model"):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_batch, self.max_queue = max_batch, max_queue
        param = next(model.parameters())
        self.device = param.device
        self.cache = BatchKVCache(model.config, max_batch, device=param.device, dtype=param.dtype)
        self.rows: list[_Row] = []  # rows[b] is the cache's row b
        self.waiting: collections.deque[Job] = collections.deque()
        self.lock = threading.Condition()
        self.closing = False
        self.steps = 0  # decode steps run (for tests and statistics)
        self.peak_rows = 0  # the most rows one decode step has held
        self.thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self.thread.start()

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    def load(self) -> tuple[int, int]:
        """(rows decoding, jobs waiting)."""
        with self.lock:
            return len(self.rows), len(self.waiting)

    def submit(self, *requests: GenerationRequest, on_event: Callable[[int, Event], None] | None = None) -> list[Job]:
        """Queue requests together (all or none: QueueFull); ValueError if one does not fit the context.
        on_event(i, event) hears request i's events, from the engine's thread; without it, read
        each job's events()."""
        for r in requests:
            check_length(self.block_size, len(r.prompt_ids), r.max_new_tokens)
            if r.logprobs is not None and not 0 <= r.logprobs <= MAX_LOGPROBS:
                raise ValueError(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {r.logprobs}")
        jobs = [Job(r, i, on_event) for i, r in enumerate(requests)]
        with self.lock:
            if self.closing:
                raise EngineClosed(f"{self.name} is shutting down")
            held = len(self.rows) + len(self.waiting)
            if held + len(jobs) > self.max_batch + self.max_queue:
                raise QueueFull(
                    f"{self.name} is busy: {len(self.rows)} requests running and {len(self.waiting)} waiting "
                    f"(at most {self.max_batch} + {self.max_queue}); try again shortly"
                )
            self.waiting.extend(jobs)
            self.lock.notify()
        return jobs

    def wake(self) -> None:
        """Look at the jobs now (a cancelled job is dropped at once even while the engine is idle)."""
        with self.lock:
            self.lock.notify()

    def close(self, drain_s: float = 0.0) -> None:
        """Take no new requests; let running ones finish for up to drain_s seconds, then cancel the rest."""
        with self.lock:
            self.closing = True
            self.lock.notify()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            with self.lock:
                if not self.rows and not self.waiting:
                    break
            time.sleep(0.02)
        with self.lock:
            for job in [*self.waiting, *(row.job for row in self.rows)]:
                job.cancel()
            self.lock.notify()
        self.thread.join(timeout=10)

    # --- the loop ---

    def _loop(self) -> None:
        while True:
            with self.lock:
                self._drop_cancelled()
                new = []
                while self.waiting and len(self.rows) + len(new) < self.max_batch:
                    new.append(self.waiting.popleft())
                if not self.rows and not new:
                    if self.closing:
                        return
                    self.lock.wait(timeout=0.5)
                    continue
            try:
                with torch.inference_mode():
                    self._step(new)
            except Exception as e:  # a failed forward ends the rows in it, not the server
                message = f"generation failed: {type(e).__name__}: {e}".splitlines()[0]
                for row in self.rows:
                    row.job.emit(Event("error", message=message))
                for job in new:
                    if not job.finished.is_set():
                        job.emit(Event("error", message=message))
                self.rows = []
                self.cache.batch = 0

    def _drop_cancelled(self) -> None:
        for job in [j for j in self.waiting if j.cancelled]:
            self.waiting.remove(job)
            job.end_cancelled()
        for b in reversed(range(len(self.rows))):
            if self.rows[b].job.cancelled:
                self._remove(b)

    def _remove(self, b: int) -> _Row:
        """Free row b: the last row moves into it."""
        row = self.rows[b]
        last = len(self.rows) - 1
        if b != last:
            self.cache.move(last, b)
            self.rows[b] = self.rows[last]
        self.rows.pop()
        if row.job.cancelled and not row.job.finished.is_set():
            row.job.end_cancelled()
        return row

    def _step(self, new: list[Job]) -> None:
        # Join: prefill each new prompt alone into a free row.
        for job in new:
            row = _Row(job, self.tokenizer)
            if job.request.max_new_tokens == 0:
                row.finish("length")
                continue
            b = len(self.rows)
            ids = torch.tensor([list(job.request.prompt_ids)], dtype=torch.long, device=self.device)
            row.logits = self.model(ids, cache=self.cache.row(b), last_only=True)[:, -1]
            self.rows.append(row)
        # Sample every row's next token; rows that are done leave.
        tokens = []
        for b in reversed(range(len(self.rows))):  # backwards: a leaving row is replaced by a later one
            row = self.rows[b]
            token = row.choose()
            if row.job.request.logprobs is not None:
                lp = token_logprobs(row.logits, token, row.job.request.logprobs)
                row.job.logprobs.append(lp)
                row.pending_logprobs.append(lp)
            row.steps += 1
            row.text.push(token, row.eot)
            if row.text.done or row.steps >= row.job.request.max_new_tokens or row.job.cancelled:
                self._remove(b)
                if not row.job.finished.is_set():
                    row.finish("length" if not row.text.done else row.job.completion.finish_reason)
                continue
            tokens.append((row, token))
        if not self.rows:
            self.cache.batch = 0
            return
        # Decode: one batched forward of every remaining row's token.
        by_row = {id(row): token for row, token in tokens}
        batch = torch.tensor([[by_row[id(row)]] for row in self.rows], dtype=torch.long, device=self.device)
        self.cache.batch = len(self.rows)
        self.peak_rows = max(self.peak_rows, len(self.rows))
        logits = self.model(batch, cache=self.cache, last_only=True)[:, -1]  # (B, V)
        for b, row in enumerate(self.rows):
            row.logits = logits[b : b + 1]
        self.steps += 1
