"""Tiny models of the three architectures `llmctl pretrain` makes, for export tests: Llama (chat, ChatML),
GPT-2 (base, learned positions, a context that is not transformers' default) and Mixtral (chat, 4 experts).

Weights are drawn wider than transformers' default (std 0.2, not 0.02), so the logits are far from
uniform: a wrong tensor layout then changes the perplexity and the greedy tokens, not just the 4th decimal.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_models import CHATML, build_tokenizer

SPREAD = 0.2


def build_model(kind: str, path: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MixtralConfig, Qwen2Config

    tokenizer = build_tokenizer(None if kind == "gpt2" else CHATML)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer), initializer_range=SPREAD)
    shared = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, **ids)
    if kind == "llama":  # tied, as `llmctl pretrain` makes it by default
        config = LlamaConfig(tie_word_embeddings=True, **shared)
    elif kind == "mixtral":
        config = MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **shared)
    elif kind == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=96, n_inner=96, **ids)
    elif kind == "qwen2":  # an architecture export does not support
        config = Qwen2Config(**shared)
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_adapter(base: Path, path: Path) -> Path:
    """A LoRA adapter on `base` whose B matrices are not zero, so folding it in changes the weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(path)
    AutoTokenizer.from_pretrained(base).save_pretrained(path)
    return path
