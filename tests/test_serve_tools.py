"""Tools and structured output through the real openai client against a real server: answers decoded
under a JSON schema always parse and validate, tool calls round-trip, bad input is a 400 naming why."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from llmctl.backends.hf import HFBackend
from llmctl.config import Config
from llmctl.registry import ModelEntry
from tests.tiny_models import build_chat_model
from tests.serve_helpers import running_server

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
             "type": "object", "additionalProperties": False, "required": ["a", "b"],
             "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 999},
                            "b": {"type": "integer", "minimum": 0, "maximum": 999}}}}}]
ANSWER = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "ok"],
          "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                         "ok": {"type": "boolean"}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = build_chat_model(tmp_path_factory.mktemp("tiny-tools"), context=4096)
    backend = HFBackend.load(ModelEntry("m", "hf", str(path)), Config())
    with running_server({"m": backend}, max_queue=32, max_batch=8, shutdown_timeout=0) as srv:
        yield srv


def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=60)


def chat(srv, **kwargs):
    args = dict(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=120)
    return client(srv).chat.completions.create(**{**args, **kwargs})


def test_json_schema_answers_parse_and_validate_at_temperature_1(server):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": ANSWER, "strict": True}}

    def one(seed):
        return chat(server, temperature=1.0, seed=seed, response_format=fmt).choices[0]

    with ThreadPoolExecutor(8) as pool:  # batched: rows with their own grammar side by side
        answers = list(pool.map(one, range(20)))
    for answer in answers:
        assert answer.finish_reason == "stop"
        jsonschema.validate(json.loads(answer.message.content), ANSWER)
    assert len({a.message.content for a in answers}) > 1  # sampled, not one fixed answer


def test_json_object(server):
    reply = chat(server, temperature=1.0, seed=7, response_format={"type": "json_object"}, max_tokens=300)
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # an object the model kept open until max_tokens: the prefix is still JSON so far
        assert reply.choices[0].message.content.startswith("{")


def test_a_two_turn_tool_loop(server):
    first = chat(server, tools=TOOLS, tool_choice="required", temperature=1.0, seed=1, max_tokens=600)
    call_choice = first.choices[0]
    assert call_choice.finish_reason == "tool_calls" and call_choice.message.content is None
    calls = call_choice.message.tool_calls
    assert calls and all(c.function.name in ("get_weather", "add") for c in calls)
    for c in calls:
        schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == c.function.name)
        jsonschema.validate(json.loads(c.function.arguments), schema)
    messages = [{"role": "user", "content": "Hi"}, call_choice.message.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": "21 degrees"} for c in calls]
    second = chat(server, messages=messages, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=8)
    assert second.choices[0].message.tool_calls is None and isinstance(second.choices[0].message.content, str)


def test_a_named_function_streamed_as_tool_call_deltas(server):
    stream = chat(server, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "add"}},
                  parallel_tool_calls=False, temperature=1.0, seed=3, stream=True)
    chunks = list(stream)
    deltas = [d for ch in chunks for d in (ch.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1 and deltas[0].function.name == "add"
    args = json.loads(deltas[0].function.arguments)
    jsonschema.validate(args, TOOLS[1]["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("extra, param, says", [
    ({"tools": [{"type": "function"}]}, "tools", "tools[0]"),
    ({"tools": {"name": "x"}}, "tools", "must be a list"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "'nope'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "if": {"type": "string"}}}}}, "response_format", '"if"'),
    ({"messages": [{"role": "tool", "content": "21"}]}, "messages", "tool_call_id"),
], ids=["tool-without-function", "tools-not-a-list", "unknown-tool-choice", "unsupported-keyword", "tool-role-no-id"])
def test_bad_tools_and_schemas_are_400s(server, extra, param, says):
    with pytest.raises(openai.BadRequestError) as e:
        chat(server, **extra)
    assert e.value.body["param"] == param and says in e.value.body["message"]
    assert chat(server, max_tokens=2).choices  # still serving


def test_a_remote_backend_passes_tools_and_response_format_through(server):
    """OpenAIBackend against this server: the fields go out, the tool calls come back."""
    from llmctl.backends.base import GenerationRequest, Message, SamplingParams
    from llmctl.backends.openai_backend import OpenAIBackend

    remote = OpenAIBackend(ModelEntry("m", "openai", "m", base_url=server.url), Config())
    try:
        params = SamplingParams(temperature=1.0, seed=5, max_tokens=120)
        calls = remote.generate(GenerationRequest([Message("user", "2+3?")], params, tools=TOOLS[1:],
                                                  tool_choice="required", parallel_tool_calls=False))
        calls.text()
        assert calls.finish_reason == "tool_calls" and [c.name for c in calls.tool_calls] == ["add"]
        jsonschema.validate(json.loads(calls.tool_calls[0].arguments), TOOLS[1]["function"]["parameters"])
        fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": ANSWER}}
        answer = remote.generate(GenerationRequest([Message("user", "Hi")], params, response_format=fmt)).text()
        jsonschema.validate(json.loads(answer), ANSWER)
    finally:
        remote.close()
