"""DPO on tiny models: the loss against a hand computation, pair data and bad rows, learning a
preference, exact resume, and going on from a supervised adapter."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llmctl.errors import UsageError
from llmctl.finetune.dpo import dpo_loss, encode_pairs, load_pairs, pack_pairs, reward_sums, sequence_logps
from tests.cli_helpers import assert_resume_is_exact, write_jsonl

# Learnable: the chosen answers always speak like a pirate, the rejected ones never do.
PREFS = [{"prompt": f"Tell me about item {i}.", "chosen": f"Ahoy! Item {i} be treasure.",
          "rejected": f"The item {i} is fine."} for i in range(40)]




def test_dpo_loss_matches_a_hand_computation():
    policy_c, policy_r = torch.tensor([-10.0, -7.0]), torch.tensor([-12.0, -6.0])
    ref_c, ref_r = torch.tensor([-11.0, -7.5]), torch.tensor([-11.0, -6.5])
    terms = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta=0.1)
    # pair 1: 0.1 * ((-10 + 11) - (-12 + 11)) = 0.2; pair 2: 0.1 * ((-7 + 7.5) - (-6 + 6.5)) = 0.0
    expected = [math.log(1 + math.exp(-0.2)), math.log(2)]
    assert torch.allclose(terms.losses, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(terms.chosen_rewards, torch.tensor([0.1, 0.05])) and \
        torch.allclose(terms.rejected_rewards, torch.tensor([-0.1, 0.05]))
    sums = reward_sums(terms)
    assert sums["reward_accuracy"] == 1.0 and sums["reward_margin"] == pytest.approx(0.2)
    # conservative DPO: (1 - ε)·(-log σ(z)) + ε·(-log σ(-z))
    smoothed = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta=0.1, label_smoothing=0.25).losses
    assert smoothed[0].item() == pytest.approx(0.75 * math.log(1 + math.exp(-0.2)) + 0.25 * math.log(1 + math.exp(0.2)))


def test_pairs_parse_every_shape_and_packed_logps_are_per_response(tmp_path, tiny_chat_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [{"prompt": "Hi?", "system": "Be brief.", "chosen": "Ahoy!", "rejected": "Hello."},
            {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Arr."}],
             "rejected": "Good day."}]
    pairs, report = load_pairs([write_jsonl(tmp_path / "p.jsonl", rows)])
    assert report.examples == 2 and pairs[0][0] == [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Hi?"}]
    assert pairs[1][1:] == ("Arr.", "Good day.", f"{tmp_path / 'p.jsonl'}:2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model).eval()
    encoded = encode_pairs(tokenizer, pairs, 128, False, [])
    prompt_len = encoded[0].chosen.labels.count(-100)
    assert encoded[0].chosen.ids[:prompt_len] == encoded[0].rejected.ids[:prompt_len]  # one prompt, two answers
    with torch.no_grad():
        packed = sequence_logps(model, pack_pairs(encoded))
        for i, seq in enumerate([encoded[0].chosen, encoded[1].chosen, encoded[0].rejected, encoded[1].rejected]):
            logps = torch.log_softmax(model(torch.tensor([seq.ids[:-1]])).logits[0], -1)
            alone = sum(logps[t, seq.ids[t + 1]] for t in range(len(seq.ids) - 1) if seq.labels[t + 1] != -100)
            assert packed[i].item() == pytest.approx(float(alone), abs=1e-4)


def test_bad_rows_name_file_and_line_or_are_skipped(cli, tmp_path, tiny_chat_model):
    path = write_jsonl(tmp_path / "bad.jsonl", [PREFS[0], {"prompt": "x", "chosen": "y"},
                                                {"prompt": "x", "chosen": "same", "rejected": " same"},
                                                {"prompt": [], "chosen": "a", "rejected": "b"}, PREFS[1]])
    with pytest.raises(UsageError, match=r"bad.jsonl:2: field 'rejected' is missing"):
        load_pairs([path])
    pairs, report = load_pairs([path], skip_bad_rows=True)
    assert len(pairs) == 2 and [m.split(": ", 1)[0] for m in report.skipped] == [f"{path}:{n}" for n in (2, 3, 4)]
    assert "the same text" in report.skipped[1] and "field 'prompt'" in report.skipped[2]
    r = cli("finetune", "--method", "dpo", "--data", str(path), "-m", str(tiny_chat_model), "--out", str(tmp_path / "o"))
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert r.code == 2 and len(errors) == 1 and "bad.jsonl:2" in errors[0] and "Traceback" not in r.err


@pytest.mark.parametrize("args, message", [
    (["--beta", "0"], "--beta must be positive"),
    (["--label-smoothing", "0.5"], "--label-smoothing must be in [0, 0.5)"),
    (["--teacher", "x"], "--teacher is for --method distill"),
    (["--dry-run"], "--dry-run inspects fine-tuning examples"),
    (["--method", "ppo"], "unknown --method 'ppo'"),
])
def test_bad_settings_are_one_line_errors(cli, tmp_path, tiny_chat_model, args, message):
    data = write_jsonl(tmp_path / "p.jsonl", PREFS[:4])
    method = [] if "--method" in args else ["--method", "dpo"]
    r = cli("finetune", *method, "--data", str(data), "-m", str(tiny_chat_model), *args, "--out", str(tmp_path / "o"))
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert r.code == 2 and len(errors) == 1 and message in errors[0], r.err
    assert not (tmp_path / "o" / "adapter_model.safetensors").exists()


def test_dpo_learns_the_preference(cli, tmp_path, tiny_chat_model):
    data = write_jsonl(tmp_path / "prefs.jsonl", PREFS)
    out = tmp_path / "pirate-dpo"
    r = cli("finetune", "--method", "dpo", "--data", str(data), "-m", str(tiny_chat_model), "--out", str(out),
            "--max-steps", "30", "--batch-size", "4", "--lr", "1e-2", "--rank", "4", "--eval-every", "10",
            "--eval-split", "0.2", "--json")
    assert r.code == 0, r.err
    s = r.json()
    # at the start the policy is the reference: every reward is 0 and the loss is log 2
    assert s["val_loss_before"] == pytest.approx(math.log(2), abs=1e-4) and s["reward_margin_before"] == 0
    assert s["val_loss_after"] < 0.6 * s["val_loss_before"]
    assert s["reward_margin_after"] > 0.3 and s["reward_accuracy_after"] == 1.0
    assert s["chosen_reward_after"] > s["rejected_reward_after"] and s["method"] == "dpo"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if "loss" in row]
    assert train[-1]["loss"] < train[0]["loss"] and train[-1]["reward_margin"] > train[1]["reward_margin"] > 0
    assert train[-1]["reward_accuracy"] == 1.0  # every training pair of the last step
    assert {"adapter_model.safetensors", "llmctl-finetune.json", "loss.png"} <= {p.name for p in out.iterdir()}
    shown = cli("models", "show", "pirate-dpo", "--json").json()
    assert shown["base"] == str(tiny_chat_model) and shown["lineage"]["method"] == "dpo"
    assert shown["lineage"]["beta"] == 0.1 and len(shown["lineage"]["data_sha256"]) == 64
    assert cli("prompt", "-m", "pirate-dpo", "-t", "0", "--max-tokens", "3", "Tell me about item 3.").code == 0


def test_dpo_resume_is_exact(cli, tmp_path, tiny_chat_model, monkeypatch):
    """Ctrl-C at step 4, then --resume auto: the same adapter as an unbroken run (same reference too)."""
    from llmctl.finetune.dpo import DPOTask

    data = write_jsonl(tmp_path / "prefs.jsonl", PREFS[:16])
    common = ["--method", "dpo", "--data", str(data), "-m", str(tiny_chat_model), "--max-steps", "8",
              "--batch-size", "2", "--save-every", "100", "--eval-every", "100", "--lr", "1e-2", "--dropout", "0.1",
              "--no-register"]
    assert_resume_is_exact(cli, monkeypatch, tmp_path, DPOTask, common)


def test_dpo_goes_on_from_a_supervised_adapter(cli, tmp_path, tiny_chat_model):
    from safetensors.torch import load_file

    sft_rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PREFS[:12]]
    sft = cli("finetune", "--data", str(write_jsonl(tmp_path / "sft.jsonl", sft_rows)), "-m", str(tiny_chat_model),
              "--out", str(tmp_path / "sft"), "--max-steps", "6", "--batch-size", "4", "--lr", "3e-2", "--rank", "4")
    assert sft.code == 0, sft.err
    prefs = write_jsonl(tmp_path / "prefs.jsonl", PREFS[:12])
    r = cli("finetune", "--method", "dpo", "--data", str(prefs), "-m", "sft", "--out", str(tmp_path / "sft-dpo"),
            "--max-steps", "3", "--batch-size", "4", "--lr", "1e-3", "--json")
    assert r.code == 0, r.err
    s = r.json()
    # the reference is the SFT adapter as it was: the policy starts equal to it
    assert s["reward_margin_before"] == 0 and s["val_loss_before"] == pytest.approx(math.log(2), abs=1e-4)
    assert s["rank"] == 4 and s["parent_adapter"] == "sft" and s["base"] == str(tiny_chat_model)
    shown = cli("models", "show", "sft-dpo", "--json").json()
    assert shown["base"] == str(tiny_chat_model) and shown["lineage"]["parent"] == "sft"
    # it trained the SFT weights further rather than a new adapter from zero
    before, after = load_file(tmp_path / "sft" / "adapter_model.safetensors"), \
        load_file(tmp_path / "sft-dpo" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    b_keys = [k for k in before if "lora_B" in k]
    moved = sum((after[k] - before[k]).norm() for k in b_keys)
    assert 0 < moved < 0.5 * sum(before[k].norm() for k in b_keys)
    plain = cli("finetune", "--data", str(tmp_path / "sft.jsonl"), "-m", "sft", "--out", str(tmp_path / "x"))
    assert plain.code == 2 and "already an adapter" in plain.err  # supervised LoRA still wants a base model
