"""Time to first token of a chat turn, early and late in a conversation, with and without the KV cache.

    python bench/chat_latency.py                          # bench/results/chat-latency-cpu.json
    python bench/chat_latency.py --out /tmp/chat.json     # anywhere else
    python bench/chat_latency.py --tiny --out /tmp/c.json # a tiny model and 3 turns, for the tests

A random-init GPT-2 124M-shaped model (fp32, GPT-2's tokenizer, the "dialogue" format) holds a
conversation of --turns user messages, each answered greedily with --reply-tokens tokens
(minigpt.chat.session.ChatSession). Time to first token (TTFT: from say() to the first token chosen,
the prefill of what the cache lacks included) is measured at turn 1 and at the last turn, each the
median of --repeats: at the last turn once with the cache as the conversation left it (only the new
message and the reply's header run), once with the cache emptied (the whole conversation runs
again, as a stateless server would).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `minigpt` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before torch is imported
    from minigpt import entrypoint

    entrypoint.start()

from bench.common import RESULTS_DIR, environment, log, write_json  # noqa: E402

DEFAULT_OUT = RESULTS_DIR / "chat-latency-cpu.json"
GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=256)


def message(turn: int) -> str:
    return f"Question {turn}: what would you say about the {turn}th idea on the list, in a few words?"


def measure(shape: dict, turns: int, reply_tokens: int, repeats: int) -> dict:
    import torch

    from minigpt.chat.formats import FORMATS
    from minigpt.chat.session import ChatSession
    from minigpt.generate.sampling import SamplingSettings
    from minigpt.model.config import GPTConfig
    from minigpt.model.model import GPT
    from minigpt.tokenizers import GPT2Tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).eval()
    tokenizer = GPT2Tokenizer()

    def session() -> ChatSession:
        return ChatSession(
            model, tokenizer, FORMATS["dialogue"], SamplingSettings(temperature=0), max_new_tokens=reply_tokens
        )

    first = []
    for _ in range(repeats):
        first.append(session().say(message(1)).ttft)
    log(f"turn 1: TTFT {statistics.median(first) * 1e3:.1f} ms")
    chat = session()
    for turn in range(1, turns):
        chat.say(message(turn))
    before, state = list(chat.messages), list(chat.cached)
    cached, uncached, replies = [], [], []
    for _ in range(repeats):
        for empty, times in ((False, cached), (True, uncached)):
            chat.load(before)
            chat.cached = [] if empty else list(state)  # the cache as the conversation left it, or nothing
            reply = chat.say(message(turns))
            times.append(reply.ttft)
            replies.append(reply)
    last = {r.prefilled for r in replies}
    log(
        f"turn {turns}: TTFT {statistics.median(cached) * 1e3:.1f} ms cached, "
        f"{statistics.median(uncached) * 1e3:.1f} ms from scratch ({replies[0].prompt_tokens} prompt tokens)"
    )
    return {
        "ttft_s": {"turn_1": first, f"turn_{turns}_cached": cached, f"turn_{turns}_uncached": uncached},
        "median_ttft_s": {
            "turn_1": statistics.median(first),
            f"turn_{turns}_cached": statistics.median(cached),
            f"turn_{turns}_uncached": statistics.median(uncached),
        },
        f"turn_{turns}_prompt_tokens": replies[0].prompt_tokens,
        f"turn_{turns}_prefilled_tokens": sorted(last),
        "messages_dropped": sum(r.dropped for r in replies),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the JSON to write (default {DEFAULT_OUT})")
    p.add_argument("--turns", type=int, default=20, help="user messages in the conversation")
    p.add_argument("--reply-tokens", type=int, default=24, help="tokens of each reply")
    p.add_argument("--repeats", type=int, default=5, help="measurements per figure (the median is reported)")
    p.add_argument("--tiny", action="store_true", help="a tiny model and 3 turns (for the tests)")
    args = p.parse_args()
    shape = GPT2_SMALL
    if args.tiny:
        if args.out.resolve() == DEFAULT_OUT.resolve():
            p.error("--tiny writes no committed results: give --out")
        shape, args.turns, args.reply_tokens, args.repeats = TINY, 3, 4, 2
    if args.turns < 2 or args.reply_tokens < 1 or args.repeats < 1:
        p.error("--turns must be >= 2, --reply-tokens and --repeats >= 1")

    from minigpt.provenance import cpu_model

    load_before = list(os.getloadavg())
    result = measure(shape, args.turns, args.reply_tokens, args.repeats)
    payload = {
        "benchmark": "chat_latency",
        "cpu_model": cpu_model(),
        "model": {"init": "random (torch.manual_seed(0))", "dtype": "float32", **shape},
        "format": "dialogue",
        "tokenizer": "gpt2",
        "tiny": args.tiny,
        "turns": args.turns,
        "reply_tokens": args.reply_tokens,
        "repeats": args.repeats,
        "loadavg_before": load_before,  # 1, 5 and 15 minute load averages: the CPU may be shared
        "loadavg_after": list(os.getloadavg()),
        **result,
        "environment": environment("cpu"),
    }
    write_json(args.out, payload)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
