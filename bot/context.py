"""Follow-up questions: a short elliptical message read together with the session's last question.

"那国际的呢", "还有呢", "要多久" say nothing alone; after "国内快递几天到" they mean "国际快递几天到". When
such a message (at most `MAX_FOLLOWUP_CHARS` meaningful characters) does not clear the decision by
itself, the service asks again with the session's last question in front of it and answers from that
when it clears (the response says `context_used: true`). The last question lives `CONTEXT_SECONDS` in
this process, and in Redis when FAQBOT_REDIS_URL is set, so a follow-up may land on another replica.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from bot.shared_state import SharedState
from index.lexical import lexical_form

CONTEXT_SECONDS = 20 * 60
MAX_FOLLOWUP_CHARS = 8
MAX_SESSIONS = 50_000


def is_followup(clean: str) -> bool:
    """Short enough to lean on the previous question (punctuation and spaces do not count)."""
    return 0 < len(lexical_form(clean)) <= MAX_FOLLOWUP_CHARS


def with_context(previous: str, followup: str) -> str:
    """The question a follow-up stands for, as the encoder will read it."""
    return f"{previous} {followup}"


class SessionContext:
    """Each session's last question for `CONTEXT_SECONDS` (oldest sessions forgotten past MAX_SESSIONS)."""

    def __init__(self, shared: SharedState | None = None, clock: Callable[[], float] = time.time) -> None:
        self.shared = shared
        self.clock = clock
        self._last: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def last(self, session_id: str) -> str | None:
        now = self.clock()
        with self._lock:
            found = self._last.get(session_id)
        if found is not None and now - found[1] < CONTEXT_SECONDS:
            return found[0]
        if self.shared is not None and self.shared.configured:
            stored = self.shared.get_bytes(self._key(session_id))
            if stored:
                return stored.decode("utf-8", errors="replace")
        return None

    def remember(self, session_id: str, question: str) -> None:
        with self._lock:
            self._last[session_id] = (question, self.clock())
            self._last.move_to_end(session_id)
            while len(self._last) > MAX_SESSIONS:
                self._last.popitem(last=False)
        if self.shared is not None and self.shared.configured:
            self.shared.put_bytes_later(self._key(session_id), question.encode("utf-8"), CONTEXT_SECONDS)

    @staticmethod
    def _key(session_id: str) -> str:
        return f"context:{session_id}"
