"""Confidence: the measured probability that the top FAQ of a ranking is the right answer.

One cosine cannot say that across KBs: with e5-small unrelated sentences score 0.80-0.91 and the
best threshold moves with the domain. What carries over is the shape of the whole ranking: how far
the top FAQ stands above the rest of the KB, how much it shares in characters, how large the KB
is. `ConfidenceModel` is a logistic model over those features, fitted on several domains and judged
leave-one-domain-out (admin.quality.confidence_fit, docs/quality.md); it ships inside the encoder's
calibration, so a fresh KB reads confidences right before anyone labels anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from faq.errors import FaqbotError

# Every feature a model may use, in this order (`ranking_features` fills them).
FEATURES = ("s1", "f1", "gap2", "gap_rest", "lex1", "log_kb", "ans1", "ans_gap", "has_answers", "cover", "cover_share")
REST_DEPTH = 10  # gap_rest compares the top fused score with the mean of the next 9 FAQs
SINGLE_FAQ_GAP = 0.1  # a KB of one FAQ has no runner-up: a fixed, modest gap stands in
DEFAULT_LEXICAL_WEIGHT = 0.05
ANSWER_EVIDENCE_MIN = 0.5  # answers speak for their FAQ (index.faq_index.answer_evidence) from this share up
DEFAULT_MIN_CONFIDENCE = 50.0


class ConfidenceModelError(FaqbotError, ValueError):
    """A stored confidence model that cannot be read (unknown features, wrong lengths, not finite)."""

    code = "invalid_confidence_model"


def ranking_features(similarity: np.ndarray, lexical: np.ndarray, fused: np.ndarray, n_faqs: int,
                     answer: np.ndarray | None = None, coverage: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The features of one ranking, ordered best fused score first (arrays over its FAQs).

    `answer` is the query's cosine with the answers of the ranked FAQs, or None where answers say
    nothing about their FAQ (placeholders): then the answer features are 0 and `has_answers` says so.
    `coverage` is how much of the query the top FAQ's characters cover (index.lexical.LexicalIndex.coverage):
    `cover` by idf weight, `cover_share` by count.
    """
    log_kb = math.log(max(1, n_faqs))
    if fused.size == 0:
        return np.array([0.0, 0.0, 0.0, 0.0, 0.0, log_kb, 0.0, 0.0, 0.0, 0.0, 0.0])
    f1 = float(fused[0])
    rest = fused[1:REST_DEPTH]
    gap2 = f1 - float(rest[0]) if rest.size else SINGLE_FAQ_GAP
    gap_rest = f1 - float(rest.mean()) if rest.size else SINGLE_FAQ_GAP
    ans1 = ans_gap = has_answers = 0.0
    if answer is not None and answer.size:
        ans1, has_answers = float(answer[0]), 1.0
        ans_gap = ans1 - float(answer[1:].mean()) if answer.size > 1 else SINGLE_FAQ_GAP
    return np.array([float(similarity[0]), f1, gap2, gap_rest, float(lexical[0]), log_kb, ans1, ans_gap, has_answers,
                     *coverage])


@dataclass(frozen=True)
class ConfidenceModel:
    """confidence = 100 * sigmoid(intercept + coef . (x - mean) / scale) over the named features.

    `lexical_weight`, `coverage_weight`, `answer_weight` and `answer_lexical_weight` are the weights of the
    fused ranking the features are read from (`RankingWeights`); `min_confidence` the default answer line;
    `margin` the fused-score gap under which two FAQs that both clear the line are too close to call (0 = never
    ask back).
    """

    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    lexical_weight: float = DEFAULT_LEXICAL_WEIGHT
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    margin: float = 0.0
    coverage_weight: float = 0.0  # files written before it have none: their ranking had no coverage term
    answer_weight: float = 0.0  # likewise: their ranking had no answer term
    answer_lexical_weight: float = 0.0  # likewise

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ConfidenceModelError(f"unknown confidence features {unknown}; known: {list(FEATURES)}")
        if not len(self.features) == len(self.coef) == len(self.mean) == len(self.scale):
            raise ConfidenceModelError("features, coef, mean and scale must have the same length")
        numbers = (*self.coef, *self.mean, *self.scale, self.intercept, self.lexical_weight, self.min_confidence,
                   self.margin, self.coverage_weight, self.answer_weight, self.answer_lexical_weight)
        if not all(math.isfinite(v) for v in numbers) or any(s <= 0 for s in self.scale):
            raise ConfidenceModelError("confidence model numbers must be finite, scales positive")
        if (not 0.0 <= self.min_confidence <= 100.0 or self.lexical_weight < 0 or self.margin < 0
                or min(self.coverage_weight, self.answer_weight, self.answer_lexical_weight) < 0):
            raise ConfidenceModelError("min_confidence must lie in 0..100; the ranking weights and margin >= 0")

    @property
    def ranking(self) -> RankingWeights:
        """The weights of the ranking this model reads its features from."""
        return RankingWeights(self.lexical_weight, self.coverage_weight, self.answer_weight, self.answer_lexical_weight)

    @property
    def _columns(self) -> list[int]:
        return [FEATURES.index(f) for f in self.features]

    def confidence(self, features: np.ndarray) -> np.ndarray:
        """Confidence 0..100 for feature rows (n x len(FEATURES)), rounded to 0.1."""
        x = np.atleast_2d(features)[:, self._columns]
        z = self.intercept + ((x - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef)
        return np.round(100.0 / (1.0 + np.exp(-np.clip(z, -30, 30))), 1)

    def to_dict(self) -> dict[str, object]:
        return {"features": list(self.features), "coef": list(self.coef), "intercept": self.intercept,
                "mean": list(self.mean), "scale": list(self.scale), "lexical_weight": self.lexical_weight,
                "min_confidence": self.min_confidence, "margin": self.margin,
                "coverage_weight": self.coverage_weight, "answer_weight": self.answer_weight,
                "answer_lexical_weight": self.answer_lexical_weight}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ConfidenceModel:
        def floats(key: str) -> tuple[float, ...]:
            return tuple(float(v) for v in data[key])  # type: ignore[attr-defined]

        try:
            return cls(features=tuple(str(f) for f in data["features"]),  # type: ignore[attr-defined]
                       coef=floats("coef"), intercept=float(data["intercept"]),  # type: ignore[arg-type]
                       mean=floats("mean"), scale=floats("scale"),
                       lexical_weight=float(data.get("lexical_weight", DEFAULT_LEXICAL_WEIGHT)),  # type: ignore[arg-type]
                       min_confidence=float(data.get("min_confidence", DEFAULT_MIN_CONFIDENCE)),  # type: ignore[arg-type]
                       margin=float(data.get("margin", 0.0)),  # type: ignore[arg-type]
                       coverage_weight=float(data.get("coverage_weight", 0.0)),  # type: ignore[arg-type]
                       answer_weight=float(data.get("answer_weight", 0.0)),  # type: ignore[arg-type]
                       answer_lexical_weight=float(data.get("answer_lexical_weight", 0.0)))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfidenceModelError):
                raise
            raise ConfidenceModelError(f"cannot read the confidence model: {exc}") from exc


@dataclass(frozen=True)
class RankingWeights:
    """The weights of the hybrid ranking's terms on top of the dense cosine: the character cosine, the
    coverage (by idf weight), and the query's dense and character cosines with the FAQ's answer (read only
    where answers speak for their FAQ). Chosen on the fitting domains' top-1
    (admin.quality.confidence_fit.choose_weight)."""

    lexical: float = 0.0
    coverage: float = 0.0
    answer: float = 0.0
    answer_lexical: float = 0.0

    def model_fields(self) -> dict[str, float]:
        """The same weights as `ConfidenceModel` stores them (its `ranking` reads them back)."""
        return {"lexical_weight": self.lexical, "coverage_weight": self.coverage, "answer_weight": self.answer,
                "answer_lexical_weight": self.answer_lexical}

    @property
    def rescores(self) -> bool:
        """Whether candidates are re-scored beyond their dense cosine."""
        return self.lexical > 0 or self.coverage > 0 or self.answer > 0 or self.answer_lexical > 0

    def fuse(self, similarity: np.ndarray, lexical: np.ndarray, coverage: np.ndarray | None = None,
             answer: np.ndarray | None = None, answer_lexical: np.ndarray | None = None) -> np.ndarray:
        """The fused score of each candidate (arrays over the candidates; a term left None counts 0)."""
        fused = similarity + self.lexical * lexical
        for weight, term in ((self.coverage, coverage), (self.answer, answer), (self.answer_lexical, answer_lexical)):
            if term is not None and weight > 0:
                fused = fused + weight * term
        return fused


def feature_matrix(rows: Sequence[np.ndarray]) -> np.ndarray:
    return np.vstack(rows) if rows else np.zeros((0, len(FEATURES)))
