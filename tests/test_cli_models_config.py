"""`llmctl models` and `llmctl config` end to end, and the start-up import budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent



def test_models_lifecycle_with_json(cli, tiny_chat_model):
    assert cli("models", "add", "tiny", str(tiny_chat_model), "--description", "test model").code == 0
    assert cli("models", "add", "remote", "openai:gpt-4o-mini", "--json").json()["provider"] == "openai"
    assert cli("models", "alias", "t", "tiny", "--json").json() == {"alias": "t", "model": "tiny"}
    names = [m["name"] for m in cli("models", "list", "--json").json()]
    assert names == ["smollm2", "tiny", "remote"]
    shown = cli("models", "show", "t", "--json").json()
    assert shown["source"] == str(tiny_chat_model) and shown["aliases"] == ["t"]
    table = cli("models", "list").out
    assert "smollm2 (built-in)" in table and "tiny" in table
    assert cli("models", "remove", "tiny", "--json").json() == {"removed": "tiny", "what": "model"}
    assert [m["name"] for m in cli("models", "list", "--json").json()] == ["smollm2", "remote"]


def test_registered_name_works_for_prompt(cli, tiny_chat_model):
    cli("models", "add", "tiny", str(tiny_chat_model))
    doc = cli("prompt", "-m", "tiny", "--max-tokens", "2", "--json", "hi").json()
    assert doc["model"] == "tiny"


@pytest.mark.parametrize("args, code, message", [
    (("models", "show", "nope"), 3, "unknown model 'nope'"),
    (("models", "remove", "smollm2"), 3, "built in"),
    (("models", "add", "bad name", "openai:x"), 2, "invalid model name"),
    (("models", "alias", "x", "nope"), 3, "unknown model 'nope'"),
    (("config", "get", "sampling.temprature"), 2, "did you mean 'sampling.temperature'"),
    (("config", "set", "sampling.top_k", "many"), 2, "'sampling.top_k' must be a whole number"),
    (("config", "set", "openai.api_key", "sk-abc"), 2, "never writes secrets"),
])
def test_errors(cli, args, code, message):
    r = cli(*args)
    assert (r.code, message in r.err) == (code, True), r.err
    assert len(r.err.strip().splitlines()) == 1


def test_config_set_get_show_sources(cli, monkeypatch):
    assert cli("config", "set", "sampling.temperature", "0.2").code == 0
    assert cli("config", "set", "--project", "sampling.top_k", "9").code == 0
    assert cli("config", "get", "sampling.temperature").out.strip() == "0.2"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    shown = cli("config", "show", "--json").json()
    assert shown["sampling.temperature"]["source"].endswith("config.toml")
    assert shown["sampling.top_k"] == {"value": 9, "source": str(Path.cwd() / "llmctl.toml")}
    assert shown["openai.api_key"] == {"value": "***", "source": "env OPENAI_API_KEY"}
    table = cli("config", "show").out
    assert "sk-very-secret" not in table and "***" in table
    assert cli("config", "unset", "sampling.temperature").code == 0
    assert cli("config", "get", "sampling.temperature", "--json").json()["source"] == "default"


def test_debug_shows_the_traceback():
    done = subprocess.run([sys.executable, "-m", "llmctl", "--debug", "models", "show", "nope"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_version_and_help():
    done = subprocess.run([sys.executable, "-m", "llmctl", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.startswith("llmctl ")


@pytest.mark.parametrize("args", [["--help"], ["models", "list"], ["config", "show"], ["logs"], ["prompt", "--help"],
                                  ["data", "--help"], ["eval", "--help"], ["serve", "--help"]])
def test_commands_without_a_model_import_no_heavy_library(args):
    code = ("import sys\nfrom llmctl.cli.main import run\ntry:\n    run(%r)\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'transformers', 'openai') if m in sys.modules], file=sys.stderr)" % args)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
