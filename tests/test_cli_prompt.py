"""`llmctl prompt` end to end on tiny local models: flags, stdin, --json, shots, logs, errors."""

from __future__ import annotations


import pytest




def test_json_output_is_one_document(cli, tiny_chat_model):
    r = cli("prompt", "-m", str(tiny_chat_model), "-t", "0", "--max-tokens", "5", "--json", "Hello")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["model"] == str(tiny_chat_model)
    assert doc["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 5
    assert doc["params"]["temperature"] == 0 and doc["params"]["max_tokens"] == 5
    assert {"load_s", "total_s"} <= set(doc["timings"])
    assert isinstance(doc["log_id"], int)


def test_streamed_text_equals_json_text(cli, tiny_chat_model):
    args = ("prompt", "-m", str(tiny_chat_model), "-t", "0.9", "--seed", "4", "--max-tokens", "8")
    streamed = cli(*args, "Hi")
    as_json = cli(*args, "--json", "Hi")
    no_stream = cli(*args, "--no-stream", "Hi")
    assert streamed.out == as_json.json()["text"] + "\n" == no_stream.out


def test_stdin_and_argument_are_joined(cli, tiny_chat_model):
    r = cli("prompt", "-m", str(tiny_chat_model), "--max-tokens", "1", "--json", "--show-prompt", "Summarise:",
            stdin="some piped notes\n")
    rendered = r.json()["rendered_prompt"]
    assert "Summarise:\n\nsome piped notes" in rendered["text"]
    assert rendered["mode"] == "chat" and rendered["tokens"] > 5


def test_show_prompt_goes_to_stderr(cli, tiny_base_model):
    r = cli("prompt", "-m", str(tiny_base_model), "--max-tokens", "2", "--show-prompt", "ROMEO:")
    assert "rendered prompt (completion," in r.err and "ROMEO:" in r.err
    assert "rendered prompt" not in r.out


def test_top_probs_table(cli, tiny_chat_model):
    r = cli("prompt", "-m", str(tiny_chat_model), "--raw", "--top-probs", "4", "--max-tokens", "1", "-t", "0",
            "The Eiffel Tower is located in")
    assert r.code == 0, r.err
    assert "next token after the prompt (greedy" in r.out
    assert r.out.count("█") > 0 and "prob" in r.out


def test_top_probs_json_has_every_token(cli, tiny_chat_model):
    doc = cli("prompt", "-m", str(tiny_chat_model), "--top-probs", "3", "--max-tokens", "4", "-t", "0.7", "--seed", "1",
              "--json", "x").json()
    assert len(doc["top_probs"]) == 4
    assert all(len(t["top"]) == 3 for t in doc["top_probs"])


def test_shots_become_turns_or_prefix(cli, tmp_path, tiny_chat_model, tiny_base_model):
    shots = tmp_path / "shots.jsonl"
    shots.write_text('{"input": "big", "output": "small"}\n\n{"input": "fast", "output": "slow"}\n')
    chat = cli("prompt", "-m", str(tiny_chat_model), "--shots", str(shots), "--max-tokens", "1", "--json",
               "--show-prompt", "tall").json()["rendered_prompt"]["text"]
    assert "<|im_start|>user\nbig<|im_end|>\n<|im_start|>assistant\nsmall<|im_end|>" in chat
    base = cli("prompt", "-m", str(tiny_base_model), "--shots", str(shots), "--max-tokens", "1", "--json",
               "--show-prompt", "tall").json()["rendered_prompt"]["text"]
    assert base == "Input: big\nOutput: small\n\nInput: fast\nOutput: slow\n\nInput: tall\nOutput:"


def test_bad_shots_file_names_the_line(cli, tmp_path, tiny_chat_model):
    shots = tmp_path / "shots.jsonl"
    shots.write_text('{"input": "a", "output": "b"}\n{"input": "a"}\n')
    r = cli("prompt", "-m", str(tiny_chat_model), "--shots", str(shots), "x")
    assert r.code == 2
    assert f"{shots}:2: field 'output' is missing" in r.err


def test_continue_sends_the_previous_turns(cli, tiny_chat_model):
    first = cli("prompt", "-m", str(tiny_chat_model), "-s", "Be brief.", "--max-tokens", "3", "--json", "first question")
    answer = first.json()["text"]
    second = cli("prompt", "-c", "--max-tokens", "3", "--json", "--show-prompt", "second question").json()
    text = second["rendered_prompt"]["text"]
    assert second["model"] == str(tiny_chat_model)  # the conversation's model is reused
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text
    assert f"first question<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>" in text
    assert second["conversation_id"] == first.json()["conversation_id"]


def test_no_log_and_logs_listing(cli, tiny_chat_model):
    cli("prompt", "-m", str(tiny_chat_model), "--max-tokens", "2", "--no-log", "secret question")
    cli("prompt", "-m", str(tiny_chat_model), "--max-tokens", "2", "logged question")
    rows = cli("logs", "--json").json()
    assert [r["prompt"] for r in rows] == ["logged question"]
    assert rows[0]["params"]["max_tokens"] == 2


@pytest.mark.parametrize("args, code, message", [
    (("prompt", "-m", "nosuchmodel", "hi"), 3, "unknown model 'nosuchmodel'"),
    (("prompt", ""), 2, "empty prompt"),
    (("prompt", "--temperature", "3", "hi"), 2, "Invalid value for '--temperature'"),
    (("prompt", "--top-k", "-1", "hi"), 2, "Invalid value for '--top-k'"),
    (("prompt", "--shots", "missing.jsonl", "hi"), 2, "shots file not found"),
    (("prompt", "-m", "openai:gpt-4o-mini", "hi"), 4, "no OpenAI API key"),
])
def test_errors_are_one_line_with_exit_codes(cli, args, code, message):
    r = cli(*args)
    assert r.code == code, r.err
    assert message in r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert r.out == ""


def test_malformed_project_config_is_reported(cli):
    with open("llmctl.toml", "w") as f:
        f.write("[sampling]\ntop_p = 7\n")
    r = cli("prompt", "hi")
    assert r.code == 2
    assert "llmctl.toml: 'sampling.top_p' must be a number from 0 to 1, got 7" in r.err


def test_config_file_flag_and_env_reach_the_request(cli, tmp_path, tiny_chat_model, monkeypatch):
    extra = tmp_path / "extra.toml"
    extra.write_text(f'model = "{tiny_chat_model}"\n[sampling]\nmax_tokens = 3\ntemperature = 0\n')
    monkeypatch.setenv("LLMCTL_SAMPLING_TOP_K", "5")
    doc = cli("--config", str(extra), "prompt", "--json", "hi").json()
    assert doc["params"]["max_tokens"] == 3 and doc["params"]["top_k"] == 5
    assert doc["usage"]["completion_tokens"] == 3


def test_prompt_against_an_openai_compatible_server(cli, monkeypatch):
    from tests.fake_openai import FakeOpenAI

    key = "sk-cli-secret-777"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with FakeOpenAI(api_key=key) as server:
        r = cli("prompt", "--base-url", server.url, "-m", "fake-model", "hello world")
        assert (r.code, r.out) == (0, "Echo: hello world\n"), r.err
        cli("models", "add", "served", "fake-model", "--base-url", server.url)
        table = cli("prompt", "-m", "served", "--top-probs", "3", "hi")
        assert "Echo:" in table.out and "0.5000" in table.out
        refused = cli("prompt", "--base-url", server.url, "-m", "missing-model", "hi")
        assert refused.code == 3 and "not found" in refused.err
    home = __import__("os").environ["LLMCTL_HOME"]
    for path in __import__("pathlib").Path(home).rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_ctrl_c_is_exit_130_without_a_traceback(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.fake_openai import FakeOpenAI

    root = Path(__file__).resolve().parent.parent
    with FakeOpenAI() as server:
        server.faults.append(("sleep", 5.0))
        env = {**os.environ, "PYTHONPATH": str(root), "LLMCTL_HOME": str(tmp_path / "h")}
        # SIGINT back to its default in the child: a run started as a background job of a script inherits it
        # ignored, and Python then raises no KeyboardInterrupt at all (the prompt would simply finish).
        proc = subprocess.Popen([sys.executable, "-m", "llmctl", "prompt", "--base-url", server.url, "-m", "fake-model",
                                 "hi"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 30
        while not server.requests and time.monotonic() < deadline:  # wait until the request is in flight
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip() == "error: interrupted" and "Traceback" not in err
