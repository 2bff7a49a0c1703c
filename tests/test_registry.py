"""The model registry: entries, aliases, references, atomic writes and concurrent registration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.errors import ModelError, UsageError
from llmctl.registry import BUILTINS, Registry, make_entry
from tests.processes import run_released_together

ROOT = Path(__file__).resolve().parent.parent


def test_builtin_smollm2_is_the_default_and_cannot_be_removed():
    registry = Registry()
    entry = registry.resolve("smollm2")
    assert entry.builtin and entry.provider == "hf"
    assert entry.source == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ModelError, match="built in"):
        registry.remove("smollm2")


def test_add_show_alias_remove():
    registry = Registry()
    registry.add(make_entry("gpt", "openai:gpt-4o-mini"))
    registry.alias("g", "gpt")
    assert registry.resolve("g").source == "gpt-4o-mini"
    assert registry.resolve("g").provider == "openai"
    assert registry.resolve("g").lineage["created"]
    with pytest.raises(ModelError, match="already exists"):
        registry.add(make_entry("gpt", "openai:other"))
    registry.add(make_entry("gpt", "openai:other"), replace=True)
    assert registry.resolve("g").source == "other"
    assert registry.remove("gpt") == "model 'gpt'"
    assert registry.aliases() == {}  # aliases go with their model
    with pytest.raises(ModelError, match="unknown model 'g'"):
        registry.resolve("g")


def test_references(tmp_path, tiny_chat_model):
    registry = Registry()
    assert registry.resolve("openai:gpt-4o").provider == "openai"
    assert registry.resolve("hf:org/repo").source == "org/repo"
    local = registry.resolve(str(tiny_chat_model))
    assert local.provider == "hf" and local.source == str(tiny_chat_model)
    assert registry.resolve(f"hf:{tiny_chat_model}").source == str(tiny_chat_model)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "smollm2"}))
    entry = registry.resolve(str(adapter))
    assert (entry.base, entry.adapter) == ("smollm2", str(adapter))
    with pytest.raises(ModelError, match="not a model directory"):
        registry.resolve(str(tmp_path))


def test_unknown_model_suggests_a_close_name():
    with pytest.raises(ModelError, match="did you mean 'smollm2'"):
        Registry().resolve("smolm2")
    with pytest.raises(UsageError, match="names no model"):
        Registry().resolve("openai:")


@pytest.mark.parametrize("name", ["", "has space", "a/b", "-x", "x" * 200])
def test_invalid_names(name):
    with pytest.raises(UsageError, match="invalid model name"):
        make_entry(name, "openai:gpt")


def test_make_entry_checks():
    with pytest.raises(UsageError, match="unknown chat template"):
        make_entry("x", "hf:a/b", chat_template="chatml-ish")
    with pytest.raises(UsageError, match="contradicts"):
        make_entry("x", "openai:gpt", provider="hf")
    with pytest.raises(UsageError, match="environment variable name"):
        make_entry("x", "openai:gpt", api_key_env="sk-live-123")
    assert make_entry("x", "llama3", base_url="http://127.0.0.1:8000/v1").provider == "openai"


def test_corrupt_registry_is_a_clear_error():
    registry = Registry()
    registry.path.parent.mkdir(parents=True, exist_ok=True)
    registry.path.write_text("{not json")
    with pytest.raises(ModelError, match="registry file .* is corrupt"):
        registry.entries()


def test_writes_leave_no_temporary_files():
    registry = Registry()
    for i in range(5):
        registry.add(make_entry(f"m{i}", "openai:x"))
    leftovers = [p.name for p in registry.path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert sorted(json.loads(registry.path.read_text())["models"]) == [f"m{i}" for i in range(5)]


WORKER = """
import sys
from llmctl.registry import Registry, make_entry
worker, count = sys.argv[1], int(sys.argv[2])
registry = Registry()
for i in range(count):
    registry.add(make_entry(f"w{worker}-{i}", "openai:model"))
    registry.alias(f"a{worker}-{i}", f"w{worker}-{i}")
"""


def test_concurrent_processes_lose_nothing():
    """Four real processes register 15 models and aliases each, at the same time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(w), "15"], env=env) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    registry = Registry()
    names = {e.name for e in registry.entries()}
    assert {f"w{w}-{i}" for w in range(4) for i in range(15)} <= names
    assert len(registry.aliases()) == 60
    assert set(BUILTINS) <= names


FIRST_USE = """
from llmctl.registry import Registry, make_entry
released()
worker = _sys.argv[2]
for i in range(3):
    Registry().add(make_entry(f"first-{worker}-{i}", "openai:model"))
    Registry().entries()  # a reader between the writers must never meet a half-written file
"""


def test_eight_processes_register_on_a_fresh_home_at_the_same_moment(tmp_path):
    """The home folder, the lock file and the first registry.json are all created by racing processes."""
    registry = Registry()
    assert not registry.path.parent.exists()
    results = run_released_together(FIRST_USE, 8, tmp_path / "gate")
    assert [code for code, _ in results] == [0] * 8, results
    names = {e.name for e in registry.entries()}
    assert {f"first-{w}-{i}" for w in range(8) for i in range(3)} | set(BUILTINS) == names
