"""TextStream: the text of ids generated one at a time, for any kind of tokenizer.

Streaming decoders print text as tokens arrive; decoding each token alone would print half
characters and wrong spaces, so this decodes a short window of recent ids instead.
"""

from __future__ import annotations

from minigpt.tokenizers.base import Tokenizer


class TextStream:
    """Text of a growing list of ids, handed out piece by piece as it becomes final.

    Decoding token by token does not work in general: a character may be split over several
    tokens (byte-level BPE, byte fallback "<0xNN>"), and tokenizers decode a token differently
    at the start of a text (sentencepiece drops the space of a leading "▁word"). So each step
    decodes a short window of recent ids whose first tokens are already handed out (left
    context) and hands out what it adds to the text shown so far, holding it back while it
    ends in an incomplete character (U+FFFD), in a byte-fallback id (a run of them decodes as
    one) or in spaces (a clean-up step may still remove a space before punctuation). After each
    piece the window moves up to the previous piece, so the work per token stays small however
    long the text grows. The pieces add up to decode(all ids).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # the window: ids[start:] is decoded...
        self.shown = ""  # ...and this beginning of its text has been handed out
        self.mark = 0  # where the window moves next: the ids up to the last piece handed out

    def push(self, token: int) -> str:
        """Add one id; the text that is now final (possibly "")."""
        self.ids.append(token)
        if token in self.tokenizer.byte_ids:  # its run of bytes may go on
            return ""
        text = self.tokenizer.decode(self.ids[self.start :])
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return ""
        final = text.rstrip(" ")
        piece = final[len(self.shown) :]
        if not piece:
            return ""
        # move the window: it now starts at the previous piece, which becomes its left context
        self.start, self.mark = self.mark, len(self.ids)
        self.shown = self.tokenizer.decode(self.ids[self.start :]).rstrip(" ")
        return piece

    def flush(self) -> str:
        """The text held back (an incomplete character becomes U+FFFD)."""
        text = self.tokenizer.decode(self.ids[self.start :])
        piece = text[len(self.shown) :] if text.startswith(self.shown) else text
        self.start = self.mark = len(self.ids)
        self.shown = ""
        return piece
