"""A GGUF file back into a transformers model and tokenizer: for the round trip and for GGUF registry entries.

Llama and GPT-2 files go through transformers' own GGUF loader (an implementation independent of our
writer), with the few hyper-parameters it does not read set from the file. transformers reads no Mixtral
GGUF (llama.cpp's `llama` with experts), so those are read here with gguf's reader and de-quantizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from llmctl.errors import ModelError

TRANSFORMERS_LOADER = "transformers GGUF loader"
OWN_LOADER = "llmctl's GGUF reader (gguf.GGUFReader + dequantize; transformers does not read Mixtral GGUF)"


class LoadedGGUF(NamedTuple):
    model: Any
    tokenizer: Any
    loader: str  # which reader produced it, for the report


def load_gguf(path: Path, dtype=None) -> LoadedGGUF:
    """Model (de-quantized to `dtype`, float32 by default) and tokenizer of a GGUF file."""
    import gguf
    import torch

    from llmctl.embedded import _lean_gguf_loading, _quiet_transformers
    from llmctl.export.tokenizer import load_gguf_tokenizer, read_metadata

    path = Path(path)
    dtype = dtype or torch.float32
    meta = read_metadata(path)
    arch = meta.get("general.architecture")
    # One parse of the file's header for config, weights and tokenizer: transformers reads it for each.
    with _quiet_transformers(), _lean_gguf_loading():
        if arch == "llama" and meta.get("llama.expert_count", 0) > 0:
            model, loader = _read_mixtral(gguf.GGUFReader(path), meta, dtype), OWN_LOADER
        elif arch in ("llama", "gpt2"):
            model, loader = _transformers_model(path, meta, dtype), TRANSFORMERS_LOADER
        else:
            raise ModelError(f"{path.name}: GGUF architecture '{arch}' cannot be loaded (supported: llama, gpt2, "
                             "llama with experts)")
        tokenizer = load_gguf_tokenizer(path, meta.get("tokenizer.ggml.pre"))
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    return LoadedGGUF(model.eval(), tokenizer, loader)


def _transformers_model(path: Path, meta: dict, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmctl.embedded import _dequantize_kwargs

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    _complete_config(config, meta)
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config, dtype=dtype,
                                                **_dequantize_kwargs())


def _complete_config(config, meta: dict) -> None:
    """What transformers' GGUF config mapping leaves out (it would build a model of another shape)."""
    if config.model_type == "gpt2":
        config.n_positions = config.n_ctx = meta["gpt2.context_length"]
        config.n_inner = meta.get("gpt2.feed_forward_length")
    elif meta.get("llama.rope.scaling.type") == "linear":
        from llmctl.export.architectures import rope_of

        theta, params = rope_of(config)
        config.rope_parameters = {**params, "rope_theta": theta, "rope_type": "linear",
                                  "factor": float(meta["llama.rope.scaling.factor"])}


def _read_mixtral(reader, meta: dict, dtype):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, MixtralConfig

    from llmctl.export.architectures import unpermute_rope

    tensors = {t.name: t for t in reader.tensors}
    heads, kv_heads = meta["llama.attention.head_count"], meta.get("llama.attention.head_count_kv")
    kv_heads = kv_heads or heads
    config = MixtralConfig(
        vocab_size=meta.get("llama.vocab_size") or meta["tokenizer.ggml.tokens"],
        hidden_size=meta["llama.embedding_length"], intermediate_size=meta["llama.feed_forward_length"],
        num_hidden_layers=meta["llama.block_count"], num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=meta.get("llama.rope.dimension_count"), max_position_embeddings=meta["llama.context_length"],
        rms_norm_eps=meta["llama.attention.layer_norm_rms_epsilon"],
        rope_parameters={"rope_type": "default", "rope_theta": meta.get("llama.rope.freq_base", 10000.0)},
        num_local_experts=meta["llama.expert_count"], num_experts_per_tok=meta["llama.expert_used_count"],
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"))

    def read(name: str):
        if name not in tensors:
            raise ModelError(f"the GGUF file has no tensor '{name}'")
        t = tensors[name]
        return gguf.quants.dequantize(t.data, t.tensor_type)

    state = {"model.embed_tokens.weight": read("token_embd.weight"), "model.norm.weight": read("output_norm.weight")}
    if "output.weight" in tensors:
        state["lm_head.weight"] = read("output.weight")
    for i in range(config.num_hidden_layers):
        hf, blk = f"model.layers.{i}", f"blk.{i}"
        state.update({
            f"{hf}.input_layernorm.weight": read(f"{blk}.attn_norm.weight"),
            f"{hf}.post_attention_layernorm.weight": read(f"{blk}.ffn_norm.weight"),
            f"{hf}.self_attn.q_proj.weight": unpermute_rope(read(f"{blk}.attn_q.weight"), heads),
            f"{hf}.self_attn.k_proj.weight": unpermute_rope(read(f"{blk}.attn_k.weight"), kv_heads),
            f"{hf}.self_attn.v_proj.weight": read(f"{blk}.attn_v.weight"),
            f"{hf}.self_attn.o_proj.weight": read(f"{blk}.attn_output.weight"),
            f"{hf}.mlp.gate.weight": read(f"{blk}.ffn_gate_inp.weight"),
            f"{hf}.mlp.experts.gate_up_proj": _concat_rows(read(f"{blk}.ffn_gate_exps.weight"),
                                                           read(f"{blk}.ffn_up_exps.weight")),
            f"{hf}.mlp.experts.down_proj": read(f"{blk}.ffn_down_exps.weight"),
        })
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    weights = {k: torch.from_numpy(v.copy()).to(dtype) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"the Mixtral GGUF does not fit its own shape: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def _concat_rows(gate, up):
    import numpy as np

    return np.concatenate([gate, up], axis=1)  # transformers fuses gate then up: (experts, 2 * ffn, hidden)
