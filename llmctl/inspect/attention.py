"""`llmctl inspect attention`: how much each token attends to each earlier one, in one layer and
head (or the mean of a layer's heads), for a short text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmctl.errors import ModelError, UsageError
from llmctl.inspect.local import check_text, inspectable_entry, load_inspected
from llmctl.inspect.tokens import Token, as_tokens, encode

if TYPE_CHECKING:
    from llmctl.config import Config

MAX_TOKENS = 128  # a heat map with more rows than this is no longer readable


@dataclass
class AttentionMap:
    model: str
    tokens: list[Token]
    layer: int
    head: int | None  # None: the mean over the layer's heads
    layers: int
    heads: int
    weights: list[list[float]]  # [query token][key token]; each row sums to 1, zero above the diagonal

    def to_dict(self) -> dict:
        return {"model": self.model, "layer": self.layer, "head": self.head, "layers": self.layers,
                "heads": self.heads, "tokens": [{"id": t.id, "token": t.text} for t in self.tokens],
                "weights": self.weights}


def shape_of(model_config) -> tuple[int, int]:
    """(layers, attention heads) of a transformers config (GPT-2's n_layer/n_head map to these names)."""
    return int(model_config.num_hidden_layers), int(model_config.num_attention_heads)


def check_layer_head(layer: int | None, head: int | None, layers: int, heads: int, name: str) -> int:
    """The layer to show (default: the last); a layer or head out of range is refused."""
    layer = layers - 1 if layer is None else layer
    if not 0 <= layer < layers:
        raise UsageError(f"--layer {layer} is out of range: {name} has {layers} layers (0 to {layers - 1})")
    if head is not None and not 0 <= head < heads:
        raise UsageError(f"--head {head} is out of range: {name} has {heads} heads per layer (0 to {heads - 1})")
    return layer


def attention_map(ref: str, text: str, layer: int | None = None, head: int | None = None,
                  config: Config | None = None) -> AttentionMap:
    """Attention weights of `text` (completed as is) in `layer` (default: the last), for `head`
    (default: the mean of all heads). The model runs with eager attention, which forms the weights."""
    import torch

    from llmctl.loading import load_model_config

    check_text(text)
    entry = inspectable_entry(ref, "attention maps")
    layers, heads = shape_of(load_model_config(entry, config))
    layer = check_layer_head(layer, head, layers, heads, entry.name)
    local = load_inspected(entry, "attention maps", config, eager_attention=True)
    ids = encode(local.tokenizer, text)
    if len(ids) > MAX_TOKENS:
        raise UsageError(f"the text is {len(ids)} tokens; attention maps are for short texts (up to {MAX_TOKENS})",
                         hint="shorten the text")
    with torch.inference_mode():
        out = local.model(torch.tensor([ids], device=local.device), output_attentions=True)
    if not getattr(out, "attentions", None) or out.attentions[layer] is None:
        raise ModelError(f"'{entry.name}' returned no attention weights "
                         "(its attention implementation does not form them)")
    weights = out.attentions[layer][0].float()  # (heads, query, key)
    matrix = weights.mean(dim=0) if head is None else weights[head]
    return AttentionMap(entry.name, as_tokens(local.tokenizer, ids), layer, head, layers, heads, matrix.tolist())
