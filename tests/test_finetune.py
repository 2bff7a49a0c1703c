"""Fine-tuning on tiny models: formats, validation, masking, packing, LoRA training, adapters, merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmctl.errors import UsageError
from llmctl.finetune.config import FinetuneConfig
from llmctl.finetune.data import ColumnMap, load_examples
from llmctl.finetune.sft import SupervisedLoRA
from llmctl.finetune.task import FinetuneTask
from llmctl.finetune.tokenize import IGNORE, encode, pack
from tests.cli_helpers import assert_resume_is_exact, write_jsonl



PAIRS = [{"instruction": f"Name item {i}.", "input": "", "output": f"Ahoy! Item {i} be treasure."} for i in range(30)]



def test_every_format_is_detected(tmp_path):
    alpaca = write_jsonl(tmp_path / "a.jsonl", PAIRS[:2])
    array = tmp_path / "array.json"
    array.write_text(json.dumps(PAIRS[:2]))
    chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                                             {"role": "assistant", "content": "a"}]}])
    pc = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "completion": "a"}])
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain text"}])
    seeds = write_jsonl(tmp_path / "s.jsonl", [{"instruction": "Add.", "instances": [{"input": "1+1", "output": "2"},
                                                                                      {"input": "2+2", "output": "4"}]}])
    csv = tmp_path / "r.csv"
    csv.write_text("question,answer\nq1,a1\n")
    assert load_examples([alpaca])[1].format == "alpaca" and load_examples([array])[1].examples == 2
    assert load_examples([chat])[0][0].messages[0] == {"role": "system", "content": "s"}
    assert load_examples([pc])[1].format == "prompt-completion"
    assert load_examples([text])[0][0].text == "plain text"
    examples, report = load_examples([seeds])
    assert report.examples == 2 and examples[1].messages[0]["content"] == "Add.\n\n2+2"
    mapped, _ = load_examples([csv], columns=ColumnMap(prompt="question", completion="answer"))
    assert mapped[0].messages == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    assert load_examples([alpaca], fmt="alpaca")[1].format == "alpaca"


def test_bad_rows_name_file_line_and_field_or_are_skipped(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], {"instruction": "no output"}, PAIRS[1]])
    with pytest.raises(UsageError, match=r"bad.jsonl:2: field 'output' is missing"):
        load_examples([path])
    examples, report = load_examples([path], skip_bad_rows=True)
    assert len(examples) == 2 and report.skipped == [f"{path}:2: field 'output' is missing, empty or not a string"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "x", "output": "y"}\n{not json\n')
    with pytest.raises(UsageError, match="broken.jsonl:2: not valid JSON"):
        load_examples([broken])
    with pytest.raises(UsageError, match="cannot tell the format"):
        load_examples([write_jsonl(tmp_path / "odd.jsonl", [{"q": 1}])])
    with pytest.raises(UsageError, match="has no rows"):
        load_examples([write_jsonl(tmp_path / "empty.jsonl", [])])
    chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(UsageError, match="last message must be the assistant"):
        load_examples([chat])


def test_labels_mask_exactly_the_prompt(tiny_chat_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    examples, _ = load_examples([write_jsonl(Path(tiny_chat_model).parent / "one.jsonl", PAIRS[:1])])
    item = encode(tokenizer, examples[0])
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name item 0."}], tokenize=False,
                                           add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert item.labels[:n_prompt] == [IGNORE] * n_prompt
    assert item.labels[n_prompt:] == item.ids[n_prompt:]
    assert tokenizer.decode(item.ids[n_prompt:]) == "Ahoy! Item 0 be treasure.<|im_end|>\n"


def test_packing_keeps_attention_inside_each_example(tiny_chat_model):
    from transformers import AutoModelForCausalLM

    from llmctl.finetune.tokenize import Tokenized

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model).eval()
    a = Tokenized([5, 6, 7, 8, 9], [IGNORE, IGNORE, 7, 8, 9], "a")
    b = Tokenized([10, 11, 12], [IGNORE, 11, 12], "b")
    batch = pack([a, b])
    assert batch["labels"].tolist() == [[IGNORE, 7, 8, 9, 11, 12]]  # shifted; no pad anywhere
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1]]
    with torch.no_grad():
        assert "attention_mask" not in batch  # transformers reads the boundaries from the positions
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone_a = model(torch.tensor([a.ids[:-1]])).logits[0]
        alone_b = model(torch.tensor([b.ids[:-1]])).logits[0]
    assert torch.allclose(packed[:4], alone_a, atol=1e-5) and torch.allclose(packed[4:], alone_b, atol=1e-5)


def test_finetune_learns_saves_registers_and_merges(cli, tmp_path, tiny_chat_model):
    data = write_jsonl(tmp_path / "pirate.jsonl", PAIRS)
    out = tmp_path / "pirate-lora"
    r = cli("finetune", "--data", str(data), "-m", str(tiny_chat_model), "--out", str(out), "--epochs", "3",
            "--batch-size", "4", "--lr", "1e-2", "--rank", "4", "--json")
    assert r.code == 0, r.err
    summary = r.json()
    assert summary["val_loss_after"] < summary["val_loss_before"]
    assert summary["template"] == "auto" and summary["name"] == "pirate-lora"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin"))
    # peft loads it as is, and it computes what llmctl's backend computes
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_chat_model), out).eval()
        adapted = peft_model(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_chat_model)(ids).logits
    assert not torch.allclose(adapted, base, atol=1e-4)
    shown = cli("models", "show", "pirate-lora", "--json").json()
    assert shown["base"] == str(tiny_chat_model) and shown["adapter"] == str(out.resolve())
    assert shown["lineage"]["level"] == "finetune" and len(shown["lineage"]["data_sha256"]) == 64
    assert cli("prompt", "-m", "pirate-lora", "-t", "0", "--max-tokens", "3", "Name item 2.").code == 0
    merged = tmp_path / "merged"
    m = cli("finetune", "merge", "pirate-lora", "--out", str(merged), "--json")
    assert m.code == 0, m.err
    with torch.no_grad():
        merged_logits = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
    assert torch.allclose(merged_logits, adapted, atol=1e-4)
    assert cli("models", "show", "merged", "--json").json()["lineage"]["level"] == "merge"


def test_base_model_without_template_gets_alpaca(cli, tmp_path, tiny_base_model):
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS[:10])
    r = cli("finetune", "--data", str(data), "-m", str(tiny_base_model), "--out", str(tmp_path / "alp"),
            "--max-steps", "2", "--batch-size", "2", "--json")
    assert r.code == 0, r.err and r.json()["template"] == "alpaca"
    assert cli("models", "show", "alp", "--json").json()["chat_template"] == "alpaca"
    shown = cli("prompt", "-m", "alp", "--max-tokens", "1", "--json", "--show-prompt", "Name item 1.").json()
    assert "### Instruction:\nName item 1.\n\n### Response:\n" in shown["rendered_prompt"]["text"]


def test_resume_is_exact(cli, tmp_path, tiny_chat_model, monkeypatch):
    """Ctrl-C at step 4 saves a checkpoint; --resume auto ends with the weights of an unbroken run."""
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    common = ["--data", str(data), "-m", str(tiny_chat_model), "--max-steps", "8", "--batch-size", "2",
              "--save-every", "100", "--eval-every", "100", "--lr", "1e-2", "--dropout", "0.1", "--no-register"]
    assert_resume_is_exact(cli, monkeypatch, tmp_path, FinetuneTask, common)


@pytest.mark.parametrize("args, code, message", [
    (["-m", "nosuch"], 3, "unknown model 'nosuch'"),
    (["-m", "openai:gpt-4o"], 2, "it is a remote (openai) model"),
    (["--targets", "nonexistent_proj"], 2, "this model's linear layers:"),
    (["--max-length", "8"], 2, "longer than the maximum length 8"),
    (["--qlora"], 2, "QLoRA needs a CUDA GPU"),
    (["--format", "yaml"], 2, "unknown --format 'yaml'"),
    (["--beta", "0.5"], 2, "--beta is for --method dpo, not lora"),
])
def test_errors(cli, tmp_path, tiny_chat_model, args, code, message):
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS[:4])
    base = [] if "-m" in args else ["-m", str(tiny_chat_model)]
    r = cli("finetune", "--data", str(data), *base, *args, "--out", str(tmp_path / "o"), "--max-steps", "1")
    assert r.code == code, r.err
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in r.err
    assert not (tmp_path / "o" / "adapter_model.safetensors").exists()


def test_inspect_and_dry_run(cli, tmp_path, tiny_chat_model):
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS[:12])
    doc = cli("finetune", "inspect", "--data", str(data), "-m", str(tiny_chat_model), "--max-length", "40",
              "--json").json()
    assert doc["format"] == "alpaca" and doc["examples"] == 12 and doc["template"] == "auto"
    learned = "".join(text for text, is_learned in doc["example"]["pieces"] if is_learned)
    assert learned == "Ahoy! Item 0 be treasure.<|im_end|>\n"
    assert sum(b["count"] for b in doc["histogram"]) == 12
    assert doc["tokens"]["min"] > 40 and doc["too_long"] == 12  # every example is longer than --max-length 40
    assert doc["lora_parameters"] > 0 and doc["memory_estimate"]["total_gb"] > 0
    shown = cli("finetune", "--data", str(data), "-m", str(tiny_chat_model), "--dry-run", "--out", str(tmp_path / "o"))
    assert shown.code == 0 and "tokens per example" in shown.out and "green = learned" in shown.out
    assert not (tmp_path / "o").exists()


def test_gradient_checkpointing_and_chat_data_train(cli, tmp_path, tiny_chat_model):
    rows = [{"messages": [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": f"Hi {i}"},
                          {"role": "assistant", "content": f"Ahoy {i}!"}]} for i in range(8)]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    r = cli("finetune", "--data", str(data), "-m", str(tiny_chat_model), "--out", str(tmp_path / "gc"),
            "--gradient-checkpointing", "--max-steps", "2", "--batch-size", "2", "--no-register", "--json")
    assert r.code == 0, r.err
    summary = r.json()
    assert summary["format"] == "chat" and summary["steps"] == 2 and summary["val_loss_after"] is not None


class LabelSmoothedTask(FinetuneTask):
    """A throwaway objective: cross-entropy against labels smoothed by 0.1."""

    def loss(self, model, batch):
        import torch.nn.functional as F

        from llmctl.training.task import forward

        logits = forward(model, batch).logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), batch["labels"].view(-1),
                               ignore_index=IGNORE, label_smoothing=0.1)

    def train_metrics(self):
        return {"smoothing": 0.1}


class LabelSmoothed(SupervisedLoRA):
    """A method as README's "Adding a fine-tuning method" describes: one class, one line in METHODS."""

    title = "label-smoothed LoRA"

    def task(self, train, val):
        return LabelSmoothedTask(train, val, self.cfg.train)

    def description(self, summary):
        return f"label-smoothed LoRA adapter on {summary['base']}"


def test_a_new_method_is_one_class_and_one_table_line(cli, tmp_path, tiny_chat_model, monkeypatch):
    from llmctl.finetune import run

    monkeypatch.setitem(run.METHODS, "smooth", LabelSmoothed)
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS[:10])
    out = tmp_path / "smooth"
    r = cli("finetune", "--method", "smooth", "--data", str(data), "-m", str(tiny_chat_model), "--out", str(out),
            "--max-steps", "2", "--batch-size", "2", "--json")
    assert r.code == 0, r.err
    assert r.json()["method"] == "smooth" and r.json()["val_loss_after"] is not None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["smoothing"] for row in rows if "loss" in row] == [0.1, 0.1]
    assert json.loads((out / "llmctl-finetune.json").read_text())["config"]["method"] == "smooth"
    shown = cli("models", "show", "smooth", "--json").json()
    assert shown["description"] == f"label-smoothed LoRA adapter on {tiny_chat_model}"
    assert shown["lineage"]["method"] == "smooth" and shown["base"] == str(tiny_chat_model)
    unknown = cli("finetune", "--method", "nosuch", "--data", str(data), "-m", str(tiny_chat_model))
    assert unknown.code == 2 and "lora, dpo, distill, smooth" in unknown.err


def test_the_cli_passes_only_what_was_given(cli, tmp_path, monkeypatch):
    """Python callers of FinetuneConfig get exactly the command's defaults, and --help shows them."""
    from llmctl.finetune import run

    seen = []
    monkeypatch.setattr(run, "finetune", lambda config, **kwargs: seen.append(config) or {})
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS[:4])
    assert cli("finetune", "--data", str(data), "--json").code == 0
    assert seen[0].to_dict() == FinetuneConfig(data=[data]).to_dict()
    assert seen[0].train.lr == 2e-4 and seen[0].train.min_lr == 2e-5 and seen[0].train.batch_size == 8
    assert cli("finetune", "--data", str(data), "--lr", "1e-2", "--beta", "0.1", "--json").code == 0
    assert seen[1].train.min_lr == pytest.approx(1e-3)  # the cosine ends at a tenth of the peak given
    shown = cli("finetune", "--help").out
    assert "[default: 0.0002]" in shown and "[default: smollm2]" in shown and "[default: 0.1]" in shown
