"""Chatting with a model: conversation formats (formats) and a multi-turn session over a KV cache (session)."""
