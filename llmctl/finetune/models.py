"""The models a fine-tuning run works on: the base (or an adapter to train further) through the one
local loader, its chat template, the LoRA adapter added to it, and a model with its adapter folded in."""

from __future__ import annotations

import torch

from llmctl.errors import UsageError
from llmctl.finetune.config import FinetuneConfig
from llmctl.finetune.fast_lora import use_fast_lora
from llmctl.finetune.fast_mlp import use_fast_mlp
from llmctl.training.packed_attention import use_packed_attention


def load_base(ref: str, qlora: bool, continue_adapter: bool = False, config=None):
    """The base model and tokenizer from the registry (only local models can be trained). With
    `continue_adapter`, `ref` may be a registered adapter: its base model comes back (attach the
    adapter with add_lora) and its tokenizer, saved with the adapter's template."""
    from llmctl.loading import load_local, local_entry

    entry = local_entry(ref, "fine-tuning")
    if entry.adapter and not continue_adapter:
        raise UsageError(f"'{ref}' is already an adapter", hint=f"merge it first: llmctl finetune merge {ref} --out DIR")
    local = load_local(entry, config, adapter="skip", place=False, quantize_4bit=qlora, doing="fine-tuning")
    use_packed_attention(local.model)  # training rows are packed: attend within each example, no L x L mask
    return entry, local.model, local.tokenizer, local.origin


def choose_template(entry, tokenizer) -> str:
    """The model's own chat template, or Alpaca for models without one; the adapter records which."""
    from llmctl.templates import ALPACA_TEMPLATE, apply_entry_template

    if apply_entry_template(entry, tokenizer):
        return entry.chat_template
    tokenizer.chat_template = ALPACA_TEMPLATE
    return "alpaca"


def add_lora(model, cfg: FinetuneConfig, adapter_dir: str | None = None):
    """A new LoRA adapter on `model`, or the adapter in `adapter_dir` to train further; its layers train
    through one fused function each where they can (finetune/fast_lora.py), and gated MLPs with LoRA
    on all three projections through one for the whole MLP (finetune/fast_mlp.py)."""
    from peft import LoraConfig, get_peft_model

    if cfg.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if adapter_dir:
        from llmctl.loading import attach_adapter

        model = attach_adapter(model, adapter_dir, trainable=True)
        _use_fused(model, cfg)
        return model
    targets = cfg.targets or "all-linear"
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UsageError(f"--targets {','.join(cfg.targets or [])}: {str(e).splitlines()[0]}",
                         hint=f"this model's linear layers: {', '.join(linear)}") from None
    _use_fused(model, cfg)
    return model


def _use_fused(model, cfg: FinetuneConfig) -> None:
    use_fast_lora(model)
    use_fast_mlp(model, recompute=not cfg.keep_mlp_activations)


def load_merged(ref: str, config=None, packed: bool = False):
    """(entry, model, tokenizer) of a local model; for an adapter, base + adapter folded into one model.
    `packed`: the model will read packed training rows (a distillation teacher)."""
    from llmctl.loading import load_local

    local = load_local(ref, config, adapter="merge", place=False, doing="loading weights")
    if packed:
        use_packed_attention(local.model)
    return local.entry, local.model, local.tokenizer
