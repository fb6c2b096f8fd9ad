"""The in-memory knowledge base (FAQ YAML version 1, see docs/architecture.md, "The FAQ YAML")."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from pathlib import Path

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Where a question can arrive (/chat's `channel`, each webhook, `faqbot ask`): the keys `channel_answers` may use.
KNOWN_CHANNELS = ("web", "wecom", "wechat", "dingtalk", "feishu", "slack", "telegram", "generic", "cli")


def parse_when(text: str) -> date | datetime:
    """`2026-01-31` (a day) or an ISO datetime (`2026-01-31T18:00`, `2026-01-31 18:00:00+08:00`); ValueError else."""
    text = text.strip()
    if len(text) == 10:
        return date.fromisoformat(text)
    return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))


def when_text(value: date | datetime) -> str:
    return value.isoformat()


def _instant(value: date | datetime, tz: tzinfo, *, end: bool) -> datetime:
    """A window bound as an aware instant: a day starts at its midnight (`valid_from`) or lasts to the next
    one (`valid_to`, inclusive); a datetime without an offset is read in `tz`."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=tz)
    day = value + timedelta(days=1) if end else value
    return datetime.combine(day, time.min, tzinfo=tz)


@dataclass(frozen=True)
class FAQ:
    """One FAQ entry; `source` and `line` say where it was written, for errors and edits."""

    id: str
    question: str
    answer: str
    paraphrases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    threshold: float | None = None
    source: Path | None = None
    line: int = 0
    related: tuple[str, ...] = ()  # ids of FAQs to suggest after this one's answer, in order
    channel_answers: tuple[tuple[str, str], ...] = ()  # (channel, answer) replacing `answer` there
    valid_from: date | datetime | None = None  # outside [valid_from, valid_to] the FAQ is neither answered nor offered
    valid_to: date | datetime | None = None

    def window(self, tz: tzinfo) -> tuple[datetime | None, datetime | None]:
        """[start, end) as aware instants (None: open on that side); dates and naive times are read in `tz`."""
        start = _instant(self.valid_from, tz, end=False) if self.valid_from is not None else None
        end = _instant(self.valid_to, tz, end=True) if self.valid_to is not None else None
        return start, end

    def offered_at(self, now: datetime, tz: tzinfo) -> bool:
        """Whether the FAQ is inside its validity window at the aware instant `now`."""
        if self.valid_from is None and self.valid_to is None:
            return True
        start, end = self.window(tz)
        return (start is None or start <= now) and (end is None or now < end)

    def answer_for(self, channel: str) -> str:
        """The answer written for `channel`, else the default `answer`."""
        return dict(self.channel_answers).get(channel, self.answer)

    @property
    def texts(self) -> tuple[str, ...]:
        """Every way this FAQ is asked: the canonical question first, then the paraphrases."""
        return (self.question, *self.paraphrases)

    def desk_fields(self) -> dict[str, object]:
        """The fields of the customer-service desk (#24) that are set: in the hash and the index only when
        given, so a KB that uses none of them keeps the hash (and index) it had before they existed."""
        fields: dict[str, object] = {}
        if self.related:
            fields["related"] = list(self.related)
        if self.channel_answers:
            fields["channel_answers"] = dict(self.channel_answers)
        if self.valid_from is not None:
            fields["valid_from"] = when_text(self.valid_from)
        if self.valid_to is not None:
            fields["valid_to"] = when_text(self.valid_to)
        return fields

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, for the index metadata (`from_dict` reads it back)."""
        return {"id": self.id, "question": self.question, "paraphrases": list(self.paraphrases), "answer": self.answer,
                "tags": list(self.tags), "threshold": self.threshold, "source": str(self.source or ""), "line": self.line,
                **self.desk_fields()}

    @classmethod
    def from_dict(cls, d: dict) -> FAQ:
        return cls(id=d["id"], question=d["question"], answer=d["answer"], paraphrases=tuple(d["paraphrases"]),
                   tags=tuple(d["tags"]), threshold=d["threshold"], source=Path(d["source"]) if d["source"] else None,
                   line=int(d["line"]), related=tuple(d.get("related", ())),
                   channel_answers=tuple(d.get("channel_answers", {}).items()),
                   valid_from=parse_when(d["valid_from"]) if d.get("valid_from") else None,
                   valid_to=parse_when(d["valid_to"]) if d.get("valid_to") else None)


@dataclass(frozen=True)
class KnowledgeBase:
    """All FAQs of one KB (a file or a directory of files), ids unique across files."""

    faqs: tuple[FAQ, ...]
    default_threshold: float | None = None
    files: tuple[Path, ...] = field(default=())
    handoff_phrases: tuple[str, ...] = ()  # `defaults.handoff_phrases`: more ways to ask for a person

    def by_id(self) -> dict[str, FAQ]:
        return {f.id: f for f in self.faqs}

    def texts(self) -> list[tuple[str, str]]:
        """(faq_id, text) for every question and paraphrase, in KB order: one index vector each."""
        return [(f.id, t) for f in self.faqs for t in f.texts]

    @property
    def content_hash(self) -> str:
        """Hash of everything that changes the index or the answers (not comments or formatting)."""
        payload = [
            [f.id, f.question, list(f.paraphrases), f.answer, list(f.tags), f.threshold]
            + ([f.desk_fields()] if f.desk_fields() else []) for f in self.faqs
        ]
        kb_level: list[object] = [payload, self.default_threshold]
        if self.handoff_phrases:  # only when set, so a KB without the newer fields keeps its old hash
            kb_level.append({"handoff_phrases": list(self.handoff_phrases)})
        blob = json.dumps(kb_level, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
