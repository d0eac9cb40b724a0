"""The Hugging Face hub: OpenAI's presets and any `OWNER/NAME[@REVISION]`, downloaded once into its cache.

python -m minigpt.model.hub download gpt2                        # while online; offline after that
python -m minigpt.model.hub download rinna/japanese-gpt2-small   # a hub id, with its tokenizer files
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from minigpt.model.config import HUB_REPOS, PRESETS, preset
from minigpt.rundir import CheckpointError

# What a hub id brings down: the config, the weights and the tokenizer files, nothing else.
HUB_CONFIG_FILES = ["config.json", "generation_config.json"]
HUB_TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "*.model",
]
HUB_SAFETENSORS = ["model*.safetensors", "model.safetensors.index.json"]
HUB_TORCH_BIN = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<revision>[^@\s]+))?")


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) of "OWNER/NAME" or "OWNER/NAME@REVISION"; None if name is not of that form."""
    m = HUB_ID.fullmatch(name)
    if m is None or name.startswith(("./", "../")) or ".." in m["repo"] or m["repo"].endswith((".", "-")):
        return None
    return m["repo"], m["revision"]


def has_weights(directory: Path) -> bool:
    return any((directory / f).is_file() for f in WEIGHT_FILES)


# How long the one reachability check waits for the hub before calling it unreachable.
PROBE_TIMEOUT = 10.0


def network_errors() -> tuple[type[BaseException], ...]:
    """Every exception class by which the installed huggingface_hub reports a failed request.

    huggingface_hub < 1.0 goes through requests (whose errors are OSErrors), 1.x through httpx and
    2.x through httpx2, whose errors are not OSErrors; whichever it uses is imported with it.
    """
    import huggingface_hub  # noqa: F401  (imports its HTTP library)
    from huggingface_hub.utils import HfHubHTTPError

    errors: list[type[BaseException]] = [OSError, HfHubHTTPError]
    for module in ("httpx", "httpx2", "requests"):
        mod = sys.modules.get(module)
        for cls in ("HTTPError", "InvalidURL", "StreamError", "RequestException"):
            if isinstance(getattr(mod, cls, None), type):
                errors.append(getattr(mod, cls))
    return tuple(errors)


def _why(e: BaseException) -> str:
    """A network error in a few words: its type and the OS's reason where the message holds one."""
    text = str(e).strip()
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)  # requests nests it in a MaxRetryError's repr
    text = errno[0] if errno else (text.splitlines() or [""])[0]
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def hub_unreachable() -> str | None:
    """None if the Hugging Face hub answers one request; else why not, in a few words.

    One request with a short timeout and no retries: offline, huggingface_hub's own calls retry
    a refused connection for half a minute before giving up with a traceback.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    try:
        get_session().head(endpoint, timeout=PROBE_TIMEOUT)
    except network_errors() as e:
        return f"{endpoint} cannot be reached ({_why(e)})"
    return None


def hub_snapshot(name: str, downloading: bool = False) -> Path:
    """The local directory of a preset's or a hub id's snapshot, downloading it if it is not cached.

    A preset (`gpt2`, ...) brings config.json and model.safetensors; a hub id `OWNER/NAME[@REVISION]`
    also the tokenizer files and generation_config.json, and its weights as safetensors where the
    repo has them, else as pytorch_model*.bin. The cache is tried first, so once downloaded
    nothing goes to the network; otherwise the hub is checked once (hub_unreachable), so that
    offline is one line at once rather than a traceback after retries.
    downloading: the caller's whole job is the download (`python -m minigpt.model.hub download`),
    so a failure says what the download needs rather than suggesting the download command.
    """
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    if name in PRESETS:
        repo, revision, patterns = HUB_REPOS[name], None, ["config.json", "model.safetensors"]
    else:
        parsed = parse_hub_id(name)
        if parsed is None:
            raise CheckpointError(f"{name!r} is not a preset ({', '.join(PRESETS)}) or a hub id OWNER/NAME[@REVISION]")
        repo, revision = parsed
        patterns = HUB_CONFIG_FILES + HUB_TOKENIZER_FILES
    where = repo if revision is None else f"{repo} at revision {revision}"
    try:
        path = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True))
        if has_weights(path):
            return path
    except LocalEntryNotFoundError:
        pass

    def cannot(why: str) -> CheckpointError:
        if downloading:
            return CheckpointError(
                f"cannot download {where} from the Hugging Face hub: {why}; this needs network access to "
                f"the hub, and the files go to the cache at {constants.HF_HUB_CACHE} "
                "(set HF_HUB_CACHE to choose another)"
            )
        local = "" if name in PRESETS else f"there is no local path {name}, and "
        return CheckpointError(
            f"{local}{where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub cannot be "
            f"reached ({why}); on a machine with network run `python -m minigpt.model.hub download {name}`, "
            "or pass a local directory or .safetensors file"
        )

    why = hub_unreachable()
    if why is not None:
        raise cannot(why)
    try:
        if name not in PRESETS:  # prefer safetensors: ask which weight files the repo has
            files = HfApi().list_repo_files(repo, revision=revision)
            patterns = patterns + (HUB_SAFETENSORS if any(f.endswith(".safetensors") for f in files) else HUB_TORCH_BIN)
        path = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        what = "revision" if isinstance(e, RevisionNotFoundError) else "repository"
        raise CheckpointError(f"the Hugging Face hub has no {what} {where} (or it is private or gated)") from None
    except network_errors() as e:  # the hub went away after answering, or refused the request
        raise cannot(_why(e)) from None
    if not has_weights(path):
        raise CheckpointError(f"the hub repo {where} has no model.safetensors or pytorch_model.bin weights")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minigpt.model.hub",
        description="Download GPT-2 weights (OpenAI's or any GPT-2 model on the hub) into the Hugging Face "
        "cache, for later offline use.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="fetch the config and weights of a preset, or of a hub id with its tokenizer")
    dl.add_argument("name", help=f"a preset ({', '.join(PRESETS)}) or a hub id OWNER/NAME[@REVISION]")
    args = parser.parse_args(argv)
    try:
        if args.name not in PRESETS and parse_hub_id(args.name) is None:
            preset(args.name)  # the one-line error listing the presets
        print(hub_snapshot(args.name, downloading=True))
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from minigpt import entrypoint

    entrypoint.start()
    sys.exit(entrypoint.run(main))
