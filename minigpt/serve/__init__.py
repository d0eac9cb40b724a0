"""Serving: an OpenAI-compatible HTTP server (app), its continuous-batching engine, the arena's ratings."""
