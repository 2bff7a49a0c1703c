"""How the one loop runs on many processes besides plain DDP: fully sharded (FSDP2, torch's
`fully_shard`), its sharded checkpoints (torch.distributed.checkpoint: each rank writes its part) and
the whole model gathered at the end; and a clear refusal of DeepSpeed, which is untested here.

accelerate turns FSDP on only for accelerators (not for processes on CPUs), so the loop shards the
model itself, the same way on a laptop under torchrun and on GPUs under `accelerate launch`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from llmctl.errors import UsageError

SHARDED = "sharded"  # the DCP directory inside a step-N checkpoint


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def fsdp_requested(flag: bool) -> bool:
    """--fsdp / `fsdp: true`, or an `accelerate config` FSDP file (accelerate launch sets the env)."""
    return flag or _env_flag("ACCELERATE_USE_FSDP")


def refuse_deepspeed(accelerator=None) -> None:
    """DeepSpeed steps, shards and saves behind the loop's back; until its checkpoints and final-model
    gathering are tested, a DeepSpeed run stops here rather than train or save something wrong."""
    from accelerate.utils import DistributedType

    if _env_flag("ACCELERATE_USE_DEEPSPEED") or (accelerator is not None and
                                                 accelerator.distributed_type == DistributedType.DEEPSPEED):
        raise UsageError("DeepSpeed (from the accelerate config) is not supported by llmctl's training loop",
                         hint="use FSDP instead: --fsdp, or `distributed_type: FSDP` in the accelerate config "
                              "(fully sharded like ZeRO-3)")


def layer_classes(model, names: str | None) -> list[type]:
    """The module classes that become their own FSDP unit: --fsdp-layers, the accelerate config's
    FSDP_TRANSFORMER_CLS_TO_WRAP, or the model's own `_no_split_modules` (its decoder layer)."""
    requested = names or os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP")
    present = {type(m).__name__: type(m) for m in model.modules()}
    if requested:
        wanted = [n.strip() for n in requested.split(",") if n.strip()]
    else:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        wanted = [n for n in (getattr(base, "_no_split_modules", None) or []) if n in present]
    missing = [n for n in wanted if n not in present]
    if missing:
        repeated = sorted(n for n in present if n.endswith(("Layer", "Block")))
        raise UsageError(f"FSDP: this model has no layer class '{missing[0]}' to shard",
                         hint="its layer classes: " + (", ".join(repeated) or "none found") +
                              " (--fsdp-layers, or fsdp_transformer_layer_cls_to_wrap in the accelerate config)")
    return [present[n] for n in wanted]


def shard_model(model, layers: str | None, device: torch.device, precision: str):
    """fully_shard every layer, then the root (embeddings, head and anything left). Call before the
    optimizer is built: FSDP2 replaces the parameters by sharded ones (DTensors)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if precision == "fp16":
        raise UsageError("--fsdp with fp16 is not supported (its loss scaler does not see sharded gradients)",
                         hint="use --precision bf16 (or fp32)")
    classes = tuple(layer_classes(model, layers))
    if not torch.distributed.is_initialized():
        raise UsageError("--fsdp shards the model over several processes, and this is one",
                         hint="launch with torchrun --nproc_per_node N -m llmctl ... or accelerate launch -m llmctl ...")
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    # Parameters stay float32 masters; bf16 only for compute, gradients reduced in float32.
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if precision == "bf16" else MixedPrecisionPolicy()
    model.to(device)
    for module in list(model.modules()):
        if classes and isinstance(module, classes):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _sharded_state(model, optimizer) -> dict[str, Any]:
    """This rank's part of the trainable weights (LoRA: only the adapter) and of the optimizer."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    trainable = _trainable(model)
    weights = {k: v for k, v in get_model_state_dict(model).items() if k in trainable}
    return {"model": weights, "optimizer": get_optimizer_state_dict(model, optimizer)}


def save_sharded(directory: Path, model, optimizer) -> None:
    """Every rank writes its shards into `directory` (one step-N checkpoint being written)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(directory / SHARDED))


def load_sharded(directory: Path, model, optimizer) -> None:
    """Each rank reads its shards back: weights and optimizer exactly as they were saved."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    state = _sharded_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(directory / SHARDED))
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole model gathered on rank 0, on the CPU (the other ranks get {}). Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class WithStateDict:
    """A model whose save_pretrained writes a given (gathered) state dict: transformers and peft write
    their usual files from it, so the output loads in either without llmctl."""

    def __init__(self, model, state_dict: dict[str, torch.Tensor]):
        self.model, self.state_dict = model, state_dict

    def save_pretrained(self, directory, **kwargs) -> None:
        self.model.save_pretrained(directory, state_dict=self.state_dict, **kwargs)
