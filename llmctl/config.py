"""The one typed configuration, merged from every source in one place.

Precedence, lowest first: built-in defaults < user file (`llmctl config path`) < project file
(./llmctl.toml) < --config FILE < environment (LLMCTL_*, OPENAI_API_KEY, OPENAI_BASE_URL) <
command-line flags. `resolve_config` records where every value came from, for `config show`.

A project file comes with whatever folder you are in (a cloned repository, say), so it may not grant
trust or route credentials: settings marked `trusted` (running remote code, the URL that receives your
API key, the trust list itself) are taken from it only if you trusted that folder yourself with
`llmctl config trust`, which records it in your own config file, as git's safe.directory does.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, get_args, get_origin, get_type_hints

from llmctl.errors import ConfigError
from llmctl.fsutil import atomic_write_text
from llmctl.paths import user_config_path

PROJECT_FILE = "llmctl.toml"
REDACTED = "***"


def setting(default: Any, help: str, *, choices: tuple = (), min: float | None = None,
            max: float | None = None, secret: bool = False, env: tuple[str, ...] = (), trusted: bool = False):
    """A config field with what `config show`, validation and the environment need to know. `trusted`:
    the setting grants trust or routes credentials, so an untrusted project file may not set it."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "secret": secret, "env": env,
            "trusted": trusted}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SamplingConfig:
    temperature: float = setting(0.7, "randomness; 0 means greedy (always the likeliest token)", min=0, max=2)
    top_p: float = setting(1.0, "nucleus sampling: keep the smallest set of tokens whose mass reaches p", min=0.0, max=1.0)
    top_k: int = setting(0, "keep only the k likeliest tokens; 0 turns it off", min=0)
    max_tokens: int = setting(256, "most tokens to generate", min=1)
    repetition_penalty: float = setting(1.0, "divide logits of tokens already seen by this (1 = off)", min=0.01, max=10)
    seed: Optional[int] = setting(None, "seed for sampling; the same seed gives the same output", min=0)


@dataclass
class OpenAIConfig:
    api_key: Optional[str] = setting(None, "API key (read from OPENAI_API_KEY; never written by llmctl)",
                                     secret=True, env=("OPENAI_API_KEY",))
    base_url: Optional[str] = setting(None, "OpenAI-compatible server URL (default: api.openai.com); it receives the API key",
                                      env=("OPENAI_BASE_URL",), trusted=True)
    timeout: float = setting(60.0, "seconds to wait for a response", min=0.1)
    retries: int = setting(2, "retries with backoff on 429, 5xx and connection errors", min=0, max=20)


@dataclass
class HFConfig:
    device: str = setting("auto", "where local models run", choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = setting("auto", "weights dtype for local models (auto: bfloat16 on GPU, float32 on CPU)",
                         choices=("auto", "float32", "bfloat16", "float16"))
    offline: bool = setting(False, "never contact the Hugging Face Hub")
    trust_remote_code: bool = setting(False, "run model code from the Hub (only for models you trust)", trusted=True)
    attn_implementation: str = setting(
        "auto", "attention kernel (auto: flash attention on CUDA when installed, else SDPA)",
        choices=("auto", "sdpa", "eager", "flash_attention_2"))


@dataclass
class LogConfig:
    enabled: bool = setting(True, "log every prompt and response to logs.db in the user data dir (or LLMCTL_HOME)")


@dataclass
class TrustConfig:
    projects: list[str] = setting([], "folders whose ./llmctl.toml may set trusted settings (llmctl config trust)",
                                  trusted=True)


@dataclass
class Config:
    model: str = setting("smollm2", "default model reference")
    system: Optional[str] = setting(None, "default system prompt")
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    hf: HFConfig = field(default_factory=HFConfig)
    log: LogConfig = field(default_factory=LogConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)

    def get(self, key: str) -> Any:
        obj: Any = self
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj


@dataclass(frozen=True)
class SettingSpec:
    key: str
    type: type
    nullable: bool
    default: Any
    help: str
    choices: tuple
    min: float | None
    max: float | None
    secret: bool
    env: tuple[str, ...]
    trusted: bool

    @property
    def env_names(self) -> tuple[str, ...]:
        # LLMCTL_* is listed first so it wins over the generic OPENAI_* names.
        return ("LLMCTL_" + self.key.upper().replace(".", "_"),) + self.env


def _collect_specs(cls: type, prefix: str = "") -> dict[str, SettingSpec]:
    specs: dict[str, SettingSpec] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            specs.update(_collect_specs(hint, f"{prefix}{f.name}."))
            continue
        nullable = get_origin(hint) is not None and type(None) in get_args(hint)
        base = next(a for a in get_args(hint) if a is not type(None)) if nullable else hint
        base = list if get_origin(base) is list else base  # list[str]: the only list kind we have
        m = f.metadata
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        specs[prefix + f.name] = SettingSpec(prefix + f.name, base, nullable, default, m["help"], m["choices"],
                                             m["min"], m["max"], m["secret"], m["env"], m["trusted"])
    return specs


@lru_cache(maxsize=1)
def _specs() -> dict[str, SettingSpec]:
    # Built on first use, not at import: `llmctl --help` should not pay for type-hint evaluation.
    return _collect_specs(Config)


def __getattr__(name: str):  # PEP 562: `from llmctl.config import SPECS` still works
    if name == "SPECS":
        return _specs()
    raise AttributeError(name)


def spec_for(key: str, where: str) -> SettingSpec:
    specs = _specs()
    if key in specs:
        return specs[key]
    close = difflib.get_close_matches(key, specs, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "`llmctl config show` lists the keys"
    raise ConfigError(f"{where}: unknown config key '{key}'", hint=hint)


def _describe(spec: SettingSpec) -> str:
    if spec.choices:
        return "one of " + ", ".join(spec.choices)
    kind = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
            list: "a list of strings"}[spec.type]
    if spec.min is not None and spec.max is not None:
        kind += f" from {spec.min:g} to {spec.max:g}"
    elif spec.min is not None:
        kind += f" >= {spec.min:g}"
    return kind + (" (or none)" if spec.nullable else "")


def coerce(spec: SettingSpec, value: Any, where: str) -> Any:
    """Check and convert `value` (from TOML, the environment or a flag) to the setting's type."""
    bad = ConfigError(f"{where}: '{spec.key}' must be {_describe(spec)}, got {value!r}")
    if spec.type is list:  # from TOML a list; from the environment or a flag, paths joined by os.pathsep
        items = [p for p in value.split(os.pathsep) if p] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise bad
        return items
    if isinstance(value, str) and spec.type is not str:
        text = value.strip().lower()
        if spec.nullable and text in ("", "none", "null"):
            return None
        if spec.type is bool:
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise bad
        try:
            value = spec.type(text)
        except ValueError:
            raise bad from None
    if value is None:
        if spec.nullable:
            return None
        raise bad
    if spec.type is bool and not isinstance(value, bool):
        raise bad
    if spec.type in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise bad
    if spec.type is int and isinstance(value, float):
        if not value.is_integer():
            raise bad
        value = int(value)
    if spec.type is float:
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise bad
    if spec.type is str and not isinstance(value, str):
        raise bad
    if spec.choices and value not in spec.choices:
        raise bad
    if spec.min is not None and value < spec.min or spec.max is not None and value > spec.max:
        raise bad
    return value


def read_toml_file(path: Path) -> dict[str, Any]:
    """A config file flattened to dotted keys, each validated; errors name the file and key."""
    import tomllib

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder", hint="point at a TOML file, or remove the folder") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    flat: dict[str, Any] = {}

    def walk(table: dict, prefix: str) -> None:
        for k, v in table.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                key = prefix + k
                flat[key] = coerce(spec_for(key, str(path)), v, str(path))

    walk(raw, "")
    return flat


@dataclass
class ResolvedConfig:
    config: Config
    sources: dict[str, str]  # key -> "default", a file path, "env NAME" or "flag"
    ignored: dict[str, str] = field(default_factory=dict)  # key -> why a file's value was not used

    def rows(self, redact: bool = True) -> list[tuple[str, Any, str]]:
        out = []
        for key, spec in _specs().items():
            value = self.config.get(key)
            if redact and spec.secret and value:
                value = REDACTED
            out.append((key, value, self.sources[key]))
        return out


def config_files(explicit: Path | None) -> list[tuple[Path, bool]]:
    """The files that take part, lowest precedence first (missing optional files are skipped), each
    with whether it is the project file found in the current folder (rather than one the user chose)."""
    # A folder where a config file belongs is read (and reported) rather than skipped in silence.
    files = [(p, is_project) for p, is_project in ((user_config_path(), False), (_project_path(), True))
             if p.is_file() or p.is_dir()]
    if explicit is not None:
        files.append((Path(explicit), False))  # an explicit file must exist: read_toml_file says so if not
    return files


def resolve_config(flags: dict[str, Any] | None = None, config_file: Path | None = None,
                   environ: dict[str, str] | None = None) -> ResolvedConfig:
    environ = os.environ if environ is None else environ
    values = {key: spec.default for key, spec in _specs().items()}
    sources = {key: "default" for key in _specs()}
    if config_file is None and environ.get("LLMCTL_CONFIG"):
        config_file = Path(environ["LLMCTL_CONFIG"])
    files = [(path, is_project, read_toml_file(path)) for path, is_project in config_files(config_file)]
    ignored: dict[str, str] = {}
    trusted = trusted_projects([flat for _, is_project, flat in files if not is_project], environ)
    for path, is_project, flat in files:
        untrusted = is_project and path.parent.resolve() not in trusted
        for key, value in flat.items():
            if untrusted and _specs()[key].trusted:
                ignored[key] = (f"{path} sets it, but that folder is not trusted "
                                f"(run 'llmctl config trust' there if you trust it)")
                continue
            values[key], sources[key] = value, str(path)
    for key, spec in _specs().items():
        for name in reversed(spec.env_names):  # reversed: the first name is applied last and wins
            if name in environ:
                values[key] = coerce(spec, environ[name], f"environment variable {name}")
                sources[key] = f"env {name}"
    for key, value in (flags or {}).items():
        if value is not None:
            values[key] = coerce(spec_for(key, "command line"), value, "command line")
            sources[key] = "flag"
    return ResolvedConfig(_build(Config, values), sources, ignored)


def _project_path() -> Path:
    return Path.cwd() / PROJECT_FILE


def trusted_projects(user_files: list[dict[str, Any]], environ) -> set[Path]:
    """Folders the user trusted, from their own files (user config, --config) and environment: a
    project file cannot vouch for itself."""
    spec = _specs()["trust.projects"]
    folders: list[str] = []
    for flat in user_files:
        folders += flat.get("trust.projects", [])
    for name in spec.env_names:
        if name in environ:
            folders += coerce(spec, environ[name], f"environment variable {name}")
    return {Path(f).expanduser().resolve() for f in folders}


def trust_project(user_file: Path, folder: Path, remove: bool = False) -> list[str]:
    """Add (or remove) a folder in the user config file's trust list; returns the new list."""
    flat = read_toml_file(user_file) if user_file.exists() else {}
    folder_text = str(Path(folder).expanduser().resolve())
    current = [f for f in flat.get("trust.projects", []) if f != folder_text]
    flat["trust.projects"] = current if remove else current + [folder_text]
    atomic_write_text(user_file, dump_toml(flat))
    return flat["trust.projects"]


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint = get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, values, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def dump_toml(flat: dict[str, Any]) -> str:
    """Flat dotted keys back to TOML tables (our settings are at most two levels deep)."""
    top = [f"{k} = {_toml_value(v)}" for k, v in flat.items() if "." not in k and v is not None]
    tables: dict[str, list[str]] = {}
    for key, value in flat.items():
        if "." in key and value is not None:
            table, name = key.rsplit(".", 1)
            tables.setdefault(table, []).append(f"{name} = {_toml_value(value)}")
    parts = ["\n".join(top)] if top else []
    parts += [f"[{t}]\n" + "\n".join(lines) for t, lines in tables.items()]
    return "\n\n".join(parts) + "\n"


def set_config_value(path: Path, key: str, value: str | None) -> Any:
    """Set (or, with value None, remove) one key in a config file; returns the stored value."""
    spec = spec_for(key, "config set")
    if spec.secret and value is not None:
        names = " or ".join(spec.env_names[::-1])
        raise ConfigError(f"'{key}' is a secret and llmctl never writes secrets to files",
                          hint=f"export {names} instead")
    flat = read_toml_file(path) if path.exists() else {}
    if value is None:
        flat.pop(key, None)
        stored = None
    else:
        stored = coerce(spec, value, f"value for '{key}'")
        flat[key] = stored
    atomic_write_text(path, dump_toml(flat))
    return stored
