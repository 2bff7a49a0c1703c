"""llmctl: prompt, fine-tune and pretrain language models from one command line."""

__version__ = "0.1.0"
