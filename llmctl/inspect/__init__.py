"""Seeing inside a model: its tokens, next-token distributions, pretraining pairs, expert routing,
attention and what few-shot examples change. Each is a function over a local model that returns
plain data; the CLI only renders it."""
