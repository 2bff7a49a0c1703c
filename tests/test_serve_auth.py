"""The serve API key kept out of the process list (file or environment), compared in constant time, and
optionally required on /health: a real `llmctl serve` process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llmctl.errors import UsageError
from llmctl.serve.run import required_api_key

KEY = "sk-serve-test-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(url: str, key: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            json.load(r)
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_key_from_a_file_protects_health_and_stays_out_of_the_process_list(tmp_path, tiny_chat_model):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "LLMCTL_HOME": str(tmp_path / "h")}
    env.pop("LLMCTL_SERVE_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "llmctl", "serve", "-m", str(tiny_chat_model), "--port", str(port),
                             "--api-key-file", str(key_file), "--protect-health"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if status(f"{base}/health", KEY) == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the server did not come up")
        assert KEY not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert status(f"{base}/health") == 401
        assert status(f"{base}/health", KEY[:-1]) == 401
        assert status(f"{base}/v1/models", "x" * 200) == 401
        assert status(f"{base}/v1/models", KEY) == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


def test_where_the_key_comes_from(tmp_path):
    assert required_api_key(None, None, {"LLMCTL_SERVE_API_KEY": "env-key"}) == "env-key"
    assert required_api_key("flag-key", None, {"LLMCTL_SERVE_API_KEY": "env-key"}) == "flag-key"
    assert required_api_key(None, None, {}) is None
    (tmp_path / "k").write_text("file-key\nignored second line\n")
    assert required_api_key(None, tmp_path / "k", {"LLMCTL_SERVE_API_KEY": "env-key"}) == "file-key"
    (tmp_path / "empty").write_text("")
    for args, message in (((None, tmp_path / "empty"), "is empty"), ((None, tmp_path / "missing"), "cannot read"),
                          (("a", tmp_path / "k"), "not both")):
        with pytest.raises(UsageError, match=message):
            required_api_key(*args, {})
