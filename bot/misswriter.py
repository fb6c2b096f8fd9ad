"""The miss log and chat log, written off the hot path without losing a row.

Every /chat turn adds one `chat_log` row (for stats) and, when the bot did not know the answer, one
`misses` row whose id the response carries. Committing each on the request costs more than the
rest of the request outside the encoder, so one writer thread commits them in batches:

* a chat-log row is handed over and the request goes on; rows are committed together at most
  `log_flush_ms` after the first of them arrived (or sooner when `max_rows` are waiting);
* a miss is committed by the writer *before* its request answers: the request waits on a future
  for the id of the inserted row (a few ms; async routes await it without holding a thread), so
  every miss id a client sees is already in the database. Misses arriving together share one
  transaction, and a turn's miss and chat-log row are written in the same one;
* `close()` (the app's shutdown) commits everything still waiting before the process exits.

If the database refuses a commit, waiting misses fail (their requests answer an error: nothing is
acknowledged that is not stored) and chat-log rows are kept and retried with a backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert

from bot.store import MissRecord, Store, chat_log, miss_row, misses, utcnow
from index.datadir import DEFAULT_KB

# Built once: `insert(misses).values(**row)` made and cache-keyed a new statement per miss (~0.4 ms of the
# ~0.6 ms a one-miss commit took); the values now go in as parameters of one compiled statement.
_INSERT_MISS = insert(misses)

log = logging.getLogger("faqbot")

RETRY_BACKOFF_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)
MAX_BUFFERED_ROWS = 100_000  # chat-log rows kept while the database is down; older ones beyond are dropped (counted)


@dataclass(frozen=True)
class ChatRow:
    """One `chat_log` row (its miss id is filled in by the writer when the turn was a miss)."""

    channel: str
    session_id: str | None
    matched: bool
    faq_id: str | None
    similarity: float | None
    handoff: str | None = None
    kb: str = DEFAULT_KB


@dataclass
class _Turn:
    chat: ChatRow | None
    miss: MissRecord | None
    future: Future[int | None] | None
    created_at: Any = field(default_factory=utcnow)
    attempts: int = 0


class MissWriter:
    """One thread that commits chat-log rows and misses in batches (see the module docstring)."""

    def __init__(self, store: Store, *, flush_ms: float = 50.0, max_rows: int = 500,
                 on_commit: Callable[[int, int, float], None] | None = None) -> None:
        self.store = store
        self.flush_seconds = max(0.0, flush_ms) / 1000.0
        self.max_rows = max(1, max_rows)
        self._on_commit = on_commit
        self._turns: deque[_Turn] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._urgent = 0  # misses waiting: someone is blocked on them, commit without lingering
        self._in_flight = 0  # turns taken by the writer and not yet committed (for flush())
        self._retry_at = 0.0
        self.rows_written = 0
        self.rows_dropped = 0

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="faqbot-misswriter", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything handed over so far, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._thread = None
            leftovers = list(self._turns)
            self._turns.clear()
        if leftovers:  # the thread could not finish (a database that stayed down): try once more, here
            self._commit(leftovers, final=True)

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._closing

    @property
    def pending(self) -> int:
        """Turns handed over and not yet committed."""
        return len(self._turns) + self._in_flight

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every turn handed over so far is committed (True) or the timeout passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._urgent += 1  # commit now instead of lingering
            self._cond.notify_all()
            try:
                while self._turns or self._in_flight:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._urgent -= 1

    # --- requests --------------------------------------------------------------------------------
    def log_turn(self, chat: ChatRow | None, miss: MissRecord | None = None) -> Future[int | None]:
        """Hand over one turn; the future gives the miss id once committed (at once None without a miss)."""
        future: Future[int | None] = Future()
        if miss is None:
            future.set_result(None)
        turn = _Turn(chat, miss, future if miss is not None else None)
        with self._cond:
            if self._thread is None or self._closing:
                raise RuntimeError("the miss writer is not running")
            self._turns.append(turn)
            if miss is not None:
                self._urgent += 1
            if len(self._turns) > MAX_BUFFERED_ROWS:
                self._drop_oldest_chat_row()
            self._cond.notify()
        return future

    def _drop_oldest_chat_row(self) -> None:
        for i, old in enumerate(self._turns):
            if old.miss is None:
                del self._turns[i]
                self.rows_dropped += 1
                log.error("chat log: %d rows dropped while the database refused commits", self.rows_dropped)
                return

    # --- the writer ------------------------------------------------------------------------------
    def _next_batch(self) -> list[_Turn] | None:
        with self._cond:
            while True:
                if self._closing and not self._turns:
                    return None
                now = time.monotonic()
                if self._turns and now >= self._retry_at:
                    due = self._turns[0].created_at.timestamp() + self.flush_seconds
                    if self._urgent or self._closing or len(self._turns) >= self.max_rows or time.time() >= due:
                        break
                    self._cond.wait(max(0.0, min(due - time.time(), self.flush_seconds)))
                    continue
                self._cond.wait(None if not self._turns else max(0.001, self._retry_at - now))
            batch = [self._turns.popleft() for _ in range(min(len(self._turns), self.max_rows))]
            self._urgent -= sum(1 for t in batch if t.miss is not None and t.attempts == 0)
            for turn in batch:
                # The row is written even if its request went away (a cancelled await); only the
                # answer is dropped. RUNNING futures cannot be cancelled under the writer any more.
                if turn.future is not None and not turn.future.set_running_or_notify_cancel():
                    turn.future = None
            self._in_flight = len(batch)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            failed = self._commit(batch, final=False)
            with self._cond:
                self._in_flight = 0
                if failed:
                    for turn in reversed(failed):
                        self._turns.appendleft(turn)
                    delay = RETRY_BACKOFF_SECONDS[min(failed[0].attempts, len(RETRY_BACKOFF_SECONDS)) - 1]
                    self._retry_at = time.monotonic() + (0.0 if self._closing else delay)
                self._cond.notify_all()
            if failed and self._closing:
                return  # close() makes the last attempt, so shutdown is not held up by a dead database

    def _commit(self, batch: list[_Turn], *, final: bool) -> list[_Turn]:
        """Write one batch in one transaction; the chat-only turns to retry if it failed."""
        started = time.perf_counter()
        miss_ids: list[int | None] = []
        try:
            with self.store.engine.begin() as conn:
                chat_rows = []
                for turn in batch:
                    miss_id = None
                    if turn.miss is not None:
                        result = conn.execute(_INSERT_MISS, miss_row(turn.miss, turn.created_at))
                        miss_id = int(result.inserted_primary_key[0])
                    miss_ids.append(miss_id)
                    if turn.chat is not None:
                        chat = turn.chat
                        chat_rows.append({"created_at": turn.created_at, "channel": chat.channel,
                                          "session_id": chat.session_id, "matched": chat.matched,
                                          "faq_id": chat.faq_id, "similarity": chat.similarity, "miss_id": miss_id,
                                          "handoff": chat.handoff, "kb": chat.kb})
                if chat_rows:
                    conn.execute(insert(chat_log), chat_rows)
        except Exception as exc:  # any database failure: fail the waiting misses, keep chat rows for a retry
            log.error("miss log: committing %d rows failed: %s", len(batch), exc)
            retry = []
            for turn in batch:
                if turn.future is not None:
                    turn.future.set_exception(exc)
                elif not final:
                    turn.attempts += 1
                    retry.append(turn)
                else:
                    self.rows_dropped += 1
            return retry
        for turn, miss_id in zip(batch, miss_ids, strict=True):
            if turn.future is not None:
                turn.future.set_result(miss_id)
        self.rows_written += len(batch)
        if self._on_commit is not None:
            self._on_commit(len(batch), sum(1 for t in batch if t.miss is not None), time.perf_counter() - started)
        return []
