"""Weights in and out: `model.init_from`, GPT-2's name tables, `nanogpt-export`, sampling.
Imports checkpoint and everything below it."""
