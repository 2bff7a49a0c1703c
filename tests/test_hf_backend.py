"""The local backend on tiny models built from config: the decoding loop, seeds, stops, templates."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.backends.hf import HFBackend
from llmctl.config import Config
from llmctl.errors import ModelError, UsageError
from llmctl.registry import ModelEntry


@pytest.fixture(scope="module")
def chat_backend(tiny_chat_model):
    return HFBackend.load(ModelEntry("tiny-chat", "hf", str(tiny_chat_model)), Config())


@pytest.fixture(scope="module")
def base_backend(tiny_base_model):
    return HFBackend.load(ModelEntry("tiny-base", "hf", str(tiny_base_model)), Config())


def ask(text="Hello", raw=False, top_probs=0, **params):
    params.setdefault("max_tokens", 12)
    return GenerationRequest([Message("user", text)], SamplingParams(**params), raw=raw, top_probs=top_probs)


def test_greedy_matches_transformers_generate(chat_backend):
    request = ask(temperature=0, max_tokens=15)
    ours = chat_backend.generate(request)
    text = ours.text()
    prompt = chat_backend.tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False,
                                                        add_generation_prompt=True)
    ids = chat_backend.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    reference = chat_backend.model.generate(ids, max_new_tokens=15, do_sample=False, eos_token_id=None)
    expected = chat_backend.tokenizer.decode(reference[0, ids.shape[1]:], skip_special_tokens=True)
    assert text == expected
    assert ours.finish_reason == "length"
    assert ours.usage == {"prompt_tokens": ids.shape[1], "completion_tokens": 15}


def test_same_seed_same_text_and_zero_is_a_seed(chat_backend):
    runs = {s: chat_backend.generate(ask(temperature=1.0, seed=s, max_tokens=20)).text() for s in (0, 0, 1)}
    again = chat_backend.generate(ask(temperature=1.0, seed=0, max_tokens=20)).text()
    assert runs[0] == again
    assert runs[0] != runs[1]
    # a generation in between does not disturb a seeded one: the generator is per request
    chat_backend.generate(ask(temperature=1.0, max_tokens=5)).text()
    assert chat_backend.generate(ask(temperature=1.0, seed=0, max_tokens=20)).text() == again


def test_top_probs_are_the_distribution_after_temperature(chat_backend):
    response = chat_backend.generate(ask(temperature=0.5, seed=3, max_tokens=4, top_probs=5))
    response.text()
    assert len(response.tokens) == 4
    first = response.tokens[0]
    probs = [c.prob for c in first.top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    prompt_ids = chat_backend._encode(response.request)[1]
    logits = chat_backend.model(torch.tensor([prompt_ids])).logits[0, -1]
    expected = torch.softmax(logits / 0.5, dim=-1).topk(5).values.tolist()
    assert probs == pytest.approx(expected, rel=1e-4)


def test_stop_strings_cut_the_text(chat_backend):
    full = chat_backend.generate(ask(temperature=0, max_tokens=30)).text()
    stop = full[10:13]
    cut = chat_backend.generate(ask(temperature=0, max_tokens=30, stop=[stop]))
    assert cut.text() == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_eos_finishes_with_stop(chat_backend):
    prompt_ids = chat_backend._encode(ask())[1]
    token_id = int(chat_backend.model(torch.tensor([prompt_ids])).logits[0, -1].argmax())
    saved = chat_backend.eos_ids
    chat_backend.eos_ids = saved | {token_id}
    try:
        response = chat_backend.generate(ask(temperature=0))
        assert response.text() == "" and response.finish_reason == "stop"
        assert response.usage["completion_tokens"] == 0
    finally:
        chat_backend.eos_ids = saved


def test_context_overflow_is_a_usage_error(chat_backend):
    with pytest.raises(UsageError, match="context of 128"):
        chat_backend.generate(ask("Paris " * 200)).text()


def test_max_tokens_is_clamped_to_the_context(chat_backend):
    response = chat_backend.generate(ask("Paris " * 50, temperature=0, max_tokens=500))
    response.text()
    assert response.usage["prompt_tokens"] + response.usage["completion_tokens"] == 128
    assert response.finish_reason == "length"


def test_chat_template_and_raw_modes(chat_backend, base_backend):
    rendered = chat_backend.render(ask("Hi"))
    assert rendered.mode == "chat" and rendered.text.startswith("<|im_start|>user\nHi<|im_end|>")
    assert chat_backend.render(ask("Hi", raw=True)) == dataclasses.replace(rendered, text="Hi", mode="completion",
                                                                             tokens=rendered_tokens(chat_backend, "Hi"))
    assert base_backend.render(ask("ROMEO:")).mode == "completion"


def rendered_tokens(backend, text):
    return len(backend.tokenizer(text)["input_ids"])


def test_named_alpaca_template_turns_a_base_model_into_chat(tiny_base_model):
    entry = ModelEntry("alp", "hf", str(tiny_base_model), chat_template="alpaca")
    backend = HFBackend.load(entry, Config())
    text = backend.render(ask("Name a colour")).text
    assert "### Instruction:\nName a colour\n\n### Response:\n" in text


def test_template_none_forces_completion(tiny_chat_model):
    backend = HFBackend.load(ModelEntry("t", "hf", str(tiny_chat_model), chat_template="none"), Config())
    assert backend.render(ask("x")).mode == "completion"


def test_lora_adapter_changes_the_output(tmp_path, tiny_chat_model, chat_backend):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    entry = ModelEntry("lora", "hf", str(adapter), base=str(tiny_chat_model), adapter=str(adapter))
    backend = HFBackend.load(entry, Config())
    assert "adapter" in backend.origin
    request = ask(temperature=0, max_tokens=10)
    assert backend.generate(request).text() != chat_backend.generate(request).text()


def test_missing_weights_and_pickle_only_models_are_refused(tmp_path, tiny_chat_model):
    with pytest.raises(ModelError, match="cannot load model"):
        HFBackend.load(ModelEntry("x", "hf", str(tmp_path / "nowhere")), Config())
    pickled = tmp_path / "pickled"
    model = torch.nn.Module()
    import shutil

    shutil.copytree(tiny_chat_model, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ModelError, match="cannot load model"):
        HFBackend.load(ModelEntry("p", "hf", str(pickled)), Config())
