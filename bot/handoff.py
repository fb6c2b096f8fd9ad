"""Handing a conversation to a person: who asked for one, and whose questions keep missing.

Two things offer the handoff (`handoff: true` in /chat):

* **asked**: the message holds a handoff phrase ("转人工", "人工客服", ... plus the KB's
  `defaults.handoff_phrases`). Such a turn is never a miss. The FAQ that answers it is still given
  when there is one (a KB often has "怎么联系人工客服？"), with the handoff beside it.
* **offered**: a session's second miss in a row (a question no FAQ answered; a clarify is no miss).

A session's last turn is remembered here, per process, and read back from the chat log when this
process has not seen the session (another worker, a restart): the newer of the two wins.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from index.text import match_key

# Ways Chinese customers ask for a person. Two-character ones must be the whole message ("人工"),
# longer ones may sit anywhere in it ("我要投诉找人工").
BUILTIN_HANDOFF_PHRASES = (
    "转人工", "转接人工", "人工客服", "人工服务", "人工坐席", "人工座席", "找人工", "要人工", "接人工",
    "找真人", "真人客服", "人工", "真人",
)
EXACT_ONLY_CHARS = 2

ASKED = "asked"
OFFERED = "offered"


class HandoffPhrases:
    """Does a message ask for a person? Built-in phrases plus the KB's own."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        keys = {match_key(p) for p in (*BUILTIN_HANDOFF_PHRASES, *extra)} - {""}
        self.exact = frozenset(keys)
        self.contained = tuple(sorted(k for k in keys if len(k) > EXACT_ONLY_CHARS))

    def asks_for_person(self, text: str) -> bool:
        key = match_key(text)
        return key in self.exact or any(phrase in key for phrase in self.contained)


@dataclass(frozen=True)
class LastTurn:
    """What a session's previous turn was, and when (to pick the newer of memory and database)."""

    at: datetime
    missed: bool


class SessionTurns:
    """The last turn of recently seen sessions, bounded (least recently used sessions are forgotten)."""

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._turns: OrderedDict[str, LastTurn] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str) -> LastTurn | None:
        with self._lock:
            return self._turns.get(session_id)

    def put(self, session_id: str, turn: LastTurn) -> None:
        with self._lock:
            self._turns[session_id] = turn
            self._turns.move_to_end(session_id)
            while len(self._turns) > self.capacity:
                self._turns.popitem(last=False)


def newer(a: LastTurn | None, b: LastTurn | None) -> LastTurn | None:
    if a is None or b is None:
        return a or b
    return a if a.at >= b.at else b
