"""Tiny Hugging Face models built from config, for tests: seconds to build, deterministic weights.

One byte-level BPE tokenizer (trained here on a few sentences), then a chat model (Llama
architecture, ChatML template) and a base model (GPT-2 architecture, no template).
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The Eiffel Tower is located in Paris, France.",
    "What is the capital of France? The capital of France is Paris.",
    "ROMEO: But soft, what light through yonder window breaks?",
    "Large language models predict the next token from the tokens before it.",
    "def add(a, b):\n    return a + b\n",
] * 20


def build_tokenizer(chat_template: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>" if chat_template else "<|endoftext|>",
                                   bos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def build_chat_model(path: Path, context: int = 128) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(CHATML)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_base_model(path: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer(None)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=512,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def endless_chat_backend(directory: Path, name: str):
    """The chat model with a 4096-token context, loaded as a backend whose replies never end by
    themselves: only the length limit, a stop string or the client ends them, so every row decodes
    all its steps."""
    from llmctl.backends.hf import HFBackend
    from llmctl.config import Config
    from llmctl.registry import ModelEntry

    backend = HFBackend.load(ModelEntry(name, "hf", str(build_chat_model(directory, context=4096))), Config())
    backend.eos_ids = set()
    return backend
