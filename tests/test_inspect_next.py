"""`llmctl next` on tiny models: probabilities against a direct softmax, temperatures, steps, charts."""

from __future__ import annotations

import math

import pytest
import torch


EIFFEL = "The Eiffel Tower is located in"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def direct_logits(model_dir, text: str) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(torch.tensor([tokenizer(text)["input_ids"]])).logits[0, -1]


def test_probabilities_match_a_direct_softmax_at_each_temperature(cli, tiny_chat_model):
    r = cli("next", "-m", str(tiny_chat_model), "--top", "5", "-t", "0.5,1,1.5", "--json", EIFFEL)
    assert r.code == 0, r.err
    doc = r.json()
    [step] = doc["steps"]
    logits = direct_logits(tiny_chat_model, EIFFEL)
    assert [d["temperature"] for d in step["distributions"]] == [0.5, 1.0, 1.5]
    for d in step["distributions"]:
        probs = torch.softmax(logits / d["temperature"], dim=-1)
        expected = torch.topk(probs, 5)
        assert [c["id"] for c in d["top"]] == expected.indices.tolist()
        assert [c["prob"] for c in d["top"]] == pytest.approx(expected.values.tolist(), abs=1e-6)
        assert sum(c["prob"] for c in d["top"]) + d["other"] == pytest.approx(1.0, abs=1e-6)
        entropy = -(probs * probs.log2()).sum().item()
        assert d["entropy_bits"] == pytest.approx(entropy, abs=1e-4)
    # Lower temperature sharpens: the top token gains and the entropy falls.
    tops = [d["top"][0]["prob"] for d in step["distributions"]]
    entropies = [d["entropy_bits"] for d in step["distributions"]]
    assert tops == sorted(tops, reverse=True) and entropies == sorted(entropies)
    assert step["chosen"]["id"] == int(logits.argmax())


def test_greedy_temperature_is_certain(cli, tiny_chat_model):
    d = cli("next", "-m", str(tiny_chat_model), "-t", "0", "--top", "3", "--json", EIFFEL).json()["steps"][0]["distributions"][0]
    assert d["top"][0]["prob"] == 1.0 and d["top"][1]["prob"] == 0.0 and d["entropy_bits"] == 0.0


def test_steps_follow_the_greedy_continuation(cli, tiny_base_model):
    from transformers import AutoTokenizer

    doc = cli("next", "-m", str(tiny_base_model), "--steps", "4", "--top", "2", "--json", "ROMEO:").json()
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    text, chosen = "ROMEO:", []
    for step in doc["steps"]:
        assert step["context"] == text + tokenizer.decode(chosen) if chosen else step["context"] == text
        assert step["chosen"]["id"] == int(direct_logits(tiny_base_model, step["context"]).argmax())
        chosen.append(step["chosen"]["id"])
    assert len(doc["steps"]) == 4 and doc["continuation"] == tokenizer.decode(chosen)


def test_prompt_top_probs_uses_the_same_distribution(cli, tiny_chat_model):
    """`prompt --top-probs` and `next` share one function: the same numbers for the same text."""
    prompt = cli("prompt", "-m", str(tiny_chat_model), "--raw", "--top-probs", "4", "--max-tokens", "1", "-t", "0.7",
                 "--seed", "0", "--no-log", "--json", EIFFEL).json()
    nxt = cli("next", "-m", str(tiny_chat_model), "--top", "4", "-t", "0.7", "--json", EIFFEL).json()
    ours = nxt["steps"][0]["distributions"][0]["top"]
    theirs = prompt["top_probs"][0]["top"]
    assert [c["token"] for c in theirs] == [c["token"] for c in ours]
    assert [c["prob"] for c in theirs] == pytest.approx([c["prob"] for c in ours], abs=1e-6)


def test_table_and_chart(cli, tiny_chat_model, tmp_path):
    png = tmp_path / "charts" / "next.png"
    r = cli("next", "-m", str(tiny_chat_model), "--top", "3", "-t", "0.2,1.0,1.5", "--png", str(png), EIFFEL)
    assert r.code == 0, r.err
    assert "T = 0.2" in r.out and "T = 1.5" in r.out and "entropy" in r.out and "bits" in r.out
    assert f"chart written to {png}" in r.err
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 600 and height > 100


def test_steps_table(cli, tiny_chat_model, tmp_path):
    r = cli("next", "-m", str(tiny_chat_model), "--steps", "3", "-t", "0.5,1", "--png", str(tmp_path / "s.png"), EIFFEL)
    assert r.code == 0, r.err
    assert "greedy continuation" in r.out and "runners-up (T = 1)" in r.out
    assert r.out.count("→") >= 3 and "text: The Eiffel Tower is located in" in r.out
    assert (tmp_path / "s.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("args, message", [
    (("next", ""), "empty text"),
    (("next", "-t", "a,b", "hi"), "--temperature 'a,b' is not a list of numbers"),
    (("next", "-t", "0.5,9", "hi"), "temperature 9 is out of range"),
    (("next", "-t", "1,1", "hi"), "a temperature is given twice"),
    (("next", "-m", "openai:gpt-4o-mini", "hi"), "next-token distributions: 'openai:gpt-4o-mini' is a remote"),
    (("next", "--png", "chart.jpg", "hi"), "must end in .png"),
])
def test_bad_input_is_one_line_exit_2(cli, args, message):
    r = cli(*args)
    assert r.code == 2, r.err
    assert message in r.err and len(r.err.strip().splitlines()) == 1 and r.out == ""


def test_unwritable_png_fails_before_loading(cli, tmp_path, monkeypatch):
    import llmctl.inspect.nexttoken as nexttoken

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(nexttoken, "load_inspected", lambda *a, **k: pytest.fail("loaded a model"))
    r = cli("next", "--png", str(blocker / "next.png"), "hi")
    assert r.code == 2 and "cannot write --png" in r.err and len(r.err.strip().splitlines()) == 1


def test_context_overflow(cli, tiny_chat_model):
    r = cli("next", "-m", str(tiny_chat_model), "--steps", "64", " ".join(["word"] * 40))
    assert r.code == 2 and "context of 128" in r.err


def test_entropy_of_a_uniform_distribution():
    from llmctl.inspect.distribution import distribution, entropy_bits

    assert entropy_bits(torch.full((8,), 1 / 8)) == pytest.approx(3.0)
    d = distribution(torch.zeros(4), 1.0, 2, tokenizer=_Letters())
    assert d.entropy_bits == pytest.approx(2.0) and d.other == pytest.approx(0.5)
    assert math.isclose(sum(c.prob for c in d.top), 0.5)


class _Letters:
    def decode(self, ids):
        return "".join("abcd"[i] for i in ids)
