"""`eval lineage`: relatives found through the registry; a faithful merge agrees with its adapter exactly, an
altered merged model is caught by a gate."""

from __future__ import annotations


import pytest

from llmctl.errors import EXIT_GATE, EXIT_USAGE
from llmctl.evaluate.lineage import agreement, find_family
from llmctl.registry import ModelEntry


def test_agreement_counts_positions():
    assert agreement([1, 2, 3], [1, 2, 3]) == (3, 3, None)
    assert agreement([1, 2, 3], [1, 5, 3, 4]) == (2, 4, 1)
    assert agreement([], []) == (0, 0, None)


def test_family_through_names_paths_and_lineage(tmp_path):
    for d in ("b", "a", "m", "g", "other"):
        (tmp_path / d).mkdir()
    entries = [
        ModelEntry("base", "hf", str(tmp_path / "b")),
        ModelEntry("tuned", "hf", str(tmp_path / "a"), base="base", adapter=str(tmp_path / "a"),
                   lineage={"level": "finetune", "base": "base"}),
        ModelEntry("merged", "hf", str(tmp_path / "m"), lineage={"level": "merge", "base": "base",
                                                                  "adapter": str(tmp_path / "a")}),
        ModelEntry("gguf", "hf", str(tmp_path / "g"), lineage={"source": "merged", "quantization": "q8_0"}),
        ModelEntry("unrelated", "hf", str(tmp_path / "other")),
        ModelEntry("sibling", "hf", str(tmp_path / "other"), base="base"),
    ]
    family = find_family("merged", entries)
    assert family.members == ["base", "tuned", "merged", "gguf"]  # parents first; a sibling of the base's is not
    assert {(e.label, e.same_output) for e in family.edges} == {
        ("base->tuned", False), ("base->merged", False), ("tuned->merged", True), ("merged->gguf", True)}
    assert find_family("unrelated", entries).edges == []


def make_adapter(base_dir, out_dir, scale: float = 0.0):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


@pytest.fixture
def chain(cli, tmp_path, tiny_chat_model):
    """base -> tuned (a LoRA adapter) -> merged (llmctl finetune merge), registered as a user would."""
    assert cli("models", "add", "base", str(tiny_chat_model)).code == 0
    adapter = make_adapter(tiny_chat_model, tmp_path / "adapter")
    r = cli("models", "add", "tuned", str(adapter), "--base", "base")
    assert r.code == 0, r.err
    r = cli("finetune", "merge", "tuned", "--out", str(tmp_path / "merged"), "--name", "merged")
    assert r.code == 0, r.err
    return tmp_path


def test_faithful_merge_agrees_and_altered_one_is_caught(cli, chain):
    prompts = chain / "p.txt"
    prompts.write_text("What is the capital of France?\nROMEO: But soft\n")
    r = cli("eval", "lineage", "tuned", "-p", str(prompts), "--max-tokens", "8", "--fail-under", "agreement=1.0",
            "--fail-over", "max_logit_diff=1e-4", "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["models"] == ["base", "tuned", "merged"]
    assert doc["metrics"]["agreement"] == 1.0 and doc["metrics"]["max_logit_diff"] < 1e-4
    assert doc["metrics"]["agreement:tuned->merged"] == 1.0
    assert doc["metrics"]["max_logit_diff:base->tuned"] > 1e-3  # the adapter changed the model, as training does
    rows = [row for row in doc["rows"] if row["edge"] == "tuned->merged"]
    assert len(rows) == 2 and all(row["child_answer"] == row["parent_answer"] for row in rows)

    import torch
    from safetensors.torch import load_file, save_file

    weights = chain / "merged" / "model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if k.endswith("layers.1.mlp.down_proj.weight"))
    tensors[key] = tensors[key] + 0.05 * torch.randn(tensors[key].shape, generator=torch.Generator().manual_seed(0))
    save_file(tensors, weights, metadata={"format": "pt"})
    r = cli("eval", "lineage", "merged", "-p", str(prompts), "--max-tokens", "8", "--fail-over", "max_logit_diff=1e-4",
            "--junit", str(chain / "lineage.xml"))
    assert r.code == EXIT_GATE and "max_logit_diff = " in r.err and "must be at most 0.0001" in r.err
    assert "tuned->merged" in r.out and 'failures="1"' in (chain / "lineage.xml").read_text()


def test_a_model_without_relatives_is_a_usage_error(cli, tiny_chat_model):
    assert cli("models", "add", "alone", str(tiny_chat_model)).code == 0
    r = cli("eval", "lineage", "alone")
    assert r.code == EXIT_USAGE and "no registered ancestors or descendants" in r.err
    saved = cli("eval", "list", "--json").json()
    assert saved == []
