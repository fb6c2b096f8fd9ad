"""Welcome suggestions (猜你想问): what customers asked most in the last week, else the KB's first FAQs.

The most answered FAQs of the last `WINDOW` in the chat log, shown by their canonical question (never a
customer's own wording: a log row may hold personal details), skipping FAQs no longer in the index or
outside their validity window, and topped up from the KB's first FAQs in YAML order. Counted once per
`CACHE_SECONDS` per index version: a greeting must not cost a chat-log scan per page view.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from bot.matcher import Matcher
from bot.store import Store, utcnow

WINDOW = timedelta(days=7)
CACHE_SECONDS = 60.0
MAX_SUGGESTIONS = 10


@dataclass(frozen=True)
class Suggestion:
    faq_id: str
    question: str
    source: str  # "asked" (most asked this week) or "kb" (the KB's first FAQs)


class Suggestions:
    """The welcome suggestions of the live index, recounted at most once a minute."""

    def __init__(self, store: Store, *, kb: str | None = None) -> None:
        self.store = store
        self.kb = kb  # count this KB's turns only (None: every KB's)
        self._lock = threading.Lock()
        self._cached: tuple[str, float, list[tuple[str, int]]] | None = None

    def _asked(self, version: str) -> list[tuple[str, int]]:
        with self._lock:
            cached = self._cached
        if cached is not None and cached[0] == version and time.monotonic() - cached[1] < CACHE_SECONDS:
            return cached[2]
        now = utcnow()
        counts = self.store.top_matched_faqs(now - WINDOW, now + timedelta(seconds=1), limit=4 * MAX_SUGGESTIONS,
                                           kb=self.kb)
        with self._lock:
            self._cached = (version, time.monotonic(), counts)
        return counts

    def for_matcher(self, matcher: Matcher, limit: int) -> list[Suggestion]:
        """Up to `limit` suggestions for the index `matcher` reads, the FAQs it would offer now only."""
        index = matcher.index
        out: list[Suggestion] = []
        seen: set[str] = set()
        for faq_id, _count in self._asked(index.version):
            faq = index.faq_by_id.get(faq_id)
            if faq is not None and faq_id not in seen and matcher.offered(faq):
                out.append(Suggestion(faq_id, faq.question, "asked"))
                seen.add(faq_id)
            if len(out) == limit:
                return out
        for faq in index.faqs:
            if len(out) == limit:
                break
            if faq.id not in seen and matcher.offered(faq):
                out.append(Suggestion(faq.id, faq.question, "kb"))
                seen.add(faq.id)
        return out
