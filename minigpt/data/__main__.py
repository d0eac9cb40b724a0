"""`python -m minigpt.data`: the same as `python prepare.py` (the command line is that script's)."""

import sys

from minigpt.data.prepare import main

sys.exit(main())
