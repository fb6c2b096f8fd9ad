"""How good is an encoder + threshold on labelled data: pure metrics, no printing.

Two kinds of benchmark:
- FAQ retrieval (`evaluate_faq`): a KB plus queries whose `expected` is an FAQ id, or null for a
  question the KB does not cover. Decisions come from the real `bot.matcher.Matcher` over an
  index built exactly as `faqbot build` builds it, so the figures are what /chat would do.
- Sentence pairs (`evaluate_pairs`): `s1<TAB>s2<TAB>label`, label 0/1 (same intent or not) or a
  0-5 similarity score (STS-B): ROC-AUC and best-threshold accuracy, or Spearman.

The threshold sweep and the ambiguity-margin analysis are computed from the candidates the matcher
saw (`ScoredQueries`), with the matcher's own rules (per-FAQ threshold > default, a runner-up that
clears its threshold and is within the margin makes the answer a clarify question), so they can
also be fed from simulations (admin.quality.calibrate) and from the fine-tuning work.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bot.matcher import Decision, Matcher
from faq import KBError, KnowledgeBase
from faq.errors import FaqbotError
from faq.golden import load_golden
from index.calibration import Calibration
from index.encoders import Encoder, encode_in_chunks
from index.faq_index import FaqIndex, build_index

Progress = Callable[[int], None]
RANK_DEPTH = 10
PRECISION_TARGET = 0.95
MARGIN_GRID = tuple(round(0.0025 * i, 4) for i in range(13))  # 0 .. 0.03 in cosine


class EvalDataError(FaqbotError, ValueError):
    """A benchmark file that cannot be read; the message names the file and line."""

    code = "invalid_benchmark"


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalQuery:
    """One benchmark question: `expected` is the FAQ id that should answer it, None if none should."""

    query: str
    expected: str | None


@dataclass(frozen=True)
class LabelledPair:
    s1: str
    s2: str
    label: float


def load_queries(path: Path) -> list[EvalQuery]:
    """Read `{"query", "expected"}` JSON lines (blank lines skipped), or a KB's golden `tests.yaml`."""
    if Path(path).suffix in (".yaml", ".yml"):
        return _load_golden_yaml(Path(path))
    queries = []
    with Path(path).open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                query, expected = row["query"], row.get("expected")
            except (ValueError, KeyError, TypeError) as exc:
                raise EvalDataError(f"{path}:{line_no}: expected a JSON object with \"query\" and \"expected\" ({exc})") from exc
            if not isinstance(query, str) or not (expected is None or isinstance(expected, str)):
                raise EvalDataError(f"{path}:{line_no}: \"query\" must be text and \"expected\" an FAQ id or null")
            queries.append(EvalQuery(query, expected))
    if not queries:
        raise EvalDataError(f"{path}: no queries")
    return queries


def _load_golden_yaml(path: Path) -> list[EvalQuery]:
    """The golden questions file beside a KB, read by faq.golden (the reader the reload gate uses)."""
    try:
        cases = load_golden(path)
    except KBError as exc:
        raise EvalDataError("\n".join(str(p) for p in exc.problems)) from exc
    if not cases:
        raise EvalDataError(f"{path}: no queries")
    return [EvalQuery(c.query, c.expected) for c in cases]


def load_pairs(path: Path) -> list[LabelledPair]:
    """Read `s1<TAB>s2<TAB>label` lines (label a number: 0/1, or a 0-5 score)."""
    pairs = []
    with Path(path).open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 3:
                raise EvalDataError(f"{path}:{line_no}: expected s1<TAB>s2<TAB>label, found {len(parts)} field(s)")
            try:
                label = float(parts[2])
            except ValueError as exc:
                raise EvalDataError(f"{path}:{line_no}: label {parts[2]!r} is not a number") from exc
            pairs.append(LabelledPair(parts[0], parts[1], label))
    if not pairs:
        raise EvalDataError(f"{path}: no pairs")
    return pairs


# --- ranking and pair metrics (pure) ------------------------------------------------------------


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank (as scipy's `rankdata`)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks); nan if either side is constant."""
    rx, ry = rankdata(np.asarray(x)), rankdata(np.asarray(y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denominator) if denominator else float("nan")


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def best_threshold_accuracy(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) of the rule `score >= threshold -> positive` that is right most often.

    The threshold returned is the midpoint between the two scores it separates (or just above
    the maximum when predicting everything negative is best), so it generalises sensibly.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    n = len(scores)
    # Predict the top i as positive, for i = 0..n; only cut between distinct scores.
    true_pos = np.concatenate([[0], np.cumsum(sorted_labels)])
    false_pos = np.arange(n + 1) - true_pos
    correct = true_pos + (int((~labels).sum()) - false_pos)
    allowed = np.ones(n + 1, dtype=bool)
    allowed[1:n] = sorted_scores[1:] != sorted_scores[:-1]
    best = int(np.flatnonzero(allowed)[np.argmax(correct[allowed])])
    if best == 0:
        threshold = float(sorted_scores[0]) + 1e-6
    elif best == n:
        threshold = float(sorted_scores[-1])
    else:
        threshold = float((sorted_scores[best - 1] + sorted_scores[best]) / 2)
    return threshold, float(correct[best] / n)


def ranking_metrics(ranks: Sequence[int | None]) -> tuple[float, float, float]:
    """(top-1, MRR@10, recall@5) from the 1-based rank of the expected FAQ (None = not in the top 10)."""
    if not ranks:
        return float("nan"), float("nan"), float("nan")
    top1 = sum(1 for r in ranks if r == 1) / len(ranks)
    mrr = sum(1.0 / r for r in ranks if r is not None and r <= RANK_DEPTH) / len(ranks)
    recall5 = sum(1 for r in ranks if r is not None and r <= 5) / len(ranks)
    return top1, mrr, recall5


# --- the matcher's rules over many queries at once ----------------------------------------------


@dataclass(frozen=True)
class ScoredQueries:
    """The candidates the matcher considered for each query, as arrays (k = candidates per query).

    `sims` [n, k] cosines, best first (nan where fewer candidates); `own_thresholds` [n, k] the
    candidate FAQ's own threshold (nan = use the default); `is_expected` [n, k] whether the
    candidate is the query's expected FAQ; `in_scope` [n] whether the query has one.
    """

    sims: np.ndarray
    own_thresholds: np.ndarray
    is_expected: np.ndarray
    in_scope: np.ndarray

    def __post_init__(self) -> None:
        n, k = self.sims.shape
        if self.own_thresholds.shape != (n, k) or self.is_expected.shape != (n, k) or self.in_scope.shape != (n,):
            raise ValueError("ScoredQueries arrays disagree in shape")

    @property
    def n(self) -> int:
        return int(self.sims.shape[0])


@dataclass(frozen=True)
class Outcomes:
    """What the bot would do for each query under one (threshold, margin): boolean arrays [n]."""

    answered: np.ndarray
    answered_right: np.ndarray
    clarified: np.ndarray
    expected_in_clarify: np.ndarray
    in_scope: np.ndarray

    @property
    def accuracy(self) -> float:
        """Right answers to in-scope queries plus non-answers to out-of-scope ones, over all queries."""
        correct = self.answered_right.sum() + (~self.answered & ~self.in_scope).sum()
        return float(correct / max(1, len(self.in_scope)))

    @property
    def precision(self) -> float:
        answered = int(self.answered.sum())
        return float(self.answered_right.sum() / answered) if answered else float("nan")

    @property
    def answer_rate(self) -> float:
        return float(self.answered.mean()) if len(self.answered) else float("nan")

    @property
    def in_scope_answered_right(self) -> float:
        n_in = int(self.in_scope.sum())
        return float(self.answered_right.sum() / n_in) if n_in else float("nan")

    @property
    def out_of_scope_rejected(self) -> float:
        n_out = int((~self.in_scope).sum())
        return float((~self.answered & ~self.in_scope).sum() / n_out) if n_out else float("nan")


def decide_all(scored: ScoredQueries, threshold: float, margin: float) -> Outcomes:
    """The matcher's decision for every query at default `threshold` and ambiguity `margin`."""
    sims = scored.sims
    effective = np.where(np.isnan(scored.own_thresholds), threshold, scored.own_thresholds)
    with np.errstate(invalid="ignore"):
        clears = sims >= effective  # nan (no candidate) compares False
    best_clears = clears[:, 0] if sims.shape[1] else np.zeros(scored.n, dtype=bool)
    if sims.shape[1] > 1:
        gap = sims[:, :1] - sims[:, 1:]
        with np.errstate(invalid="ignore"):
            close = clears[:, 1:] & (gap < margin)
        ambiguous = best_clears & close.any(axis=1)
        expected_listed = scored.is_expected[:, 0] | (close & scored.is_expected[:, 1:]).any(axis=1)
    else:
        ambiguous = np.zeros(scored.n, dtype=bool)
        expected_listed = np.zeros(scored.n, dtype=bool)
    answered = best_clears & ~ambiguous
    answered_right = answered & scored.is_expected[:, 0] if sims.shape[1] else answered
    return Outcomes(answered, answered_right, ambiguous, ambiguous & expected_listed, scored.in_scope)


@dataclass(frozen=True)
class ThresholdSweep:
    """Accuracy, precision and answer rate at every threshold of a grid (same margin throughout)."""

    thresholds: np.ndarray
    accuracy: np.ndarray
    precision: np.ndarray
    answer_rate: np.ndarray
    in_scope_answered_right: np.ndarray
    out_of_scope_rejected: np.ndarray
    margin: float
    best_threshold: float
    best_accuracy: float
    precision_target: float
    precision_threshold: float | None  # lowest threshold from which precision stays >= target
    precision_threshold_accuracy: float | None
    precision_threshold_answer_rate: float | None


def threshold_grid(scored: ScoredQueries, step: float = 0.001) -> np.ndarray:
    """A regular grid of thresholds covering every best-candidate cosine (plus one that answers nothing)."""
    best = scored.sims[:, 0] if scored.sims.shape[1] else np.zeros(0)
    best = best[np.isfinite(best)]
    low = float(np.floor(best.min() / step) * step) if best.size else 0.0
    high = float(np.ceil(best.max() / step) * step) + step if best.size else 1.0
    return np.round(np.arange(low, high + step / 2, step), 6)


def sweep_thresholds(scored: ScoredQueries, margin: float, *, thresholds: np.ndarray | None = None,
                     precision_target: float = PRECISION_TARGET) -> ThresholdSweep:
    """Every figure as a function of the default threshold; the best one, and the one for the precision target.

    The accuracy maximiser is the lowest threshold reaching the maximum (answer more when it
    costs nothing). The precision threshold is the lowest from which every higher threshold that
    still answers something keeps precision at the target, so noise at the high end cannot pick it.
    """
    grid = threshold_grid(scored) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    rows = [decide_all(scored, float(t), margin) for t in grid]
    accuracy = np.array([o.accuracy for o in rows])
    precision = np.array([o.precision for o in rows])
    answer_rate = np.array([o.answer_rate for o in rows])
    answered_right = np.array([o.in_scope_answered_right for o in rows])
    rejected = np.array([o.out_of_scope_rejected for o in rows])
    best = int(np.argmax(accuracy))
    meets = np.where(np.isnan(precision), True, precision >= precision_target)
    # suffix_ok[i]: every threshold from i upwards meets the target
    suffix_ok = np.flip(np.logical_and.accumulate(np.flip(meets)))
    candidates = np.flatnonzero(suffix_ok & ~np.isnan(precision))
    p_index = int(candidates[0]) if candidates.size else None
    return ThresholdSweep(
        thresholds=grid, accuracy=accuracy, precision=precision, answer_rate=answer_rate,
        in_scope_answered_right=answered_right, out_of_scope_rejected=rejected, margin=margin,
        best_threshold=float(grid[best]), best_accuracy=float(accuracy[best]),
        precision_target=precision_target,
        precision_threshold=float(grid[p_index]) if p_index is not None else None,
        precision_threshold_accuracy=float(accuracy[p_index]) if p_index is not None else None,
        precision_threshold_answer_rate=float(answer_rate[p_index]) if p_index is not None else None,
    )


@dataclass(frozen=True)
class MarginRow:
    """What one ambiguity margin does at a fixed threshold, compared with no margin."""

    margin: float
    clarified: int
    wrong_prevented: int  # would have been a wrong answer (or an answer to an out-of-scope query)
    right_delayed: int  # would have been the right answer, now a clarify question
    expected_offered: int  # in-scope clarify questions whose choices include the right FAQ
    accuracy: float

    @property
    def net(self) -> int:
        return self.wrong_prevented - self.right_delayed


def margin_analysis(scored: ScoredQueries, threshold: float, margins: Sequence[float] = MARGIN_GRID) -> list[MarginRow]:
    """Wrong answers prevented and right answers delayed by each margin, at `threshold`."""
    baseline = decide_all(scored, threshold, 0.0)
    wrong_before = baseline.answered & ~baseline.answered_right
    rows = []
    for margin in margins:
        outcome = decide_all(scored, threshold, float(margin))
        rows.append(MarginRow(
            margin=float(margin),
            clarified=int(outcome.clarified.sum()),
            wrong_prevented=int((outcome.clarified & wrong_before).sum()),
            right_delayed=int((outcome.clarified & baseline.answered_right).sum()),
            expected_offered=int((outcome.expected_in_clarify & scored.in_scope).sum()),
            accuracy=outcome.accuracy,
        ))
    return rows


CLARIFY_PRECISION = 0.75


def recommended_margin(rows: Sequence[MarginRow], min_clarify_precision: float = CLARIFY_PRECISION) -> float:
    """The largest margin whose clarify questions are mostly useful: at least `min_clarify_precision`
    of the answers it turns into clarify questions would have been wrong (0 if none is).

    A clarify question in place of a wrong answer saves the customer a wrong answer; in place of a
    right one it costs a tap. 0.75 means at most one right answer delayed per three wrong ones
    prevented, so a margin ships only where it clearly pays.
    """
    useful = [r for r in rows if r.wrong_prevented > 0
              and r.wrong_prevented / (r.wrong_prevented + r.right_delayed) >= min_clarify_precision]
    return max((r.margin for r in useful), default=0.0)


# --- FAQ benchmark ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryResult:
    """One query's outcome, for reports and error listings."""

    query: str
    expected: str | None
    rank: int | None
    decision: Decision

    @property
    def correct(self) -> bool:
        if self.expected is None:
            return not self.decision.matched
        return self.decision.matched and self.decision.faq is not None and self.decision.faq.id == self.expected


@dataclass(frozen=True)
class FaqEvalResult:
    """Figures of one FAQ benchmark under the configured threshold and margin, and the sweeps."""

    n_queries: int
    n_in_scope: int
    n_out_of_scope: int
    top1: float
    mrr10: float
    recall5: float
    threshold: float
    margin: float
    at_threshold: Outcomes
    sweep: ThresholdSweep
    margins: list[MarginRow]
    recommended_margin: float
    scored: ScoredQueries
    calibration: Calibration
    unknown_expected: tuple[str, ...] = ()
    results: list[QueryResult] = field(default_factory=list)
    min_confidence: float | None = None
    confidences: np.ndarray | None = None  # per query, None without a confidence model
    top_right: np.ndarray | None = None  # per query: the top FAQ of the ranking is the expected one

    def confidence_sweep(self, step: float = 5.0) -> list[tuple[float, float, float]]:
        """(min_confidence, overall accuracy, out-of-scope refused) at each line, ignoring per-FAQ thresholds."""
        if self.confidences is None or self.top_right is None:
            return []
        in_scope = self.scored.in_scope
        rows = []
        for line in np.arange(0.0, 100.0 + step / 2, step):
            answered = self.confidences >= line
            correct = (answered & self.top_right) | (~answered & ~in_scope)
            refused = float((~answered & ~in_scope).sum() / max(1, (~in_scope).sum()))
            rows.append((float(line), float(correct.mean()) if len(correct) else float("nan"), refused))
        return rows

    def reliability(self) -> list[ReliabilityBin]:
        if self.confidences is None or self.top_right is None:
            return []
        return reliability_bins(self.confidences, self.top_right)

    @property
    def overall_accuracy(self) -> float:
        return self.at_threshold.accuracy

    @property
    def oos_rejection(self) -> float:
        return self.at_threshold.out_of_scope_rejected

    def similarity_groups(self) -> dict[str, np.ndarray]:
        """Best-candidate cosines of in-scope queries ranked right / wrong, and of out-of-scope ones."""
        best = self.scored.sims[:, 0]
        right = self.scored.is_expected[:, 0]
        return {
            "correct": best[self.scored.in_scope & right],
            "wrong": best[self.scored.in_scope & ~right],
            "out_of_scope": best[~self.scored.in_scope],
        }

    def summary(self) -> dict[str, object]:
        """Plain numbers (JSON-ready)."""
        s = self.sweep
        return {
            "queries": self.n_queries, "in_scope": self.n_in_scope, "out_of_scope": self.n_out_of_scope,
            "top1": _r(self.top1), "mrr10": _r(self.mrr10), "recall5": _r(self.recall5),
            "threshold": _r(self.threshold), "threshold_percent": self.calibration.percent(self.threshold),
            "min_confidence": self.min_confidence, "margin": _r(self.margin),
            "in_scope_answered_right": _r(self.at_threshold.in_scope_answered_right),
            "oos_rejection": _r(self.oos_rejection), "overall_accuracy": _r(self.overall_accuracy),
            "precision": _r(self.at_threshold.precision), "answer_rate": _r(self.at_threshold.answer_rate),
            "clarified": int(self.at_threshold.clarified.sum()),
            "best_threshold": _r(s.best_threshold), "best_accuracy": _r(s.best_accuracy),
            "precision_target": s.precision_target, "precision_threshold": _r(s.precision_threshold),
            "precision_threshold_accuracy": _r(s.precision_threshold_accuracy),
            "precision_threshold_answer_rate": _r(s.precision_threshold_answer_rate),
            "recommended_margin": self.recommended_margin,
            "unknown_expected": len(self.unknown_expected),
        }


def _r(value: float | None, digits: int = 4) -> float | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return round(float(value), digits)


@dataclass(frozen=True)
class ReliabilityBin:
    """Questions whose confidence fell in [low, high): how many, their mean confidence, % whose top FAQ was right."""

    low: int
    high: int
    questions: int
    mean_confidence: float
    share_right: float


def reliability_bins(confidences: np.ndarray, right: np.ndarray, weights: np.ndarray | None = None,
                     edges: Sequence[int] = tuple(range(0, 101, 10))) -> list[ReliabilityBin]:
    """The reliability table: a trustworthy confidence has share_right close to mean_confidence in every bin."""
    weights = np.ones(len(confidences)) if weights is None else weights
    bins = []
    for low, high in itertools.pairwise(edges):
        inside = (confidences >= low) & ((confidences < high) if high < edges[-1] else (confidences <= high))
        if inside.any():
            w = weights[inside]
            bins.append(ReliabilityBin(low, high, int(inside.sum()), float(np.average(confidences[inside], weights=w)),
                                       float(np.average(right[inside].astype(float), weights=w) * 100.0)))
    return bins


def outcomes_of(decisions: Sequence[Decision], expected: Sequence[str | None]) -> Outcomes:
    """What the bot actually did for each query (its own rule, confidence or cosine), as Outcomes."""
    answered = np.array([d.matched for d in decisions], dtype=bool)
    right = np.array([d.matched and d.faq is not None and d.faq.id == e for d, e in zip(decisions, expected, strict=True)],
                     dtype=bool)
    clarified = np.array([bool(d.clarify) for d in decisions], dtype=bool)
    in_clarify = np.array([any(c.faq_id == e for c in d.clarify) for d, e in zip(decisions, expected, strict=True)],
                          dtype=bool)
    return Outcomes(answered, right, clarified, in_clarify, np.array([e is not None for e in expected], dtype=bool))


def scored_from_decisions(decisions: Sequence[Decision], expected: Sequence[str | None], index: FaqIndex,
                          depth: int = 3) -> ScoredQueries:
    """Arrays of the candidates each decision weighed (the first `depth`), for sweeps."""
    n = len(decisions)
    sims = np.full((n, depth), np.nan)
    own = np.full((n, depth), np.nan)
    is_expected = np.zeros((n, depth), dtype=bool)
    for i, (decision, want) in enumerate(zip(decisions, expected, strict=True)):
        for j, candidate in enumerate(decision.candidates[:depth]):
            sims[i, j] = candidate.similarity
            own_threshold = index.faq_by_id[candidate.faq_id].threshold
            own[i, j] = np.nan if own_threshold is None else own_threshold
            is_expected[i, j] = want is not None and candidate.faq_id == want
    in_scope = np.array([want is not None for want in expected], dtype=bool)
    return ScoredQueries(sims, own, is_expected, in_scope)


def evaluate_faq(index_or_encoder: FaqIndex | Encoder, kb: KnowledgeBase | None, queries: Sequence[EvalQuery], *,
                 threshold: float | None = None, margin: float | None = None, min_confidence: float | None = None,
                 calibration: Calibration | None = None, encoder: Encoder | None = None,
                 progress: Progress | None = None, precision_target: float = PRECISION_TARGET) -> FaqEvalResult:
    """Run the real matcher over every query and measure it.

    Give an encoder and the KB (an in-memory index is built as `faqbot build` would, with
    `calibration` or the encoder's default), or a ready `FaqIndex` plus the `encoder` that built
    it. `threshold` is the configured one (FAQBOT_THRESHOLD); as in the server, a KB
    `defaults.threshold` wins over it and the calibration's is the fallback; `margin` defaults to
    the calibration's.
    `progress` is called with the number of texts encoded (KB texts, then queries).
    """
    if isinstance(index_or_encoder, FaqIndex):
        index = index_or_encoder
        if encoder is None:
            raise ValueError("evaluate_faq with a ready index needs the encoder that built it")
    else:
        encoder = index_or_encoder
        if kb is None:
            raise ValueError("evaluate_faq with an encoder needs the KB to index")
        index = build_index(kb, encoder, calibration=calibration, progress=progress)
    matcher = Matcher(index, threshold=threshold, kb_default_threshold=index.meta.kb_default_threshold, margin=margin,
                      min_confidence=min_confidence)
    texts = [q.query for q in queries]
    vectors = encode_in_chunks(encoder.encode_queries, texts, encoder.dim, progress=progress)
    rankings = index.rank(vectors, texts, depth=RANK_DEPTH)
    decisions = [matcher.decide(r) for r in rankings]
    ranked = [r.faqs for r in rankings]
    expected = [q.expected for q in queries]
    known = index.faq_by_id
    unknown = tuple(sorted({e for e in expected if e is not None and e not in known}))
    results = []
    for query, decision, hits in zip(queries, decisions, ranked, strict=True):
        rank = next((i for i, h in enumerate(hits, 1) if h.faq_id == query.expected), None)
        results.append(QueryResult(query.query, query.expected, rank, decision))
    top1, mrr, recall5 = ranking_metrics([r.rank for r in results if r.expected is not None])
    scored = scored_from_decisions(decisions, expected, index)
    at_threshold = outcomes_of(decisions, expected)
    has_model = index.calibration.confidence is not None
    sweep = sweep_thresholds(scored, matcher.margin, precision_target=precision_target)
    margins = margin_analysis(scored, matcher.default_threshold)
    return FaqEvalResult(
        n_queries=len(queries), n_in_scope=int(scored.in_scope.sum()), n_out_of_scope=int((~scored.in_scope).sum()),
        top1=top1, mrr10=mrr, recall5=recall5, threshold=matcher.default_threshold, margin=matcher.margin,
        at_threshold=at_threshold, sweep=sweep, margins=margins, recommended_margin=recommended_margin(margins),
        scored=scored, calibration=index.calibration, unknown_expected=unknown, results=results,
        min_confidence=matcher.min_confidence,
        confidences=np.array([r.confidence for r in rankings], dtype=float) if has_model else None,
        top_right=np.array([bool(r.faqs) and r.faqs[0].faq_id == e for r, e in zip(rankings, expected, strict=True)]),
    )


# --- sentence pairs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PairEvalResult:
    """Pair benchmark figures: Spearman for graded scores; ROC-AUC and best accuracy for 0/1 labels."""

    n_pairs: int
    kind: str  # "binary" or "graded"
    cosines: np.ndarray
    labels: np.ndarray
    spearman: float
    roc_auc: float | None
    best_threshold: float | None
    best_accuracy: float | None
    median_cosine_positive: float | None
    median_cosine_negative: float | None
    median_percent_positive: float | None
    median_percent_negative: float | None

    def summary(self) -> dict[str, object]:
        return {
            "pairs": self.n_pairs, "kind": self.kind, "spearman": _r(self.spearman), "roc_auc": _r(self.roc_auc),
            "best_threshold": _r(self.best_threshold), "best_accuracy": _r(self.best_accuracy),
            "median_cosine_positive": _r(self.median_cosine_positive),
            "median_cosine_negative": _r(self.median_cosine_negative),
            "median_percent_positive": _r(self.median_percent_positive, 1),
            "median_percent_negative": _r(self.median_percent_negative, 1),
        }


def pair_cosines(encoder: Encoder, pairs: Sequence[LabelledPair], progress: Progress | None = None) -> np.ndarray:
    """Cosine of each pair, both sides encoded as queries (as /similarity does); each distinct text once."""
    texts = list(dict.fromkeys(t for p in pairs for t in (p.s1, p.s2)))
    position = {t: i for i, t in enumerate(texts)}
    vectors = encode_in_chunks(encoder.encode_queries, texts, encoder.dim, progress=progress)
    left = vectors[[position[p.s1] for p in pairs]]
    right = vectors[[position[p.s2] for p in pairs]]
    return np.clip(np.sum(left * right, axis=1), -1.0, 1.0).astype(np.float64)


def is_binary(labels: np.ndarray) -> bool:
    return bool(np.isin(labels, (0.0, 1.0)).all())


def evaluate_pairs(encoder_or_cosines: Encoder | np.ndarray, pairs: Sequence[LabelledPair], *,
                   calibration: Calibration | None = None, progress: Progress | None = None,
                   positive_min: float = 4.0, negative_max: float = 1.0) -> PairEvalResult:
    """Measure how well cosine separates the pairs; percent medians too when a calibration is given.

    For graded (0-5) labels the "paraphrase" and "unrelated" groups for the medians are scores
    >= `positive_min` and <= `negative_max`.
    """
    if isinstance(encoder_or_cosines, np.ndarray):
        cosines = np.asarray(encoder_or_cosines, dtype=np.float64)
    else:
        cosines = pair_cosines(encoder_or_cosines, pairs, progress)
    labels = np.array([p.label for p in pairs], dtype=np.float64)
    if len(cosines) != len(labels):
        raise ValueError("one cosine per pair is needed")
    binary = is_binary(labels)
    positive = labels == 1.0 if binary else labels >= positive_min
    negative = labels == 0.0 if binary else labels <= negative_max
    auc = best_t = best_acc = None
    if binary:
        auc = roc_auc(cosines, labels)
        best_t, best_acc = best_threshold_accuracy(cosines, labels)

    def median(values: np.ndarray) -> float | None:
        return float(np.median(values)) if values.size else None

    percents = np.asarray(calibration.percent(cosines)) if calibration is not None else None
    return PairEvalResult(
        n_pairs=len(pairs), kind="binary" if binary else "graded", cosines=cosines, labels=labels,
        spearman=spearman(cosines, labels), roc_auc=auc, best_threshold=best_t, best_accuracy=best_acc,
        median_cosine_positive=median(cosines[positive]), median_cosine_negative=median(cosines[negative]),
        median_percent_positive=median(percents[positive]) if percents is not None else None,
        median_percent_negative=median(percents[negative]) if percents is not None else None,
    )
