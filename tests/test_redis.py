"""Shared state through a real redis-server on loopback: limits, cache and webhook ids across replicas,
and a replica that loses Redis keeps answering (degraded, and says so)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.shared_state import BucketSpec, SharedState
from tests.conftest import free_port, serve_app

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None,
                                reason="Debian's redis-server is not installed (`make test` installs it as root)")


class RedisProcess:
    """A throwaway redis-server on a free loopback port (no persistence), restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_two_replicas_share_one_token_bucket(redis_server: RedisProcess) -> None:
    a = SharedState(redis_server.url)
    b = SharedState(redis_server.url)
    try:
        assert a.backend == "redis" and not a.degraded
        spec = BucketSpec(rate=0.01, burst=3)
        assert [a.take("chat:s:x", spec), b.take("chat:s:x", spec), a.take("chat:s:x", spec)] == [0.0, 0.0, 0.0]
        wait_a, wait_b = a.take("chat:s:x", spec), b.take("chat:s:x", spec)
        assert wait_a > 50 and wait_b > 50  # about 1/rate = 100 s, from Redis's clock
        assert a.take("chat:s:other", spec) == 0.0
        assert len(a.local_buckets) == 0  # nothing fell back to local buckets
    finally:
        a.close()
        b.close()


def _replica(make_settings, encoder, redis_url: str, **overrides: object):
    from admin.web.app import build_app

    settings = make_settings(redis_url=redis_url, redis_retry_seconds=0.3, rate_limit_enabled=True, rate_limit_exempt_ips=[], **overrides)
    return build_app(settings, encoder=encoder)


def _signed(base: str, secret: str, body: dict[str, object]) -> httpx.Response:
    raw = json.dumps(body, ensure_ascii=False).encode()
    stamp = str(int(time.time()))
    signature = hmac.new(secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    return httpx.post(base + "/webhooks/generic", content=raw, timeout=30, headers={
        "content-type": "application/json", "x-faqbot-timestamp": stamp, "x-faqbot-signature": signature})


@pytest.mark.slow
def test_replicas_share_limits_cache_and_webhook_ids(make_settings, bundled_encoder, redis_server, tmp_path) -> None:
    secret = "generic-webhook-secret-1"
    common = {"webhook_secret": secret, "rate_limit_chat_burst": 3, "rate_limit_chat_per_minute": 1}
    app_a = _replica(make_settings, bundled_encoder, redis_server.url, **common)
    app_b = _replica(make_settings, bundled_encoder, redis_server.url, **common)
    with serve_app(app_a) as a, serve_app(app_b) as b:
        # A question encoded on A is a cache hit on B (through Redis), with the same answer.
        question = "快递一般几天能到北京"
        first = httpx.post(a + "/chat", json={"message": question, "session_id": "c1"}, timeout=30).json()
        cache_b = app_b.state.service.cache
        deadline = time.monotonic() + 5
        while cache_b.shared.get_bytes(cache_b._redis_key(question)) is None and time.monotonic() < deadline:
            time.sleep(0.05)  # writes to Redis are queued off the request path
        second = httpx.post(b + "/chat", json={"message": question, "session_id": "c2"}, timeout=30).json()
        assert cache_b.shared_hits == 1
        assert (second["faq_id"], second["similarity"]) == (first["faq_id"], first["similarity"])
        assert 'faqbot_query_vectors_total{source="cache"} 1.0' in httpx.get(b + "/metrics", timeout=10).text

        # One session's bucket spans both replicas: 3 in total, then 429 wherever it asks.
        codes = [httpx.post(url + "/chat", json={"message": "怎么退货", "session_id": "shared"}, timeout=30).status_code
                 for url in (a, b, a, b)]
        assert codes == [200, 200, 200, 429]

        # A platform retry of the same event on the other replica is a duplicate, answered once.
        event = {"message": "周末客服上班吗", "session_id": "wx-user", "event_id": "evt-42"}
        r1 = _signed(a, secret, event)
        time.sleep(1.1)  # a re-signed retry carries a new timestamp, so a new signature
        r2 = _signed(b, secret, event)
        assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
        assert r1.json()["duplicate"] is False and r2.json()["duplicate"] is True
        assert r2.json()["reply"] == r1.json()["reply"]
    with sqlite3.connect(tmp_path / "var" / "faqbot.db") as db:
        (logged,) = db.execute("SELECT count(*) FROM misses WHERE message = ?", ("周末客服上班吗",)).fetchone()
    assert logged == 1


@pytest.mark.slow
def test_a_replica_that_loses_redis_keeps_answering_degraded(make_settings, bundled_encoder, redis_server) -> None:
    app = _replica(make_settings, bundled_encoder, redis_server.url, rate_limit_chat_burst=2,
                   rate_limit_chat_per_minute=1)
    with serve_app(app) as base:
        ready = httpx.get(base + "/readyz", timeout=10).json()
        assert ready["degraded"] is False and ready["shared_state"]["backend"] == "redis"
        assert "faqbot_shared_state_degraded 0.0" in httpx.get(base + "/metrics", timeout=10).text

        redis_server.stop()
        answers = [httpx.post(base + "/chat", json={"message": "怎么退货", "session_id": f"u{i}"}, timeout=30)
                   for i in range(3)]
        assert all(r.status_code == 200 and r.json()["faq_id"] == "return_howto" for r in answers)
        ready = httpx.get(base + "/readyz", timeout=10)
        assert ready.status_code == 200
        body = ready.json()
        assert body["degraded"] is True and body["shared_state"]["backend"] == "local"
        assert body["shared_state"]["error"]
        metrics = httpx.get(base + "/metrics", timeout=10).text
        assert "faqbot_shared_state_degraded 1.0" in metrics and "faqbot_shared_state_redis 0.0" in metrics
        # Local limits still hold while degraded.
        codes = [httpx.post(base + "/chat", json={"message": "怎么退货", "session_id": "solo"}, timeout=30).status_code
                 for _ in range(3)]
        assert codes == [200, 200, 429]
        # Redis comes back: the probe notices within a few retry intervals.
        redis_server.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and httpx.get(base + "/readyz", timeout=10).json()["degraded"]:
            time.sleep(0.1)
        assert httpx.get(base + "/readyz", timeout=10).json()["shared_state"]["backend"] == "redis"


def test_redis_unreachable_at_start_is_degraded_not_fatal() -> None:
    dead = SharedState(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2, retry_seconds=60)
    try:
        assert dead.degraded and dead.backend == "local"
        assert dead.take("k", BucketSpec(1.0, 1)) == 0.0 and dead.take("k", BucketSpec(1.0, 1)) > 0
        assert dead.get_bytes("qv:x") is None and dead.claim_event("generic", "e", 60) is None
    finally:
        dead.close()
