"""Each supported architecture as llama.cpp reads it in GGUF: hyper-parameter keys, tensor names and layouts.

Llama-family (SmolLM2, `llmctl pretrain`) and Mixtral are llama.cpp's `llama` architecture, with q/k rows
permuted for its rope layout (as llama.cpp's convert_hf_to_gguf.py does) and, for Mixtral, the experts
stacked into `ffn_{gate,up,down}_exps`. GPT-2 (`pretrain --no-rope`) is `gpt2`: fused `attn_qkv`, and
Conv1D weights transposed to the (out, in) layout of a Linear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from llmctl.errors import ModelError, UsageError

SUPPORTED = {
    "llama": "Llama family (SmolLM2, `llmctl pretrain`)",
    "gpt2": "GPT-2 (`llmctl pretrain --no-rope`)",
    "mixtral": "Mixtral (`llmctl pretrain --experts`)",
}
GGUF_ARCH = {"llama": "llama", "mixtral": "llama", "gpt2": "gpt2"}


@dataclass
class TensorSource:
    """One GGUF tensor: its name, numpy (row-major) shape, and how to make its float32 data when written."""

    name: str
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray]
    keep_f32: bool = False  # norms, biases and the MoE router stay float32, as llama.cpp keeps them


def architecture_of(config) -> str:
    """Our name for the model's architecture, or one line listing the ones that can be exported."""
    model_type = getattr(config, "model_type", None)
    if model_type in SUPPORTED:
        return model_type
    listed = "; ".join(f"{name}: {what}" for name, what in SUPPORTED.items())
    raise ModelError(f"cannot export a '{model_type}' model to GGUF: supported architectures are {listed}")


# -- hyper-parameters ----------------------------------------------------------------------------

def rope_of(config) -> tuple[float, dict]:
    """(rope theta, rope parameters) for transformers 5 (`rope_parameters`) and 4 (`rope_theta`, `rope_scaling`)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return float(theta), params


def write_hyperparameters(writer, arch: str, config) -> None:
    if arch == "gpt2":
        _check_gpt2(config)
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        writer.add_vocab_size(config.vocab_size)
        return
    _check_llama(config)
    heads = config.num_attention_heads
    head_dim = _head_dim(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads or heads)
    theta, params = rope_of(config)
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if params.get("rope_type", "default") == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if arch == "mixtral":
        writer.add_expert_count(config.num_local_experts)
        writer.add_expert_used_count(config.num_experts_per_tok)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _check_llama(config) -> None:
    """Refuse what llama.cpp's llama would compute differently, rather than write a file that answers garbage."""
    _, params = rope_of(config)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise UsageError(f"rope scaling '{rope_type}' cannot be exported yet (supported: none, linear)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UsageError("Llama models with attention or MLP biases cannot be exported yet")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UsageError(f"Llama activation '{config.hidden_act}' is not llama.cpp's (silu)")


def _check_gpt2(config) -> None:
    if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UsageError(f"GPT-2 activation '{config.activation_function}' is not llama.cpp's (tanh-approximated GELU)")
    if config.scale_attn_by_inverse_layer_idx or not config.scale_attn_weights:
        raise UsageError("GPT-2 attention scaling differs from llama.cpp's (scale_attn_* options)")


# -- tensors -------------------------------------------------------------------------------------

def tensor_sources(arch: str, model) -> list[TensorSource]:
    """Every tensor of the GGUF file, in writing order, each read from the model only when written."""
    import gguf

    config = model.config
    layers = config.n_layer if arch == "gpt2" else config.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2 if arch == "gpt2" else gguf.MODEL_ARCH.LLAMA, layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    sources: list[TensorSource] = []
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and (tied or arch == "gpt2"):
            continue  # llama reads a missing output as token_embd; gpt2's output is added beside token_embd
        if arch == "gpt2":
            sources += _gpt2_sources(names, hf_name, tensor, model)
        else:
            sources += _llama_sources(names, hf_name, tensor, config)
    return sources


def _gguf_name(names, hf_name: str) -> str:
    base, dot, suffix = hf_name.rpartition(".")
    name = names.get_name(base) if suffix in ("weight", "bias") else None
    if name is None:
        raise ModelError(f"no GGUF name for tensor '{hf_name}' (an unexpected layout for this architecture)")
    return f"{name}.{suffix}"


def _array(tensor, transform: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> Callable[[], np.ndarray]:
    # The float32 view of the model's own tensor: no copy unless the transform makes one.
    return lambda: np.ascontiguousarray(transform(tensor.detach().float().cpu().numpy()))


def _llama_sources(names, hf_name: str, tensor, config) -> list[TensorSource]:
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    experts = re.match(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$", hf_name)
    if experts:
        block, which = experts.groups()
        if which == "down_proj":  # (experts, hidden, ffn): already llama.cpp's stacked layout
            return [TensorSource(f"blk.{block}.ffn_down_exps.weight", tuple(tensor.shape), _array(tensor))]
        ffn = tensor.shape[1] // 2  # transformers fuses gate then up along the rows
        shape = (tensor.shape[0], ffn, tensor.shape[2])
        return [TensorSource(f"blk.{block}.ffn_gate_exps.weight", shape, _array(tensor, lambda a: a[:, :ffn])),
                TensorSource(f"blk.{block}.ffn_up_exps.weight", shape, _array(tensor, lambda a: a[:, ffn:]))]
    name = _gguf_name(names, hf_name)
    shape = tuple(tensor.shape)
    if ".attn_q.weight" in name:
        return [TensorSource(name, shape, _array(tensor, lambda a: permute_rope(a, heads)))]
    if ".attn_k.weight" in name:
        return [TensorSource(name, shape, _array(tensor, lambda a: permute_rope(a, kv_heads)))]
    return [TensorSource(name, shape, _array(tensor), keep_f32=tensor.dim() == 1 or ".ffn_gate_inp." in name)]


def _gpt2_sources(names, hf_name: str, tensor, model) -> list[TensorSource]:
    if hf_name.endswith((".attn.bias", ".attn.masked_bias")):
        return []  # causal-mask buffers, not weights
    name = _gguf_name(names, hf_name)
    if tensor.dim() == 2 and hf_name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
        # Conv1D keeps (in, out); GGUF, like a Linear, wants (out, in).
        source = TensorSource(name, tuple(tensor.shape[::-1]), _array(tensor, lambda a: a.T))
    else:
        source = TensorSource(name, tuple(tensor.shape), _array(tensor), keep_f32=tensor.dim() == 1)
    if name != "token_embd.weight":
        return [source]
    head = model.get_output_embeddings().weight  # the tied embedding, or a separate head
    return [source, TensorSource("output.weight", tuple(head.shape), _array(head))]


def permute_rope(weights: np.ndarray, heads: int) -> np.ndarray:
    """q/k rows from Hugging Face's rotate-half layout to llama.cpp's interleaved pairs
    (convert_hf_to_gguf.py's LlamaModel.permute)."""
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def unpermute_rope(weights: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of `permute_rope`, for reading a file back."""
    rows = weights.shape[0]
    return weights.reshape(heads, rows // heads // 2, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)
