"""Exporting a model to other engines' formats: `python -m minigpt.export FORMAT ...`.

gguf (minigpt.export.gguf): a GGUF file that llama.cpp runs, at f32, f16, q8_0 or q4_0.
It needs the `gguf` package (`pip install 'minigpt[export]'`).
"""
