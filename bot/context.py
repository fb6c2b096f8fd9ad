"""Follow-up questions: a short elliptical message read together with the session's last question.

"那国际的呢", "还有呢", "要多久" say nothing alone; after "国内快递几天到" they mean "国际快递几天到". When
such a message (at most `MAX_FOLLOWUP_CHARS` meaningful characters) does not clear the decision by
itself, the service asks again with the session's last question in front of it and answers from that
when it clears **with another FAQ than the last question's** (the response says `context_used: true`):
a follow-up adds something, while "今天天气怎么样" after "怎么退货" would only bring back the returns
answer, and stays a miss. The last question lives `CONTEXT_SECONDS` in
this process, and in Redis when FAQBOT_REDIS_URL is set, so a follow-up may land on another replica.
"""

from __future__ import annotations

import json
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

    def __init__(self, shared: SharedState | None = None, clock: Callable[[], float] = time.time, *,
                 kb: str = "default") -> None:
        self.shared = shared
        self.kb = kb  # one session may talk to two KBs of a deployment: their contexts stay apart
        self.clock = clock
        self._last: OrderedDict[str, tuple[str, str | None, float]] = OrderedDict()
        self._lock = threading.Lock()

    def last(self, session_id: str) -> tuple[str, str | None] | None:
        """(the session's last question, the FAQ that answered it or None), while fresh."""
        now = self.clock()
        with self._lock:
            found = self._last.get(session_id)
        if found is not None and now - found[2] < CONTEXT_SECONDS:
            return found[0], found[1]
        if self.shared is not None and self.shared.configured:
            stored = self.shared.get_bytes(self._key(session_id))
            if stored:
                try:
                    question, faq_id = json.loads(stored)
                    return str(question), faq_id if isinstance(faq_id, str) else None
                except (ValueError, TypeError):
                    return None
        return None

    def remember(self, session_id: str, question: str, faq_id: str | None) -> None:
        with self._lock:
            self._last[session_id] = (question, faq_id, self.clock())
            self._last.move_to_end(session_id)
            while len(self._last) > MAX_SESSIONS:
                self._last.popitem(last=False)
        if self.shared is not None and self.shared.configured:
            value = json.dumps([question, faq_id], ensure_ascii=False).encode("utf-8")
            self.shared.put_bytes_later(self._key(session_id), value, CONTEXT_SECONDS)

    def _key(self, session_id: str) -> str:
        return f"context:{self.kb}:{session_id}"
