"""What LoRA trains: how many parameters, on which modules, and what share of the model that is.

Counted by peft itself on a copy of the model built on the meta device (shapes only: nothing is read
or allocated), so the numbers are what `llmctl finetune` trains, on any architecture peft knows:
linear layers, GPT-2's Conv1D, a mixture's expert weights.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

from llmctl.errors import ModelError, UsageError

ALL_LINEAR = "all-linear"  # peft: every linear layer but the output head; finetune's default targets


@dataclass
class ModuleShare:
    module: str  # the module's name in each layer, e.g. q_proj
    count: int  # how many such modules get an adapter
    base_parameters: int  # those modules' own weights
    lora_parameters: int  # what LoRA adds (and trains) next to them: r x (in + out) each

    def to_dict(self) -> dict:
        return {"module": self.module, "count": self.count, "base_parameters": self.base_parameters,
                "lora_parameters": self.lora_parameters}


@dataclass
class LoraShare:
    rank: int
    targets: Any  # the target_modules asked for: a list of names, or "all-linear"
    base_parameters: int  # the whole model, frozen
    modules: list[ModuleShare]

    @property
    def trainable(self) -> int:
        return sum(m.lora_parameters for m in self.modules)

    @property
    def share(self) -> float:
        """Trained parameters over all the parameters training holds (base + LoRA), as peft reports it."""
        return self.trainable / (self.base_parameters + self.trainable)

    @classmethod
    def from_dict(cls, doc: dict) -> "LoraShare":
        return cls(doc["rank"], doc["targets"], doc["base_parameters"], [ModuleShare(**m) for m in doc["modules"]])

    def to_dict(self) -> dict:
        return {"rank": self.rank, "targets": self.targets, "trainable_parameters": self.trainable,
                "base_parameters": self.base_parameters, "share": self.share,
                "modules": [m.to_dict() for m in self.modules]}


def lora_share(model_config, rank: int, targets: list[str] | None = None) -> LoraShare:
    """What a new LoRA adapter of `rank` on `targets` (None: every linear layer) trains on this model."""
    from peft import LoraConfig

    return share_of(model_config, LoraConfig(r=rank, target_modules=targets or ALL_LINEAR, task_type="CAUSAL_LM"))


def adapter_share(entry, config=None) -> LoraShare | None:
    """What a registered LoRA adapter trained; None for an adapter of another kind."""
    from peft import PeftConfig

    from llmctl.loading import load_model_config

    try:
        lora_config = PeftConfig.from_pretrained(entry.adapter)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the adapter config in {entry.adapter}: {str(e).splitlines()[0]}") from None
    if str(getattr(lora_config, "peft_type", "")) not in ("LORA", "PeftType.LORA"):
        return None
    return share_of(load_model_config(entry, config), lora_config)


def share_of(model_config, lora_config) -> LoraShare:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    base = sum(p.numel() for p in model.parameters())
    lora_config = copy.copy(lora_config)
    lora_config.inference_mode = False  # a saved adapter's config says inference; count what training trains
    try:
        with warnings.catch_warnings():  # peft's notes on patterns this model has no module for
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, lora_config)
    except ValueError as e:
        raise UsageError(f"LoRA targets {lora_config.target_modules}: {str(e).splitlines()[0]}") from None
    inner = peft_model.base_model.model
    lora: dict[str, int] = {}
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            path = _module_path(name)
            lora[path] = lora.get(path, 0) + p.numel()
    by_kind: dict[str, ModuleShare] = {}
    for path, count in lora.items():
        kind = path.rsplit(".", 1)[-1]
        share = by_kind.setdefault(kind, ModuleShare(kind, 0, 0, 0))
        share.count += 1
        share.lora_parameters += count
        share.base_parameters += sum(p.numel() for n, p in inner.get_submodule(path).named_parameters()
                                     if "lora_" not in n and "modules_to_save" not in n)
    return LoraShare(lora_config.r, _plain(lora_config.target_modules), base, list(by_kind.values()))


def _module_path(parameter: str) -> str:
    """'base_model.model.model.layers.0.mlp.experts.base_layer.lora_A.default.weight' -> 'model.layers.0.mlp.experts':
    the module of the base model the parameter belongs to."""
    path = parameter.removeprefix("base_model.model.")
    path = path.split(".lora_")[0] if ".lora_" in path else path.split(".modules_to_save")[0]
    return ".".join(part for part in path.split(".") if part != "base_layer")


def _plain(targets):
    return sorted(targets) if isinstance(targets, (set, list, tuple)) else targets
