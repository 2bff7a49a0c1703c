"""Fold a LoRA adapter into its base: a full Hugging Face model that needs no peft to load."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from llmctl.errors import UsageError
from llmctl.fsutil import save_pretrained_into


def merge_adapter(name: str, out: Path, new_name: str | None = None, register: bool = True) -> dict:
    from llmctl.finetune.models import load_merged
    from llmctl.registry import default_name
    from llmctl.registry import ModelEntry, Registry

    entry = Registry().resolve(name)
    if not entry.adapter or not entry.base:
        raise UsageError(f"'{name}' is not an adapter (it has no base + adapter)", hint="llmctl models show " + name)
    _, merged, tokenizer = load_merged(name)  # the tokenizer saved with the adapter (its chat template)
    save_pretrained_into(out, merged, tokenizer)
    result = {"merged": name, "output_dir": str(out)}
    if register:
        new = ModelEntry(name=new_name or default_name(out), provider="hf", source=str(out.resolve()),
                         chat_template=entry.chat_template, context_length=entry.context_length,
                         description=f"{name} merged into {entry.base}",
                         lineage={"level": "merge", "base": entry.base, "adapter": entry.adapter,
                                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                         info=dict(entry.info))
        Registry().add(new, replace=True)
        result["name"] = new.name
    return result
