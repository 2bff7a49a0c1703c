"""The optimizer a run trains with: AdamW, or Muon for the hidden weight matrices with AdamW for the rest.

Muon (Jordan et al., the modded-nanogpt speedruns) orthogonalises each matrix's momentum with a few
Newton-Schulz steps, so every direction of the update moves at the same rate. It suits 2-D hidden
matrices only; embeddings, the output layer, norms, biases and 3-D expert banks stay with AdamW.
"""

from __future__ import annotations

from typing import Any

import torch

from llmctl.errors import UsageError

OPTIMIZERS = ("adamw", "muon")
# Names of the weights that map tokens in or out: AdamW even though they are 2-D (as modded-nanogpt).
EMBEDDING_NAMES = ("embed", "lm_head", "wte", "wpe")


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices; never decay biases, norms or (as nanoGPT) anything one-dimensional."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    return p.dim() == 2 and not any(part in name for part in EMBEDDING_NAMES)


class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on the hidden matrices and torch.optim.AdamW on the rest, as one optimizer, so
    the loop, accelerate and checkpoints see a single object. The loop writes one learning rate into
    every group; each Muon group multiplies it by its `lr_scale` (Muon's rate is ~10x AdamW's)."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], *, lr: float, muon_lr: float,
                 betas: tuple[float, float], momentum: float = 0.95):
        # No Optimizer.__init__: the two inner optimizers own the parameters and their state.
        self.muon = torch.optim.Muon(muon_groups, lr=muon_lr, momentum=momentum, adjust_lr_fn="original")
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas)
        for group in self.muon.param_groups:
            group["lr_scale"] = muon_lr / lr
        self.defaults = {"lr": lr}
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.adamw.state}

    @torch.no_grad()
    def step(self, closure=None):
        loop_lr = [group["lr"] for group in self.muon.param_groups]
        for group in self.muon.param_groups:
            group["lr"] = group["lr"] * group["lr_scale"]
        try:
            self.muon.step()
        finally:
            for group, lr in zip(self.muon.param_groups, loop_lr):
                group["lr"] = lr
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise UsageError("this checkpoint was saved by another optimizer", hint="resume with the same --optimizer")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])

    def __repr__(self) -> str:
        return f"MuonWithAdamW({self.muon!r}, {self.adamw!r})"


def build_optimizer(model, cfg) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` names, over `model`'s trainable parameters."""
    fused = next(model.parameters()).device.type == "cuda" or None
    name = getattr(cfg, "optimizer", "adamw") or "adamw"
    if name == "adamw":
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                 fused=fused)
    if name != "muon":
        raise UsageError(f"unknown --optimizer '{name}'", hint=f"use one of: {', '.join(OPTIMIZERS)}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if is_hidden_matrix(n, p)]
    if not hidden:
        raise UsageError("--optimizer muon: this model has no 2-D hidden weight matrices for Muon to train",
                         hint="use --optimizer adamw")
    rest = [(n, p) for n, p in named if not is_hidden_matrix(n, p)]
    adamw_groups = [{"params": [p for _, p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                    {"params": [p for _, p in rest if p.dim() < 2], "weight_decay": 0.0}]
    return MuonWithAdamW([{"params": hidden, "weight_decay": cfg.weight_decay}],
                         [g for g in adamw_groups if g["params"]], lr=cfg.lr, muon_lr=cfg.muon_lr,
                         betas=(cfg.beta1, cfg.beta2))
