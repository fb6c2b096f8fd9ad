"""Find KB problems before customers do: duplicates, FAQs the bot may confuse, misplaced paraphrases.

Everything is measured with the encoder and calibration the bot answers with, so "confusable"
means what it says: a text of one FAQ is as close to a text of another as the answer threshold,
so a customer asking near either may get the wrong one (or a clarifying question).
Nearest neighbours come from a FAISS search (k per text), so a KB of many thousand texts lints in
seconds without an n x n matrix.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import faiss
import numpy as np

from faq import FAQ, KnowledgeBase
from index.calibration import Calibration, default_calibration
from index.encoders import Encoder, encode_in_chunks
from index.faq_index import FaqIndex
from index.text import match_key

NEIGHBOURS = 32
WITHIN_QUANTILE = 0.75
EXPIRING_DAYS = 7


def kb_vectors(kb: KnowledgeBase, encoder: Encoder, live: FaqIndex | None = None) -> np.ndarray:
    """One vector per KB text (kb.texts() order): the live index's own if it was built from this KB."""
    if (live is not None and live.meta.kb_hash == kb.content_hash and live.meta.fingerprint == encoder.fingerprint
            and live.vectors.ntotal == len(kb.texts())):
        return live.vectors.reconstruct_n(0, live.vectors.ntotal)
    texts = [text for _, text in kb.texts()]
    return encode_in_chunks(encoder.encode_passages, texts, encoder.dim)


def _where(faq: FAQ) -> dict[str, object]:
    return {"faq_id": faq.id, "file": str(faq.source or ""), "line": faq.line}


@dataclass(frozen=True)
class _Texts:
    """Every text of the KB in `kb.texts()` order, with its FAQ and whether it is that FAQ's question."""

    texts: list[str]
    owners: list[str]
    is_question: list[bool]
    by_id: dict[str, FAQ]

    @classmethod
    def of(cls, kb: KnowledgeBase) -> _Texts:
        pairs = kb.texts()
        by_id = kb.by_id()
        return cls([t for _, t in pairs], [fid for fid, _ in pairs], [by_id[fid].question == t for fid, t in pairs],
                   by_id)

    def rows_of(self) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = defaultdict(list)
        for row, fid in enumerate(self.owners):
            rows[fid].append(row)
        return rows


def validity_findings(kb: KnowledgeBase, *, now: datetime, tz: tzinfo, soon_days: int = EXPIRING_DAYS,
                      ) -> dict[str, list[dict[str, Any]]]:
    """FAQs whose validity window has ended (no longer answered) or ends within `soon_days` (`valid_to`)."""
    expired: list[dict[str, Any]] = []
    expiring: list[dict[str, Any]] = []
    for faq in kb.faqs:
        _, end = faq.window(tz)
        if end is None or faq.valid_to is None:
            continue
        row = {**_where(faq), "question": faq.question, "valid_to": faq.valid_to.isoformat(),
               "ends_at": end.astimezone(tz).isoformat(timespec="seconds")}
        if end <= now:
            expired.append(row)
        elif end - now <= timedelta(days=soon_days):
            expiring.append({**row, "days_left": round((end - now).total_seconds() / 86400, 1)})
    return {"expired": sorted(expired, key=lambda r: r["ends_at"]), "expiring": sorted(expiring, key=lambda r: r["ends_at"])}


def lint_kb(kb: KnowledgeBase, encoder: Encoder, *, answer_threshold: float, min_similarity: float | None = None,
            calibration: Calibration | None = None, live: FaqIndex | None = None, tz: tzinfo = UTC,
            now: datetime | None = None) -> dict[str, Any]:
    """Every finding of the three checks, most severe first; `ok` when there are none. Beside them, the
    FAQs expired or expiring within a week (`validity`): a heads-up, not a fault (an offer ends on purpose).

    Two FAQs are confusable when a text of one is at least `min_similarity` (cosine) from a text of
    the other. By default that is the answer threshold or, if higher, how close three quarters of
    this KB's own paraphrase pairs are: for this encoder, "as alike as two wordings of one FAQ".
    """
    calibration = calibration or default_calibration(encoder.fingerprint)
    texts = _Texts.of(kb)
    duplicates = _duplicates(texts)
    vectors = np.ascontiguousarray(kb_vectors(kb, encoder, live), dtype=np.float32)
    rows_of = texts.rows_of()
    within = [float(vectors[a] @ vectors[b]) for rows in rows_of.values()
              for i, a in enumerate(rows) for b in rows[i + 1 :]]
    paraphrase_level = float(np.quantile(within, WITHIN_QUANTILE)) if within else answer_threshold
    if min_similarity is None:
        min_similarity = max(answer_threshold, paraphrase_level)
    confusable_list, misplaced = _neighbour_findings(texts, vectors, min_similarity, calibration)
    validity = validity_findings(kb, now=now or datetime.now(UTC), tz=tz)
    return {
        "ok": not (duplicates or confusable_list or misplaced),
        "kb_hash": kb.content_hash,
        "faqs": len(kb.faqs),
        "texts": len(texts.texts),
        "min_similarity": round(float(min_similarity), 4),
        "answer_threshold": round(float(answer_threshold), 4),
        "paraphrase_similarity_p75": round(paraphrase_level, 4),
        "min_percent": float(calibration.percent(float(min_similarity))),
        "counts": {"duplicates": len(duplicates), "confusable": len(confusable_list), "misplaced": len(misplaced),
                   "expired": len(validity["expired"]), "expiring": len(validity["expiring"])},
        "duplicates": duplicates,
        "confusable": confusable_list,
        "misplaced": misplaced,
        "validity": validity,
    }


def _duplicates(t: _Texts) -> list[dict[str, Any]]:
    """Texts that are the same question after `match_key`, across FAQs first."""
    duplicates = []
    rows_by_key: dict[str, list[int]] = defaultdict(list)
    for row, text in enumerate(t.texts):
        rows_by_key[match_key(text)].append(row)
    for rows in rows_by_key.values():
        if len(rows) > 1:
            duplicates.append({
                "text": t.texts[rows[0]],
                "occurrences": [{**_where(t.by_id[t.owners[r]]), "text": t.texts[r],
                                 "field": "question" if t.is_question[r] else "paraphrases"} for r in rows],
                "same_faq": len({t.owners[r] for r in rows}) == 1,
            })
    duplicates.sort(key=lambda d: (d["same_faq"], d["text"]))
    return duplicates


def _neighbour_findings(t: _Texts, vectors: np.ndarray, min_similarity: float,
                        calibration: Calibration) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(confusable FAQ pairs, misplaced paraphrases) from each text's nearest neighbours (a FAISS search)."""
    texts, owners = t.texts, t.owners
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    scores, neighbours = flat.search(vectors, min(len(texts), NEIGHBOURS))
    rows_of = t.rows_of()
    confusable: dict[tuple[str, str], dict[str, Any]] = {}
    misplaced = []
    for row in range(len(texts)):
        own_faq = owners[row]
        other: tuple[float, int] | None = None
        for score, j in zip(scores[row], neighbours[row], strict=True):
            if j < 0 or j == row or owners[j] == own_faq or match_key(texts[j]) == match_key(texts[row]):
                continue
            if other is None:
                other = (float(score), int(j))
            if score >= min_similarity:
                _keep_confusable(confusable, t, row, int(j), float(score), calibration)
        if t.is_question[row] or other is None:
            continue
        found = _misplaced(t, vectors, rows_of, row, other, calibration)
        if found is not None:
            misplaced.append(found)
    confusable_list = sorted(confusable.values(), key=lambda c: -c["similarity"])
    for item in confusable_list:
        item["files"] = sorted({str(t.by_id[item["faq_a"]].source or ""), str(t.by_id[item["faq_b"]].source or "")})
    misplaced.sort(key=lambda m: -m["gap"])
    return confusable_list, misplaced


def _keep_confusable(confusable: dict[tuple[str, str], dict[str, Any]], t: _Texts, row: int, j: int, score: float,
                     calibration: Calibration) -> None:
    """Remember the closest pair of texts of two FAQs (one entry per FAQ pair)."""
    own_faq = t.owners[row]
    key = tuple(sorted((own_faq, t.owners[j])))
    found = confusable.get(key)
    if found is None or score > found["similarity"]:
        a_row, b_row = (row, j) if key[0] == own_faq else (j, row)
        confusable[key] = {"faq_a": key[0], "faq_b": key[1], "similarity": round(score, 4),
                           "percent": float(calibration.percent(score)),
                           "text_a": t.texts[a_row], "text_b": t.texts[b_row]}


def _misplaced(t: _Texts, vectors: np.ndarray, rows_of: dict[str, list[int]], row: int, other: tuple[float, int],
               calibration: Calibration) -> dict[str, Any] | None:
    """The paraphrase at `row` if a text of another FAQ (`other`: cosine, row) is closer than its own FAQ's texts."""
    own_faq = t.owners[row]
    siblings = [r for r in rows_of[own_faq] if r != row]
    if not siblings:
        return None
    own_scores = vectors[siblings] @ vectors[row]
    best_sibling = int(np.argmax(own_scores))
    own_best = float(own_scores[best_sibling])
    if other[0] <= own_best:
        return None
    return {
        **_where(t.by_id[own_faq]), "text": t.texts[row], "gap": round(other[0] - own_best, 4),
        "own": {"similarity": round(own_best, 4), "percent": float(calibration.percent(own_best)),
                "text": t.texts[siblings[best_sibling]]},
        "closer": {"faq_id": t.owners[other[1]], "similarity": round(other[0], 4),
                   "percent": float(calibration.percent(other[0])), "text": t.texts[other[1]]},
    }
