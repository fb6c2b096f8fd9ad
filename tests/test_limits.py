"""Limits on a real server: token buckets per client, 429 + Retry-After, body cap, batch caps,
request timeout, bounded encoder queue, request ids in responses and JSON logs, /metrics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import http.client
import io
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bot.limits import DRAIN_MAX_BYTES, DRAIN_SECONDS, drain_body
from bot.logging_setup import JsonFormatter, RequestIdFilter, request_id_from, request_id_var
from bot.shared_state import BucketSpec, LocalBuckets, SharedState
from tests.conftest import TINY_KB, serve_app


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock)
    spec = BucketSpec(rate=2.0, burst=3)  # 2 tokens per second
    assert [buckets.take("a", spec) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("a", spec)
    assert wait == pytest.approx(0.5)  # one token comes back after 1/rate seconds
    assert buckets.take("b", spec) == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert buckets.take("a", spec) == 0.0
    assert buckets.take("a", spec) > 0
    clock.now += 100  # refills to the burst, never beyond
    assert [buckets.take("a", spec) for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert buckets.take("a", spec) > 0


def test_shared_state_without_redis_is_local_and_not_degraded() -> None:
    shared = SharedState(None)
    assert shared.backend == "local" and not shared.degraded
    assert shared.status() == {"backend": "local", "redis_configured": False, "degraded": False, "error": None}
    assert shared.claim_event("generic", "e1", 60) is None  # the database event log decides
    spec = BucketSpec(rate=1.0, burst=1)
    assert shared.take("k", spec) == 0.0 and shared.take("k", spec) > 0


def test_request_ids_are_reused_only_when_they_are_plain_tokens() -> None:
    assert request_id_from("abc-123_x.y:z") == "abc-123_x.y:z"
    for bad in (None, "", "has space", "new\nline", "x" * 129, '"><script>'):
        generated = request_id_from(bad)
        assert generated != bad and len(generated) == 32 and generated.isalnum()


def test_json_log_lines_carry_the_request_id_and_extra_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("faqbot.test_limits")
    logger.addHandler(handler)
    token = request_id_var.set("req-42")
    try:
        logger.warning("hello %s", "世界", extra={"status": 429})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        request_id_var.reset(token)
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "hello 世界" and first["request_id"] == "req-42" and first["status"] == 429
    assert first["level"] == "warning" and first["logger"] == "faqbot.test_limits" and first["ts"].endswith("Z")
    assert second["request_id"] == "req-42" and "ValueError: boom" in second["exc"]


# --- on a real server ----------------------------------------------------------------------------


def _chat(base: str, message: str, session: str | None = None, **headers: str) -> httpx.Response:
    body: dict[str, object] = {"message": message}
    if session is not None:
        body["session_id"] = session
    return httpx.post(base + "/chat", json=body, headers=headers, timeout=30)


def _assert_429(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["status"] == "error" and response.json()["error"]["code"] == "rate_limited"
    assert response.headers["x-request-id"]


@pytest.mark.slow
def test_chat_is_limited_per_session_and_per_ip(make_settings, bundled_encoder) -> None:
    from admin.web.app import build_app

    settings = make_settings(rate_limit_enabled=True, rate_limit_exempt_ips=[], rate_limit_chat_burst=3, rate_limit_chat_per_minute=6, rate_limit_ip_burst=8,
                             rate_limit_ip_per_minute=6)
    with serve_app(build_app(settings, encoder=bundled_encoder)) as base:
        assert [_chat(base, "怎么退货", "alice").status_code for _ in range(3)] == [200, 200, 200]
        _assert_429(_chat(base, "怎么退货", "alice"))
        assert _chat(base, "怎么退货", "bob").status_code == 200  # another session, its own bucket
        # Without a session the IP is the client; rotating session ids hits the per-IP ceiling.
        statuses = [_chat(base, "怎么退货", f"rotating-{i}").status_code for i in range(6)]
        # 8 per IP, and every request counts (the refused one too): 3 + 1 + 1 + 3 allowed.
        assert statuses == [200, 200, 200, 429, 429, 429]
        # Feedback shares the chat family; health, readiness and metrics are never limited.
        assert all(httpx.get(base + p, timeout=10).status_code == 200 for p in ("/healthz", "/readyz", "/metrics"))
        metrics = httpx.get(base + "/metrics", timeout=10).text
        assert 'faqbot_rate_limited_total{family="chat"} 4.0' in metrics
        assert 'faqbot_http_requests_total{route="/chat",status="429"} 4.0' in metrics
        assert 'faqbot_http_requests_total{route="/chat",status="200"} 7.0' in metrics


@pytest.mark.slow
def test_similarity_and_webhooks_are_limited_per_ip(make_settings, bundled_encoder) -> None:
    from admin.web.app import build_app

    secret = "s3cret-for-the-generic-webhook"
    settings = make_settings(rate_limit_enabled=True, rate_limit_exempt_ips=[], rate_limit_similarity_burst=2, rate_limit_similarity_per_minute=6,
                             rate_limit_webhook_burst=2, rate_limit_webhook_per_minute=6, webhook_secret=secret)
    with serve_app(build_app(settings, encoder=bundled_encoder)) as base:
        pair = {"sentence_a": "怎么退货", "sentence_b": "退货流程"}
        assert [httpx.post(base + "/similarity", json=pair, timeout=30).status_code for _ in range(2)] == [200, 200]
        _assert_429(httpx.post(base + "/similarity", json=pair, timeout=30))
        _assert_429(httpx.post(base + "/v1/embeddings", json={"input": "你好"}, timeout=30))  # same family

        def signed(message: str) -> httpx.Response:
            raw = json.dumps({"message": message}).encode()
            stamp = str(int(time.time()))
            signature = hmac.new(secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
            return httpx.post(base + "/webhooks/generic", content=raw, timeout=30, headers={
                "content-type": "application/json", "x-faqbot-timestamp": stamp, "x-faqbot-signature": signature})

        assert signed("怎么退货").status_code == 200
        assert httpx.post(base + "/webhooks/generic", content=b"{}", timeout=30).status_code == 401  # counts too
        _assert_429(signed("可以开票吗"))
        metrics = httpx.get(base + "/metrics", timeout=10).text
        assert 'faqbot_rate_limited_total{family="webhook"} 1.0' in metrics
        assert 'route="/webhooks/{platform}",status="429"' in metrics


@pytest.mark.slow
def test_body_cap_batch_caps_and_request_ids(make_settings, bundled_encoder, caplog) -> None:
    from admin.web.app import build_app

    caplog.set_level(logging.INFO, logger="faqbot.access")
    settings = make_settings(max_body_bytes=4096)
    with serve_app(build_app(settings, encoder=bundled_encoder)) as base:
        big = json.dumps({"message": "退货" * 3000})
        r = httpx.post(base + "/chat", content=big, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

        def chunks():  # no Content-Length: the cap is counted while streaming
            for _ in range(20):
                yield b"x" * 1000

        r = httpx.post(base + "/similarity", content=chunks(), timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    with serve_app(build_app(make_settings(), encoder=bundled_encoder)) as base:
        r = httpx.post(base + "/similarity", json={"pairs": [["退货", "退款"]] * 257}, timeout=30)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        r = httpx.post(base + "/v1/embeddings", json={"input": ["你好"] * 257}, timeout=30)
        assert r.status_code == 422 and r.json()["error"]["code"] == "batch_too_large"
        ok = httpx.post(base + "/similarity", json={"pairs": [["退货", "退款"]] * 256}, timeout=60)
        assert ok.status_code == 200 and len(ok.json()["results"]) == 256

        given = _chat(base, "怎么退货", "rid", **{"X-Request-ID": "trace-abc.123"})
        assert given.headers["x-request-id"] == "trace-abc.123"
        fresh = _chat(base, "怎么退货", "rid")
        assert len(fresh.headers["x-request-id"]) == 32
        assert httpx.get(base + "/nowhere", timeout=10).headers["x-request-id"]
    ids = {getattr(r, "request_id", None) for r in caplog.records if r.name == "faqbot.access"}
    assert {"trace-abc.123", fresh.headers["x-request-id"]} <= ids
    line = next(r for r in caplog.records if getattr(r, "request_id", None) == "trace-abc.123")
    assert line.status == 200 and line.route == "/chat" and line.method == "POST"


class SlowEncoder:
    """The bundled encoder, but a question containing 慢 takes `delay` seconds (a stuck backend)."""

    def __init__(self, inner, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.dim = inner.dim
        self.fingerprint = inner.fingerprint
        self.name = inner.name

    def encode_queries(self, texts):
        if any("慢" in t for t in texts):
            time.sleep(self.delay)
        return self.inner.encode_queries(texts)

    def encode_passages(self, texts):
        return self.inner.encode_passages(texts)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.slow
def test_a_slow_call_times_out_and_a_full_queue_answers_503_at_once(make_settings, bundled_encoder) -> None:
    from admin.web.app import build_app

    settings = make_settings(request_timeout_seconds=0.8, queue_size=2, max_batch=2, cache_size=0)
    encoder = SlowEncoder(bundled_encoder, delay=1.5)
    with serve_app(build_app(settings, encoder=encoder)) as base:
        started = time.monotonic()
        r = _chat(base, "慢慢来的问题", "slow")
        assert r.status_code == 503 and r.json()["error"]["code"] == "timeout"
        assert r.headers["retry-after"] and time.monotonic() - started < 1.4
        time.sleep(1.0)  # let the stuck call finish
        # Many slow questions at once: the bounded queue refuses the excess with 503 overloaded at once.
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda i: _chat(base, f"慢问题{i}", f"s{i}"), range(12)))
        codes = {r.json()["error"]["code"] for r in results if r.status_code == 503}
        assert "overloaded" in codes, [r.text for r in results]
        assert all(r.status_code in (200, 503) for r in results)
        time.sleep(1.5 * 3)
        ok = _chat(base, "怎么退货", "after")
        assert ok.status_code == 200 and ok.json()["faq_id"] == "return_howto"
        metrics = httpx.get(base + "/metrics", timeout=10).text
        assert 'faqbot_request_timeouts_total{family="chat"}' in metrics
        assert "faqbot_encoder_overloaded_total" in metrics


def test_limits_disabled_lets_everything_through(make_settings) -> None:
    from bot.limits import Limits

    limits = Limits.from_settings(make_settings(rate_limit_enabled=False))
    assert limits.enabled is False
    limits = Limits.from_settings(make_settings(rate_limit_enabled=True, rate_limit_exempt_ips=[], rate_limit_chat_per_minute=120,
                                                rate_limit_chat_burst=7))
    assert limits.enabled and limits.chat == BucketSpec(rate=2.0, burst=7)


def test_local_buckets_are_thread_safe() -> None:
    buckets = LocalBuckets()
    spec = BucketSpec(rate=0.001, burst=500)
    allowed = []
    lock = threading.Lock()

    def hammer() -> None:
        mine = sum(1 for _ in range(200) if buckets.take("shared", spec) == 0.0)
        with lock:
            allowed.append(mine)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 500  # exactly the burst, never more, under contention
    assert np.isfinite(buckets.take("shared", spec))


# --- the 413 of an oversized body, for every kind of client ----------------------------------------

FIVE_MB = 5_000_000  # over the default 1 MB cap, within what is drained


def test_drain_body_reads_to_the_end_within_its_bounds() -> None:
    async def run() -> None:
        messages = iter([{"type": "http.request", "body": b"x" * 10, "more_body": True},
                         {"type": "http.request", "body": b"y", "more_body": False}])

        async def whole() -> dict:
            return next(messages)

        assert await drain_body(whole) is True

        calls = 0

        async def endless() -> dict:
            nonlocal calls
            calls += 1
            return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

        assert await drain_body(endless, max_bytes=10_000) is False
        assert calls == 11  # stops once past the bound

        async def stalled() -> dict:
            await asyncio.sleep(3600)
            return {}

        started = time.monotonic()
        assert await drain_body(stalled, seconds=0.2) is False
        assert time.monotonic() - started < 1.0

        async def gone() -> dict:
            return {"type": "http.disconnect"}

        assert await drain_body(gone) is True

    asyncio.run(run())


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory, bundled_encoder) -> Iterator[tuple[str, int]]:
    """A real server with the default body cap; yields (host, port)."""
    from admin.web.app import build_app
    from bot.settings import Settings

    root: Path = tmp_path_factory.mktemp("capped")
    (root / "kb").mkdir()
    (root / "kb" / "faq.yaml").write_text(TINY_KB, encoding="utf-8")
    with serve_app(build_app(Settings(kb=root / "kb", data_dir=root / "var"), encoder=bundled_encoder)) as base:
        host, port = base.removeprefix("http://").split(":")
        yield host, int(port)


def _assert_413(body: bytes) -> None:
    assert json.loads(body) == {"status": "error", "error": {"code": "payload_too_large",
                                                             "message": "request body over 1000000 bytes"}}


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and when its first byte came (monotonic)."""
    data, first = b"", 0.0
    while chunk := sock.recv(65536):
        first = first or time.monotonic()
        data += chunk
    return data, first


@pytest.mark.slow
def test_urllib_posting_5_mb_reads_the_413_not_a_reset(capped_server) -> None:
    """urllib writes the whole body before it reads, and asks for `Connection: close`."""
    host, port = capped_server
    for _ in range(3):
        request = urllib.request.Request(f"http://{host}:{port}/chat", data=b"x" * FIVE_MB,
                                         headers={"Content-Type": "application/json"})
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 413
        _assert_413(refused.value.read())
        assert time.monotonic() - started < DRAIN_SECONDS  # drained to its end, not cut off by the time bound


@pytest.mark.slow
def test_a_chunked_5_mb_body_without_content_length_reads_the_413(capped_server) -> None:
    host, port = capped_server
    conn = http.client.HTTPConnection(host, port, timeout=30)
    chunks = (b"x" * 50_000 for _ in range(FIVE_MB // 50_000))  # an iterable body: http.client sends it chunked
    conn.request("POST", "/chat", body=chunks, headers={"Content-Type": "application/json",
                                                        "Connection": "close"})  # as urllib asks
    response = conn.getresponse()
    assert response.status == 413 and response.getheader("Transfer-Encoding") is None
    _assert_413(response.read())
    conn.close()


@pytest.mark.slow
def test_a_streamed_body_that_ended_just_past_the_cap_is_closed_at_once(capped_server) -> None:
    size = 1_000_001  # one chunk, over the cap by a byte, and the body's end right behind it
    with socket.create_connection(capped_server, timeout=30) as sock:
        sock.sendall(b"POST /chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % size + b"x" * size + b"\r\n0\r\n\r\n")
        started = time.monotonic()
        reply, _ = _read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 413")
    _assert_413(reply.partition(b"\r\n\r\n")[2])
    assert time.monotonic() - started < DRAIN_SECONDS  # nothing left to drain: no waiting for more


@pytest.mark.slow
def test_a_stalled_body_gets_the_413_at_once_and_the_close_after_the_drain_time(capped_server) -> None:
    with socket.create_connection(capped_server, timeout=30) as sock:
        sock.sendall(b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5000000\r\n\r\n")  # and then nothing
        started = time.monotonic()
        reply, first = _read_until_closed(sock)
    closed = time.monotonic() - started
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head.lower()
    _assert_413(body)
    assert first - started < DRAIN_SECONDS / 2  # answered before draining, as a lingering close does
    assert DRAIN_SECONDS - 0.5 < closed < DRAIN_SECONDS + 5


@pytest.mark.slow
def test_a_client_waiting_for_100_continue_is_refused_at_once_without_a_drain(capped_server) -> None:
    with socket.create_connection(capped_server, timeout=30) as sock:
        sock.sendall(b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n")
        started = time.monotonic()
        reply, _ = _read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 413")  # no `100 Continue`: the body is never invited
    _assert_413(reply.partition(b"\r\n\r\n")[2])
    assert time.monotonic() - started < DRAIN_SECONDS


@pytest.mark.slow
def test_a_body_far_past_the_drain_bound_is_cut_off_in_bounded_time(capped_server) -> None:
    host, port = capped_server
    with socket.create_connection(capped_server, timeout=30) as sock:
        sock.sendall(b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000000\r\n\r\n")
        started = time.monotonic()
        block, sent = b"x" * 65536, 0
        try:
            while time.monotonic() - started < 60:
                sock.sendall(block)
                sent += len(block)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server read its bound, then closed; a TimeoutError (a hang) fails the test
        else:
            pytest.fail(f"still accepting the body after 60 s ({sent} bytes)")
    assert time.monotonic() - started < DRAIN_SECONDS + 10
    assert sent < 100 * DRAIN_MAX_BYTES
    ok = httpx.post(f"http://{host}:{port}/chat", json={"message": "可以开票吗"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["faq_id"] == "invoice"
