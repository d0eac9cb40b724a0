"""Evaluation: the tasks, scoring a model on them, and the lm-evaluation-harness adapter."""
