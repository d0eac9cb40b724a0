"""Quantization lives in minigpt.model.quantize; this name resolves to it."""

import sys

from minigpt.model import quantize as _quantize

sys.modules[__name__] = _quantize
