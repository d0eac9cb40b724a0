"""Chat with a model: a conversation in the model's chat format, kept in a KV cache between turns.

    python chat.py --init rinna/japanese-gpt-neox-3.6b-instruction-sft
    python chat.py --init out/ --format minigpt --system "You are terse." --temperature 0.7
    python chat.py --init out-pretrain/ --adapter out-lora/     # a LoRA adapter, merged into the weights
    echo '[{"role": "user", "content": "Hi!"}]' | python chat.py --init out/ --messages -

Interactively (standard input a terminal): type a message at the "> " prompt; the reply streams as it
is generated. Ctrl-C stops a reply and returns to the prompt; Ctrl-D or /quit leaves. Commands:
/reset forgets the turns (the system prompt stays), /system TEXT sets the system prompt (/system alone
removes it), /save FILE writes the conversation as a JSON list of messages (to a new file only),
/load FILE continues a saved one. When the conversation outgrows the context, the oldest turns are
dropped, with one line saying so.

Otherwise (--messages FILE or -, or standard input not a terminal): read a JSON list of messages
({"role": "system" | "user" | "assistant", "content": "..."}, the last one the user's) and write the
reply to stdout.

Exit codes: 0 done; 2 bad input (one line on stderr); 130 interrupted (Ctrl-C while loading or in a
non-interactive reply); 143 SIGTERM.
"""

from __future__ import annotations

from minigpt import entrypoint

if __name__ == "__main__":
    entrypoint.start()  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from minigpt.chat.formats import CHAT_FORMAT_KEY, FORMATS, chat_format, check_messages, formats_help, read_chat_template
from minigpt.chat.session import ChatSession
from minigpt.cli import (
    OneLineParser,
    adapter_directory,
    add_adapter_flag,
    add_attn_backend_flag,
    add_device_flags,
    add_quantize_flags,
    add_sampling_flags,
    load_model,
    quantize_settings,
    resolve_device,
    resolve_dtype,
    sampling_settings,
)
from minigpt.files import atomic_write
from minigpt.model.weights import resolve_directory
from minigpt.rundir import CheckpointError
from minigpt.tokenizers.hf_config import HFConfig
from minigpt.tokenizers.lookup import check_vocab, tokenizer_for

COMMANDS = "/reset, /system TEXT, /save FILE, /load FILE, /quit"


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--init",
        default="gpt2",
        help="a preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl; downloaded once), a hub id, a Hugging Face style "
        "directory, a .safetensors file, or a train.py --out-dir (its latest checkpoint)",
    )
    add_adapter_flag(p)
    p.add_argument("--format", default=None, choices=list(FORMATS), help=formats_help())
    p.add_argument("--system", default=None, help="the system prompt (a first system message)")
    p.add_argument(
        "--messages",
        default=None,
        help="answer this JSON list of messages (a file, or '-' for standard input) and exit; "
        "the default when standard input is not a terminal",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="a reply's most tokens (default 256, at most half the context)"
    )
    add_sampling_flags(p)
    add_device_flags(p)
    add_attn_backend_flag(p)
    add_quantize_flags(p)
    return p.parse_args(argv)


def info(message: str) -> None:
    """A line for the user on stderr (dropped if stderr is closed)."""
    if sys.stderr is not None:
        print(message, file=sys.stderr, flush=True)


def read_messages(source: str) -> list[dict]:
    """A JSON list of messages from a file or '-' (standard input); ValueError (one line) if it is not one."""
    where = "standard input" if source == "-" else source
    try:
        if source == "-":
            if sys.stdin is None:
                raise ValueError("standard input is closed")
            data = sys.stdin.buffer.read()
        else:
            data = Path(source).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {where}: {e.strerror or e}") from None
    try:
        messages = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{where} is not a JSON list of messages ({str(e).splitlines()[0]})") from None
    try:
        check_messages(messages)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return messages


def save_messages(path: str, messages: list[dict]) -> None:
    """Write messages as JSON to a new file (atomically); an existing file is refused."""
    if os.path.lexists(path):
        raise ValueError(f"{path} exists; /save writes only a new file")
    try:
        atomic_write(path, json.dumps(messages, ensure_ascii=False, indent=1) + "\n")
    except OSError as e:
        raise ValueError(f"cannot write {path}: {e.strerror or e}") from None


def format_directory(args: argparse.Namespace, adapter: Path | None) -> Path | None:
    """Where the chat format is read from: an --adapter directory that names one (a train.py --sft
    --lora-rank checkpoint records the format it was trained in), else --init's."""
    if adapter is not None and (read_chat_template(adapter) is not None or HFConfig(adapter).get(CHAT_FORMAT_KEY)):
        return adapter
    return resolve_directory(args.init)


def load_session(args: argparse.Namespace) -> ChatSession:
    quantization = quantize_settings(args)
    adapter = adapter_directory(args)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be between 0 and 2**63 - 1, got {args.seed}")
    sampling = sampling_settings(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    t0 = time.perf_counter()
    model = load_model(args, device, dtype, quantization)
    tokenizer = tokenizer_for(args.init)
    check_vocab(tokenizer, model.config.vocab_size, args.init)
    fmt = chat_format(format_directory(args, adapter), args.format)
    info(
        f"loaded {args.init} ({model.num_params() / 1e6:.1f}M parameters, {dtype}, {device}, {tokenizer.kind} "
        f"tokenizer, {fmt.name} format, context {model.config.block_size}"
        + (f", adapter {args.adapter} merged" if adapter else "")
        + f") in {time.perf_counter() - t0:.1f}s"
    )
    return ChatSession(
        model, tokenizer, fmt, sampling, max_new_tokens=args.max_new_tokens, system=args.system, seed=args.seed
    )


def answer(session: ChatSession, messages: list[dict]) -> int:
    """Non-interactive: the reply to messages (the last one the user's) on stdout."""
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the messages must end with the user's message, which the reply answers")
    if session.messages and messages[0]["role"] != "system":  # --system, unless the messages have their own
        messages = [*session.messages, *messages]
    session.load(messages[:-1])
    reply = session.say(messages[-1]["content"], on_overflow=overflow_notice(session))
    sys.stdout.write(reply.text + "\n")
    sys.stdout.flush()
    return 0


def overflow_notice(session: ChatSession):
    def notice(dropped: int) -> None:
        info(
            f"(the conversation outgrew the context of {session.model.config.block_size} tokens: dropped its "
            f"{dropped} oldest message{'s' if dropped != 1 else ''})"
        )

    return notice


def command(session: ChatSession, line: str) -> bool:
    """Run a /command; False for /quit. ValueError (one line) for a bad one."""
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    if name == "/quit":
        return False
    if name == "/reset":
        session.reset()
        info("(conversation reset)")
    elif name == "/system":
        session.set_system(rest or None)
        info("(system prompt set)" if rest else "(system prompt removed)")
    elif name in ("/save", "/load"):
        if not rest:
            raise ValueError(f"{name} needs a file name")
        if name == "/save":
            save_messages(rest, session.messages)
            info(f"(saved {len(session.messages)} messages to {rest})")
        else:
            session.load(read_messages(rest))
            info(f"(loaded {len(session.messages)} messages from {rest})")
    else:
        raise ValueError(f"unknown command {name}; the commands are {COMMANDS}")
    return True


def interactive(session: ChatSession) -> int:
    """The prompt loop: a line is a message or a command; Ctrl-C stops a reply, Ctrl-D leaves."""
    info(f"type a message; {COMMANDS}; Ctrl-C stops a reply, Ctrl-D leaves")
    out = sys.stdout

    def show(piece: str) -> None:
        out.write(piece)
        out.flush()

    while True:
        try:
            line = input("> ")
        except EOFError:  # Ctrl-D
            out.write("\n")
            return 0
        except KeyboardInterrupt as e:  # Ctrl-C at the prompt: a fresh prompt (SIGTERM ends the program)
            if getattr(e, "signum", signal.SIGINT) != signal.SIGINT:
                raise
            out.write("\n")
            continue
        if not line.strip():
            continue
        try:
            if line.startswith("/"):
                if not command(session, line.strip()):
                    return 0
                continue
            session.say(line, on_text=show, on_overflow=overflow_notice(session))
            out.write("\n")
        except KeyboardInterrupt as e:
            if getattr(e, "signum", signal.SIGINT) != signal.SIGINT:
                raise
            out.write("\n")
            info("(reply stopped)")
        except ValueError as e:
            info(f"error: {str(e).strip().splitlines()[0]}")
        out.flush()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.messages is not None or sys.stdin is None or not sys.stdin.isatty():
            messages = read_messages(args.messages or "-")  # before the model loads: bad input fails at once
            return answer(load_session(args), messages)
        return interactive(load_session(args))
    except BrokenPipeError:
        return 141
    except KeyboardInterrupt as e:  # Ctrl-C while loading or answering, or SIGTERM
        info("error: interrupted")
        return entrypoint.exit_code(e)
    except (CheckpointError, ValueError, RuntimeError) as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        info(f"error: {lines[0]}")
        return 2


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
