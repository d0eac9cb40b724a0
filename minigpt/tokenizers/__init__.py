"""Tokenizers: one interface over GPT-2's, a run's own and a checkpoint's tokenizer files."""
