"""`python -m minigpt.data`: the same as `python prepare.py`."""
import sys

from minigpt.data.prepare import main

sys.exit(main())
