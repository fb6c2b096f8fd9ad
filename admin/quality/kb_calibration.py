"""`faqbot calibrate --kb`: what a KB can and cannot say about the answer line.

A KB alone is weak evidence: its paraphrases were written next to their questions, so asking them
back flatters the model, and it holds no real out-of-scope questions. Measured on ten domains
(docs/quality.md), the line that looked best in such a leave-out simulation did not predict the
line that was best on the domain's real questions, so it is printed as evidence and never applied.
A golden `tests.yaml` is real evidence: the line may move to what answers more of it, and only when
the gain is clear (at least `MIN_GOLDEN_CASES` questions, at least `MIN_NET_GAIN` more right).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from admin.quality.calibrate import CachingEncoder
from admin.quality.evaluation import EvalQuery, evaluate_faq
from faq import KnowledgeBase
from index.calibration import SCOPE_LOCAL, Calibration
from index.encoders import Encoder
from index.faq_index import build_index

MIN_GOLDEN_CASES = 20
MIN_NET_GAIN = 2
LINE_GRID = tuple(float(v) for v in range(10, 91, 5))
MIN_EVIDENCE = 10  # paraphrases (or FAQs) a leave-out simulation needs before it says anything
REMOVED_FAQ_EVERY = 10


@dataclass(frozen=True)
class KbEvidence:
    """A leave-out simulation on the KB: paraphrases asked without themselves, questions of removed FAQs."""

    paraphrases: int
    paraphrases_right: int
    removed_questions: int
    removed_refused: int
    line: float
    best_line: float | None

    @property
    def enough(self) -> bool:
        return self.paraphrases >= MIN_EVIDENCE and self.removed_questions >= MIN_EVIDENCE


def _ask(kb: KnowledgeBase, encoder: Encoder, calibration: Calibration, texts: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
    index = build_index(kb, encoder, calibration=calibration)
    rankings = index.rank(encoder.encode_queries(list(texts)), texts) if texts else []
    return (np.array([r.confidence if r.confidence is not None else 0.0 for r in rankings]),
            [r.faqs[0].faq_id if r.faqs else None for r in rankings])


def kb_evidence(kb: KnowledgeBase, encoder: Encoder, calibration: Calibration) -> KbEvidence:
    """Two folds of paraphrases taken out and asked back, and every 10th FAQ removed with its questions asked."""
    model = calibration.confidence
    assert model is not None
    encoder = CachingEncoder(encoder)
    conf, right = [], []
    for fold in (0, 1):
        asked, expected = [], []
        faqs = []
        for f in kb.faqs:
            out = [p for i, p in enumerate(f.paraphrases) if i % 2 == fold]
            asked += out
            expected += [f.id] * len(out)
            faqs.append(replace(f, paraphrases=tuple(p for p in f.paraphrases if p not in out)))
        c, top = _ask(replace(kb, faqs=tuple(faqs)), encoder, calibration, asked)
        conf.append(c)
        right.append(np.array([t == e for t, e in zip(top, expected, strict=True)], dtype=bool))
    removed = [f for i, f in enumerate(kb.faqs) if i % REMOVED_FAQ_EVERY == REMOVED_FAQ_EVERY - 1]
    kept = tuple(f for f in kb.faqs if f not in removed)
    out_conf = _ask(replace(kb, faqs=kept), encoder, calibration, [t for f in removed for t in f.texts])[0] if kept else np.zeros(0)
    in_conf, in_right = np.concatenate(conf), np.concatenate(right)
    line = model.min_confidence

    def score(at: float) -> int:
        return int(((in_conf >= at) & in_right).sum() + (out_conf < at).sum())

    best = max(LINE_GRID, key=lambda at: (score(at), -abs(at - line))) if len(in_conf) and len(out_conf) else None
    return KbEvidence(len(in_conf), int(((in_conf >= line) & in_right).sum()), len(out_conf),
                      int((out_conf < line).sum()), line, best)


@dataclass(frozen=True)
class GoldenTuning:
    """The golden questions at each answer line; `adopted` is the line to store, or None to keep the current one."""

    cases: int
    current_line: float
    current_right: int
    best_line: float
    best_right: int
    adopted: float | None
    reason: str


def tune_on_golden(kb: KnowledgeBase, encoder: Encoder, calibration: Calibration, golden: Sequence[EvalQuery],
                   *, threshold: float | None = None) -> GoldenTuning:
    """Right golden answers at each line of LINE_GRID, through the real matcher; adopt only a clear gain."""
    model = calibration.confidence
    assert model is not None
    encoder = CachingEncoder(encoder)
    index = build_index(kb, encoder, calibration=calibration)

    def right_at(line: float) -> int:
        result = evaluate_faq(index, kb, golden, encoder=encoder, threshold=threshold, min_confidence=line)
        return sum(r.correct for r in result.results)

    current = right_at(model.min_confidence)
    by_line = {line: right_at(line) for line in LINE_GRID}
    best_line = max(by_line, key=lambda at: (by_line[at], -abs(at - model.min_confidence)))
    best = by_line[best_line]
    if len(golden) < MIN_GOLDEN_CASES:
        adopted, reason = None, f"only {len(golden)} golden questions (need {MIN_GOLDEN_CASES} to move the line)"
    elif best - current < MIN_NET_GAIN:
        adopted, reason = None, f"the best line answers {best - current:+d} right (a change needs +{MIN_NET_GAIN})"
    else:
        adopted, reason = best_line, f"{best - current:+d} golden questions right"
    return GoldenTuning(len(golden), model.min_confidence, current, best_line, best, adopted, reason)


def with_min_confidence(calibration: Calibration, line: float, note: str) -> Calibration:
    """The calibration with its answer line moved, marked as fitted here (kept across KB rebuilds)."""
    assert calibration.confidence is not None
    return replace(calibration, confidence=replace(calibration.confidence, min_confidence=line),
                   source=f"{calibration.source}; min_confidence {line:g} ({note})",
                   extra={**calibration.extra, "scope": SCOPE_LOCAL})
