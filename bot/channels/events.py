"""Idempotency of webhook deliveries: which events (and signed requests) were already handled.

Platforms retry when we are slow and an attacker may resend a captured request, so every delivery
is claimed in the database before it reaches the matcher. The claim is an insert under a unique
(platform, event_id) constraint, so it is atomic across worker processes and survives restarts;
records older than `webhook_event_ttl_seconds` are purged (the TTL is at least the longest
timestamp window, so a replay inside the window always finds its record).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from bot.store import Store

log = logging.getLogger("faqbot")

PURGE_EVERY_SECONDS = 600.0
MAX_EVENT_ID_CHARS = 200


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a delivery: new, or a repeat (with what the first delivery answered, if done)."""

    new: bool
    previous_reply: str | None = None


def event_key(event_id: str) -> str:
    """Event ids longer than the column are stored as their hash (still unique per id)."""
    if len(event_id) <= MAX_EVENT_ID_CHARS:
        return event_id
    return "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


class EventLog:
    """Claims deliveries in the store; blocking database work runs in the thread pool."""

    def __init__(self, store: Store, ttl_seconds: float) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self._last_purge = 0.0
        self._purge_lock = threading.Lock()

    def _claim(self, platform: str, event_id: str) -> Claim:
        self._purge_now_and_then()
        if self.store.claim_event(platform, event_key(event_id), ttl_seconds=self.ttl_seconds):
            return Claim(True)
        return Claim(False, self.store.event_reply(platform, event_key(event_id)))

    async def claim(self, platform: str, event_id: str) -> Claim:
        return await run_in_threadpool(self._claim, platform, event_id)

    async def claim_signature(self, platform: str, signature: str) -> bool:
        """True the first time a signed request is seen; False for an exact replay of it."""
        digest = "sig:" + hashlib.sha256(signature.encode()).hexdigest()
        return await run_in_threadpool(self.store.claim_event, platform, digest, ttl_seconds=self.ttl_seconds)

    async def remember_reply(self, platform: str, event_id: str, reply: str) -> None:
        await run_in_threadpool(self.store.set_event_reply, platform, event_key(event_id), reply)

    async def release(self, platform: str, event_id: str) -> None:
        await run_in_threadpool(self.store.release_event, platform, event_key(event_id))

    def _purge_now_and_then(self) -> None:
        now = time.monotonic()
        with self._purge_lock:
            if now - self._last_purge < PURGE_EVERY_SECONDS:
                return
            self._last_purge = now
        removed = self.store.purge_events(ttl_seconds=self.ttl_seconds)
        if removed:
            log.info("purged %d expired webhook event ids", removed)
