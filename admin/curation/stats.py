"""How the bot is doing: questions and answer rate per day, top FAQs, top open misses, thumbs-down.

Counts are bucketed per UTC hour in the database and folded into days of the admin's time zone
here, so "today" means the admin's today (a support team in Beijing asks with `tz=Asia/Shanghai`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from admin.curation.misses import MissFilter, VectorCache, cluster_misses, fetch_misses
from bot.service import FaqService
from faq.errors import InvalidInputError


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInputError(f"tz: unknown time zone {name!r} (e.g. Asia/Shanghai, UTC)") from exc


def _rate(answered: int, questions: int) -> float | None:
    return round(answered / questions, 4) if questions else None


def _handoffs(rows: list[tuple[str, str | None, int]], question_of: Callable[[str | None], str | None],
              ) -> dict[str, Any]:
    """Handoffs by kind (asked for a person, offered after two misses) and by the FAQ answered just before
    in the same session (`faq_id` null: none was, or the turn had no session)."""
    by_kind = {"asked": 0, "offered": 0}
    by_faq: dict[str | None, dict[str, int]] = {}
    for kind, faq_id, n in rows:
        by_kind[kind] = by_kind.get(kind, 0) + n
        counts = by_faq.setdefault(faq_id, {"asked": 0, "offered": 0})
        counts[kind] = counts.get(kind, 0) + n
    after = [{"faq_id": fid, "question": question_of(fid), "count": sum(c.values()), **c} for fid, c in by_faq.items()]
    after.sort(key=lambda r: (-r["count"], r["faq_id"] is None, r["faq_id"] or ""))
    return {"by_kind": by_kind, "after_faq": after}


def compute_stats(service: FaqService, *, days: int = 14, tz: str = "UTC", top: int = 10,
                  cache: VectorCache | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The numbers of the last `days` days (today included) in time zone `tz`."""
    if not 1 <= days <= 366:
        raise InvalidInputError("days: between 1 and 366")
    local = zone(tz)
    now = (now or datetime.now(UTC)).astimezone(local)
    first_day: date = now.date() - timedelta(days=days - 1)
    since = datetime.combine(first_day, datetime.min.time(), tzinfo=local).astimezone(UTC)
    until = now.astimezone(UTC) + timedelta(seconds=1)
    store = service.store
    kb = service.kb_name  # one deployment may serve several KBs: these are this one's turns

    per_day = {first_day + timedelta(days=i): [0, 0, 0] for i in range(days)}
    for hour, questions, answered, handoffs in store.chat_counts_by_hour(since, until, kb):
        day = hour.astimezone(local).date()
        if day in per_day:
            per_day[day][0] += questions
            per_day[day][1] += answered
            per_day[day][2] += handoffs
    day_rows = [{"date": d.isoformat(), "questions": q, "answered": a, "misses": q - a, "answer_rate": _rate(a, q),
                 "handoffs": n} for d, (q, a, n) in per_day.items()]
    total_q = sum(r["questions"] for r in day_rows)
    total_a = sum(r["answered"] for r in day_rows)

    faqs = service.index.faq_by_id if service.ready else {}

    def question_of(faq_id: str | None) -> str | None:
        faq = faqs.get(faq_id or "")
        return faq.question if faq else None

    top_faqs = [{"faq_id": fid, "question": question_of(fid), "count": n}
                for fid, n in store.top_matched_faqs(since, until, top, kb=kb)]
    feedback_rows = store.feedback_counts(since, until)
    thumbs_down = sorted(({"faq_id": fid, "question": question_of(fid), "thumbs_down": down, "thumbs_up": up}
                          for fid, up, down in feedback_rows if down),
                         key=lambda r: (-r["thumbs_down"], r["faq_id"] or ""))[:top]
    top_misses: list[dict[str, Any]] = []
    if service.ready:
        open_rows = fetch_misses(service, MissFilter(status="open", since=since, until=until))
        clusters = cluster_misses(service, open_rows, cache=cache)["clusters"][:top]
        top_misses = [{"id": c["id"], "representative": c["representative"], "count": c["count"],
                       "best": c["candidates"][0] if c["candidates"] else None} for c in clusters]
    handoffs = _handoffs(store.handoffs_after(since, until, kb), question_of)
    status_counts = store.miss_status_counts(kb)
    return {
        "tz": tz,
        "since": since.astimezone(local).isoformat(timespec="seconds"),
        "until": now.isoformat(timespec="seconds"),
        "totals": {"questions": total_q, "answered": total_a, "misses": total_q - total_a,
                   "answer_rate": _rate(total_a, total_q),
                   "thumbs_up": sum(up for _, up, _ in feedback_rows),
                   "thumbs_down": sum(down for _, _, down in feedback_rows),
                   "handoffs": sum(r["handoffs"] for r in day_rows)},
        "days": day_rows,
        "top_faqs": top_faqs,
        "top_misses": top_misses,
        "thumbs_down": thumbs_down,
        "handoffs": handoffs,
        "miss_status": {status: status_counts.get(status, 0) for status in ("open", "resolved", "ignored")},
        "index_version": service.index.version if service.ready else None,
    }
