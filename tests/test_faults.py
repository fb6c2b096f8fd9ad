"""Faults a production faqbot meets, on real components: a KB broken mid-edit during a reload, a
server SIGKILLed during a rebuild, a database locked or refusing writes, a full disk on the data
dir, and a replica restarted while another keeps serving. The rule in every case: answers keep
coming, and no acknowledged miss is lost (an unlogged miss is said so, never silently dropped)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event

from tests.conftest import ROOT, TINY_KB, faqbot_serve, free_port, serve_app, wait_ready

pytestmark = pytest.mark.slow

TOKEN = "fault-test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MISS = "火星上可以用优惠券吗"


def chat(base: str, message: str, session: str = "s") -> httpx.Response:
    return httpx.post(base + "/chat", json={"message": message, "session_id": session}, timeout=60)


def version(base: str) -> str:
    return httpx.get(base + "/readyz", timeout=10).json()["index_version"]


def misses_in_db(db: Path, ids: list[int]) -> int:
    with sqlite3.connect(db) as conn:
        marks = ",".join("?" * len(ids))
        return conn.execute(f"SELECT count(*) FROM misses WHERE id IN ({marks})", ids).fetchone()[0] if ids else 0


class Traffic:
    """Background /chat traffic; every response is kept so a test can assert none failed."""

    def __init__(self, base: str, message: str = "怎么退货") -> None:
        self.base = base
        self.message = message
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(self.base + "/chat", json={"message": self.message, "session_id": "traffic"})
                    self.statuses.append(r.status_code)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_a_yaml_broken_mid_edit_during_a_reload_keeps_the_old_index(make_settings, bundled_encoder, tiny_kb) -> None:
    from admin.web.app import build_app

    settings = make_settings(admin_token=TOKEN, rate_limit_enabled=False)
    with serve_app(build_app(settings, encoder=bundled_encoder)) as base, Traffic(base) as traffic:
        before = version(base)
        kb_file = tiny_kb / "faq.yaml"
        # An editor's save cut off half-way (mid-line, mid-mapping), then a reload.
        kb_file.write_text(TINY_KB[: len(TINY_KB) // 2 + 7], encoding="utf-8")
        r = httpx.post(base + "/admin/reload", json={}, headers=AUTH, timeout=120)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_kb"
        problems = r.json()["error"]["details"]["problems"]
        assert problems and all(p["file"].endswith("faq.yaml") and p["line"] for p in problems)
        assert version(base) == before
        assert chat(base, "可以开票吗").json()["faq_id"] == "invoice"
        kb_file.write_text(TINY_KB.replace("现货商品 48 小时内发货。", "现货商品 24 小时内发货。"), encoding="utf-8")
        r = httpx.post(base + "/admin/reload", json={}, headers=AUTH, timeout=120)
        assert r.status_code == 200 and r.json()["status"] == "published"
        assert chat(base, "什么时候发货").json()["answer"] == "现货商品 24 小时内发货。"
    assert traffic.statuses and set(traffic.statuses) == {200} and not traffic.errors


def _big_kb(n: int) -> str:
    lines = [TINY_KB.rstrip("\n")]
    lines.append("  - id: many_questions\n    question: 批量导入的问题是什么？\n    paraphrases:")
    lines += [f"      - 第{i}个关于批量导入订单和发票的问题怎么处理" for i in range(n)]
    lines.append("    answer: 批量导入请联系客服。")
    return "\n".join(lines) + "\n"


def test_sigkill_during_a_rebuild_restarts_on_the_previous_complete_index(tiny_kb, tmp_path) -> None:
    data_dir = tmp_path / "var"
    env = {"FAQBOT_ADMIN_TOKEN": TOKEN, "FAQBOT_LOG_LEVEL": "warning"}
    kb_file = tiny_kb / "faq.yaml"
    index_dir = data_dir / "index"
    with faqbot_serve(tiny_kb, data_dir, env=env) as (base, proc):
        complete = version(base)
        # A corrupt version published to the shared path (a half-copied directory) is refused by the
        # running server's watcher: it keeps serving the complete one.
        broken = index_dir / "versions" / "99999999T000000000Z-broken"
        broken.mkdir(parents=True)
        (broken / "meta.json").write_text('{"format": 1, "version": "99999999T0', encoding="utf-8")
        (broken / "vectors.faiss").write_bytes(b"\x00" * 17)
        (index_dir / "CURRENT").write_text(broken.name)
        time.sleep(4.5)  # two polls of CURRENT
        assert version(base) == complete and chat(base, "可以开票吗").json()["faq_id"] == "invoice"
        assert "faqbot_index_load_failures_total" in httpx.get(base + "/metrics", timeout=10).text
        (index_dir / "CURRENT").write_text(complete)

        # Now a slow rebuild (hundreds of new paraphrases), and SIGKILL in the middle of it.
        kb_file.write_text(_big_kb(400), encoding="utf-8")

        def reload() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server dies under it
                httpx.post(base + "/admin/reload", json={}, headers=AUTH, timeout=300)

        threading.Thread(target=reload, daemon=True).start()
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert (index_dir / "CURRENT").read_text().strip() == complete
    # What the kill may leave behind is never a live version: a staging dir or a pointer temp file.
    leftovers = [p.name for p in (index_dir / "versions").iterdir() if p.name.startswith(".build-")]
    (index_dir / "versions" / ".build-killed").mkdir()
    (index_dir / "versions" / ".build-killed" / "vectors.faiss").write_bytes(b"half")
    (index_dir / ".CURRENT.12345.tmp").write_text("99999999T000000000Z-broken")
    kb_file.write_text(TINY_KB, encoding="utf-8")  # the KB the complete index was built from
    with faqbot_serve(tiny_kb, data_dir, env={**env, "FAQBOT_AUTO_BUILD": "false"}) as (base, _):
        assert version(base) == complete
        assert chat(base, "我想退货怎么操作").json()["faq_id"] == "return_howto"
    assert isinstance(leftovers, list)


@pytest.fixture
def db_app(make_settings, bundled_encoder, tmp_path) -> Iterator[tuple[str, Path, object]]:
    """The full app on a SQLite store whose busy timeout is short (0.3 s), so 'locked' is visible fast."""
    from admin.web.app import build_app
    from bot.app import create_app
    from bot.store import Store

    settings = make_settings(admin_token=TOKEN)
    db = Path(settings.data_dir) / "faqbot.db"
    store = Store(f"sqlite:///{db}", busy_timeout_seconds=0.3)
    app = create_app(settings, encoder=bundled_encoder, store=store)
    assert build_app  # the admin composition is not needed here; the public API is what faults must not break
    with serve_app(app) as base:
        yield base, db, store


def _hold_exclusive_lock(db: Path, seconds: float, held: threading.Event) -> None:
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    held.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def test_a_database_locked_for_a_moment_still_answers_and_the_miss_lands(make_settings, bundled_encoder) -> None:
    from bot.app import create_app

    settings = make_settings()
    with serve_app(create_app(settings, encoder=bundled_encoder)) as base:  # the default 30 s busy timeout
        db = Path(settings.data_dir) / "faqbot.db"
        held = threading.Event()
        locker = threading.Thread(target=_hold_exclusive_lock, args=(db, 1.5, held))
        locker.start()
        held.wait(5)
        started = time.monotonic()
        r = chat(base, MISS)
        locker.join()
        assert r.status_code == 200 and r.json()["matched"] is False
        assert time.monotonic() - started >= 1.0  # it waited for the lock instead of failing
        assert misses_in_db(db, [r.json()["miss_id"]]) == 1
        assert "miss_logged" not in r.json()


class _RefusingCursor:
    """A SQLite cursor whose database refuses the mode switch `refusals` times, as SQLite can at once
    (not after its busy timeout) while another worker is opening the same new file."""

    def __init__(self, refusals: int) -> None:
        self.refusals, self.mode, self.tries = refusals, "delete", 0

    def execute(self, sql: str) -> _RefusingCursor:
        if sql == "PRAGMA journal_mode=WAL":
            self.tries += 1
            if self.tries <= self.refusals:
                raise sqlite3.OperationalError("database is locked")
            self.mode = "wal"
        return self

    def fetchone(self) -> tuple[str]:
        return (self.mode,)


def test_opening_a_new_database_waits_out_a_refused_switch_to_wal() -> None:
    from bot.store import _enable_wal

    cursor = _RefusingCursor(refusals=3)
    _enable_wal(cursor, timeout_seconds=5)
    assert cursor.mode == "wal" and cursor.tries == 4
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _enable_wal(_RefusingCursor(refusals=10**6), timeout_seconds=0.2)  # bounded by the busy timeout


OPEN_STORE = """
import sys, time
from bot.store import Store
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
Store("sqlite:///" + sys.argv[1]).close()
"""


@pytest.mark.slow
def test_workers_opening_one_new_database_together_all_start(tmp_path: Path) -> None:
    """`serve --workers N` and replicas on one data dir open a database nobody has created yet at once."""
    for round_ in range(6):
        db = tmp_path / f"round{round_}.db"
        start = time.time() + 1.5  # every process imports first, then all open together
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, str(db), str(start)], cwd=ROOT,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), errors
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_database_refusing_writes_answers_and_says_the_miss_was_not_logged(db_app) -> None:
    base, db, _ = db_app
    held = threading.Event()
    locker = threading.Thread(target=_hold_exclusive_lock, args=(db, 4.0, held))
    locker.start()
    held.wait(5)
    unlogged = chat(base, MISS, "locked")
    matched = chat(base, "可以开票吗", "locked")
    feedback = httpx.post(base + "/feedback", json={"message": "可以开票吗", "faq_id": "invoice", "helpful": False},
                          timeout=30)
    locker.join()
    body = unlogged.json()
    assert unlogged.status_code == 200 and body["matched"] is False and body["answer"]
    assert body["miss_id"] is None and body["miss_logged"] is False and body["miss_error"]
    assert matched.status_code == 200 and matched.json()["faq_id"] == "invoice"
    assert feedback.status_code == 503 and feedback.json()["error"]["code"] == "log_unavailable"
    # The database is back: the next miss lands, and the chat-log rows held back meanwhile are retried.
    again = chat(base, MISS, "after")
    assert again.status_code == 200 and misses_in_db(db, [again.json()["miss_id"]]) == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            sessions = {s for (s,) in conn.execute("SELECT session_id FROM chat_log")}
        if "locked" in sessions:
            break
        time.sleep(0.2)
    assert "locked" in sessions  # the matched turn's chat-log row was kept and committed later
    assert 'faqbot_miss_log_failures_total 1.0' in httpx.get(base + "/metrics", timeout=10).text


def test_a_full_database_file_answers_and_recovers(db_app) -> None:
    """SQLITE_FULL ('database or disk is full'), the error a full disk gives SQLite, made real by capping
    the database's page count on every connection."""
    base, db, store = db_app
    with sqlite3.connect(db) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    cap = {"pages": pages}

    @event.listens_for(store.engine, "connect")
    def _cap(dbapi_conn, _record) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count={cap['pages']}")

    store.engine.dispose()
    filler = "满" * 300
    outcomes = [chat(base, f"{filler}{i}", f"full{i}").json() for i in range(6)]
    assert all(o["matched"] is False and o["answer"] for o in outcomes)
    refused = [o for o in outcomes if o["miss_id"] is None]
    logged = [o["miss_id"] for o in outcomes if o["miss_id"] is not None]
    assert refused, "the capped database never filled up"
    assert all(o["miss_logged"] is False for o in refused)
    assert misses_in_db(db, logged) == len(logged)  # every acknowledged id is stored
    cap["pages"] = 1_000_000  # space freed
    store.engine.dispose()
    r = chat(base, MISS, "freed")
    assert r.json()["miss_id"] is not None and misses_in_db(db, [r.json()["miss_id"]]) == 1


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root / CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="filling a real disk needs a tmpfs mount (root)")
def test_a_full_disk_on_the_data_dir(make_settings, bundled_encoder, tiny_kb, tmp_path) -> None:
    from admin.web.app import build_app

    with small_tmpfs(tmp_path / "small-disk", "3m") as data_dir:
        settings = make_settings(admin_token=TOKEN, data_dir=data_dir)
        with serve_app(build_app(settings, encoder=bundled_encoder)) as base:
            before = version(base)
            assert chat(base, MISS, "pre").json()["miss_id"] is not None
            with contextlib.suppress(OSError), (data_dir / "filler").open("wb") as filler:
                while True:
                    filler.write(b"\x00" * 65536)
                    filler.flush()
            outcomes = [chat(base, f"{MISS}{i}" + "满" * 500, f"disk{i}") for i in range(10)]
            assert all(o.status_code == 200 and o.json()["answer"] for o in outcomes)
            logged = [o.json()["miss_id"] for o in outcomes if o.json()["miss_id"] is not None]
            assert all(o.json().get("miss_logged") is False for o in outcomes if o.json()["miss_id"] is None)
            assert misses_in_db(data_dir / "faqbot.db", logged) == len(logged)
            # A rebuild cannot publish on a full disk: it fails cleanly and the old index keeps serving.
            (tiny_kb / "faq.yaml").write_text(_big_kb(50), encoding="utf-8")
            r = httpx.post(base + "/admin/reload", json={}, headers=AUTH, timeout=120)
            assert r.status_code >= 400 and r.json()["status"] == "error"
            assert version(base) == before and chat(base, "可以开票吗").json()["faq_id"] == "invoice"
            assert not [p for p in (data_dir / "index" / "versions").iterdir() if p.name.startswith(".build-")]
            (data_dir / "filler").unlink()
            r = httpx.post(base + "/admin/reload", json={}, headers=AUTH, timeout=120)
            assert r.status_code == 200 and version(base) != before
            assert chat(base, MISS, "post").json()["miss_id"] is not None


def test_a_replica_restarted_while_another_keeps_serving(tiny_kb, tmp_path, bundled_encoder) -> None:
    from bot.service import build_and_publish
    from bot.settings import Settings

    data_dir = tmp_path / "shared"
    build_and_publish(Settings(kb=tiny_kb, data_dir=data_dir), bundled_encoder)
    env = {"FAQBOT_LOG_LEVEL": "warning", "FAQBOT_RATE_LIMIT_ENABLED": "false"}
    with faqbot_serve(tiny_kb, data_dir, env=env) as (steady, _):
        port = free_port()
        cmd = [sys.executable, "-m", "admin.cli", "serve", "--kb", str(tiny_kb), "--data-dir", str(data_dir),
               "--host", "127.0.0.1", "--port", str(port)]
        restarted = f"http://127.0.0.1:{port}"
        full_env = {**os.environ, **env}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(restarted, 120, proc)
            miss_ids: list[int] = []
            with Traffic(steady, MISS) as traffic:
                with concurrent.futures.ThreadPoolExecutor(4) as pool:
                    miss_ids += [r.json()["miss_id"] for r in pool.map(
                        lambda i: chat(restarted, f"{MISS}{i}", "r"), range(8))]
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                wait_ready(restarted, 120, proc)
                miss_ids += [chat(restarted, f"{MISS}again{i}", "r").json()["miss_id"] for i in range(4)]
            assert version(restarted) == version(steady)
        finally:
            proc.terminate()
            proc.wait(15)
    assert traffic.statuses and set(traffic.statuses) == {200} and not traffic.errors
    assert len(traffic.statuses) > 20
    assert misses_in_db(data_dir / "faqbot.db", miss_ids) == len(miss_ids) == 12
