"""Review the questions the bot could not answer: group them, show the nearest FAQs, resolve them.

Grouping has two levels. Misses with the same normalised text (`match_key`: width, case, spaces,
trailing punctuation folded) are one *variant*; variants whose embeddings are as close as two
texts the bot would treat as the same question (cosine >= the live index's answer threshold)
form one *cluster*, led by its most frequent variant. Clusters come most frequent first, each
with the FAQs the live index finds nearest to its representative, so an admin sees at a glance
whether to attach it to one of them or write a new FAQ.

Resolving writes the KB (admin.curation.kb_edit), marks the misses, and triggers a gated rebuild
(admin.curation.rebuild). Resolved misses are labelled pairs (query -> FAQ) for fine-tuning.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np

from admin.curation.kb_edit import KbEdit, add_faq, add_paraphrases
from admin.curation.rebuild import Rebuilder, RebuildOutcome, edit_lock
from bot.cache import EmbeddingCache
from bot.service import FaqService
from faq.errors import ConflictError, InvalidInputError, NotFoundError
from index.filelock import LockTimeoutError
from index.text import match_key

STATUSES = ("open", "resolved", "ignored")
MAX_SCANNED_MISSES = 100_000
MAX_CLUSTERED_VARIANTS = 1500
EDIT_LOCK_SECONDS = 30.0


def parse_when(value: str | None, *, end: bool = False) -> datetime | None:
    """`2024-05-01` (a whole day; as `until` it includes that day) or an ISO datetime; naive = UTC."""
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            moment = datetime.combine(day + timedelta(days=1) if end else day, time(), tzinfo=UTC)
            return moment
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInputError(f"bad date {value!r}: use YYYY-MM-DD or an ISO 8601 time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class MissFilter:
    status: str | None = "open"
    channel: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise InvalidInputError(f"status: one of {', '.join(STATUSES)} (or all)")

    @classmethod
    def parse(cls, status: str, channel: str | None = None, since: str | None = None,
              until: str | None = None) -> MissFilter:
        """A filter from what an admin types (the API's query parameters, the CLI's flags): status `all`
        = any, days or ISO times for since/until (see `parse_when`)."""
        return cls(status=None if status == "all" else status, channel=channel or None, since=parse_when(since),
                   until=parse_when(until, end=True))

    def as_dict(self) -> dict[str, object]:
        return {"status": self.status, "channel": self.channel,
                "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None}


def fetch_misses(service: FaqService, filters: MissFilter) -> list[dict[str, Any]]:
    # Store.list_misses naive datetimes: SQLite keeps UTC wall time.
    since = filters.since.astimezone(UTC) if filters.since else None
    until = filters.until.astimezone(UTC) if filters.until else None
    return service.store.list_misses(status=filters.status, channel=filters.channel, since=since, until=until,
                                     limit=MAX_SCANNED_MISSES, kb=service.kb_name)


class VectorCache:
    """Query vectors of miss texts, kept between calls (the admin page lists the same misses often):
    an LRU (bot.cache.EmbeddingCache) keyed by the encoder's fingerprint and the exact text."""

    def __init__(self, max_items: int = 20_000) -> None:
        self._cache = EmbeddingCache(max_items)

    def encode(self, service: FaqService, texts: Sequence[str]) -> np.ndarray:
        fingerprint = service.encoder.fingerprint
        return self._cache.remember([f"{fingerprint}\0{t}" for t in texts], texts, service.encode_queries,
                                    service.encoder.dim)


@dataclass
class _Variant:
    key: str
    text: str
    miss_ids: list[int] = field(default_factory=list)
    first_seen: str = ""
    last_seen: str = ""
    channels: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return len(self.miss_ids)


def _variants(rows: Iterable[dict[str, Any]]) -> list[_Variant]:
    """Misses with the same normalised text, most frequent (then most recent) first."""
    by_key: dict[str, _Variant] = {}
    for row in rows:  # newest first, so a variant's `text` is its latest wording
        key = row["match_key"] or match_key(row["message"])
        variant = by_key.get(key)
        if variant is None:
            variant = by_key[key] = _Variant(key, row["message"], last_seen=row["created_at"])
        variant.miss_ids.append(int(row["id"]))
        variant.first_seen = row["created_at"]
        variant.channels[row["channel"]] += 1
        variant.statuses[row["status"]] += 1
    return sorted(by_key.values(), key=lambda v: (-v.count, _desc(v.last_seen)))


def cluster_misses(service: FaqService, rows: Sequence[dict[str, Any]], *, cache: VectorCache | None = None,
                   threshold: float | None = None, top_k: int = 3) -> dict[str, Any]:
    """Group `rows` into clusters of the same question; see the module docstring."""
    variants = _variants(rows)
    truncated = max(0, len(variants) - MAX_CLUSTERED_VARIANTS)
    variants = variants[:MAX_CLUSTERED_VARIANTS]
    matcher = service.matcher
    threshold = matcher.default_threshold if threshold is None else threshold
    vectors = (cache or VectorCache()).encode(service, [v.text for v in variants])
    leaders: list[int] = []
    members: list[list[int]] = []
    for i in range(len(variants)):
        if leaders:
            sims = vectors[leaders] @ vectors[i]
            best = int(np.argmax(sims))
            if float(sims[best]) >= threshold:
                members[best].append(i)
                continue
        leaders.append(i)
        members.append([i])
    decisions = matcher.match_vectors(vectors[leaders], [variants[i].text for i in leaders], top_k=top_k) if leaders else []
    clusters = []
    for leader, group, decision in zip(leaders, members, decisions, strict=True):
        lead = variants[leader]
        parts = [variants[j] for j in group]
        miss_ids = sorted((m for p in parts for m in p.miss_ids), reverse=True)
        channels: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        for p in parts:
            channels.update(p.channels)
            statuses.update(p.statuses)
        clusters.append({
            "id": lead.miss_ids[0],
            "representative": lead.text,
            "count": len(miss_ids),
            "miss_ids": miss_ids,
            "variants": [{"text": variants[j].text, "count": variants[j].count, "miss_ids": variants[j].miss_ids,
                          "similarity": round(float(vectors[leader] @ vectors[j]), 4)} for j in group],
            "first_seen": min(p.first_seen for p in parts),
            "last_seen": max(p.last_seen for p in parts),
            "channels": dict(channels.most_common()),
            "statuses": dict(statuses),
            "candidates": [c.as_dict() for c in decision.candidates],
            "answered_now": decision.faq.id if decision.matched and decision.faq else None,
        })
    clusters.sort(key=lambda c: (-c["count"], _desc(c["last_seen"])))
    return {"clusters": clusters, "total_misses": len(rows), "total_clusters": len(clusters),
            "threshold": round(float(threshold), 4), "index_version": matcher.index.version,
            "truncated_variants": truncated}


def _desc(text: str) -> tuple[int, ...]:
    """Sort key that orders ISO timestamps newest first inside an ascending sort."""
    return tuple(-ord(ch) for ch in text)


# --- resolving ---------------------------------------------------------------------------------------


Action = Literal["attach", "new", "ignore", "reopen"]


@dataclass(frozen=True)
class Resolution:
    action: Action
    faq_id: str | None = None
    answer: str | None = None
    question: str | None = None
    file: str | None = None
    tags: tuple[str, ...] = ()
    miss_ids: tuple[int, ...] = ()
    paraphrases: tuple[str, ...] | None = None
    reload: bool = True
    force: bool = False


def _default_new_file(service: FaqService, leader: dict[str, Any]) -> str | None:
    """A new FAQ goes next to its nearest FAQ (same topic file) unless the admin names a file."""
    if not Path(service.settings.kb).is_dir() or not service.ready:
        return None
    for candidate in leader.get("candidates") or []:
        faq = service.index.faq_by_id.get(candidate.get("faq_id"))
        if faq is not None and faq.source is not None and Path(faq.source).exists():
            return str(faq.source)
    return None


def resolve(service: FaqService, rebuilder: Rebuilder | None, miss_id: int, resolution: Resolution) -> dict[str, Any]:
    """Attach the misses to an FAQ, make a new FAQ of them, ignore them, or reopen them."""
    wanted = list(dict.fromkeys([miss_id, *resolution.miss_ids]))
    # Another KB's misses are not this KB's to resolve: they read as unknown ids.
    rows = {row["id"]: row for row in service.store.misses_by_ids(wanted) if row.get("kb") == service.kb_name}
    unknown = [i for i in wanted if i not in rows]
    if unknown:
        raise NotFoundError(f"no miss with id {', '.join(map(str, unknown))}", code="miss_not_found")
    ordered = [rows[i] for i in wanted]
    if resolution.action == "reopen":
        ids = service.store.update_miss_status(wanted, from_statuses=("resolved", "ignored"), status="open",
                                               action="reopen", faq_id=None)
        return {"status": "success", "action": "reopen", "faq_id": None, "miss_ids": ids, "edit": None,
                "reload": None}
    done = [row["id"] for row in ordered if row["status"] == "resolved"]
    if done:
        raise ConflictError(f"miss(es) {', '.join(map(str, done))} are already resolved (reopen them first)",
                            code="already_resolved")
    if resolution.action == "ignore":
        ids = service.store.update_miss_status(wanted, from_statuses=("open",), status="ignored", action="ignore",
                                               faq_id=None)
        return {"status": "success", "action": "ignore", "faq_id": None, "miss_ids": ids, "edit": None,
                "reload": None}
    if not resolution.faq_id:
        raise InvalidInputError("faq_id: required for attach and new")
    if resolution.paraphrases is not None:
        texts = list(resolution.paraphrases)
    else:  # each distinct wording once, the miss named in the URL first
        by_key = {match_key(r["message"]): r["message"] for r in reversed(ordered)}
        texts = list(dict.fromkeys(by_key[match_key(r["message"])] for r in ordered))
    edit = _write_kb(service, resolution, ordered[0], texts)
    ids = service.store.update_miss_status(wanted, from_statuses=("open", "ignored"), status="resolved",
                                           action=resolution.action, faq_id=resolution.faq_id)
    outcome: RebuildOutcome | None = None
    if resolution.reload and rebuilder is not None and edit.changed:
        outcome = rebuilder.rebuild(force=resolution.force, reason=f"resolve {resolution.action}")
    return {"status": "success", "action": resolution.action, "faq_id": resolution.faq_id, "miss_ids": ids,
            "edit": edit.as_dict(), "reload": outcome.as_dict() if outcome else None}


def _write_kb(service: FaqService, resolution: Resolution, leader: dict[str, Any], texts: list[str]) -> KbEdit:
    kb_path = Path(service.settings.kb)
    assert resolution.faq_id is not None
    try:
        with edit_lock(service.settings.data_dir).hold(EDIT_LOCK_SECONDS):
            if resolution.action == "attach":
                return add_paraphrases(kb_path, resolution.faq_id, texts)
            if not resolution.answer or not resolution.answer.strip():
                raise InvalidInputError("answer: required for a new FAQ")
            question = resolution.question or (texts[0] if texts else leader["message"])
            rest = [t for t in texts if match_key(t) != match_key(question)]
            return add_faq(kb_path, resolution.faq_id, question, resolution.answer, paraphrases=rest,
                           tags=resolution.tags, file=resolution.file or _default_new_file(service, leader))
    except LockTimeoutError as exc:
        raise ConflictError("another KB edit is in progress; try again", code="kb_busy") from exc


# --- exports -----------------------------------------------------------------------------------------


RAW_FIELDS = ("id", "created_at", "message", "channel", "session_id", "reason", "status", "best_faq_id",
              "best_percent", "index_version", "resolved_action", "resolved_faq_id", "resolved_at")
CLUSTER_FIELDS = ("id", "count", "representative", "variants", "miss_ids", "first_seen", "last_seen", "channels",
                  "best_faq_id", "best_question", "best_percent", "answered_now")


def cluster_rows(clusters: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Clusters flattened to one spreadsheet-friendly row each."""
    out = []
    for c in clusters:
        best = c["candidates"][0] if c["candidates"] else {}
        out.append({"id": c["id"], "count": c["count"], "representative": c["representative"],
                    "variants": " | ".join(v["text"] for v in c["variants"]),
                    "miss_ids": " ".join(map(str, c["miss_ids"])), "first_seen": c["first_seen"],
                    "last_seen": c["last_seen"], "channels": " ".join(f"{k}:{n}" for k, n in c["channels"].items()),
                    "best_faq_id": best.get("faq_id"), "best_question": best.get("question"),
                    "best_percent": best.get("percent"), "answered_now": c["answered_now"]})
    return out


def raw_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: row.get(k) for k in RAW_FIELDS} for row in rows]


def training_pairs(service: FaqService) -> list[dict[str, str]]:
    """Resolved misses as fine-tuning pairs: {"query": what the customer asked, "positive": the FAQ's question}."""
    faqs = service.index.faq_by_id
    pairs = []
    seen: set[tuple[str, str]] = set()
    for row in reversed(service.store.list_misses(status="resolved", limit=MAX_SCANNED_MISSES, kb=service.kb_name)):
        faq = faqs.get(row.get("resolved_faq_id") or "")
        if row.get("resolved_action") not in ("attach", "new") or faq is None:
            continue
        key = (match_key(row["message"]), faq.id)
        if key in seen or key[0] == match_key(faq.question):
            continue
        seen.add(key)
        pairs.append({"query": row["message"], "positive": faq.question, "faq_id": faq.id})
    return pairs


def to_csv(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    """CSV with a UTF-8 byte-order mark, so Excel opens Chinese text correctly."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in fields})
    return "\ufeff" + out.getvalue()


def to_jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def export(service: FaqService, filters: MissFilter, *, fmt: str, kind: str,
           cache: VectorCache | None = None) -> tuple[str, str]:
    """(body, media type) of an export: kind = clusters | raw | training; fmt = csv | jsonl."""
    if fmt not in ("csv", "jsonl"):
        raise InvalidInputError("format: csv or jsonl")
    if kind == "training":
        pairs = training_pairs(service)
        body = to_csv(pairs, ("query", "positive", "faq_id")) if fmt == "csv" else to_jsonl(pairs)
    elif kind == "raw":
        rows = raw_rows(fetch_misses(service, filters))
        body = to_csv(rows, RAW_FIELDS) if fmt == "csv" else to_jsonl(rows)
    elif kind == "clusters":
        clusters = cluster_misses(service, fetch_misses(service, filters), cache=cache)["clusters"]
        body = to_csv(cluster_rows(clusters), CLUSTER_FIELDS) if fmt == "csv" else to_jsonl(clusters)
    else:
        raise InvalidInputError("kind: clusters, raw or training")
    return body, ("text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson; charset=utf-8")
