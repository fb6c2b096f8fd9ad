"""The decision: which FAQ a question means, or that we do not know (pure: vectors in, decision out).

Knows nothing of HTTP or storage, so /chat, webhooks, `faqbot ask` and `faqbot eval` all decide
the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from faq import FAQ
from index.faq_index import FaqIndex, Hit


@dataclass(frozen=True)
class Candidate:
    faq_id: str
    question: str
    similarity: float
    percent: float

    def as_dict(self) -> dict[str, object]:
        return {"faq_id": self.faq_id, "question": self.question, "similarity": round(self.similarity, 4),
                "percent": self.percent}


@dataclass(frozen=True)
class Decision:
    """What the bot concluded for one question.

    `matched` is true only when the best FAQ clears its threshold and no other FAQ is too close to
    call; `clarify` lists the close contenders in the ambiguous case.
    """

    matched: bool
    faq: FAQ | None
    best: Candidate | None
    candidates: tuple[Candidate, ...]
    threshold: float
    clarify: tuple[Candidate, ...] = ()

    @property
    def reason(self) -> str:
        if self.matched:
            return "matched"
        return "ambiguous" if self.clarify else "below_threshold"


class Matcher:
    """Applies thresholds (per-FAQ > KB default > configured > calibrated) and the ambiguity margin."""

    def __init__(self, index: FaqIndex, *, threshold: float | None = None, kb_default_threshold: float | None = None,
                 margin: float | None = None) -> None:
        self.index = index
        self.default_threshold = next(
            t for t in (kb_default_threshold, threshold, index.calibration.threshold) if t is not None
        )
        self.margin = index.calibration.margin if margin is None else margin

    def threshold_for(self, faq: FAQ | None) -> float:
        if faq is not None and faq.threshold is not None:
            return faq.threshold
        return self.default_threshold

    def candidate(self, hit: Hit) -> Candidate:
        faq = self.index.faq_by_id[hit.faq_id]
        return Candidate(hit.faq_id, faq.question, hit.similarity, float(self.index.calibration.percent(hit.similarity)))

    def decide(self, hits: Sequence[Hit]) -> Decision:
        candidates = tuple(self.candidate(h) for h in hits)
        if not candidates:
            return Decision(False, None, None, (), self.default_threshold)
        best = candidates[0]
        best_faq = self.index.faq_by_id[best.faq_id]
        threshold = self.threshold_for(best_faq)
        if best.similarity < threshold:
            return Decision(False, None, best, candidates, threshold)
        close = tuple(
            c for c in candidates[1:]
            if c.similarity >= self.threshold_for(self.index.faq_by_id[c.faq_id])
            and best.similarity - c.similarity < self.margin
        )
        if close:
            return Decision(False, None, best, candidates, threshold, clarify=(best, *close))
        return Decision(True, best_faq, best, candidates, threshold)

    def match_vectors(self, vectors: np.ndarray, *, top_k: int = 3, tags: Sequence[str] | None = None) -> list[Decision]:
        # Always look a little deeper than asked, so the ambiguity check sees the runner-up.
        hits = self.index.search(vectors, top_k=max(top_k, 3), tags=tags)
        return [self._trim(self.decide(h), top_k) for h in hits]

    @staticmethod
    def _trim(decision: Decision, top_k: int) -> Decision:
        if len(decision.candidates) <= top_k:
            return decision
        return Decision(decision.matched, decision.faq, decision.best, decision.candidates[:top_k],
                        decision.threshold, decision.clarify)
