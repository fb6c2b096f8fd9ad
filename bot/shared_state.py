"""State that several replicas share through Redis, with an in-process fallback that never stops answering.

With `FAQBOT_REDIS_URL` set, three things live in Redis so that N replicas behind a load balancer
behave like one server:

* rate-limit token buckets (`<ns>:rl:<bucket>`): one atomic Lua script per request, timed by the
  Redis server's clock, so a client cannot get N times its allowance by hitting N replicas;
* the query-embedding cache (`<ns>:qv:<encoder>:<sha256(match_key)>` -> float32 bytes, with a TTL):
  a question one replica encoded is a cache hit on every other one. Each replica keeps its own LRU
  in front (no round trip for its hot questions). Answers are not cached: they are one FAISS
  search of the cached vector against the replica's live index (well under a Redis round trip),
  which keeps every answer consistent with the index version the replica serves;
* webhook event ids (`<ns>:ev:<platform>:<id>`, SET NX with the event TTL, holding the first reply),
  so a platform retry landing on another replica is recognised.

Without Redis everything is in-process (and webhook event ids stay in the database, which
replicas share). When a configured Redis stops answering, the replica does not wait on it: the
first failed call (bounded by `redis_timeout_seconds`) marks the state *degraded*, requests use the
local buckets, the local cache and the database event log, a background probe retries every
`redis_retry_seconds`, and /readyz and /metrics (`faqbot_shared_state_degraded`) say so until
Redis is back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bot.cache import EmbeddingCache

log = logging.getLogger("faqbot")

# Token bucket in one round trip: refill by elapsed server time, take `cost` or say how long to wait.
# The reply is a string because Lua numbers come back from Redis truncated to integers.
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""

_PENDING_REPLY = "\x00pending"
_MAX_LOCAL_BUCKETS = 100_000
_WRITE_QUEUE = 10_000


@dataclass(frozen=True)
class BucketSpec:
    """A token bucket: `rate` tokens per second, holding at most `burst`."""

    rate: float
    burst: int


class LocalBuckets:
    """In-process token buckets (thread-safe); the fallback and the single-replica default."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, spec: BucketSpec, cost: float = 1.0) -> float:
        """0.0 if `cost` tokens were taken, else the seconds until they would be there (nothing taken)."""
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (float(spec.burst), now))
            tokens = min(float(spec.burst), tokens + max(0.0, now - stamp) * spec.rate)
            wait = 0.0
            if tokens >= cost:
                tokens -= cost
            else:
                wait = (cost - tokens) / spec.rate
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > _MAX_LOCAL_BUCKETS:
                self._forget_full(now, spec)
        return wait

    def _forget_full(self, now: float, spec: BucketSpec) -> None:
        """Drop buckets that have refilled completely (they hold no information); bounded memory."""
        idle = spec.burst / spec.rate
        for key in [k for k, (_, stamp) in self._buckets.items() if now - stamp > idle]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class SharedState:
    """Redis when `url` is set and answering, in-process otherwise (see the module docstring)."""

    def __init__(self, url: str | None, *, namespace: str = "faqbot", timeout: float = 0.25,
                 retry_seconds: float = 5.0) -> None:
        self.url = url
        self.namespace = namespace
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.local_buckets = LocalBuckets()
        self.last_error: str | None = None
        self.errors = 0
        self._client: Any = None
        self._script: Any = None
        self._healthy = url is not None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._probe: threading.Thread | None = None
        self._writes: queue.Queue[tuple[str, bytes, int]] = queue.Queue(_WRITE_QUEUE)
        self._writer: threading.Thread | None = None
        if url is not None:
            import redis

            self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                                health_check_interval=0, retry_on_timeout=False)
            self._script = self._client.register_script(_TOKEN_BUCKET_LUA)
            self._writer = threading.Thread(target=self._write_loop, name="faqbot-redis-writer", daemon=True)
            self._writer.start()
            self._check()

    # --- health ----------------------------------------------------------------------------------
    @property
    def configured(self) -> bool:
        return self.url is not None

    @property
    def backend(self) -> str:
        """Where shared state lives right now: `redis`, or `local` (no Redis configured, or degraded)."""
        return "redis" if self.configured and self._healthy else "local"

    @property
    def degraded(self) -> bool:
        """Redis is configured but not answering: limits and cache are per replica until it is back."""
        return self.configured and not self._healthy

    def status(self) -> dict[str, object]:
        """For /readyz."""
        return {"backend": self.backend, "redis_configured": self.configured, "degraded": self.degraded,
                "error": self.last_error if self.degraded else None}

    def _redis(self) -> Any:
        """The client while Redis is healthy, else None (callers then use the local fallback)."""
        return self._client if self._healthy and not self._closed.is_set() else None

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        with self._lock:
            was_healthy, self._healthy = self._healthy, False
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self._probe is None or not self._probe.is_alive():
                self._probe = threading.Thread(target=self._probe_loop, name="faqbot-redis-probe", daemon=True)
                self._probe.start()
        if was_healthy:
            log.error("redis unavailable, using local limits and cache until it is back: %s", self.last_error)

    def _check(self) -> bool:
        try:
            self._client.ping()
        except Exception as exc:  # any client or network error means "not usable now"
            self._failed(exc)
            return False
        return True

    def _probe_loop(self) -> None:
        while not self._closed.wait(self.retry_seconds):
            try:
                self._client.ping()
            except Exception as exc:  # still down: keep the latest reason for /readyz
                self.last_error = f"{type(exc).__name__}: {exc}"
                continue
            with self._lock:
                self._healthy = True
                self._probe = None
            log.warning("redis is back: shared limits and cache resumed")
            return

    def close(self) -> None:
        self._closed.set()
        if self._writer is not None:
            self._writes.put(("", b"", 0))
            self._writer.join(timeout=2)
        if self._client is not None:
            self._client.close()

    # --- rate limits ---------------------------------------------------------------------------
    def take(self, key: str, spec: BucketSpec, cost: float = 1.0) -> float:
        """Take `cost` tokens from bucket `key`: 0.0 if allowed, else seconds to wait (Retry-After)."""
        client = self._redis()
        if client is not None:
            try:
                return float(self._script(keys=[f"{self.namespace}:rl:{key}"], args=[spec.rate, spec.burst, cost]))
            except Exception as exc:  # Redis failed mid-request: this request and the next use local buckets
                self._failed(exc)
        return self.local_buckets.take(key, spec, cost)

    # --- the query-embedding cache --------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes | None:
        client = self._redis()
        if client is None:
            return None
        try:
            return client.get(f"{self.namespace}:{key}")
        except Exception as exc:  # a miss; the caller encodes
            self._failed(exc)
            return None

    def put_bytes_later(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Queue a write (never blocks a request; dropped when Redis is down or the queue is full)."""
        if self._redis() is None:
            return
        with contextlib.suppress(queue.Full):
            self._writes.put_nowait((f"{self.namespace}:{key}", value, ttl_seconds))

    def _write_loop(self) -> None:
        while not self._closed.is_set():
            key, value, ttl = self._writes.get()
            if not key:
                return
            client = self._redis()
            if client is None:
                continue
            try:
                client.set(key, value, ex=ttl)
            except Exception as exc:  # lose this cache entry, go degraded
                self._failed(exc)

    # --- webhook event ids ----------------------------------------------------------------------
    def claim_event(self, platform: str, event_id: str, ttl_seconds: float) -> bool | None:
        """True if new, False if already claimed, None if Redis cannot say (use the database)."""
        client = self._redis()
        if client is None:
            return None
        try:
            return bool(client.set(self._event_key(platform, event_id), _PENDING_REPLY, nx=True,
                                   ex=max(1, int(ttl_seconds))))
        except Exception as exc:
            self._failed(exc)
            return None

    def event_reply(self, platform: str, event_id: str) -> str | None:
        client = self._redis()
        if client is None:
            return None
        try:
            value = client.get(self._event_key(platform, event_id))
        except Exception as exc:
            self._failed(exc)
            return None
        if value is None:
            return None
        text = value.decode("utf-8", "replace")
        return None if text == _PENDING_REPLY else text

    def set_event_reply(self, platform: str, event_id: str, reply: str) -> bool:
        client = self._redis()
        if client is None:
            return False
        try:
            client.set(self._event_key(platform, event_id), reply.encode("utf-8"), xx=True, keepttl=True)
        except Exception as exc:
            self._failed(exc)
            return False
        return True

    def release_event(self, platform: str, event_id: str) -> bool:
        client = self._redis()
        if client is None:
            return False
        try:
            client.delete(self._event_key(platform, event_id))
        except Exception as exc:
            self._failed(exc)
            return False
        return True

    def _event_key(self, platform: str, event_id: str) -> str:
        return f"{self.namespace}:ev:{platform}:{event_id}"


class SharedEmbeddingCache(EmbeddingCache):
    """The replica's LRU in front of the Redis cache: local hit, else Redis hit (then kept locally), else miss.

    `encoder_key()` names the encoder (its fingerprint): vectors of different encoders never mix.
    """

    def __init__(self, capacity: int, shared: SharedState, encoder_key: Callable[[], str], ttl_seconds: int) -> None:
        super().__init__(capacity)
        self.shared = shared
        self._encoder_key = encoder_key
        self._prefix: str | None = None
        self.ttl_seconds = ttl_seconds
        self.shared_hits = 0

    def _redis_key(self, key: str) -> str:
        if self._prefix is None:
            self._prefix = "qv:" + hashlib.sha256(self._encoder_key().encode("utf-8")).hexdigest()[:16]
        return f"{self._prefix}:{hashlib.sha256(key.encode('utf-8')).hexdigest()}"

    def get(self, key: str) -> np.ndarray | None:
        vector = super().get(key)
        if vector is not None or not self.enabled:
            return vector
        raw = self.shared.get_bytes(self._redis_key(key))
        if raw is None or len(raw) % 4:
            return None
        vector = np.frombuffer(raw, dtype=np.float32)
        super().put(key, vector)
        with self._lock:  # the LRU counted a miss above; it was a hit after all
            self.misses -= 1
            self.hits += 1
            self.shared_hits += 1
        return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        super().put(key, vector)
        if self.enabled:
            data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            self.shared.put_bytes_later(self._redis_key(key), data, self.ttl_seconds)


def shared_event_log(base: Any, shared: SharedState) -> Any:
    """Webhook event ids in Redis (falling back to `base`, the database EventLog, when Redis cannot answer)."""
    from starlette.concurrency import run_in_threadpool

    from bot.channels.events import Claim, EventLog, event_key

    class SharedEventLog(EventLog):
        async def claim(self, platform: str, event_id: str) -> Claim:
            return await run_in_threadpool(self._claim_shared, platform, event_key(event_id), event_id)

        def _claim_shared(self, platform: str, key: str, event_id: str) -> Claim:
            claimed = shared.claim_event(platform, key, self.ttl_seconds)
            if claimed is None:
                return self._claim(platform, event_id)
            return Claim(True) if claimed else Claim(False, shared.event_reply(platform, key))

        async def claim_signature(self, platform: str, signature: str) -> bool:
            digest = "sig:" + hashlib.sha256(signature.encode()).hexdigest()
            claimed = await run_in_threadpool(shared.claim_event, platform, digest, self.ttl_seconds)
            if claimed is None:
                return await super().claim_signature(platform, signature)
            return claimed

        async def remember_reply(self, platform: str, event_id: str, reply: str) -> None:
            if not await run_in_threadpool(shared.set_event_reply, platform, event_key(event_id), reply):
                await super().remember_reply(platform, event_id, reply)

        async def release(self, platform: str, event_id: str) -> None:
            if not await run_in_threadpool(shared.release_event, platform, event_key(event_id)):
                await super().release(platform, event_id)

    return SharedEventLog(base.store, base.ttl_seconds)
