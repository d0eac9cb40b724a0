"""python -m minigpt.export gguf MODEL OUT.gguf [--type f32|f16|q8_0|q4_0]

MODEL is anything from_pretrained takes: a preset (gpt2), a hub id, a directory, a .safetensors
file or a train.py run (its latest checkpoint). The output must not exist yet.
"""

from __future__ import annotations

import sys

from minigpt import entrypoint

entrypoint.start()  # before torch is imported

from minigpt.cli import OneLineParser  # noqa: E402


def main() -> int:
    try:
        from minigpt.export import gguf as gguf_export
    except ModuleNotFoundError as e:
        if e.name != "gguf":
            raise
        print("error: the gguf package is missing: pip install 'minigpt[export]'", file=sys.stderr)
        return 1
    from minigpt.rundir import CheckpointError

    parser = OneLineParser(prog="python -m minigpt.export", description="Export a minigpt model to another format.")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    p = formats.add_parser("gguf", help="a GGUF file for llama.cpp")
    p.add_argument("model", help="a preset, hub id OWNER/NAME, directory, .safetensors file or train.py run")
    p.add_argument("out", help="the .gguf file to write (must not exist)")
    p.add_argument("--type", default="f16", help=f"tensor types (default f16): {gguf_export.types_help()}")
    p.add_argument("--name", default=None, help="general.name in the file (default: the model's name)")
    args = parser.parse_args()
    try:
        path = gguf_export.export_gguf(args.model, args.out, args.type, name=args.name)
    except (CheckpointError, ValueError, RuntimeError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
