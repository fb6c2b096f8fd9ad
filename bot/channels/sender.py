"""Outbound replies (Feishu, Slack): one small sender with timeouts, retries with backoff, dead letters.

A reply is tried `outbound_attempts` times; connection errors, timeouts, HTTP 429 and 5xx (and
platform answers the caller marks retryable) wait `backoff * 2**n` seconds (or the platform's
`Retry-After`, capped) and try again. Anything else, or the last failure, is written to the
`dead_letters` table with the payload and the error, so an operator can see and resend it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from starlette.concurrency import run_in_threadpool

from bot.store import Store
from faq.errors import FaqbotError

log = logging.getLogger("faqbot")

MAX_RETRY_AFTER_SECONDS = 30.0


class DeliveryError(FaqbotError):
    """One failed attempt; `retryable` says whether trying again can help."""

    code = "delivery_failed"

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after  # the platform's own Retry-After, if it sent one


@dataclass(frozen=True)
class RetryPolicy:
    timeout_seconds: float
    attempts: int
    backoff_seconds: float

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER_SECONDS)
        return self.backoff_seconds * 2 ** (attempt - 1)


# A check looks at the platform's answer and raises DeliveryError when it is not a success
# (default: `check_http_status`; platform checks also read the JSON body).
ResponseCheck = Callable[[httpx.Response], None]
# Headers for one attempt (e.g. a fresh access token); may raise DeliveryError.
AuthHeaders = Callable[[httpx.AsyncClient], Awaitable[dict[str, str]]]


def check_http_status(response: httpx.Response) -> None:
    """2xx is success; 429 and 5xx are worth retrying; other statuses will not get better."""
    if response.is_success:
        return
    retry_after = response.headers.get("retry-after")
    retryable = response.status_code == 429 or response.status_code >= 500
    raise DeliveryError(f"HTTP {response.status_code}: {response.text[:300]}", retryable=retryable,
                        retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None)


class Sender:
    """Delivers JSON payloads to platform APIs; never raises (failures end as dead letters)."""

    def __init__(self, store: Store, policy: RetryPolicy) -> None:
        self.store = store
        self.policy = policy

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.policy.timeout_seconds, follow_redirects=False)

    async def deliver(self, *, platform: str, event_id: str | None, url: str, payload: dict[str, object],
                      auth: AuthHeaders | None = None, check: ResponseCheck | None = None) -> bool:
        """POST `payload` to `url` with retries; True once the platform accepted it."""
        error = "not attempted"
        attempt = 0
        async with self.client() as client:
            for attempt in range(1, self.policy.attempts + 1):
                try:
                    headers = await auth(client) if auth else {}
                    response = await client.post(url, json=payload, headers=headers)
                    (check or check_http_status)(response)
                    return True
                except DeliveryError as exc:
                    error, retryable, retry_after = str(exc), exc.retryable, exc.retry_after
                except httpx.HTTPError as exc:  # timeouts, refused connections, protocol errors
                    error, retryable, retry_after = f"{type(exc).__name__}: {exc}", True, None
                log.warning("%s reply attempt %d/%d failed: %s", platform, attempt, self.policy.attempts, error)
                if not retryable or attempt == self.policy.attempts:
                    break
                await asyncio.sleep(self.policy.delay(attempt, retry_after))
        await self.dead_letter(platform=platform, event_id=event_id, url=url, payload=payload, attempts=attempt,
                               error=error)
        return False

    async def dead_letter(self, *, platform: str, event_id: str | None, url: str, payload: dict[str, object],
                          attempts: int, error: str) -> None:
        letter_id = await run_in_threadpool(lambda: self.store.add_dead_letter(
            platform=platform, event_id=event_id, target=url, payload=payload, attempts=attempts, error=error))
        log.error("%s reply for event %s kept as dead letter %d: %s", platform, event_id, letter_id, error)
