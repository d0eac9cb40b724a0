"""`python -m minigpt.data`: the same as `python prepare.py`."""

import sys

from minigpt import entrypoint

entrypoint.start()  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C

from minigpt.data.prepare import main  # noqa: E402

sys.exit(entrypoint.run(lambda: main(prog="python -m minigpt.data")))
