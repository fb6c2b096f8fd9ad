"""The batched miss/chat-log writer on a real SQLite file: every acknowledged miss is in the database."""

from __future__ import annotations

import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bot.misswriter import ChatRow, MissWriter
from bot.store import MissRecord, Store, metadata


def _miss(message: str) -> MissRecord:
    return MissRecord(message=message, match_key=message, channel="test", session_id="s", reason="below_threshold",
                      best_faq_id="invoice", best_similarity=0.5, best_percent=20.0,
                      candidates=[{"faq_id": "invoice", "percent": 20.0}], index_version="v1")


def _chat(matched: bool = True) -> ChatRow:
    return ChatRow(channel="test", session_id="s", matched=matched, faq_id="invoice" if matched else None,
                   similarity=0.9)


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_a_miss_id_is_committed_before_it_is_handed_out(tmp_path: Path) -> None:
    db = tmp_path / "faqbot.db"
    writer = MissWriter(Store(f"sqlite:///{db}"), flush_ms=10_000)  # chat rows alone would linger 10 s
    writer.start()
    try:
        miss_id = writer.log_turn(_chat(matched=False), _miss("明天下雨吗")).result(10)
        # Read from another connection at once: the miss and its chat-log row are already there.
        assert _rows(db, f"SELECT message, status FROM misses WHERE id = {miss_id}") == [("明天下雨吗", "open")]
        assert _rows(db, "SELECT matched, miss_id FROM chat_log") == [(0, miss_id)]
    finally:
        writer.close()


def test_chat_rows_are_committed_in_batches_and_flushed_on_close(tmp_path: Path) -> None:
    db = tmp_path / "faqbot.db"
    commits: list[int] = []
    writer = MissWriter(Store(f"sqlite:///{db}"), flush_ms=10_000,
                        on_commit=lambda rows, _misses, _seconds: commits.append(rows))
    writer.start()
    futures = [writer.log_turn(_chat()) for _ in range(300)]
    assert all(f.done() and f.result() is None for f in futures)  # a matched turn never waits
    time.sleep(0.2)
    assert _rows(db, "SELECT COUNT(*) FROM chat_log") == [(0,)]  # still lingering for its batch
    started = time.perf_counter()
    writer.close()
    assert time.perf_counter() - started < 5  # closing does not wait out the flush interval
    assert _rows(db, "SELECT COUNT(*) FROM chat_log") == [(300,)]
    assert sum(commits) == 300 and len(commits) == 1


def test_concurrent_misses_share_commits_and_all_ids_are_distinct(tmp_path: Path) -> None:
    db = tmp_path / "faqbot.db"
    commits: list[int] = []
    writer = MissWriter(Store(f"sqlite:///{db}"), flush_ms=50,
                        on_commit=lambda rows, _misses, _seconds: commits.append(rows))
    writer.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda i: writer.log_turn(_chat(False), _miss(f"问题{i}")).result(10), range(200)))
        assert writer.flush(10)
    finally:
        writer.close()
    assert len(set(ids)) == 200
    stored = dict(_rows(db, "SELECT id, message FROM misses"))
    assert {stored[i] for i in ids} == {f"问题{i}" for i in range(200)}
    assert sorted(m for (m,) in _rows(db, "SELECT miss_id FROM chat_log")) == sorted(ids)
    assert len(commits) < 200  # misses arriving together were committed together


def test_a_miss_whose_request_went_away_is_still_written(tmp_path: Path) -> None:
    db = tmp_path / "faqbot.db"
    writer = MissWriter(Store(f"sqlite:///{db}"), flush_ms=10_000)
    writer._cond.acquire()  # hold the writer's lock so the cancel lands before its thread takes the turn
    try:
        writer.start()
        future = writer.log_turn(_chat(False), _miss("客户等不及走了"))
        assert future.cancel()
    finally:
        writer._cond.release()
    writer.close()
    assert _rows(db, "SELECT message FROM misses") == [("客户等不及走了",)]
    assert _rows(db, "SELECT COUNT(*) FROM chat_log") == [(1,)]


def test_a_refused_commit_fails_the_miss_and_retries_chat_rows(tmp_path: Path) -> None:
    db = tmp_path / "faqbot.db"
    store = Store(f"sqlite:///{db}")
    writer = MissWriter(store, flush_ms=0)
    writer.start()
    try:
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE chat_log")  # every commit now fails
        with pytest.raises(Exception, match="chat_log"):
            writer.log_turn(_chat(False), _miss("不会被确认")).result(10)
        writer.log_turn(_chat())
        time.sleep(0.3)  # at least one failed attempt for the chat row
        metadata.create_all(store.engine)  # the database is back
        assert writer.flush(15)
    finally:
        writer.close()
    assert _rows(db, "SELECT COUNT(*) FROM misses") == [(0,)]  # the failed miss was never acknowledged...
    assert _rows(db, "SELECT matched, miss_id FROM chat_log") == [(1, None)]  # ...and the chat row was not lost


def test_service_chat_logs_through_the_writer(make_settings) -> None:
    from bot.service import FaqService
    from tests.test_batcher import CountingEncoder
    from tests.test_cache import _service

    service: FaqService = _service(make_settings, CountingEncoder(), threshold=0.99)
    service.start_pipeline()
    try:
        result = service.chat("完全无关的问题", channel="test", session_id="abc")
        assert result.miss_id is not None
        db = Path(service.settings.data_dir) / "faqbot.db"
        assert _rows(db, f"SELECT session_id, reason FROM misses WHERE id = {result.miss_id}") == [
            ("abc", "below_threshold")]
        service.chat("可以开票吗", channel="test")  # matched (exact): its chat row lingers in the writer
    finally:
        service.stop_pipeline()
    assert _rows(db, "SELECT matched, miss_id FROM chat_log ORDER BY id") == [(0, result.miss_id), (1, None)]


@pytest.mark.slow
def test_every_acknowledged_miss_survives_a_shutdown_under_load(tiny_kb: Path, tmp_path: Path) -> None:
    """A real `faqbot serve`: misses and matched turns in flight, then SIGTERM; nothing acknowledged is lost."""
    from tests.conftest import faqbot_serve

    data_dir = tmp_path / "data"
    questions = [f"和商品无关的第{i}个问题" for i in range(40)] + ["可以开票吗"] * 40
    with faqbot_serve(tiny_kb, data_dir, env={"FAQBOT_LOG_FLUSH_MS": "5000", "FAQBOT_RATE_LIMIT_ENABLED": "false"}) as (base, proc):
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda q: httpx.post(base + "/chat", json={"message": q, "channel": "t"},
                                                          timeout=60).json(), questions))
        proc.send_signal(signal.SIGTERM)  # well inside the 5 s flush interval of the matched turns
        # A graceful stop: uvicorn finishes the requests, runs the shutdown, then re-raises SIGTERM.
        assert proc.wait(30) in (0, -signal.SIGTERM)
    miss_ids = [r["miss_id"] for r in replies if r["miss_id"] is not None]
    assert len(miss_ids) == 40
    db = data_dir / "faqbot.db"
    stored = {i for (i,) in _rows(db, "SELECT id FROM misses")}
    assert set(miss_ids) <= stored
    assert _rows(db, "SELECT COUNT(*), SUM(matched) FROM chat_log WHERE channel = 't'") == [(80, 40)]
