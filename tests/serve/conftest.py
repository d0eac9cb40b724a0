"""A served pair of tiny random models, on 127.0.0.1 at a free port, in a thread of this process."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import uvicorn

from minigpt.chat.formats import chat_format
from minigpt.model.config import GPTConfig
from minigpt.model.load import from_pretrained, save_pretrained
from minigpt.model.model import GPT
from minigpt.model.weights import resolve_directory
from minigpt.serve.app import ServedModel, create_app
from minigpt.serve.engine import Engine
from minigpt.tokenizers.lookup import tokenizer_for

TINY = dict(block_size=64, n_layer=2, n_head=2, n_embd=16)  # GPT-2's vocabulary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve_models")
    paths = {}
    for seed, name in enumerate(("tiny-a", "tiny-b")):
        torch.manual_seed(seed)
        paths[name] = root / name
        save_pretrained(GPT(GPTConfig(**TINY)), paths[name])
    return paths


def served_models(checkpoints: dict[str, Path], max_batch: int = 8, max_queue: int = 16) -> dict[str, ServedModel]:
    served = {}
    for name, path in checkpoints.items():
        model = from_pretrained(path)
        tokenizer = tokenizer_for(path)
        engine = Engine(model, tokenizer, max_batch=max_batch, max_queue=max_queue, name=name)
        served[name] = ServedModel(name, engine, tokenizer, chat_format(resolve_directory(path)))
    return served


@contextlib.contextmanager
def running(models: dict[str, ServedModel], **app_args):
    """The app served at http://127.0.0.1:PORT (yielded with the app); stopped on leaving."""
    app = create_app(models, **app_args)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        for m in models.values():
            m.engine.close(0)


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    """(base URL, the served models) of one server for a test module: both tiny models, an arena file."""
    models = served_models(checkpoints)
    db = tmp_path_factory.mktemp("arena") / "votes.sqlite"
    with running(models, arena_db=db) as (url, app):
        yield url, models
