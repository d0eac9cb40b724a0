"""The OpenAI-compatible HTTP API (FastAPI), a chat page and the arena, over one Engine per model.

    GET  /v1/models                  the models served
    POST /v1/completions             text completion (prompt: a string or a list of strings)
    POST /v1/chat/completions        chat, rendered with the model's chat format (minigpt.chat.formats)
    GET  /                           the chat page (minigpt/serve/static/chat.html)
    GET  /arena, /arena/leaderboard  two anonymous models side by side, and their ratings (2+ models)

`stream: true` answers with Server-Sent Events: `data: {chunk}` lines, then `data: [DONE]`. Every
error is OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 for a bad request,
401 for a missing or wrong API key, 404 for an unknown model, 503 when the model's queue is full.
A client that goes away mid-request frees its row at the engine's next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import math
import random
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from minigpt.chat.formats import ChatFormat, check_messages
from minigpt.generate.sampling import SamplingSettings
from minigpt.generate.simple import prompt_ids
from minigpt.serve import arena
from minigpt.serve.engine import MAX_LOGPROBS, Engine, EngineClosed, Event, GenerationRequest, Job, QueueFull
from minigpt.tokenizers import Tokenizer

STATIC = Path(__file__).resolve().parent / "static"
MAX_N = 16  # samples per request
MAX_STOP = 4  # stop strings per request, as OpenAI allows
UNION_FIELDS = {"prompt": "a string or a list of strings", "stop": "a string or a list of strings"}
FINISH_REASONS = {"eot": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}


@dataclasses.dataclass
class ServedModel:
    """A model as the server offers it: its engine, tokenizer and chat format."""

    name: str
    engine: Engine
    tokenizer: Tokenizer
    chat: ChatFormat
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    @property
    def block_size(self) -> int:
        return self.engine.block_size


# ----------------------------------------------------------------------------------------------
# Errors


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# ----------------------------------------------------------------------------------------------
# Requests: field types are checked by pydantic (strict: no "1" for 1), values below


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI's, as vLLM and llama.cpp take it
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # not OpenAI's either: the decoding controls of sample.py and chat.py, under vLLM's names
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_tokens: int = 0


class CompletionBody(_Sampling):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool = False


class ChatBody(_Sampling):
    messages: list[Any]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class ArenaBattleBody(_Strict):
    prompt: str
    system: str | None = None
    temperature: float = 0.7
    max_tokens: int | None = None


class ArenaVoteBody(_Strict):
    winner: str


def check_sampling_fields(body: _Sampling) -> None:
    if not 1 <= body.n <= MAX_N:
        raise bad_request(f"n must be between 1 and {MAX_N}, got {body.n}", "n")
    if not (math.isfinite(body.temperature) and 0 <= body.temperature <= 2):
        raise bad_request(f"temperature must be between 0 and 2, got {body.temperature}", "temperature")
    if body.top_p is not None and not (math.isfinite(body.top_p) and 0 < body.top_p <= 1):
        raise bad_request(f"top_p must be in (0, 1], got {body.top_p}", "top_p")
    if body.top_k is not None and body.top_k < 1:
        raise bad_request(f"top_k must be >= 1, got {body.top_k}", "top_k")
    if body.max_tokens is not None and body.max_tokens < 0:
        raise bad_request(f"max_tokens must be >= 0, got {body.max_tokens}", "max_tokens")
    if body.seed is not None and not 0 <= body.seed < 2**63 - MAX_N:
        raise bad_request(f"seed must be between 0 and 2**63 - {MAX_N + 1}, got {body.seed}", "seed")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0, 0.0):
            raise bad_request(f"{name} is not supported (only 0; repetition_penalty is)", name)
    penalty = body.repetition_penalty
    if not (math.isfinite(penalty) and penalty > 0):
        raise bad_request(
            f"repetition_penalty must be a finite number > 0 (1 is off), got {penalty}", "repetition_penalty"
        )
    for name in ("no_repeat_ngram_size", "min_tokens"):
        if getattr(body, name) < 0:
            raise bad_request(f"{name} must be >= 0 (0 is off), got {getattr(body, name)}", name)
    stops = stop_list(body.stop)
    if len(stops) > MAX_STOP:
        raise bad_request(f"stop takes at most {MAX_STOP} strings, got {len(stops)}", "stop")
    if any(s == "" for s in stops):
        raise bad_request("stop strings must not be empty", "stop")


def stop_list(stop: str | list[str] | None) -> list[str]:
    return [] if stop is None else [stop] if isinstance(stop, str) else list(stop)


def sampling_for(body: _Sampling, device: torch.device, sample_index: int) -> SamplingSettings:
    """Sample i draws from its own generator seeded with seed + i (sample.py --stream --seed's draws);
    without a seed, from a fresh random one."""
    seed = secrets.randbits(62) if body.seed is None else body.seed + sample_index
    generator = torch.Generator(device=device).manual_seed(seed)
    top_p = None if body.top_p is None or body.top_p >= 1 else body.top_p
    return SamplingSettings(
        body.temperature,
        body.top_k,
        top_p,
        generator,
        repetition_penalty=body.repetition_penalty,
        no_repeat_ngram_size=body.no_repeat_ngram_size,
        min_new_tokens=body.min_tokens,
    )


# ----------------------------------------------------------------------------------------------
# Running jobs from the event loop


class Run:
    """Jobs submitted for one HTTP request, their events delivered to this event loop."""

    def __init__(self, served: ServedModel, requests: list[GenerationRequest]):
        self.served = served
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        try:
            self.jobs = served.engine.submit(*requests, on_event=self._deliver)
        except QueueFull as e:
            raise APIError(503, str(e), type="server_overloaded", code="queue_full") from None
        except EngineClosed as e:
            raise APIError(503, str(e), type="server_shutting_down", code="shutting_down") from None
        except ValueError as e:
            raise bad_request(str(e), "max_tokens", "context_length_exceeded") from None

    def _deliver(self, i: int, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (i, event))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    async def events(self, request: Request | None = None) -> AsyncIterator[tuple[int, Event]]:
        """(job index, event) until every job is done; cancels them if the client goes away."""
        open_jobs, checked = len(self.jobs), time.monotonic()
        while open_jobs:
            try:
                i, event = await asyncio.wait_for(self.queue.get(), timeout=0.5)
            except TimeoutError:
                i, event = -1, None
            if request is not None and time.monotonic() - checked >= 0.5:
                checked = time.monotonic()
                if await request.is_disconnected():
                    self.cancel()
                    return
            if event is None:
                continue
            if event.kind in ("done", "error"):
                open_jobs -= 1
            yield i, event

    async def finish(self, request: Request | None = None) -> None:
        """Wait for every job (a whole, non-streamed answer); a job that failed is a 500."""
        try:
            async for _ in self.events(request):
                pass
        finally:
            self.cancel()
        failed = [job.error for job in self.jobs if job.error]
        if failed:
            raise APIError(500, failed[0], type="server_error")

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()
        self.served.engine.wake()


def usage(prompt_tokens: int, jobs: list[Job]) -> dict:
    completion_tokens = sum(len(job.completion.tokens) for job in jobs)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


class ReplyStream:
    """A chat reply streamed as the format's reply_text would give it whole: the text it would give
    so far, less the last few characters (which a marker still being written may change)."""

    HOLD = 8

    def __init__(self, chat: ChatFormat):
        self.chat, self.raw, self.sent = chat, "", ""

    def push(self, text: str, final: bool = False) -> str:
        self.raw += text
        reply = self.chat.reply_text(self.raw)
        stable = reply if final else reply[: max(0, len(reply) - self.HOLD)]
        if len(stable) <= len(self.sent) or not stable.startswith(self.sent):
            return ""
        new, self.sent = stable[len(self.sent) :], stable
        return new


# ----------------------------------------------------------------------------------------------
# The app


def create_app(
    models: dict[str, ServedModel],
    api_key: str | None = None,
    arena_db: str | Path | None = None,
    drain_s: float = 5.0,
) -> FastAPI:
    """The server's app over engines already running; closing the app (lifespan end) closes them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await asyncio.to_thread(lambda: [m.engine.close(drain_s) for m in models.values()])

    app = FastAPI(title="minigpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.models = models
    votes = arena.VoteStore(arena_db) if arena_db is not None and len(models) >= 2 else None
    battles: dict[str, dict] = {}
    battles_lock = threading.Lock()

    # --- errors in OpenAI's shape ---

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            return bad_request("the request body is not valid JSON", None, "invalid_json").response()
        # unions report one error per member type ("str", "list[str]"); the field's name is enough
        loc = [part for part in loc if not any(c in part for c in "[]") and part not in ("str", "int", "float")]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        if param is None and first.get("type") == "missing":
            message = "the request body is missing: send a JSON object"
        elif first.get("type") == "missing":
            message = f"{param} is required"
        elif param in UNION_FIELDS:
            message = f"{param} must be {UNION_FIELDS[param]}"
        elif first.get("type") == "model_attributes_type":
            message = "the request body must be a JSON object"
        else:
            message = f"{param}: {message}" if param else message
        return bad_request(message, param).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return APIError(e.status_code, str(e.detail), type=kind).response()

    if api_key is not None:
        app.add_middleware(KeyCheck, api_key=api_key)

    def served_model(name: str) -> ServedModel:
        if name not in models:
            raise APIError(
                404,
                f"the model {name!r} does not exist; served: {', '.join(models)}",
                param="model",
                code="model_not_found",
            )
        return models[name]

    # --- the API ---

    @app.get("/v1/models")
    async def list_models():
        data = [{"id": m.name, "object": "model", "created": m.created, "owned_by": "minigpt"} for m in models.values()]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        m = served_model(name)
        return {"id": m.name, "object": "model", "created": m.created, "owned_by": "minigpt"}

    def requests_for(
        served: ServedModel, body: _Sampling, prompts: list[list[int]], max_tokens: int | None, stop, logprobs
    ) -> list[GenerationRequest]:
        device = served.engine.device
        out = []
        for ids in prompts:
            room = served.block_size - len(ids)
            if room < 0 or not ids:
                what = (
                    "empty" if not ids else f"{len(ids)} tokens, longer than the context window of {served.block_size}"
                )
                param = "messages" if isinstance(body, ChatBody) else "prompt"
                raise bad_request(f"the prompt is {what}", param, "context_length_exceeded")
            n_new = min(room, served.block_size) if max_tokens is None else max_tokens
            if n_new > room:
                raise bad_request(
                    f"max_tokens ({n_new}) + the prompt ({len(ids)} tokens) exceed the context window of "
                    f"{served.block_size}; ask for at most {room}",
                    "max_tokens",
                    "context_length_exceeded",
                )
            for i in range(body.n):
                out.append(GenerationRequest(ids, n_new, sampling_for(body, device, i), stop, True, logprobs))
        return out

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request):
        served = served_model(body.model)
        check_sampling_fields(body)
        if body.logprobs is not None and not 0 <= body.logprobs <= MAX_LOGPROBS:
            raise bad_request(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {body.logprobs}", "logprobs")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise bad_request("prompt must not be an empty list", "prompt")
        encoded = [prompt_ids(served.tokenizer, p) for p in prompts]
        max_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default for completions
        reqs = requests_for(served, body, encoded, max_tokens, stop_list(body.stop), body.logprobs)
        run = Run(served, reqs)
        prompt_tokens = sum(len(ids) for ids in encoded)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        tok = served.tokenizer

        def logprobs_of(events_lp, offset: int) -> dict | None:
            if body.logprobs is None:
                return None
            tokens = [tok.decode([lp.token]) for lp in events_lp]
            offsets, at = [], offset
            for t in tokens:
                offsets.append(at)
                at += len(t)
            return {
                "tokens": tokens,
                "token_logprobs": [lp.logprob for lp in events_lp],
                "top_logprobs": [{tok.decode([t]): v for t, v in lp.top} for lp in events_lp],
                "text_offset": offsets,
            }

        def echo(i: int) -> str:
            return prompts[i // body.n] if body.echo else ""

        if body.stream:

            async def chunks():
                sent = [0] * len(reqs)
                try:
                    for i in range(len(reqs)) if body.echo else ():
                        yield sse(completion_chunk(rid, created, served.name, i, echo(i), None, None))
                    async for i, event in run.events():
                        if event.kind == "error":
                            yield sse(APIError(500, event.message, type="server_error").body())
                            continue
                        if event.kind == "text" and (event.text or event.logprobs):
                            lp = logprobs_of(event.logprobs, sent[i])
                            sent[i] += len(event.text)
                            yield sse(completion_chunk(rid, created, served.name, i, event.text, lp, None))
                        elif event.kind == "done":
                            reason = FINISH_REASONS[event.finish_reason]
                            yield sse(completion_chunk(rid, created, served.name, i, "", None, reason))
                    if body.stream_options and body.stream_options.include_usage:
                        chunk = {"id": rid, "object": "text_completion", "created": created, "model": served.name}
                        yield sse({**chunk, "choices": [], "usage": usage(prompt_tokens, run.jobs)})
                    yield sse("[DONE]")
                finally:
                    run.cancel()  # finished jobs ignore it; a client gone mid-stream frees its rows

            return StreamingResponse(chunks(), media_type="text/event-stream")

        await run.finish(request)
        choices = []
        for i, job in enumerate(run.jobs):
            text = echo(i) + job.completion.text
            lp = logprobs_of(job.logprobs, len(echo(i)))
            reason = FINISH_REASONS[job.completion.finish_reason]
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": reason})
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": served.name,
            "choices": choices,
            "usage": usage(prompt_tokens, run.jobs),
        }

    def chat_prompt(served: ServedModel, messages) -> list[int]:
        try:
            check_messages(messages)
            if not messages:
                raise ValueError("messages must not be empty")
            text = served.chat.render(messages, add_generation_prompt=True)
        except ValueError as e:
            raise bad_request(str(e), "messages") from None
        return prompt_ids(served.tokenizer, text)

    def chat_logprobs(served: ServedModel, events_lp) -> dict | None:
        tok = served.tokenizer

        def entry(token: int, logprob: float) -> dict:
            text = tok.decode([token])
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        content = [
            {**entry(lp.token, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in events_lp
        ]
        return {"content": content}

    def chat_requests(served: ServedModel, body: ChatBody) -> tuple[list[GenerationRequest], int]:
        check_sampling_fields(body)
        if body.top_logprobs is not None and not 0 <= body.top_logprobs <= MAX_LOGPROBS:
            raise bad_request(f"top_logprobs must be between 0 and {MAX_LOGPROBS}", "top_logprobs")
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        if body.max_completion_tokens is not None and body.max_completion_tokens < 0:
            raise bad_request("max_completion_tokens must be >= 0", "max_completion_tokens")
        ids = chat_prompt(served, body.messages)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        stop = [*served.chat.stop_strings, *stop_list(body.stop)]
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        return requests_for(served, body, [ids], max_tokens, stop, logprobs), len(ids)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, request: Request):
        served = served_model(body.model)
        reqs, prompt_tokens = chat_requests(served, body)
        run = Run(served, reqs)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name}

        if body.stream:

            async def chunks():
                replies = [ReplyStream(served.chat) for _ in reqs]
                try:
                    for i in range(len(reqs)):
                        delta = {"role": "assistant", "content": ""}
                        yield sse(
                            {**base, "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}]}
                        )
                    async for i, event in run.events():
                        if event.kind == "error":
                            yield sse(APIError(500, event.message, type="server_error").body())
                            continue
                        final = event.kind == "done"
                        text = replies[i].push(event.text, final=final)
                        lp = chat_logprobs(served, event.logprobs) if body.logprobs and event.logprobs else None
                        if text or lp:
                            choice = {"index": i, "delta": {"content": text}, "logprobs": lp, "finish_reason": None}
                            yield sse({**base, "choices": [choice]})
                        if final:
                            reason = FINISH_REASONS[event.finish_reason]
                            choice = {"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}
                            yield sse({**base, "choices": [choice]})
                    if body.stream_options and body.stream_options.include_usage:
                        yield sse({**base, "choices": [], "usage": usage(prompt_tokens, run.jobs)})
                    yield sse("[DONE]")
                finally:
                    run.cancel()

            return StreamingResponse(chunks(), media_type="text/event-stream")

        await run.finish(request)
        choices = []
        for i, job in enumerate(run.jobs):
            message = {"role": "assistant", "content": served.chat.reply_text(job.completion.text)}
            lp = chat_logprobs(served, job.logprobs) if body.logprobs else None
            reason = FINISH_REASONS[job.completion.finish_reason]
            choices.append({"index": i, "message": message, "logprobs": lp, "finish_reason": reason})
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": served.name,
            "choices": choices,
            "usage": usage(prompt_tokens, run.jobs),
        }

    # --- pages ---

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return HTMLResponse((STATIC / "chat.html").read_text(encoding="utf-8"))

    # --- the arena ---

    def need_arena() -> arena.VoteStore:
        if votes is None:
            raise APIError(404, "the arena needs two or more models (serve.py --init A --init B)", code="no_arena")
        return votes

    @app.get("/arena", response_class=HTMLResponse)
    async def arena_page():
        need_arena()
        return HTMLResponse((STATIC / "arena.html").read_text(encoding="utf-8"))

    @app.get("/arena/leaderboard", response_class=HTMLResponse)
    async def leaderboard_page():
        board = await asyncio.to_thread(arena.leaderboard, need_arena().votes(), list(models))
        return HTMLResponse(arena.leaderboard_html(board))

    @app.get("/arena/api/leaderboard")
    async def leaderboard_json():
        board = await asyncio.to_thread(arena.leaderboard, need_arena().votes(), list(models))
        return {"models": [dataclasses.asdict(row) for row in board], "votes": len(need_arena().votes())}

    @app.post("/arena/api/battles")
    async def new_battle(body: ArenaBattleBody):
        need_arena()
        if not body.prompt.strip():
            raise bad_request("the prompt is empty", "prompt")
        if not (math.isfinite(body.temperature) and 0 <= body.temperature <= 2):
            raise bad_request("temperature must be between 0 and 2", "temperature")
        left, right = random.sample(list(models), 2)
        battle_id = uuid.uuid4().hex
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + [
            {"role": "user", "content": body.prompt}
        ]
        with battles_lock:
            battles[battle_id] = {"left": left, "right": right, "messages": messages, "body": body, "voted": False}
            while len(battles) > 1000:
                battles.pop(next(iter(battles)))
        return {"id": battle_id}

    def battle(battle_id: str) -> dict:
        with battles_lock:
            if battle_id not in battles:
                raise APIError(404, "no such battle", param="id", code="battle_not_found")
            return battles[battle_id]

    @app.post("/arena/api/battles/{battle_id}/answers/{side}")
    async def battle_stream(battle_id: str, side: str):
        b = battle(battle_id)
        if side not in ("left", "right"):
            raise APIError(404, "side must be left or right", param="side")
        served = models[b[side]]
        body: ArenaBattleBody = b["body"]
        chat = ChatBody(
            model=served.name, messages=b["messages"], temperature=body.temperature, max_tokens=body.max_tokens
        )
        if chat.max_tokens is None:
            chat.max_tokens = min(256, served.block_size - len(chat_prompt(served, chat.messages)))
        reqs, _ = chat_requests(served, chat)
        run = Run(served, reqs)

        async def chunks():
            reply = ReplyStream(served.chat)
            try:
                async for _, event in run.events():
                    if event.kind == "error":
                        yield sse({"error": event.message})
                        continue
                    text = reply.push(event.text, final=event.kind == "done")
                    if text:
                        yield sse({"text": text})
                    if event.kind == "done":
                        yield sse({"finish_reason": FINISH_REASONS[event.finish_reason]})
                yield sse("[DONE]")
            finally:
                run.cancel()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.post("/arena/api/battles/{battle_id}/vote")
    async def vote(battle_id: str, body: ArenaVoteBody):
        store = need_arena()
        b = battle(battle_id)
        if body.winner not in arena.OUTCOMES:
            raise bad_request(f"winner must be one of {', '.join(arena.OUTCOMES)}", "winner")
        with battles_lock:
            if b["voted"]:
                raise APIError(409, "this battle has a vote already", code="already_voted")
            b["voted"] = True
        await asyncio.to_thread(store.add, b["left"], b["right"], body.winner)
        return {"left": b["left"], "right": b["right"], "winner": body.winner}

    return app


class KeyCheck:
    """Every API path (/v1/..., /arena/api/...) needs 'Authorization: Bearer KEY' (401 otherwise).
    A plain ASGI middleware: FastAPI's decorator kind would hide a client's disconnect from the handlers."""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and (path.startswith("/v1/") or path.startswith("/arena/api/")):
            header = dict(scope["headers"]).get(b"authorization", b"")
            given = header[7:] if header[:7].lower() == b"bearer " else None
            if given is None or not hmac.compare_digest(given, self.key):
                message = "missing API key: send 'Authorization: Bearer KEY'" if given is None else "invalid API key"
                await APIError(401, message, code="invalid_api_key").response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def completion_chunk(rid, created, model, index, text, logprobs, finish_reason) -> dict:
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
