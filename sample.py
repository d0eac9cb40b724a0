"""Sample text from a GPT-2: OpenAI's weights, a local checkpoint, or a train.py run.

    python sample.py --init gpt2 --prompt "The meaning of life is"
    python sample.py --init out/ --num-samples 3 --max-new-tokens 200
    python sample.py --init gpt2 --adapter out-lora/ --prompt "Hello"    # a LoRA adapter, merged
    echo "def fib(n):" | python sample.py --init out/ --prompt-file - --stream

With one sample, stdout is exactly the prompt followed by the generated text.
Everything informational (load time, tokens/s) goes to stderr.

Exit codes: 0 done; 2 bad input (one line on stderr saying what is wrong); 141 the reader
of stdout went away (e.g. `| head -c1`): sampling stops quietly, as it does for Unix tools
killed by SIGPIPE (the shell reports those as 128 + 13 = 141); 130 interrupted (Ctrl-C); 143 SIGTERM.
"""

from __future__ import annotations

from minigpt import entrypoint

if __name__ == "__main__":
    entrypoint.start()  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C

import argparse
import os
import re
import sys
import time

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
from minigpt.generate.simple import Completion, complete
from minigpt.rundir import CheckpointError
from minigpt.tokenizers.lookup import check_vocab, tokenizer_for

SEPARATOR = "\n" + "-" * 40 + "\n"
EXIT_BROKEN_PIPE = 141


# --stop takes the escapes a shell does not interpret inside quotes: "\n\n" is two newlines.
STOP_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
_STOP_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.|$)", re.DOTALL)


def _quoted(text: str) -> str:
    """text in quotes as the user typed it (repr would double every backslash); repr only for
    text with a newline or other unprintable character, which must not break the error's one line."""
    return f'"{text}"' if text.isprintable() else repr(text)


def unescape_stop(text: str) -> str:
    """text with \\n, \\t, \\r, \\\\, \\uXXXX and \\UXXXXXXXX replaced by the characters they name.

    Any other backslash is an error (ValueError), so a string is never half-interpreted.
    Other characters, including non-ASCII ones, are kept as they are.
    """

    shown = _quoted(text)

    def replace(match: re.Match) -> str:
        code = match.group(1)
        if code in STOP_ESCAPES:
            return STOP_ESCAPES[code]
        if len(code) > 1:  # uXXXX or UXXXXXXXX
            value = int(code[1:], 16)
            if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                raise ValueError(f"--stop {shown}: \\{code} is not a Unicode character")
            return chr(value)
        if code == "":
            raise ValueError(f"--stop {shown} ends in a lone backslash; write \\\\ for a backslash")
        if code in "uU":
            raise ValueError(f"--stop {shown}: \\{code} needs {4 if code == 'u' else 8} hex digits")
        raise ValueError(
            f"--stop {shown}: unknown escape \\{code}; the escapes are \\n \\t \\r \\\\ "
            "\\uXXXX \\UXXXXXXXX (write \\\\ for a backslash)"
        )

    return _STOP_ESCAPE.sub(replace, text)


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--init",
        default="gpt2",
        help="a preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl; downloaded once), a Hugging Face style "
        "directory, a .safetensors file, or a train.py --out-dir (its latest checkpoint)",
    )
    add_adapter_flag(p)
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--prompt-file", help="read the prompt from this file instead; '-' reads standard input")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate per sample")
    add_sampling_flags(p)
    p.add_argument("--num-samples", type=int, default=1, help="how many continuations of the prompt")
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        help="stop a sample when this string appears (not printed); may be given several times. "
        "Backslash escapes are interpreted: \\n newline, \\t tab, \\r, \\\\ backslash, "
        "\\uXXXX and \\UXXXXXXXX a Unicode character; any other backslash is an error",
    )
    p.add_argument(
        "--ignore-eot",
        action="store_true",
        help="keep going past the end-of-text token (<|endoftext|>) instead of stopping",
    )
    add_device_flags(p)
    add_attn_backend_flag(p)
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument(
        "--decode",
        default="auto",
        choices=["auto", "simple", "fast", "compiled"],
        help="simple: one model(token, cache=cache) call per token (minigpt.generate.simple); fast: "
        "minigpt.generate.decoder's Decoder (state in device buffers; a CUDA graph of a static-cache "
        "step on a GPU; on a CPU the faster of F.linear and oneDNN, timed once); compiled: the Decoder's "
        "static-cache step compiled by torch.compile (Inductor; compiling takes seconds to a minute, "
        "so it pays for long decodes only); all give the same greedy tokens. auto: fast on the CPU, "
        "simple on a GPU",
    )
    add_quantize_flags(p)
    return p.parse_args(argv)


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt: --prompt, or the file (or standard input) as UTF-8 text; anything else is refused."""
    if args.prompt_file is None:
        return args.prompt
    if args.prompt_file == "-":
        where = "standard input"
        if sys.stdin is None:  # started with standard input closed (`<&-`)
            raise ValueError("--prompt-file -: standard input is closed")
        try:
            data = sys.stdin.buffer.read()
        except OSError as e:
            raise ValueError(f"cannot read standard input: {e.strerror or e}") from None
    else:
        where = f"the prompt file {args.prompt_file}"
        try:
            with open(args.prompt_file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"cannot read the prompt file: {e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def check_args(args: argparse.Namespace) -> None:
    """Everything about the flags that can be checked before the model is loaded (ValueError)."""
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.seed is not None and not 0 <= args.seed < 2**63 - args.num_samples:
        raise ValueError(f"--seed must be between 0 and 2**63 - 1, got {args.seed}")
    args.quantization = quantize_settings(args)
    adapter_directory(args)
    args.sampling = sampling_settings(args)
    args.stop = [unescape_stop(s) for s in args.stop]
    if "" in args.stop:
        raise ValueError("--stop must not be empty")


def info(message: str) -> None:
    """A line of information for the user, on stderr (dropped if stderr is closed)."""
    if sys.stderr is not None:
        print(message, file=sys.stderr, flush=True)


def _detach_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. captured by a test)
        pass


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        _detach_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (entrypoint.Interrupted)
        info("error: interrupted")
        return entrypoint.exit_code(e)
    except (CheckpointError, ValueError, RuntimeError) as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        info(f"error: {lines[0]}")
        return 2
    except OSError as e:  # writing the output failed (a full disk, a closed descriptor)
        _detach_stdout()
        info(f"error: cannot write the output: {e.strerror or e}")
        return 2


def run(args: argparse.Namespace) -> int:
    check_args(args)
    if sys.stdout is None:  # started with stdout closed (`>&-`): the samples would go nowhere
        raise ValueError("standard output is closed; redirect it to a file, e.g. > samples.txt")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    prompt = read_prompt(args)
    use_decoder = args.decode == "fast" or (args.decode == "auto" and device.type == "cpu")

    t0 = time.perf_counter()
    model = load_model(args, device, dtype, args.quantization)
    tokenizer = tokenizer_for(args.init)  # the one saved with a train.py checkpoint, else GPT-2's
    check_vocab(tokenizer, model.config.vocab_size, args.init)
    info(
        f"loaded {args.init} ({model.num_params() / 1e6:.1f}M parameters, {dtype}, {device}, "
        f"{tokenizer.kind} tokenizer"
        + (f", {args.quantize}" if args.quantize else "")
        + (f", adapter {args.adapter} merged" if args.adapter else "")
        + ") "
        f"in {time.perf_counter() - t0:.1f}s"
    )

    out = sys.stdout

    def on_text(c: Completion, text: str) -> None:
        out.write(text)
        out.flush()

    # Streaming prints one sample at a time, so the samples are decoded one after another.
    t0 = time.perf_counter()
    results = []
    for i in range(args.num_samples if args.stream else 1):
        if args.stream:
            out.write((SEPARATOR if i else "") + prompt)
            out.flush()
        results += complete(
            model,
            tokenizer,
            [prompt],
            args.max_new_tokens,
            args.sampling,
            num_samples=1 if args.stream else args.num_samples,
            seed=None if args.seed is None else args.seed + i,
            stop=args.stop,
            stop_at_eot=not args.ignore_eot,
            on_text=on_text if args.stream else None,
            decoder_mode="compiled" if args.decode == "compiled" else "auto" if use_decoder else None,
        )
    elapsed = time.perf_counter() - t0

    if not args.stream:
        out.write(SEPARATOR.join(prompt + c.text for c in results))
    out.flush()
    n_tokens = sum(len(c.tokens) for c in results)
    info(
        f"\n{len(results)} sample(s), {n_tokens} tokens in {elapsed:.2f}s "
        f"({n_tokens / max(elapsed, 1e-9):.1f} tok/s, prefill included)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
