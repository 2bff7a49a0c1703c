"""The GPT we pretrain, as a stock Hugging Face architecture so the output needs no custom code:
Llama (RoPE, SwiGLU, RMSNorm) by default, GPT-2 (learned positions) with --no-rope, Mixtral for
mixture-of-experts, Qwen3 (Llama plus RMSNorm on queries and keys) with --qk-norm. vLLM, TGI, llama.cpp's converter and peft all know these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from llmctl.errors import UsageError


@dataclass
class GPTConfig:
    layers: int = 4
    heads: int = 4
    width: int = 128
    context: int = 256
    mlp: int | None = None  # default: 4x width (GPT-2), 8/3x width (SwiGLU), rounded to 32
    rope: bool = True
    tied: bool = True
    dropout: float = 0.0  # on embeddings and each block's attention and MLP output (GPT-2's resid/embd dropout)
    experts: int = 0  # > 0: mixture of experts (Mixtral)
    experts_per_token: int = 2
    qk_norm: bool = False  # RMSNorm on queries and keys (the Qwen3 architecture)

    def mlp_size(self) -> int:
        if self.mlp:
            return self.mlp
        factor = 4 if not self.rope else 8 / 3
        return int(round(self.width * factor / 32) * 32)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "tiny": GPTConfig(layers=4, heads=4, width=128, context=256),  # ~1M parameters: minutes on a CPU
    "small": GPTConfig(layers=6, heads=6, width=384, context=256),  # ~10M: TinyStories size
    "gpt2-124m": GPTConfig(layers=12, heads=12, width=768, context=1024, rope=False),
}


def preset(name: str, **overrides) -> GPTConfig:
    if name not in PRESETS:
        raise UsageError(f"unknown preset '{name}'", hint="use one of: " + ", ".join(PRESETS))
    config = replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    check(config)
    return config


def check(c: GPTConfig) -> None:
    for name in ("layers", "heads", "width", "context"):
        if getattr(c, name) < 1:
            raise UsageError(f"--{name} must be at least 1, got {getattr(c, name)}")
    if c.width % c.heads:
        raise UsageError(f"--width {c.width} is not divisible by --heads {c.heads}")
    if c.rope and (c.width // c.heads) % 2:
        raise UsageError(f"RoPE needs an even head size; width/heads is {c.width // c.heads}")
    if not 0 <= c.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {c.dropout}")
    if c.experts < 0 or (c.experts and not 1 <= c.experts_per_token <= c.experts):
        raise UsageError(f"--experts-per-token must be between 1 and --experts ({c.experts})")
    if c.experts and not c.rope:
        raise UsageError("mixture of experts uses the Mixtral architecture, which needs RoPE (drop --no-rope)")
    if c.qk_norm and (c.experts or not c.rope):
        raise UsageError("--qk-norm builds a Qwen3 model, which has RoPE and no experts here "
                         "(drop --no-rope / --experts)")


def architecture(c: GPTConfig) -> str:
    """The transformers architecture family this GPT is saved as."""
    return "gpt2" if not c.rope else "mixtral" if c.experts else "qwen3" if c.qk_norm else "llama"


def hf_config(c: GPTConfig, vocab_size: int, eot_id: int):
    """The transformers config for this GPT."""
    common = dict(vocab_size=vocab_size, bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id,
                  tie_word_embeddings=c.tied)
    if not c.rope:
        from transformers import GPT2Config

        return GPT2Config(n_layer=c.layers, n_head=c.heads, n_embd=c.width, n_positions=c.context,
                          n_inner=c.mlp_size(), resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                          **common)
    shared = dict(hidden_size=c.width, intermediate_size=c.mlp_size(), num_hidden_layers=c.layers,
                  num_attention_heads=c.heads, num_key_value_heads=c.heads, max_position_embeddings=c.context,
                  attention_dropout=0.0, rms_norm_eps=1e-5, **common)  # --dropout: residual_dropout below
    if c.experts:
        from transformers import MixtralConfig

        return MixtralConfig(num_local_experts=c.experts, num_experts_per_tok=c.experts_per_token,
                             output_router_logits=True, router_aux_loss_coef=0.01, **shared)
    if c.qk_norm:
        from transformers import Qwen3Config

        return Qwen3Config(head_dim=c.width // c.heads, use_sliding_window=False, **shared)
    from transformers import LlamaConfig

    return LlamaConfig(**shared)


def build_model(c: GPTConfig, vocab_size: int, eot_id: int, seed: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # the same seed gives the same initial weights on every process
    config = hf_config(c, vocab_size, eot_id)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.generation_config.eos_token_id = eot_id
    model.generation_config.pad_token_id = eot_id
    if c.dropout and c.rope:  # GPT-2's config has these dropouts itself
        residual_dropout(model, c.dropout)
    return model


def residual_dropout(model, p: float) -> None:
    """Dropout on the token embeddings and on each block's attention and MLP output before it joins the
    residual stream, as GPT-2 (and nanoGPT) have it. transformers' Llama, Qwen3 and Mixtral configs only
    drop attention probabilities, which cost ~20% of the tokens/s on 2 CPU cores (bench/RESULTS.md).
    Forward hooks add it while training: in eval mode they pass the output through, and nothing of them
    is saved, so the output stays a plain transformers model."""
    import torch.nn.functional as F

    def drop(module, args, output):
        return F.dropout(output, p, module.training)

    inner = model.model
    inner.embed_tokens.register_forward_hook(drop)
    for layer in inner.layers:
        layer.self_attn.o_proj.register_forward_hook(drop)
        layer.mlp.register_forward_hook(drop)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
