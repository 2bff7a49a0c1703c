"""The HTTP layer of `llmctl serve` under abuse: idle and slow connections, bounded threads, abandoned
requests, malformed HTTP from raw sockets, /metrics, and SIGTERM in the middle of a stream."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from llmctl.backends.hf import HFBackend
from llmctl.config import Config
from llmctl.registry import ModelEntry
from tests.serve_helpers import running_server
from tests.tiny_models import build_chat_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_chat_model(tmp_path_factory.mktemp("tiny-http"), context=4096)


@pytest.fixture(scope="module")
def backend(model_dir):
    backend = HFBackend.load(ModelEntry("m", "hf", str(model_dir)), Config())
    backend.eos_ids = set()  # replies end only at their length limit, or when the client leaves
    return backend


@pytest.fixture
def server(backend):
    with running_server({"m": backend}, max_queue=4, read_timeout=2, keep_alive_timeout=2, max_tokens_limit=100_000,
                        shutdown_timeout=0) as srv:
        yield srv


def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=20)


def ask(srv, **extra):
    return client(srv).chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=4, temperature=0, **extra)


def connect(srv) -> socket.socket:
    s = socket.create_connection(srv.server_address[:2], timeout=10)
    return s


def raw(srv, data: bytes, wait: float = 5.0) -> tuple[int, dict | None, bytes]:
    """Send bytes on a fresh connection; the status, JSON body (if any) and raw reply."""
    with connect(srv) as s:
        s.sendall(data)
        s.settimeout(wait)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
                if _complete(reply):  # a keep-alive answer: no need to wait for the server to close
                    break
        except (socket.timeout, ConnectionResetError):
            pass
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head.startswith(b"HTTP/1.1") else 0
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    return status, doc, reply


def _complete(reply: bytes) -> bool:
    head, sep, body = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def test_idle_connections_do_not_block_a_request(server):
    idle = [connect(server) for _ in range(50)]
    try:
        started = time.monotonic()
        assert ask(server).choices[0].finish_reason == "length"
        assert time.monotonic() - started < 5
    finally:
        for s in idle:
            s.close()


def test_500_idle_connections_keep_threads_bounded_and_time_out(server):
    before = threading.active_count()
    idle = [connect(server) for _ in range(500)]
    try:
        time.sleep(0.5)
        assert threading.active_count() <= before + 5  # asyncio: a socket each, not a thread each
        assert ask(server).choices[0].finish_reason == "length"
        time.sleep(3)  # past the 2 s read timeout: the server has closed every idle connection
        closed = 0
        for s in idle:
            s.settimeout(1)
            try:
                closed += s.recv(1) == b""
            except (ConnectionResetError, socket.timeout):
                closed += isinstance(s, socket.socket)
        assert closed == 500
    finally:
        for s in idle:
            s.close()


def test_an_abandoned_request_for_a_billion_tokens_stops(server):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10**9})
    s = connect(server)
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    time.sleep(0.5)
    s.close()  # the client leaves without reading the answer
    deadline = time.monotonic() + 10
    while server.batchers["m"].stats["finished"].get("interrupted", 0) < 1:
        assert time.monotonic() < deadline, "the abandoned generation kept running"
        time.sleep(0.05)
    started = time.monotonic()
    assert ask(server).choices[0].finish_reason == "length" and time.monotonic() - started < 5


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\"", 408),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n", 400),
    (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(2000)) + b"\r\n", 431),
    (b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"\x16\x03\x01garbage not http\r\n\r\n", 400),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 20001\r\n\r\n" + b"[" * 20000 + b"\n", 400),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n\"\\ud800\"", 400),
], ids=["non-numeric-length", "negative-length", "too-large-length", "short-body", "chunked-body",
        "oversized-header", "too-many-headers", "other-method", "garbage", "deep-json", "lone-surrogate"])
def test_http_edge_cases_get_openai_shaped_4xx(server, request_bytes, status, capfd):
    got, doc, reply = raw(server, request_bytes)
    assert got == status, reply[:300]
    assert doc and set(doc["error"]) == {"message", "type", "param", "code"}
    assert ask(server).choices  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_that_leaves_before_the_reply(server, capfd):
    for _ in range(5):
        s = connect(server)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"mod")
        s.close()
    assert ask(server).choices
    assert "Traceback" not in capfd.readouterr().err


def post(srv, text: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(srv.url + "/chat/completions", data=text.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_bad_values_are_400s_naming_the_field(server):
    c = client(server)
    base = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    for field, value in [("max_tokens", "true"), ("stream", '"no"'), ("seed", str(2**64)), ("temperature", "NaN"),
                         ("top_p", "Infinity"), ("repetition_penalty", "-Infinity"), ("top_k", "1e999")]:
        status, doc = post(server, json.dumps(base)[:-1] + f', "{field}": {value}}}')
        assert (status, doc["error"]["param"]) == (400, field), (field, doc)
    # A temperature that would divide logits into infinities decodes greedily.
    tiny = c.chat.completions.create(**base, temperature=1e-40)
    assert tiny.choices[0].message.content == c.chat.completions.create(**base, temperature=0).choices[0].message.content


def parse_metrics(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_in_prometheus_text_format(server):
    import urllib.request

    ask(server)
    list(client(server).chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=5, temperature=0, stream=True))
    with urllib.request.urlopen(server.url.replace("/v1", "/metrics")) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        metrics = parse_metrics(r.read().decode())
    assert metrics['llmctl_requests_total{route="/v1/chat/completions",status="200"}'] == 2
    assert metrics['llmctl_tokens_total{kind="completion"}'] == 9
    assert metrics['llmctl_queue_depth{model="m"}'] == 0
    assert metrics["llmctl_time_to_first_token_seconds_count"] == 2
    assert metrics["llmctl_time_per_output_token_seconds_count"] == 2
    assert metrics['llmctl_batch_size_bucket{le="+Inf"}'] == 7  # one decoding step per token after the first


SERVE_SCRIPT = """
import sys
from llmctl.backends.hf import HFBackend
from llmctl.config import Config
from llmctl.registry import ModelEntry
from llmctl.serve.run import serve_until_stopped
from llmctl.serve.server import ModelServer
backend = HFBackend.load(ModelEntry("m", "hf", sys.argv[1]), Config())
backend.eos_ids = set()
server = ModelServer({"m": backend}, "127.0.0.1", 0, shutdown_timeout=1.0)
print(server.url, flush=True)
serve_until_stopped(server, {"m": backend})
print("stopped", flush=True)
"""


def test_sigterm_mid_stream_ends_it_as_interrupted_and_exits_0(model_dir):
    proc = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, str(model_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        url = proc.stdout.readline().strip()
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=30)
        stream = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], stream=True,
                                           max_tokens=3000, temperature=0)
        chunks = iter(stream)
        next(chunks)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        rest = list(chunks)
        assert rest[-1].choices[0].finish_reason == "interrupted"
        assert 0.5 < time.monotonic() - started < 10  # it ran on for the shutdown timeout, then stopped
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read().strip() == "stopped"
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()


def test_cors_is_off_unless_an_origin_is_given(backend):
    import urllib.request

    for cors, allowed in ((None, None), (["http://app.example"], "http://app.example")):
        with running_server({"m": backend}, cors=cors, shutdown_timeout=0) as srv:
            request = urllib.request.Request(srv.url + "/models", headers={"Origin": "http://app.example"})
            with urllib.request.urlopen(request, timeout=10) as r:
                assert r.headers.get("Access-Control-Allow-Origin") == allowed
            status, _, reply = raw(srv, b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nOrigin: http://app.example\r\n"
                                        b"Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n")
            assert status == (200 if cors else 405)
