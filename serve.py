"""Serve models over an OpenAI-compatible HTTP API, with a chat page and (2+ models) an arena.

    python serve.py --init gpt2                                  # http://127.0.0.1:8000/
    python serve.py --init small=out/sft --init gpt2 --api-key SECRET --max-batch 16
    curl http://127.0.0.1:8000/v1/completions -H 'content-type: application/json' \\
         -d '{"model": "gpt2", "prompt": "The meaning of life is", "max_tokens": 20}'

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (stream: true for
Server-Sent Events), the chat page at /, and with two or more models the arena at /arena and its
ratings at /arena/leaderboard. Each model decodes its requests together in one background thread
(minigpt.serve.engine: continuous batching). Ctrl-C or SIGTERM stops taking requests, lets those
in flight finish for --drain seconds, and exits.
"""

from __future__ import annotations

from minigpt import entrypoint

if __name__ == "__main__":
    entrypoint.start()  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C

import argparse
import sys
import time
from pathlib import Path

import uvicorn

from minigpt.chat.formats import FORMATS, chat_format
from minigpt.cli import (
    OneLineParser,
    add_attn_backend_flag,
    add_device_flags,
    add_quantize_flags,
    quantize_settings,
    resolve_device,
    resolve_dtype,
)
from minigpt.model.load import from_pretrained
from minigpt.model.weights import resolve_directory
from minigpt.rundir import CheckpointError
from minigpt.serve.app import ServedModel, create_app
from minigpt.serve.arena import DEFAULT_DB
from minigpt.serve.engine import Engine
from minigpt.tokenizers.lookup import check_vocab, tokenizer_for


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--init",
        action="append",
        required=True,
        metavar="[NAME=]MODEL",
        help="a model to serve, as sample.py's --init takes it (a preset, hub id, directory, .safetensors file or "
        "train.py run); NAME= sets the id clients ask for (default: the preset or hub id, or the folder's name). "
        "Give it several times to serve several models",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every API request")
    add_device_flags(p)
    add_attn_backend_flag(p)
    add_quantize_flags(p)
    p.add_argument(
        "--chat-format",
        choices=list(FORMATS),
        default=None,
        help="render chats in this built-in format (default: each model's own, see minigpt.chat.formats)",
    )
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together per model (default 16)")
    p.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting for a row per model; more are refused (503)"
    )
    p.add_argument("--drain", type=float, default=5.0, help="seconds in-flight requests get at shutdown (default 5)")
    p.add_argument("--arena-db", default=str(DEFAULT_DB), help=f"the arena's vote file (SQLite; default {DEFAULT_DB})")
    return p.parse_args(argv)


def split_init(value: str) -> tuple[str, str]:
    """(name, model) of an --init value: NAME=MODEL, or the name made from MODEL."""
    name, eq, path = value.partition("=")
    if eq and name and "/" not in name and not Path(value).exists():
        return name, path
    path = value
    local = Path(path).expanduser()
    if local.exists():
        return (local.resolve().name if local.is_dir() else local.stem), path
    return path, path  # a preset or hub id is its own name


def check_args(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_queue < 0:
        raise ValueError(f"--max-queue must be >= 0, got {args.max_queue}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    if args.drain < 0:
        raise ValueError(f"--drain must be >= 0, got {args.drain}")
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key must not be empty")
    args.quantization = quantize_settings(args)
    inits = [split_init(v) for v in args.init]
    names = [name for name, _ in inits]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two models are named {duplicates[0]!r}; name them with --init NAME=MODEL")
    return inits


def load_models(args: argparse.Namespace, inits: list[tuple[str, str]]) -> dict:
    """name -> ServedModel, each with its engine running."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    served = {}
    for name, init in inits:
        t0 = time.perf_counter()
        model = from_pretrained(init, device=device, dtype=dtype, attn_backend=args.attn_backend, **args.quantization)
        tokenizer = tokenizer_for(init)
        check_vocab(tokenizer, model.config.vocab_size, init)
        chat = chat_format(resolve_directory(init), args.chat_format)
        engine = Engine(model, tokenizer, max_batch=args.max_batch, max_queue=args.max_queue, name=name)
        served[name] = ServedModel(name, engine, tokenizer, chat)
        info(
            f"loaded {name} ({model.num_params() / 1e6:.1f}M parameters, {dtype}, {device}, chat format {chat.name}) "
            f"in {time.perf_counter() - t0:.1f}s"
        )
    return served


def info(message: str) -> None:
    if sys.stderr is not None:
        print(message, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    served = {}
    try:
        inits = check_args(args)
        served = load_models(args, inits)
        app = create_app(served, api_key=args.api_key, arena_db=args.arena_db, drain_s=args.drain)
        config = uvicorn.Config(
            app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=args.drain
        )
        server = uvicorn.Server(config)
        info(f"serving {', '.join(served)} on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
        server.run()
        if not server.started:
            raise ValueError(f"cannot listen on {args.host}:{args.port} (in use, or not an address of this machine)")
        return 0
    except KeyboardInterrupt as e:
        info("stopped")
        return entrypoint.exit_code(e)
    except (CheckpointError, ValueError, RuntimeError, OSError) as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        info(f"error: {lines[0]}")
        return 2
    finally:
        for m in served.values():
            m.engine.close(0)


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
