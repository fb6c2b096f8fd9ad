"""`faqbot soak`: a bounded load test that proves nothing acknowledged is lost.

    faqbot soak [--url URL] [--duration 60] [--concurrency 32] [--database-url URL]

Without `--url` it starts its own `faqbot serve` on a free loopback port (a temp data dir, the
configured KB, rate limits off) and stops it afterwards. `concurrency` clients ask for `duration`
seconds a realistic mix: paraphrases of the KB (answered), new questions nobody asked before
(misses), and the same few unanswered questions again and again (misses, cached vectors). It
prints requests, throughput, errors, 429s, p50/p90/p99/max latency, and then looks up every
`miss_id` the server acknowledged in the database: `lost` must be 0 (exit code 1 otherwise).

With `--url` that database must be the server's: `--database-url`, else the settings' own
(FAQBOT_DATABASE_URL, else the SQLite of `--data-dir`/FAQBOT_DATA_DIR). It is checked before the
load starts; one without a miss log is a CommandError naming it, not a traceback after the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from admin.errors import CommandError
from admin.loadtest.bench import percentile
from admin.loadtest.local_server import faqbot_server
from bot.settings import Settings
from faq import KBError, load_kb
from index.datadir import DataDir

NEW_QUESTION_TEMPLATES = (
    "第{n}号订单的发票抬头写错了还能改吗", "我在{n}号门店买的东西能在网上退吗", "编号{n}的优惠券为什么用不了",
    "订单{n}显示已签收但我没收到", "会员卡{n}的积分被清零了怎么回事", "{n}号快递员态度很差怎么投诉",
)
WHERE_FLAGS = "--database-url URL or --data-dir DIR"
REPEATED_MISSES = ("你们老板是谁", "今天股票涨了吗", "火星上能送货吗", "可以用比特币付款吗")


@dataclass
class SoakReport:
    """What one soak measured (printed, and returned for tests)."""

    url: str
    duration_seconds: float
    concurrency: int
    requests: int = 0
    ok: int = 0
    errors: int = 0
    rate_limited: int = 0
    matched: int = 0
    misses: int = 0
    miss_ids: int = 0
    misses_not_logged: int = 0
    stored: int | None = None
    lost: int | None = None
    database: str | None = None
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    requests_per_second: float = 0.0
    error_samples: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        verdict = "0 lost" if self.lost == 0 else f"{self.lost} LOST" if self.lost is not None else "not checked"
        return [
            f"soak {self.url}: {self.duration_seconds:.0f} s at concurrency {self.concurrency}",
            f"  requests   {self.requests}  ({self.requests_per_second:.1f}/s)",
            f"  ok         {self.ok}   errors {self.errors}   rate-limited (429) {self.rate_limited}",
            f"  answered   {self.matched}   misses {self.misses}",
            f"  latency    p50 {self.p50_ms:.1f} ms   p90 {self.p90_ms:.1f} ms   p99 {self.p99_ms:.1f} ms   "
            f"max {self.max_ms:.1f} ms",
            f"  miss log   {self.miss_ids} miss ids acknowledged, {self.stored} found in {self.database or 'the database'}: "
            f"{verdict}"
            + (f"  ({self.misses_not_logged} answered with miss_logged=false)" if self.misses_not_logged else ""),
            *([f"  none of them is there: is it the server's database? ({WHERE_FLAGS})"]
              if self.miss_ids and self.stored == 0 else []),
        ]


def kb_questions(settings: Settings) -> list[str]:
    """The KB's questions and paraphrases (what customers really ask); a few fixed ones without a KB."""
    try:
        return [text for _, text in load_kb(settings.kb).texts()]
    except (KBError, OSError):
        return ["怎么退货", "可以开发票吗", "多久发货"]


async def _client(base: str, deadline: float, questions: list[str], worker: int, report: SoakReport,
                  latencies: list[float], miss_ids: list[int], http: httpx.AsyncClient) -> None:
    rng = random.Random(worker)
    n = 0
    while time.monotonic() < deadline:
        n += 1
        roll = rng.random()
        if roll < 0.6:
            message = rng.choice(questions)
        elif roll < 0.85:
            message = rng.choice(NEW_QUESTION_TEMPLATES).format(n=f"{worker}-{n}")
        else:
            message = rng.choice(REPEATED_MISSES)
        started = time.perf_counter()
        try:
            response = await http.post(base + "/chat", json={"message": message, "session_id": f"soak-{worker}",
                                                             "channel": "soak"})
        except httpx.HTTPError as exc:
            report.requests += 1
            report.errors += 1
            if len(report.error_samples) < 5:
                report.error_samples.append(repr(exc))
            continue
        latencies.append(time.perf_counter() - started)
        report.requests += 1
        if response.status_code == 429:
            report.rate_limited += 1
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        if response.status_code != 200:
            report.errors += 1
            if len(report.error_samples) < 5:
                report.error_samples.append(f"{response.status_code} {response.text[:200]}")
            continue
        report.ok += 1
        body = response.json()
        if body.get("matched"):
            report.matched += 1
        else:
            report.misses += 1
            if body.get("miss_id") is not None:
                miss_ids.append(int(body["miss_id"]))
            elif body.get("miss_logged") is False:
                report.misses_not_logged += 1


async def run_load(base: str, *, duration: float, concurrency: int, questions: list[str]) -> tuple[SoakReport, list[int]]:
    """`concurrency` clients asking for `duration` seconds; the report and every acknowledged miss id."""
    report = SoakReport(url=base, duration_seconds=duration, concurrency=concurrency)
    latencies: list[float] = []
    miss_ids: list[int] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        deadline = started + duration
        await asyncio.gather(*(_client(base, deadline, questions, w, report, latencies, miss_ids, http)
                               for w in range(concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()
    report.duration_seconds = elapsed
    report.requests_per_second = report.requests / elapsed if elapsed else 0.0
    report.p50_ms, report.p90_ms, report.p99_ms = (percentile(latencies, q) * 1000 for q in (0.5, 0.9, 0.99))
    report.max_ms = latencies[-1] * 1000 if latencies else 0.0
    report.miss_ids = len(miss_ids)
    return report, miss_ids


def count_stored(database_url: str, miss_ids: list[int]) -> int:
    """How many distinct `miss_ids` are rows of the misses table. An id acknowledged twice stands for two
    misses but one row, so `len(miss_ids) - count_stored(...)` counts it as lost.

    A database with no miss log (a SQLite file that is not there, no misses table) is not the server's:
    CommandError naming it, and nothing is created or changed there.
    """
    from sqlalchemy import func, inspect, select
    from sqlalchemy.exc import SQLAlchemyError

    from bot.store import make_engine, misses

    shown = shown_url(database_url)
    sqlite_file = _sqlite_file(database_url)
    if sqlite_file is not None and not _sqlite_has_table(sqlite_file, misses.name, shown):
        raise _not_the_servers(shown, "no misses table" if sqlite_file.is_file() else "no such file")
    engine = make_engine(database_url)
    found = 0
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(misses.name):
                raise _not_the_servers(shown, "no misses table")
            unique = sorted(set(miss_ids))
            for i in range(0, len(unique), 500):
                chunk = unique[i:i + 500]
                found += int(conn.execute(select(func.count()).select_from(misses)
                                          .where(misses.c.id.in_(chunk))).scalar_one())
    except SQLAlchemyError as exc:
        raise CommandError(f"cannot read the miss log in {shown}: {getattr(exc, 'orig', None) or exc}") from exc
    finally:
        engine.dispose()
    return found


def shown_url(database_url: str) -> str:
    """A database URL fit to print (no password)."""
    from sqlalchemy.engine import make_url

    return make_url(database_url).render_as_string(hide_password=True)


def _sqlite_file(database_url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(database_url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _sqlite_has_table(path: Path, table: str, shown: str) -> bool:
    """Read-only, so a file that is not the server's is neither created nor switched to WAL (make_engine would)."""
    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                              (table,)).fetchone() is not None
    except sqlite3.Error as exc:
        raise CommandError(f"cannot read the miss log in {shown}: {exc}") from exc


def _not_the_servers(shown: str, why: str) -> CommandError:
    return CommandError(f"the database soak looked in has no miss log: {shown} ({why}); point soak at the "
                        f"server's with {WHERE_FLAGS}")


@contextlib.contextmanager
def own_server(settings: Settings, data_dir: Path, extra_env: dict[str, str] | None = None,
               ready_seconds: float = 600.0) -> Iterator[tuple[str, str]]:
    """`faqbot serve` on a free loopback port with rate limits off; yields (base URL, database URL)."""
    database_url = settings.database_url or DataDir(data_dir).database_url
    env = {"FAQBOT_DATA_DIR": str(data_dir), "FAQBOT_DATABASE_URL": database_url, **(extra_env or {})}
    with faqbot_server(Path(settings.kb).resolve(), data_dir, env, ready_seconds=ready_seconds,
                       models_dir=DataDir(settings.data_dir).models) as (base, _proc):
        yield base, database_url


def soak(settings: Settings, *, url: str | None, duration: float, concurrency: int,
         database_url: str | None = None, data_dir: Path | None = None) -> SoakReport:
    """Run one soak (starting a server unless `url`), then count the acknowledged misses in the database."""
    questions = kb_questions(settings)
    if url is not None:
        db_url = database_url or settings.resolved_database_url
        count_stored(db_url, [])  # not the server's database: say so now, not after the load
        report, miss_ids = asyncio.run(run_load(url.rstrip("/"), duration=duration, concurrency=concurrency,
                                                questions=questions))
    else:
        with contextlib.ExitStack() as stack:
            folder = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faqbot-soak-")))
            base, db_url = stack.enter_context(own_server(settings, folder))
            report, miss_ids = asyncio.run(run_load(base, duration=duration, concurrency=concurrency,
                                                    questions=questions))
            return _checked(report, database_url or db_url, miss_ids)
    return _checked(report, db_url, miss_ids)


def _checked(report: SoakReport, database_url: str, miss_ids: list[int]) -> SoakReport:
    """The report with the acknowledged misses looked up in `database_url`."""
    report.database = shown_url(database_url)
    report.stored = count_stored(database_url, miss_ids)
    report.lost = len(miss_ids) - report.stored
    return report
