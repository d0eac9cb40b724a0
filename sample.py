"""Sample text from a GPT-2: OpenAI's weights, a local checkpoint, or a train.py run.

    python sample.py --init gpt2 --prompt "The meaning of life is"
    python sample.py --init out/ --num-samples 3 --max-new-tokens 200
    echo "def fib(n):" | python sample.py --init out/ --prompt-file - --stream

With one sample, stdout is exactly the prompt followed by the generated text.
Everything informational (load time, tokens/s) goes to stderr.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from minigpt.generate import Completion, complete
from minigpt.model import GPT
from minigpt.tokenizer import get_encoding
from minigpt.weights import CheckpointError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEPARATOR = "\n" + "-" * 40 + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="gpt2",
                   help="a preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl; downloaded once), a Hugging Face style "
                        "directory, a .safetensors file, or a train.py --out-dir (its latest checkpoint)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--prompt-file", help="read the prompt from this file instead; '-' reads standard input")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate per sample")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 is greedy decoding")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample only from the smallest set of tokens whose probability reaches p (nucleus)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for repeatable samples")
    p.add_argument("--num-samples", type=int, default=1, help="how many continuations of the prompt")
    p.add_argument("--stop", action="append", default=[],
                   help="stop a sample when this string appears (not printed); may be given several times")
    p.add_argument("--ignore-eot", action="store_true", help="keep going past <|endoftext|> instead of stopping")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="weights and activations dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--attn-backend", default="auto", choices=["auto", "math", "sdpa", "triton"],
                   help="attention implementation (auto: triton on CUDA, sdpa elsewhere)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--decode", default="auto", choices=["auto", "simple", "fast"],
                   help="simple: one model(token, cache=cache) call per token (minigpt.generate); fast: "
                        "minigpt.decode's Decoder (state in device buffers; a CUDA graph of a static-cache step on "
                        "a GPU; on a CPU the faster of F.linear and oneDNN, timed once); both give the same tokens. "
                        "auto: fast on the CPU, simple on a GPU")
    return p.parse_args(argv)


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt_file is None:
        return args.prompt
    if args.prompt_file == "-":
        return sys.stdin.read()
    try:
        with open(args.prompt_file, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the prompt file: {e}") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (CheckpointError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    prompt = read_prompt(args)
    use_decoder = args.decode == "fast" or (args.decode == "auto" and device.type == "cpu")

    t0 = time.perf_counter()
    model = GPT.from_pretrained(args.init, device=device, dtype=dtype, attn_backend=args.attn_backend)
    enc = get_encoding("gpt2")
    print(f"loaded {args.init} ({model.num_params() / 1e6:.1f}M parameters, {dtype}, {device}) "
          f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

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
            model, enc, [prompt], args.max_new_tokens,
            num_samples=1 if args.stream else args.num_samples,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            seed=None if args.seed is None else args.seed + i,
            stop=args.stop, stop_at_eot=not args.ignore_eot,
            on_text=on_text if args.stream else None,
            decoder_mode="auto" if use_decoder else None,
        )
    elapsed = time.perf_counter() - t0

    if not args.stream:
        out.write(SEPARATOR.join(prompt + c.text for c in results))
    out.flush()
    n_tokens = sum(len(c.tokens) for c in results)
    print(f"\n{len(results)} sample(s), {n_tokens} tokens in {elapsed:.2f}s "
          f"({n_tokens / max(elapsed, 1e-9):.1f} tok/s, prefill included)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
