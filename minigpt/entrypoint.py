"""What every command line does first, before torch is imported: the shared runtime set-up.

train.py, sample.py, eval.py, prepare.py (and the bench scripts) start with

    from minigpt import entrypoint
    entrypoint.start()        # before `import torch` (and before any minigpt import, which imports torch)
    ...
    if __name__ == "__main__":
        sys.exit(entrypoint.run(main))

start() makes idle OpenMP threads sleep instead of spin (OMP_WAIT_POLICY=PASSIVE unless the user
set it: read once, when torch loads OpenMP; spinning threads starve their siblings on a shared
CPU: bench/results/omp-wait-cpu.json), asks PyTorch to back its large CPU tensors with transparent
huge pages where the kernel allows them (THP_MEM_ALLOC_ENABLE=1 unless the user set it: loading a
model then faults in one 2 MiB page where it faulted 512 small ones; bench/startup.py measures the
start-up with and without), and makes Ctrl-C or SIGTERM while the imports run end in one line
with exit 130 or 143 instead of a traceback. run(main) then turns either signal into an
`Interrupted` exception (a KeyboardInterrupt, so every `except KeyboardInterrupt` sees both) for
main to clean up after, and ends an uncaught one in one line with 128 + the signal's number.

It uses the standard library only, and the package's __init__ imports nothing eagerly, so
importing it loads no torch.
"""

from __future__ import annotations

import gc
import io
import os
import signal
import sys
import threading
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM received; exit_code is 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def exit_code(e: BaseException) -> int:
    """The exit status for an interruption: 143 for SIGTERM, 130 for Ctrl-C (a plain KeyboardInterrupt)."""
    return getattr(e, "exit_code", 128 + signal.SIGINT)


def _quit_at_once(signum: int, frame) -> None:
    """While the imports run (or after main returned) there is nothing to clean up: one line, and out."""
    try:
        os.write(2, f"error: interrupted ({signal.Signals(signum).name})\n".encode())
    except OSError:
        pass
    os._exit(128 + signum)


def _raise(signum: int, frame) -> None:
    raise Interrupted(signum)


def _install(handler) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, handler)


def start() -> None:
    """Call first, before torch is imported: passive OpenMP waiting, huge pages for large tensors and a
    quiet early Ctrl-C/SIGTERM."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    _install(_quit_at_once)


def run(main: Callable[[], int | None]) -> int:
    """main(), with SIGINT and SIGTERM raised as Interrupted; its exit code (an uncaught
    interruption: one line on stderr and 130 or 143)."""
    _install(_raise)
    try:
        return main() or 0
    except KeyboardInterrupt as e:
        _install(_quit_at_once)  # a second signal while this line is written
        try:
            print(f"error: interrupted ({e.args[0] if e.args else 'SIGINT'})", file=sys.stderr, flush=True)
        except (OSError, ValueError, AttributeError):
            pass
        return exit_code(e)
    finally:
        _install(_quit_at_once)  # the interpreter's shutdown (joining threads, flushing) stays quiet
        _skip_the_last_collection()


def _skip_the_last_collection() -> None:
    """Once main has returned, move every object to the collector's permanent generation, so that the
    interpreter's shutdown does not free, one by one, the objects of torch and of everything else
    imported, just before the process ends anyway (about 0.5 s of every command's exit on a 2-core
    CPU). Frozen objects are never finalized, so every file still open for writing is flushed first
    (its descriptor then closes with the process); atexit handlers still run. Not with triton
    loaded: its nanobind objects report themselves as leaked when they are never freed."""
    if "triton" in sys.modules:
        return
    buffered = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)
    for obj in gc.get_objects():
        if issubclass(type(obj), buffered):  # type(), not isinstance: no object's __class__ is asked for
            try:
                if not obj.closed and obj.writable():
                    obj.flush()
            except (OSError, ValueError):
                pass
    gc.freeze()
