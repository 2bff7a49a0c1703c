"""Watching a mixture of experts train: the router's load-balancing loss and each expert's share of tokens,
read from the routers by forward hooks (no change to the model or the loss), reset at each progress row."""

from __future__ import annotations

import torch

STARVED = 0.25  # an expert under a quarter of its fair share of tokens is starved


class RouterStats:
    def __init__(self, model, experts: int, per_token: int):
        self.experts, self.per_token = experts, per_token
        self.routers = [m for name, m in model.named_modules() if name.endswith("mlp.gate")]
        self.hooks = [router.register_forward_hook(self._seen(i)) for i, router in enumerate(self.routers)]
        self._reset()

    def _reset(self) -> None:
        self.counts = torch.zeros(len(self.routers), self.experts)
        self.aux_sum, self.calls = 0.0, 0

    def _seen(self, layer: int):
        def hook(module, inputs, output):
            if not module.training:
                return  # evaluation batches are not what the router is learning from
            logits = (output[0] if isinstance(output, tuple) else output).detach().float()
            chosen = output[-1] if isinstance(output, tuple) and len(output) == 3 else \
                logits.topk(self.per_token, dim=-1).indices
            routed = torch.bincount(chosen.reshape(-1).cpu(), minlength=self.experts).float()
            self.counts[layer] += routed
            # Switch Transformer's balancing loss (as transformers' Mixtral): experts x sum(token share x mean prob).
            share = routed / routed.sum().clamp(min=1)
            probs = logits.softmax(-1).mean(0).cpu()
            self.aux_sum += float(self.experts * (share * probs).sum())
            self.calls += 1
        return hook

    def metrics(self) -> dict[str, float]:
        """Since the last call: router_aux_loss (1.0 when perfectly balanced), expert_share/E (mean over
        layers) and the smallest share of any expert in any layer, as a fraction of its fair share."""
        if not self.calls:
            return {}
        shares = self.counts / self.counts.sum(dim=1, keepdim=True).clamp(min=1)
        row = {"router_aux_loss": round(self.aux_sum / self.calls, 4)}
        row.update({f"expert_share/{e}": round(float(s), 4) for e, s in enumerate(shares.mean(0))})
        lowest = float(shares.min()) * self.experts
        layer, expert = divmod(int(shares.argmin()), self.experts)
        row.update(expert_min_fair=round(lowest, 3), expert_min_at=f"layer {layer} expert {expert}")
        self._reset()
        return row


def starved_warning(row: dict) -> str | None:
    """The progress line's warning when some expert gets under a quarter of its fair share."""
    lowest = row.get("expert_min_fair")
    if lowest is None or lowest >= STARVED:
        return None
    return (f"warning: step {row['step']}: {row['expert_min_at']} got {lowest:.0%} of its fair share of tokens "
            f"(starved below {STARVED:.0%}); router balancing loss {row['router_aux_loss']}")
