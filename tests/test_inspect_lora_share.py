"""What LoRA trains: parameter counts per module, computed by hand on tiny models, in `finetune inspect`
and in `models show` for an adapter."""

from __future__ import annotations

import pytest

from tests.cli_helpers import write_jsonl


def tiny_config(model_dir):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def llama_base_parameters(vocab: int) -> int:
    # Tiny chat model: width 32, MLP 64, 4 heads of 8, 2 key/value heads (k, v project to 16), 2 layers,
    # untied input and output embeddings.
    attention = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32
    mlp = 3 * 32 * 64
    norms = 2 * 32
    return 2 * vocab * 32 + 2 * (attention + mlp + norms) + 32


def test_every_linear_layer_of_a_llama(tiny_chat_model):
    from llmctl.finetune.lora_share import lora_share

    config = tiny_config(tiny_chat_model)
    share = lora_share(config, rank=4)
    by_module = {m.module: (m.count, m.base_parameters, m.lora_parameters) for m in share.modules}
    # rank x (in + out) per module, two layers of each; the output head is never a target.
    assert by_module == {
        "q_proj": (2, 2 * 32 * 32, 2 * 4 * (32 + 32)), "k_proj": (2, 2 * 32 * 16, 2 * 4 * (32 + 16)),
        "v_proj": (2, 2 * 32 * 16, 2 * 4 * (32 + 16)), "o_proj": (2, 2 * 32 * 32, 2 * 4 * (32 + 32)),
        "gate_proj": (2, 2 * 32 * 64, 2 * 4 * (32 + 64)), "up_proj": (2, 2 * 32 * 64, 2 * 4 * (32 + 64)),
        "down_proj": (2, 2 * 64 * 32, 2 * 4 * (64 + 32)),
    }
    assert share.trainable == 4096
    assert share.base_parameters == llama_base_parameters(config.vocab_size)
    assert share.share == pytest.approx(4096 / (share.base_parameters + 4096))


def test_chosen_targets_and_rank(tiny_chat_model):
    from llmctl.finetune.lora_share import lora_share

    share = lora_share(tiny_config(tiny_chat_model), rank=8, targets=["q_proj", "v_proj"])
    assert [m.module for m in share.modules] == ["q_proj", "v_proj"]
    assert share.trainable == 2 * 8 * (32 + 32) + 2 * 8 * (32 + 16) == 1792


def test_gpt2_conv1d_layers_count_too(tiny_base_model):
    from llmctl.finetune.lora_share import lora_share

    share = lora_share(tiny_config(tiny_base_model), rank=4)
    by_module = {m.module: m.lora_parameters for m in share.modules}
    # c_attn 32 -> 96, attention c_proj 32 -> 32, c_fc 32 -> 128, MLP c_proj 128 -> 32, two layers.
    assert by_module == {"c_attn": 2 * 4 * (32 + 96), "c_proj": 2 * (4 * 64 + 4 * 160), "c_fc": 2 * 4 * (32 + 128)}


def test_bad_targets_are_a_usage_error(tiny_chat_model):
    from llmctl.errors import UsageError
    from llmctl.finetune.lora_share import lora_share

    with pytest.raises(UsageError, match="LoRA targets"):
        lora_share(tiny_config(tiny_chat_model), rank=4, targets=["no_such_layer"])


def test_finetune_inspect_reports_the_share(cli, tmp_path, tiny_chat_model):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"Say {i}", "output": f"Ahoy {i}"} for i in range(4)])
    doc = cli("finetune", "inspect", "--data", str(data), "-m", str(tiny_chat_model), "--rank", "4", "--json").json()
    assert doc["lora_parameters"] == doc["lora"]["trainable_parameters"] == 4096
    assert doc["lora"]["rank"] == 4 and len(doc["lora"]["modules"]) == 7
    shown = cli("finetune", "inspect", "--data", str(data), "-m", str(tiny_chat_model), "--rank", "4")
    assert shown.code == 0, shown.err
    assert "LoRA rank 4: what it trains" in shown.out and "q_proj" in shown.out and "down_proj" in shown.out


def test_models_show_an_adapter(cli, tmp_path, tiny_chat_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    torch.manual_seed(0)
    adapter = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    assert cli("models", "add", "little", str(adapter), "--base", str(tiny_chat_model)).code == 0
    doc = cli("models", "show", "little", "--json").json()
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        saved = sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1] for k in f.keys())
    assert doc["lora"]["trainable_parameters"] == saved == 2 * 4 * (32 + 32) + 2 * 4 * (32 + 16)
    assert doc["lora"]["rank"] == 4 and doc["lora"]["targets"] == ["q_proj", "v_proj"]
    assert doc["lora"]["base_parameters"] == llama_base_parameters(tiny_config(tiny_chat_model).vocab_size)
    shown = cli("models", "show", "little")
    assert shown.code == 0 and "LoRA rank 4: what it trains" in shown.out and "(base + LoRA)" in shown.out
    full = cli("models", "show", str(tiny_chat_model), "--json").json()
    assert "lora" not in full
