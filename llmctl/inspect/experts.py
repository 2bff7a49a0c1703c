"""`llmctl inspect experts`: which experts a mixture-of-experts model routes each token to, per layer.

The router of each MoE layer scores every expert; softmax over those scores and the top k of it
pick the experts a token goes through (Mixtral, Qwen-MoE, OLMoE and the GPTs `llmctl pretrain
--experts N` builds all route this way). The model reports the scores (output_router_logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmctl.errors import ModelError, UsageError
from llmctl.inspect.local import check_text, inspectable_entry, load_inspected
from llmctl.inspect.tokens import Token, as_tokens, encode

if TYPE_CHECKING:
    from llmctl.config import Config

MAX_TOKENS = 512


@dataclass
class Routing:
    """Per MoE layer, in order (in Mixtral and our GPTs every decoder layer is one), per token."""

    model: str
    tokens: list[Token]
    experts: int  # experts per MoE layer
    top_k: int  # experts each token goes through
    chosen: list[list[list[int]]]  # [layer][token] -> the k experts, likeliest first
    probs: list[list[list[float]]]  # [layer][token][expert] -> the router's probability

    def load(self, layer: int) -> list[int]:
        """How many tokens each expert of MoE layer `layer` took."""
        counts = [0] * self.experts
        for experts in self.chosen[layer]:
            for e in experts:
                counts[e] += 1
        return counts

    def to_dict(self) -> dict:
        return {"model": self.model, "experts": self.experts, "top_k": self.top_k,
                "tokens": [{"id": t.id, "token": t.text} for t in self.tokens],
                "layers": [{"layer": layer, "load": self.load(layer),
                            "routes": [{"experts": chosen, "probs": [probs[e] for e in chosen], "router_probs": probs}
                                       for chosen, probs in zip(self.chosen[layer], self.probs[layer])]}
                           for layer in range(len(self.chosen))]}


def moe_shape(model_config) -> tuple[int, int] | None:
    """(experts per layer, experts per token) of a mixture-of-experts config; None for a dense model."""
    experts = getattr(model_config, "num_local_experts", None) or getattr(model_config, "num_experts", None)
    top_k = getattr(model_config, "num_experts_per_tok", None)
    return (int(experts), int(top_k)) if experts and top_k else None


def expert_routing(ref: str, text: str, config: Config | None = None) -> Routing:
    import torch

    from llmctl.loading import load_model_config

    check_text(text)
    entry = inspectable_entry(ref, "expert routing")
    shape = moe_shape(load_model_config(entry, config))
    if shape is None:
        raise UsageError(f"'{entry.name}' is a dense model: every token goes through the same MLP, so there are no "
                         "experts to route to", hint="use a mixture-of-experts model, e.g. one pretrained with "
                                                     "llmctl pretrain --experts 4, or a Mixtral")
    experts, top_k = shape
    local = load_inspected(entry, "expert routing", config)
    ids = encode(local.tokenizer, text)
    if len(ids) > MAX_TOKENS:
        raise UsageError(f"the text is {len(ids)} tokens; routing tables are for texts up to {MAX_TOKENS}")
    with torch.inference_mode():
        out = local.model(torch.tensor([ids], device=local.device), output_router_logits=True)
    scores = getattr(out, "router_logits", None)
    if not scores:
        raise ModelError(f"'{entry.name}' did not report its router scores (output_router_logits)")
    chosen, probs = [], []
    for logits in scores:
        p = torch.softmax(logits.reshape(-1, experts).float(), dim=-1)
        chosen.append(torch.topk(p, top_k, dim=-1).indices.tolist())
        probs.append(p.tolist())
    return Routing(entry.name, as_tokens(local.tokenizer, ids), experts, top_k, chosen, probs)
