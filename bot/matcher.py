"""The decision: which FAQ a question means, or that we do not know (pure: vectors in, decision out).

Knows nothing of HTTP or storage, so /chat, webhooks, `faqbot ask` and `faqbot eval` all decide
the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo

import numpy as np

from faq import FAQ
from index.faq_index import FaqIndex, RankedFaq, Ranking


@dataclass(frozen=True)
class Candidate:
    faq_id: str
    question: str
    similarity: float
    percent: float
    score: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"faq_id": self.faq_id, "question": self.question, "similarity": round(self.similarity, 4),
                "percent": self.percent}


@dataclass(frozen=True)
class Decision:
    """What the bot concluded for one question.

    `matched` is true only when the best FAQ clears the line that applies to it and no other FAQ is
    too close to call; `clarify` lists the close contenders in the ambiguous case. The line is
    either a confidence (`min_confidence`, the default when the encoder has a confidence model) or
    a cosine (`threshold`, when a KB, FAQ or FAQBOT_THRESHOLD sets one); the other is None.
    """

    matched: bool
    faq: FAQ | None
    best: Candidate | None
    candidates: tuple[Candidate, ...]
    threshold: float | None
    clarify: tuple[Candidate, ...] = ()
    confidence: float | None = None
    min_confidence: float | None = None

    @property
    def reason(self) -> str:
        if self.matched:
            return "matched"
        return "ambiguous" if self.clarify else "below_threshold"


class Matcher:
    """Decides on the hybrid ranking of the index.

    Which line applies to the top FAQ, first that is set: its own `threshold` (cosine), the KB's
    `defaults.threshold`, FAQBOT_THRESHOLD, FAQBOT_MIN_CONFIDENCE, the confidence model's own
    `min_confidence`, and last the calibration's cosine threshold (encoders without a model).
    """

    def __init__(self, index: FaqIndex, *, threshold: float | None = None, kb_default_threshold: float | None = None,
                 margin: float | None = None, min_confidence: float | None = None, timezone: tzinfo = UTC,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.index = index
        self.timezone = timezone
        self.clock = clock
        self._windowed = any(f.valid_from is not None or f.valid_to is not None for f in index.faqs)
        model = index.calibration.confidence
        self.cosine_threshold = kb_default_threshold if kb_default_threshold is not None else threshold
        if self.cosine_threshold is None and model is not None:
            self.min_confidence: float | None = model.min_confidence if min_confidence is None else min_confidence
        else:
            self.min_confidence = None
        self.default_threshold = self.cosine_threshold if self.cosine_threshold is not None else index.calibration.threshold
        by_confidence = self.min_confidence is not None
        self.margin = (model.margin if by_confidence and model else index.calibration.margin) if margin is None else margin

    def threshold_for(self, faq: FAQ | None) -> float | None:
        """The cosine line for this FAQ, or None when the confidence decides for it."""
        if faq is not None and faq.threshold is not None:
            return faq.threshold
        return None if self.min_confidence is not None else self.default_threshold

    def candidate(self, ranked: RankedFaq) -> Candidate:
        faq = self.index.faq_by_id[ranked.faq_id]
        return Candidate(ranked.faq_id, faq.question, ranked.similarity,
                         float(self.index.calibration.percent(ranked.similarity)), ranked.score)

    def _clears(self, candidate: Candidate, confidence: float | None) -> bool:
        threshold = self.threshold_for(self.index.faq_by_id[candidate.faq_id])
        if threshold is not None:
            return candidate.similarity >= threshold
        assert self.min_confidence is not None
        return confidence is not None and confidence >= self.min_confidence

    def offered(self, faq: FAQ, now: datetime | None = None) -> bool:
        """Whether `faq` is inside its validity window now (the FAQ of `valid_from` / `valid_to`)."""
        return not self._windowed or faq.offered_at(now or self.clock(), self.timezone)

    def _on_offer(self, candidates: tuple[Candidate, ...], confidence: float | None,
                  ) -> tuple[tuple[Candidate, ...], float | None]:
        """The candidates inside their validity window. The confidence was read off a ranking led by the first
        FAQ: when that one is out of its window it says nothing of the next, which then cannot clear it."""
        if not self._windowed or not candidates:
            return candidates, confidence
        now = self.clock()
        kept = tuple(c for c in candidates if self.offered(self.index.faq_by_id[c.faq_id], now))
        return kept, (confidence if kept and kept[0] is candidates[0] else None)

    def decide(self, ranking: Ranking) -> Decision:
        candidates, confidence = self._on_offer(tuple(self.candidate(r) for r in ranking.faqs), ranking.confidence)
        if not candidates:
            return Decision(False, None, None, (), self.threshold_for(None), confidence=None,
                            min_confidence=self.min_confidence)
        best = candidates[0]
        best_faq = self.index.faq_by_id[best.faq_id]
        threshold = self.threshold_for(best_faq)
        line = {"threshold": threshold, "confidence": confidence,
                "min_confidence": self.min_confidence if threshold is None else None}
        if not self._clears(best, confidence):
            return Decision(False, None, best, candidates, **line)
        if threshold is not None:  # the cosine rule: contenders that clear their own line and sit within the margin
            close = tuple(c for c in candidates[1:] if self._clears(c, None) and best.similarity - c.similarity < self.margin)
        else:  # the confidence rule: contenders whose fused score sits within the margin
            close = tuple(c for c in candidates[1:] if best.score - c.score < self.margin)
        if close:
            return Decision(False, None, best, candidates, clarify=(best, *close), **line)
        return Decision(True, best_faq, best, candidates, **line)

    def match_vectors(self, vectors: np.ndarray, texts: Sequence[str], *, top_k: int = 3,
                      tags: Sequence[str] | None = None) -> list[Decision]:
        """Decisions for query vectors and their (cleaned) texts, which the lexical half of the ranking reads."""
        rankings = self.index.rank(vectors, texts, tags=tags)
        return [self._trim(self.decide(r), top_k) for r in rankings]

    @staticmethod
    def _trim(decision: Decision, top_k: int) -> Decision:
        if len(decision.candidates) <= top_k:
            return decision
        return replace(decision, candidates=decision.candidates[:top_k])
