"""The same structure from the command line: llmctl prompt --schema / --json-object / --tool on a local
model (enforced by constrained decoding), and one clear line with exit 2 for bad files."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.tiny_models import build_chat_model

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "n"],
          "properties": {"city": {"type": "string", "maxLength": 8}, "n": {"type": "integer", "minimum": 0, "maximum": 99}}}
TOOL = {"name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["a", "b"],
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"type": "integer", "minimum": 0, "maximum": 9}}}}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(build_chat_model(tmp_path_factory.mktemp("tiny-structured"), context=4096))


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "home"))
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "add.json").write_text(json.dumps(TOOL))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "if.json").write_text(json.dumps({"type": "object", "if": {"type": "string"}}))
    return tmp_path


def test_schema_answers_validate(cli, model, files):
    for seed in range(3):
        r = cli("prompt", "-m", model, "-t", "1", "--seed", str(seed), "--max-tokens", "80", "--no-log",
                "--schema", str(files / "schema.json"), "Weather?")
        assert r.code == 0, r.err
        jsonschema.validate(json.loads(r.out), SCHEMA)


def test_json_object_and_json_output(cli, model, files):
    r = cli("prompt", "-m", model, "-t", "0", "--max-tokens", "40", "--no-log", "--json-object", "--json", "x")
    assert r.code == 0, r.err
    assert json.loads(r.out)["text"].startswith("{")


def test_a_forced_tool_call_is_printed_as_json(cli, model, files):
    r = cli("prompt", "-m", model, "-t", "1", "--seed", "4", "--max-tokens", "80", "--no-log",
            "--tool", str(files / "add.json"), "--tool-choice", "add", "What is 2+3?")
    assert r.code == 0, r.err
    calls = json.loads(r.out)
    assert [c["name"] for c in calls] == ["add"] and calls[0]["id"].startswith("call_")
    jsonschema.validate(json.loads(calls[0]["arguments"]), TOOL["parameters"])


@pytest.mark.parametrize("args, says", [
    (["--schema", "bad.json"], "is not JSON"),
    (["--schema", "missing.json"], "cannot read --schema"),
    (["--schema", "if.json"], '"if"'),
    (["--schema", "schema.json", "--json-object"], "not both"),
    (["--tool", "add.json", "--tool-choice", "nope"], "'nope'"),
    (["--tool", "bad.json"], "is not JSON"),
], ids=["not-json", "missing", "unsupported-keyword", "both", "unknown-tool", "tool-not-json"])
def test_bad_structure_flags_exit_2_with_one_line(cli, model, files, args, says):
    args = [str(files / a) if a.endswith(".json") else a for a in args]
    r = cli("prompt", "-m", model, "--no-log", *args, "x")
    assert r.code == 2 and says in r.err, r.err
    assert len(r.err.strip().splitlines()) <= 2 and "Traceback" not in r.err
