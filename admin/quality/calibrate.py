"""Fit a `Calibration` for an encoder: the cosine -> percent map, the default threshold, the margin.

Two sources (docs/quality.md explains the choice and how the shipped file was made):

- Labelled sentence pairs (`s1<TAB>s2<TAB>0/1`), one file per domain. The percent map is
  P(same intent | cosine), fitted by isotonic regression with every file weighing the same and,
  inside a file, positives and negatives weighing the same (a 50/50 prior: "percent" then reads
  as the evidence in the cosine, not as the base rate of one dataset). The default threshold is
  the cosine with the best class-balanced accuracy on the threshold files (`--threshold-pairs`,
  by default the same files), averaged over files. The ambiguity margin is measured on FAQ
  retrieval simulated from the positive pairs (each group of paraphrases becomes an FAQ, or is
  withheld to make out-of-scope queries) with the matcher's own rules: the largest margin whose
  clarify questions replace a wrong answer at least 75% of the time (`recommended_margin`).
- The KB alone: a paraphrase against its own question is a positive pair, questions of two
  different FAQs a negative one; the threshold and margin come from leave-one-out retrieval
  (each paraphrase asked against the KB without it; each FAQ's texts asked against the KB
  without that FAQ, as out-of-scope questions).

Fitting is deterministic: the same cosines give the same knots, threshold and margin.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from admin.quality.evaluation import (
    MARGIN_GRID,
    EvalQuery,
    LabelledPair,
    MarginRow,
    ScoredQueries,
    decide_all,
    evaluate_faq,
    is_binary,
    margin_analysis,
    pair_cosines,
    recommended_margin,
    roc_auc,
)
from admin.quality.text_groups import TextGroups
from bot.cache import EmbeddingCache
from faq import FAQ, KnowledgeBase
from faq.errors import FaqbotError
from index.calibration import SCOPE_LOCAL, Calibration
from index.encoders import Encoder

Progress = Callable[[int], None]
KNOT_STEP = 0.01
MIN_PAIRS_PER_CLASS = 5
SIMULATION_SEED = 20240607
RUN_CACHE_CAPACITY = 1 << 62  # a calibration run keeps every vector it made (bounded by the run's data)


class CalibrationDataError(FaqbotError, ValueError):
    """Not enough (or unusable) labelled data to fit a calibration."""

    code = "insufficient_data"


# --- the percent map ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PercentMap:
    knots_cosine: tuple[float, ...]
    knots_percent: tuple[float, ...]


def balanced_weights(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Weights giving every group the same total, split evenly between its positives and negatives."""
    weights = np.zeros(len(labels), dtype=np.float64)
    for group in np.unique(groups):
        for value in (0, 1):
            members = (groups == group) & (labels == value)
            if members.any():
                weights[members] = 1.0 / members.sum()
    return weights


def fit_percent_map(cosines: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None,
                    step: float = KNOT_STEP) -> PercentMap:
    """Knots of 100 x P(positive | cosine) on a fixed cosine grid; monotone, 0 at the low end, 100 at cosine 1.

    The isotonic fit is a step function; reading it at fixed knots `step` apart and joining them
    linearly gives a map that is monotone, bounded and the same for the same data. The lowest
    knot sits one step under the 1st percentile of the cosines (percent 0 there and below) and the
    last knot is cosine 1.0 = 100%: an identical sentence is fully the same question.
    """
    from sklearn.isotonic import IsotonicRegression

    cosines = np.asarray(cosines, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    groups = np.zeros(len(labels), dtype=int) if groups is None else np.asarray(groups)
    for value in (0, 1):
        if (labels == value).sum() < MIN_PAIRS_PER_CLASS:
            raise CalibrationDataError(
                f"need at least {MIN_PAIRS_PER_CLASS} positive and {MIN_PAIRS_PER_CLASS} negative pairs to calibrate"
            )
    weights = balanced_weights(labels, groups)
    # Sort with a stable key so ties in cosine are always resolved the same way.
    order = np.lexsort((labels, cosines))
    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(cosines[order], labels[order].astype(np.float64), sample_weight=weights[order])
    low = np.floor(np.percentile(cosines, 1.0) / step) * step - step
    grid = np.round(np.arange(low, 1.0 - step / 2, step), 6)
    grid = np.append(grid[grid < 1.0], 1.0)
    # Mean of the fit over each knot's neighbourhood: steadier than reading the step function at one point.
    percents = []
    for knot in grid:
        window = np.linspace(knot - step / 2, knot + step / 2, 21)
        percents.append(100.0 * float(np.mean(model.predict(np.clip(window, cosines.min(), cosines.max())))))
    percents_arr = np.maximum.accumulate(np.clip(np.array(percents), 0.0, 100.0))
    percents_arr[0] = 0.0
    percents_arr[-1] = 100.0
    percents_arr = np.maximum.accumulate(percents_arr)
    return PercentMap(tuple(float(c) for c in grid), tuple(round(float(p), 2) for p in percents_arr))


# --- simulated FAQ retrieval from pairs ---------------------------------------------------------


def _norm_key(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch)[0] not in ("P", "S"))


def faq_bench_from_pairs(pairs: Sequence[LabelledPair], *, name: str = "dev", kb_fraction: float = 0.7,
                         max_faqs: int = 800, seed: int = SIMULATION_SEED) -> tuple[KnowledgeBase, list[EvalQuery]]:
    """An FAQ benchmark from positive pairs: connected paraphrases form a group; 70% become FAQs
    (first text = question, the others = in-scope queries), the rest out-of-scope queries.

    Groups are joined through shared texts (after folding case, spaces and punctuation) so one
    question can never be both an FAQ and an out-of-scope query. Deterministic for a seed.
    """
    groups = TextGroups()
    positives = [(p.s1.strip(), p.s2.strip()) for p in pairs if p.label >= 1.0]
    positives = [(a, b) for a, b in positives if _norm_key(a) and _norm_key(b)]
    for a, b in positives:
        groups.join(_norm_key(a), _norm_key(b))
    members: dict[str, list[str]] = {}
    seen_keys: dict[str, set[str]] = {}
    for a, b in positives:
        root = groups.find(_norm_key(a))
        group, keys = members.setdefault(root, []), seen_keys.setdefault(root, set())
        for text in (a, b):
            if _norm_key(text) not in keys:
                keys.add(_norm_key(text))
                group.append(text)
    roots = [r for r, texts in members.items() if len(texts) >= 2]
    random.Random(seed).shuffle(roots)
    n_kb = min(max_faqs, round(kb_fraction * len(roots)))
    n_out = min(len(roots) - n_kb, round(n_kb * (1 - kb_fraction) / kb_fraction))
    faqs, queries = [], []
    for i, root in enumerate(roots[:n_kb], 1):
        question, *others = members[root]
        faq_id = f"{name}{i:05d}"
        faqs.append(FAQ(id=faq_id, question=question, answer=f"ANSWER {faq_id}"))
        queries.extend(EvalQuery(text, faq_id) for text in others)
    for root in roots[n_kb : n_kb + n_out]:
        queries.extend(EvalQuery(text, None) for text in members[root])
    return KnowledgeBase(faqs=tuple(faqs)), queries


# --- the fit -------------------------------------------------------------------------------------


class CachingEncoder:
    """Wraps an encoder so a text met twice in one calibration run (pairs, then the simulated FAQ) is encoded once.

    The vectors are kept, for the run, in the service's own kind of store (bot.cache.EmbeddingCache),
    one per side, keyed by the exact text.
    """

    def __init__(self, encoder: Encoder) -> None:
        self.inner = encoder
        self.name, self.dim, self.fingerprint = encoder.name, encoder.dim, encoder.fingerprint
        self._queries = EmbeddingCache(RUN_CACHE_CAPACITY)
        self._passages = EmbeddingCache(RUN_CACHE_CAPACITY)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._queries.remember(texts, texts, self.inner.encode_queries, self.dim)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._passages.remember(texts, texts, self.inner.encode_passages, self.dim)


@dataclass(frozen=True)
class SourceReport:
    """What one calibration source contributed and how the fitted calibration reads it."""

    name: str
    pairs: int
    positives: int
    roc_auc: float
    median_percent_positive: float
    median_percent_negative: float
    faq_queries: int
    best_threshold: float
    best_accuracy: float
    accuracy_at_threshold: float


@dataclass
class CalibrationFit:
    calibration: Calibration
    sources: list[SourceReport]
    margins: list[MarginRow] = field(default_factory=list)
    pooled_accuracy: float = float("nan")  # the accuracy the threshold was chosen by


def pooled_threshold(scored_sets: Sequence[ScoredQueries], step: float = 0.001) -> tuple[float, float]:
    """(threshold, mean accuracy) maximising overall accuracy averaged over benchmarks (margin 0).

    The lowest such threshold wins ties: answering more costs nothing there.
    """
    best_sims = np.concatenate([s.sims[:, 0] for s in scored_sets])
    best_sims = best_sims[np.isfinite(best_sims)]
    grid = np.round(np.arange(np.floor(best_sims.min() / step) * step, 1.0 + step, step), 6)
    mean_accuracy = np.array([np.mean([decide_all(s, float(t), 0.0).accuracy for s in scored_sets]) for t in grid])
    best = int(np.argmax(mean_accuracy))
    return float(grid[best]), float(mean_accuracy[best])


def pooled_margin(scored_sets: Sequence[ScoredQueries], threshold: float) -> tuple[float, list[MarginRow]]:
    """The margin with the best net effect summed over benchmarks, and the summed table."""
    tables = [margin_analysis(s, threshold) for s in scored_sets]
    summed = []
    for i, margin in enumerate(MARGIN_GRID):
        rows = [t[i] for t in tables]
        summed.append(MarginRow(
            margin=margin, clarified=sum(r.clarified for r in rows), wrong_prevented=sum(r.wrong_prevented for r in rows),
            right_delayed=sum(r.right_delayed for r in rows), expected_offered=sum(r.expected_offered for r in rows),
            accuracy=float(np.mean([r.accuracy for r in rows])),
        ))
    return recommended_margin(summed), summed


def balanced_threshold(cosine_sets: Sequence[np.ndarray], label_sets: Sequence[np.ndarray],
                       step: float = 0.001) -> tuple[float, float]:
    """(threshold, accuracy): the cosine best separating same-intent from other pairs, averaged over files.

    Accuracy is class-balanced (mean of the two classes' hit rates) so a file's base rate does not
    move the threshold; the lowest threshold wins ties.
    """
    low = min(float(c.min()) for c in cosine_sets)
    grid = np.round(np.arange(np.floor(low / step) * step, 1.0 + step, step), 6)
    scores = np.zeros(len(grid))
    for cosines, labels in zip(cosine_sets, label_sets, strict=True):
        positive = labels == 1
        # share of positives at or above each threshold, of negatives below it
        pos_sorted, neg_sorted = np.sort(cosines[positive]), np.sort(cosines[~positive])
        true_pos = 1.0 - np.searchsorted(pos_sorted, grid, side="left") / max(1, len(pos_sorted))
        true_neg = np.searchsorted(neg_sorted, grid, side="left") / max(1, len(neg_sorted))
        scores += (true_pos + true_neg) / 2
    scores /= len(cosine_sets)
    best = int(np.argmax(scores))
    return float(grid[best]), float(scores[best])


def _binary_labels(name: str, pairs: Sequence[LabelledPair]) -> np.ndarray:
    labels = np.array([p.label for p in pairs])
    if not is_binary(labels):
        raise CalibrationDataError(f"{name}: calibration needs 0/1 labels (a graded 0-5 file cannot say 'same intent')")
    return labels.astype(int)


def calibrate_from_pairs(encoder: Encoder, pair_sets: dict[str, Sequence[LabelledPair]], *,
                         threshold_sets: dict[str, Sequence[LabelledPair]] | None = None,
                         max_faqs: int = 800, progress: Progress | None = None,
                         command: str = "") -> CalibrationFit:
    """Fit the percent map on `pair_sets`; the threshold on `threshold_sets` (default the same files);
    the margin on FAQ retrieval simulated from `pair_sets` at that threshold."""
    encoder = CachingEncoder(encoder)
    threshold_sets = threshold_sets or pair_sets
    labels = {name: _binary_labels(name, pairs) for name, pairs in {**pair_sets, **threshold_sets}.items()}
    cosines = {name: pair_cosines(encoder, pairs, progress) for name, pairs in {**pair_sets, **threshold_sets}.items()}
    groups = np.concatenate([[i] * len(pairs) for i, pairs in enumerate(pair_sets.values())])
    percent_map = fit_percent_map(np.concatenate([cosines[n] for n in pair_sets]),
                                  np.concatenate([labels[n] for n in pair_sets]), groups)
    threshold, balanced_accuracy = balanced_threshold([cosines[n] for n in threshold_sets],
                                                      [labels[n] for n in threshold_sets])
    provisional = Calibration(percent_map.knots_cosine, percent_map.knots_percent, threshold=threshold)
    scored_sets, simulated = [], {}
    for name, pairs in pair_sets.items():
        kb, queries = faq_bench_from_pairs(pairs, name=name.replace("/", "_"), max_faqs=max_faqs)
        if not kb.faqs or not queries:
            raise CalibrationDataError(f"{name}: too few positive pairs to simulate FAQ retrieval")
        result = evaluate_faq(encoder, kb, queries, calibration=provisional, threshold=threshold, margin=0.0,
                              progress=progress)
        scored_sets.append(result.scored)
        simulated[name] = result
    margin, margin_rows = pooled_margin(scored_sets, threshold)
    sources = []
    for name in {**pair_sets, **threshold_sets}:
        percents = np.asarray(provisional.percent(cosines[name]))
        is_positive = labels[name] == 1
        result = simulated.get(name)
        sources.append(SourceReport(
            name=name + ("" if name in pair_sets else " (threshold only)"), pairs=len(is_positive),
            positives=int(is_positive.sum()), roc_auc=roc_auc(cosines[name], labels[name]),
            median_percent_positive=float(np.median(percents[is_positive])),
            median_percent_negative=float(np.median(percents[~is_positive])),
            faq_queries=result.n_queries if result else 0,
            best_threshold=result.sweep.best_threshold if result else float("nan"),
            best_accuracy=result.sweep.best_accuracy if result else float("nan"),
            accuracy_at_threshold=decide_all(result.scored, threshold, margin).accuracy if result else float("nan"),
        ))
    calibration = Calibration(
        knots_cosine=percent_map.knots_cosine, knots_percent=percent_map.knots_percent,
        threshold=threshold, margin=margin,
        source=f"pairs: percent from {', '.join(pair_sets)}; threshold from {', '.join(threshold_sets)}",
        extra=_provenance(encoder.inner, command, {
            "method": "percent = isotonic P(same intent | cosine), files and classes weighted equally; threshold = "
                      "best class-balanced pair accuracy; margin = largest whose clarify questions replace wrong answers "
                      ">= 75% of the time, on FAQ retrieval simulated from the positive pairs",
            "balanced_pair_accuracy": round(balanced_accuracy, 4),
            "sources": [s.__dict__ for s in sources],
            "margins": [{**r.__dict__} for r in margin_rows],
        }),
    )
    return CalibrationFit(calibration, sources, margin_rows, balanced_accuracy)


def _json_safe(value: object) -> object:
    """NaN/inf -> None, numpy scalars -> Python numbers: calibration files and index metadata stay strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _provenance(encoder: Encoder, command: str, details: dict[str, object]) -> dict[str, object]:
    return _json_safe({"scope": SCOPE_LOCAL, "fingerprint": encoder.fingerprint, "command": command,
                       "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"), **details})  # type: ignore[return-value]


# --- from the KB alone ---------------------------------------------------------------------------


def _kb_similarity(encoder: Encoder, kb: KnowledgeBase, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine matrix of every KB text against every other (query side vs KB side), and each row's FAQ position."""
    from index.encoders import encode_in_chunks

    texts = kb.texts()
    position = {f.id: i for i, f in enumerate(kb.faqs)}
    strings = [t for _, t in texts]
    as_queries = encode_in_chunks(encoder.encode_queries, strings, encoder.dim, progress=progress)
    as_passages = encode_in_chunks(encoder.encode_passages, strings, encoder.dim, progress=progress)
    return as_queries @ as_passages.T, np.array([position[fid] for fid, _ in texts])


def _leave_out_scores(sim: np.ndarray, owner: np.ndarray, kb: KnowledgeBase, depth: int = 3) -> ScoredQueries:
    """Every paraphrase asked of the KB without itself (in scope), every text of an FAQ asked of the KB
    without that FAQ (out of scope): top FAQs by their best remaining text."""
    n_faqs = len(kb.faqs)
    own = np.array([np.nan if f.threshold is None else f.threshold for f in kb.faqs])
    question_rows = {int(np.flatnonzero(owner == i)[0]) for i in range(n_faqs)}
    rows_sims, rows_own, rows_expected, in_scope = [], [], [], []
    for row in range(len(owner)):
        for scope in ("in", "out"):
            if scope == "in" and row in question_rows:
                continue  # an FAQ's question is its identity, not a way users ask it
            scores = sim[row].copy()
            scores[row] = -np.inf
            if scope == "out":
                scores[owner == owner[row]] = -np.inf
            per_faq = np.full(n_faqs, -np.inf)
            np.maximum.at(per_faq, owner, scores)
            top = np.argsort(-per_faq, kind="mergesort")[:depth]
            top = top[np.isfinite(per_faq[top])]
            padded = np.full(depth, np.nan)
            padded[: len(top)] = per_faq[top]
            rows_sims.append(padded)
            own_row = np.full(depth, np.nan)
            own_row[: len(top)] = own[top]
            rows_own.append(own_row)
            expected_row = np.zeros(depth, dtype=bool)
            expected_row[: len(top)] = (top == owner[row]) if scope == "in" else False
            rows_expected.append(expected_row)
            in_scope.append(scope == "in")
    return ScoredQueries(np.array(rows_sims), np.array(rows_own), np.array(rows_expected), np.array(in_scope))


def calibrate_from_kb(encoder: Encoder, kb: KnowledgeBase, *, progress: Progress | None = None,
                      command: str = "", max_texts: int = 6000) -> CalibrationFit:
    """Fit from the KB: paraphrase-vs-own-question positives, other FAQs' questions as negatives."""
    if len(kb.texts()) > max_texts:
        raise CalibrationDataError(f"the KB has {len(kb.texts())} texts; calibrating from a KB this big needs "
                                   f"--pairs (the leave-one-out simulation is limited to {max_texts} texts)")
    sim, owner = _kb_similarity(encoder, kb, progress)
    question_rows = np.array([int(np.flatnonzero(owner == i)[0]) for i in range(len(kb.faqs))])
    pos_cos = [sim[row, question_rows[owner[row]]] for row in range(len(owner)) if row not in set(question_rows)]
    upper = np.triu_indices(len(question_rows), k=1)
    neg_cos = sim[np.ix_(question_rows, question_rows)][upper]
    if len(pos_cos) < MIN_PAIRS_PER_CLASS or len(neg_cos) < MIN_PAIRS_PER_CLASS:
        raise CalibrationDataError(
            f"the KB has {len(pos_cos)} paraphrases and {len(kb.faqs)} FAQs: too few to calibrate from "
            f"(need {MIN_PAIRS_PER_CLASS} paraphrases and 4 FAQs); give --pairs with labelled sentence pairs"
        )
    cosines = np.concatenate([pos_cos, neg_cos])
    labels = np.concatenate([np.ones(len(pos_cos), int), np.zeros(len(neg_cos), int)])
    percent_map = fit_percent_map(cosines, labels)
    scored = _leave_out_scores(sim, owner, kb)
    threshold, accuracy = pooled_threshold([scored])
    margin, margin_rows = pooled_margin([scored], threshold)
    percents = np.asarray(Calibration(percent_map.knots_cosine, percent_map.knots_percent).percent(cosines))
    report = SourceReport(
        name="kb", pairs=len(labels), positives=len(pos_cos), roc_auc=roc_auc(cosines, labels),
        median_percent_positive=float(np.median(percents[labels == 1])),
        median_percent_negative=float(np.median(percents[labels == 0])),
        faq_queries=scored.n, best_threshold=threshold, best_accuracy=accuracy,
        accuracy_at_threshold=decide_all(scored, threshold, margin).accuracy,
    )
    calibration = Calibration(
        knots_cosine=percent_map.knots_cosine, knots_percent=percent_map.knots_percent, threshold=threshold,
        margin=margin, source=f"kb: {len(pos_cos)} paraphrase pairs, {len(neg_cos)} question pairs",
        extra=_provenance(encoder, command, {
            "method": "isotonic P(same FAQ | cosine) on KB pairs; threshold and margin from leave-one-out retrieval",
            "pooled_accuracy": round(accuracy, 4), "sources": [report.__dict__],
        }),
    )
    return CalibrationFit(calibration, [report], margin_rows, accuracy)


def read_pair_files(paths: Sequence[Path], *, max_pairs: int | None = None,
                    seed: int = SIMULATION_SEED) -> dict[str, list[LabelledPair]]:
    """Pair files by a readable name (`lcqmc/dev` for .../lcqmc/dev.tsv); a seeded sample if too long."""
    from admin.quality.evaluation import load_pairs

    sets: dict[str, list[LabelledPair]] = {}
    for path in paths:
        name = f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
        pairs = load_pairs(path)
        if max_pairs is not None and len(pairs) > max_pairs:
            keep = sorted(random.Random(seed).sample(range(len(pairs)), max_pairs))
            pairs = [pairs[i] for i in keep]
        sets[name] = pairs
    return sets
