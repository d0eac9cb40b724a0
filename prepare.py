"""Prepare a corpus for training: tokenize it into uint16 shards (minigpt/data/corpus.py does the work).

    python prepare.py                          # the default corpus: this Python's standard library
    python prepare.py shakespeare              # tiny Shakespeare (a download)
    python prepare.py notes/                   # your own text: a file, a directory or a glob
    python prepare.py --tokenizer bpe:4096     # a BPE of 4096 tokens trained on the train split

`python -m minigpt.data` is the same command. train.py prepares its --data itself when needed;
this prepares it ahead of time. The sources, the layout of a prepared directory and the
train/val split: minigpt/data/corpus.py.

Exit codes: 0 done; 1 the corpus cannot be prepared (one line on stderr); 2 a bad flag; 130 interrupted
(Ctrl-C); 143 SIGTERM.
"""

from __future__ import annotations

from minigpt import entrypoint

if __name__ == "__main__":
    entrypoint.start()  # before torch is imported: passive OpenMP waiting, a quiet early Ctrl-C

import sys

from minigpt.data.prepare import main

if __name__ == "__main__":
    sys.exit(entrypoint.run(main))
