"""Embeddings: POST /v1/embeddings through the real openai client, the library function, and
`llmctl embed`; similar sentences closer than unrelated ones on SmolLM2 (slow)."""

from __future__ import annotations

import base64
import json

import numpy as np
import openai
import pytest

from llmctl.backends.hf import HFBackend
from llmctl.config import Config
from llmctl.embeddings import embed
from llmctl.registry import ModelEntry
from tests.cli_helpers import llmctl
from tests.serve_helpers import running_server


@pytest.fixture(scope="module")
def backend(tiny_chat_model):
    return HFBackend.load(ModelEntry("tiny", "hf", str(tiny_chat_model)), Config())


@pytest.fixture
def server(backend, fake_remote):
    with running_server({"tiny": backend, "remote": fake_remote}, max_queue=4, shutdown_timeout=0) as srv:
        yield srv


@pytest.fixture
def fake_remote():
    from llmctl.backends.openai_backend import OpenAIBackend

    return OpenAIBackend(ModelEntry("remote", "openai", "gpt-x", base_url="http://127.0.0.1:9/v1"), Config())


def test_embeddings_over_http_float_and_base64(server, backend):
    c = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=30)
    texts = ["The capital of France is Paris.", "ROMEO: But soft"]
    got = c.embeddings.create(model="tiny", input=texts)
    vectors = [d.embedding for d in got.data]
    assert [d.index for d in got.data] == [0, 1] and len(vectors[0]) == backend.model.config.hidden_size
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)
    alone = embed(backend, texts[1]).vectors[0]  # batched with a longer text (padding) or alone: the same vector
    assert vectors[1] == pytest.approx(alone, abs=1e-5)
    tokens = sum(len(backend.tokenizer(t)["input_ids"]) for t in texts)
    assert got.usage.prompt_tokens == tokens == got.usage.total_tokens
    raw = c.embeddings.with_raw_response.create(model="tiny", input="ROMEO: But soft", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(raw.http_response.json()["data"][0]["embedding"]), dtype="<f4")
    assert decoded.tolist() == pytest.approx(alone, abs=1e-6)


@pytest.mark.parametrize("body, param", [
    ({"model": "remote", "input": "x"}, "model"),
    ({"model": "tiny", "input": [1, 2]}, "input"),
    ({"model": "tiny", "input": ""}, "input"),
    ({"model": "tiny", "input": "x", "encoding_format": "int8"}, "encoding_format"),
], ids=["remote-model", "token-ids", "empty", "bad-format"])
def test_bad_embedding_requests_are_400s(server, body, param):
    c = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError) as e:
        c.post("/embeddings", body=body, cast_to=object)
    assert e.value.body["param"] == param
    assert c.embeddings.create(model="tiny", input="still serving").data


@pytest.fixture
def with_embed_command(monkeypatch):
    from llmctl.cli import main
    from llmctl.cli.lazy_group import LazyCommand

    monkeypatch.setitem(main.COMMANDS, "embed", LazyCommand(
        "llmctl.cli.embed_cmd:embed", "Embed texts with a local model: mean of the last hidden states, L2-normalised."))


def test_embed_command(with_embed_command, capsys, monkeypatch, tmp_path, tiny_chat_model):
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "home"))
    r = llmctl(capsys, monkeypatch, "embed", "--json", "-m", str(tiny_chat_model), "a cat", "a kitten")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert len(doc["embeddings"]) == 2 and doc["dimensions"] == 32
    r = llmctl(capsys, monkeypatch, "embed", "-m", "openai:gpt-4o-mini", "x")
    assert r.code == 2 and "embeddings" in r.err and len(r.err.strip().splitlines()) <= 2


@pytest.mark.slow
def test_similar_sentences_are_closer_on_smollm2():
    from llmctl.prompting import open_backend, resolve_entry

    backend = open_backend(resolve_entry("smollm2"), Config())
    a, b, c = np.array(embed(backend, ["The cat sat on the mat.", "A cat was sitting on the rug.",
                                       "Quarterly revenue grew by four percent."]).vectors)
    assert a @ b > a @ c and a @ b > b @ c
