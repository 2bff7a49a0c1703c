"""Many adapters on one base: one copy of the base in memory, requests for different adapters (and the
base) decoded in the same batch, each with the text it gets from its own model alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch

from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.backends.hf import HFBackend
from llmctl.backends.hf_decode import DecodeBatch
from llmctl.backends.prefix_cache import PrefixCache
from llmctl.config import Config
from llmctl.registry import ModelEntry
from llmctl.serve.run import open_models
from tests.serve_helpers import running_server


def make_adapter(base_dir, path, seed: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_chat_model):
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(tiny_chat_model, root / f"a{i}", seed=i) for i in range(3)]


def param_bytes(models) -> int:
    """Bytes of parameter storage, each tensor counted once however many models hold it."""
    seen = {}
    for model in models:
        for p in model.parameters():
            seen[p.data_ptr()] = p.numel() * p.element_size()
    return sum(seen.values())


def decode_together(shared, request, cache=None):
    """One row per backend (adapter or base) of the shared model, decoded in one batch: (rows, texts)."""
    rows = [b.prepare_row(request) for b in shared]
    first = shared[0]
    batch = DecodeBatch(first.model, first.device, first.pad_id, first.eos_ids, first._token_info, cache)
    texts = {id(r): "" for r in rows}
    for row, chunk in batch.add(rows):
        texts[id(row)] += chunk.text
    while len(batch):
        for row, chunk in batch.step():
            texts[id(row)] += chunk.text
    return rows, [texts[id(r)] for r in rows]


def test_adapters_share_one_base_and_decode_in_one_batch(tiny_chat_model, adapters, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "home"))
    refs = [str(tiny_chat_model), *map(str, adapters)]
    backends = open_models(refs, Config())
    models = {id(b.model) for b in backends.values()}
    assert len(models) == 1  # one load
    alone = [HFBackend.load(ModelEntry(f"a{i}", "hf", str(a), base=str(tiny_chat_model), adapter=str(a)), Config())
             for i, a in enumerate(adapters)]
    base = HFBackend.load(ModelEntry("base", "hf", str(tiny_chat_model)), Config())
    assert param_bytes([b.model for b in backends.values()]) <= 1.2 * param_bytes([base.model])

    request = GenerationRequest([Message("user", "Hello")], SamplingParams(temperature=0, max_tokens=12))
    expected = [m.generate(request).text() for m in (base, *alone)]
    assert len(set(expected)) == 4  # the adapters do change the output
    shared = list(backends.values())
    assert decode_together(shared, request)[1] == expected

    cache = PrefixCache(16 << 20)  # the same prompt for every adapter: each keeps its own cached keys
    for round_ in range(2):
        rows, texts = decode_together(shared, request, cache)
        assert texts == expected
        assert [r.cached for r in rows] == [len(r.prompt_ids) - 1 if round_ else 0 for r in rows]
    assert len(cache) == 4

    with running_server(backends, max_queue=8, shutdown_timeout=0) as srv:
        assert len(set(map(id, srv.batchers.values()))) == 1  # one batcher for the shared model
        client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=30)

        def ask(ref):
            return client.chat.completions.create(model=ref, messages=[{"role": "user", "content": "Hello"}],
                                                  temperature=0, max_tokens=12).choices[0].message.content

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(ask, refs)) == expected
