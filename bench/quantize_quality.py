"""What weight-only quantization costs in quality: bits per byte of held-out text.

    python bench/quantize_quality.py --init out            # a train.py run (its latest checkpoint)
    python bench/quantize_quality.py --init out --update-results

The text is the start of the validation split of a prepared corpus (default: the stdlib corpus
train.py's cpu recipe trains on, ~/.cache/minigpt/data/stdlib; its documents never appear in
training), decoded back to text; optionally a second text file (e.g. out-of-domain prose).
Each is scored with minigpt.eval.evaluate.bits_per_byte by the model in float32, bfloat16, and
int8 / int4 (several group sizes) of minigpt.model.quantize on the bf16 model. JSON to
bench/runs/<date>-<time>-quantize-quality/ (or bench/results/ with --update-results).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `minigpt` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C
    from minigpt import entrypoint

    entrypoint.start()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import environment, log, output_dir, write_json  # noqa: E402
from minigpt.data.corpus import data_tokenizer  # noqa: E402
from minigpt.eval.evaluate import bits_per_byte  # noqa: E402
from minigpt.model.load import from_pretrained  # noqa: E402
from minigpt.model.quantize import quantize_model  # noqa: E402
from minigpt.tokenizers.lookup import check_vocab, tokenizer_for  # noqa: E402

DEFAULT_DATA = Path.home() / ".cache" / "minigpt" / "data" / "stdlib"


def held_out_text(data_dir: Path, max_bytes: int) -> str:
    """Whole documents from the start of the corpus's validation split, up to max_bytes of text,
    decoded with the tokenizer the shards were made with."""
    enc = data_tokenizer(data_dir)
    tokens = np.load(data_dir / "val_000000.npy", mmap_mode="r")
    eot, docs, size, start = enc.eot_id, [], 0, 0
    ends = np.flatnonzero(np.asarray(tokens[: 4 * max_bytes]) == eot)
    for end in list(ends) + [None]:
        doc = enc.decode([int(t) for t in tokens[start:end] if t != eot])
        start = None if end is None else end + 1
        if doc:
            docs.append(doc)
            size += len(doc.encode("utf-8"))
        if size >= max_bytes or start is None:
            break
    return "\n\n".join(docs)


def variants(init: str, group_sizes: list[int]):
    yield "float32", {}, from_pretrained(init, dtype=torch.float32)
    yield "bfloat16", {}, from_pretrained(init, dtype=torch.bfloat16)
    yield "int8", {"activations": "bfloat16"}, quantize_model(from_pretrained(init, dtype=torch.bfloat16), "int8")
    for g in group_sizes:
        model = from_pretrained(init, dtype=torch.bfloat16)
        if model.config.n_embd % g == 0:
            settings = {"activations": "bfloat16", "group_size": g}
            yield f"int4-g{g}", settings, quantize_model(model, "int4", group_size=g)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="out", help="the checkpoint (a train.py --out-dir, a directory, a preset)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a prepared corpus whose val split is scored")
    p.add_argument("--max-bytes", type=int, default=100_000, help="bytes of held-out text to score")
    p.add_argument("--extra-text", type=Path, default=None, help="also score the start of this text file")
    p.add_argument("--group-sizes", default="32,64,128", help="int4 group sizes (comma-separated)")
    p.add_argument("--out", type=Path, default=None, help="results directory (default: a new bench/runs/ folder)")
    p.add_argument("--update-results", action="store_true", help="write bench/results/quantize-quality.json")
    args = p.parse_args(argv)
    tokenizer = tokenizer_for(args.init)  # the model's own, which scores every variant
    texts = {f"{args.data.name} val": held_out_text(args.data, args.max_bytes)}
    if args.extra_text:
        texts[args.extra_text.name] = args.extra_text.read_text(encoding="utf-8")[: args.max_bytes]
    rows, config = [], None
    for name, extra, model in variants(args.init, [int(g) for g in args.group_sizes.split(",")]):
        if config is None:
            check_vocab(tokenizer, model.config.vocab_size, args.init)
            config = model.config.to_dict()
        for text_name, text in texts.items():
            t0 = time.perf_counter()
            with torch.inference_mode():
                r = bits_per_byte(model, tokenizer, text)
            rows.append({"model": name, **extra, "text": text_name, **r, "seconds": time.perf_counter() - t0})
            log(f"{name:10s} {text_name:24s} {r['bpb']:.4f} bits/byte")
    base = {row["text"]: row["bpb"] for row in rows if row["model"] == "float32"}
    for row in rows:
        row["bpb_vs_float32"] = row["bpb"] - base[row["text"]]
    out = output_dir(args.out, args.update_results, "quantize-quality")
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "quantize-quality",
        "environment": environment("cpu"),
        "settings": {
            "init": str(args.init),
            "data": str(args.data),
            "max_bytes": args.max_bytes,
            "texts": {k: len(v.encode("utf-8")) for k, v in texts.items()},
        },
        "config": config,
        "results": rows,
    }
    path = write_json(out / "quantize-quality.json", payload)
    print(f"{'model':10s} {'text':24s} bits/byte  vs float32")
    for row in rows:
        print(f"{row['model']:10s} {row['text']:24s} {row['bpb']:.4f}    {row['bpb_vs_float32']:+.4f}")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
