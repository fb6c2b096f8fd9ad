"""Limits on a real server: token buckets per client, 429 + Retry-After, body cap, batch caps,
request timeout, bounded encoder queue, request ids in responses and JSON logs, /metrics."""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import io
import json
import logging
import threading
import time

import httpx
import numpy as np
import pytest

from bot.logging_setup import JsonFormatter, RequestIdFilter, request_id_from, request_id_var
from bot.shared_state import BucketSpec, LocalBuckets, SharedState
from tests.conftest import serve_app


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
