"""Fit the confidence model on several domains and judge it leave-one-domain-out.

A domain is a KB with labelled questions: an FAQ benchmark simulated from a pair file (as
admin.quality.calibrate.faq_bench_from_pairs builds it, at a few KB sizes and once more with a
paraphrase per FAQ moved into the KB), or a KB directory with its golden `tests.yaml`. Every domain
is scored with the real index (`build_index` + `FaqIndex.rank`), so the features are exactly what
the server computes. The model is a logistic regression of "the top FAQ is the right answer" on
those features, every domain weighing the same. Leave-one-domain-out: each domain is read by a
model fitted without it, against the old cosine rule and the best cosine threshold chosen on that
domain itself (an oracle no KB-free rule can beat by much). docs/quality.md has the figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from admin.quality.calibrate import SIMULATION_SEED, faq_bench_from_pairs
from admin.quality.evaluation import EvalQuery, LabelledPair, ReliabilityBin, is_binary, reliability_bins
from faq import KnowledgeBase, load_kb
from faq.golden import golden_file, load_golden
from index.calibration import Calibration
from index.confidence import FEATURES, ConfidenceModel, RankingWeights, feature_matrix
from index.encoders import Encoder, encode_in_chunks
from index.faq_index import build_index

Progress = Callable[[int], None]
PAIR_KB_SIZES = (50, 200, 800)
GRADED_POSITIVE = 4.0  # a 0-5 similarity score at or above this is a paraphrase (STS-B)
MIN_DOMAIN_QUERIES = 20
LEXICAL_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2)
COVERAGE_WEIGHTS = (0.0, 0.01, 0.02, 0.05)  # tried after the lexical weight is chosen, on top of it
# Tried last, on top of both. Only KBs with real answers (our ten) carry evidence for it, and we wrote them: the
# grid stops below 0.4, where one of them (airline) first loses a question of top-1 (docs/quality.md).
ANSWER_WEIGHTS = (0.0, 0.1, 0.2, 0.3)
# The answer's character cosine, on top of all three; the grid stops below 0.04 for the same reason (courses).
ANSWER_LEXICAL_WEIGHTS = (0.0, 0.01, 0.02, 0.03)
RANKING_GRIDS: dict[str, Sequence[float]] = {"lexical": LEXICAL_WEIGHTS, "coverage": COVERAGE_WEIGHTS,
                                              "answer": ANSWER_WEIGHTS, "answer_lexical": ANSWER_LEXICAL_WEIGHTS}
# Inverse L2 strength of the logistic fit. Leave-one-domain-out on the dev domains (4 Dec 2026, C in 0.1, 0.3,
# 1, 3, 10): 0.1 had the best mean gap to each domain's best threshold (-0.0002 vs -0.0022 at 1) and kept 11 of
# 13 domains within 2 points (10 at 1): a model that leans less on any one feature carries over better.
REGULARISATION = 0.1


@dataclass(frozen=True)
class Domain:
    """One KB with labelled questions; `group` is the unit left out together (one source, all its sizes)."""

    name: str
    group: str
    kb: KnowledgeBase
    queries: tuple[EvalQuery, ...]


@dataclass(frozen=True)
class ScoredDomain:
    """A domain's queries through one ranking: features, and whether the top FAQ was the expected one."""

    domain: Domain
    features: np.ndarray
    top_right: np.ndarray
    in_scope: np.ndarray
    dense_similarity: np.ndarray
    dense_right: np.ndarray

    @property
    def top1(self) -> float:
        return float(self.top_right[self.in_scope].mean()) if self.in_scope.any() else float("nan")

    @property
    def dense_top1(self) -> float:
        return float(self.dense_right[self.in_scope].mean()) if self.in_scope.any() else float("nan")


def overall(answered: np.ndarray, right: np.ndarray, in_scope: np.ndarray) -> float:
    """Right answers plus refused out-of-scope questions, over all questions."""
    return float(((answered & right) | (~answered & ~in_scope)).mean()) if len(in_scope) else float("nan")


# --- domains -----------------------------------------------------------------------------------


def _binary(pairs: Sequence[LabelledPair]) -> list[LabelledPair]:
    labels = np.array([p.label for p in pairs])
    if is_binary(labels):
        return list(pairs)
    return [replace(p, label=1.0 if p.label >= GRADED_POSITIVE else 0.0) for p in pairs]


def with_paraphrases(kb: KnowledgeBase, queries: Sequence[EvalQuery]) -> tuple[KnowledgeBase, list[EvalQuery]]:
    """The same bench with one in-scope question per FAQ (where it has two or more) moved into the KB
    as a paraphrase: real KBs carry paraphrases, and the features must be read on such KBs too."""
    by_faq: dict[str, list[EvalQuery]] = {}
    for q in queries:
        if q.expected is not None:
            by_faq.setdefault(q.expected, []).append(q)
    moved = {fid: qs[0] for fid, qs in by_faq.items() if len(qs) >= 2}
    faqs = tuple(replace(f, paraphrases=(*f.paraphrases, moved[f.id].query)) if f.id in moved else f for f in kb.faqs)
    kept = [q for q in queries if not (q.expected in moved and moved[q.expected] is q)]
    return KnowledgeBase(faqs=faqs), kept


def pair_domains(pair_sets: dict[str, Sequence[LabelledPair]], sizes: Sequence[int] = PAIR_KB_SIZES) -> list[Domain]:
    """FAQ benches simulated from each pair file at several KB sizes, plain and with paraphrases."""
    domains = []
    for name, pairs in pair_sets.items():
        binary = _binary(pairs)
        seen_sizes: set[int] = set()
        for size in sizes:
            kb, queries = faq_bench_from_pairs(binary, name="q", max_faqs=size, seed=SIMULATION_SEED + size)
            if len(kb.faqs) in seen_sizes or len(queries) < MIN_DOMAIN_QUERIES:
                continue  # the file is too small for this size: the same bench again would weigh double
            seen_sizes.add(len(kb.faqs))
            domains.append(Domain(f"{name}@{len(kb.faqs)}", name, kb, tuple(queries)))
            para_kb, para_queries = with_paraphrases(kb, queries)
            # Same questions as the plain bench: one group, so leaving the file out leaves out both.
            domains.append(Domain(f"{name}+para@{len(kb.faqs)}", name, para_kb, tuple(para_queries)))
    return domains


def kb_domains(paths: Sequence[Path]) -> list[Domain]:
    """Each KB directory (or file) with a golden tests.yaml beside it, as one domain named after it."""
    domains = []
    for path in paths:
        cases = load_golden(golden_file(path))
        queries = tuple(EvalQuery(c.query, c.expected) for c in cases)
        if len(queries) >= MIN_DOMAIN_QUERIES:
            name = Path(path).name or str(path)
            domains.append(Domain(name, name, load_kb(path), queries))
    return domains


# --- scoring -----------------------------------------------------------------------------------


def probe_calibration(weights: RankingWeights) -> Calibration:
    """A calibration whose model only sets the ranking's weights: rank() then returns fused features."""
    probe = ConfidenceModel(features=("s1",), coef=(0.0,), intercept=0.0, mean=(0.0,), scale=(1.0,),
                            **weights.model_fields())
    return Calibration(confidence=probe)


def score_domain(domain: Domain, encoder: Encoder, weights: RankingWeights) -> ScoredDomain:
    """Rank every question of the domain through the real index, fused and dense-only."""
    texts = [q.query for q in domain.queries]
    vectors = encode_in_chunks(encoder.encode_queries, texts, encoder.dim)
    fused_index = build_index(domain.kb, encoder, calibration=probe_calibration(weights))
    dense_index = build_index(domain.kb, encoder, calibration=Calibration())
    fused = fused_index.rank(vectors, texts)
    dense = dense_index.rank(vectors, texts, depth=1)
    expected = [q.expected for q in domain.queries]

    def right(rankings: Sequence) -> np.ndarray:
        return np.array([bool(r.faqs) and e is not None and r.faqs[0].faq_id == e
                         for r, e in zip(rankings, expected, strict=True)])

    return ScoredDomain(
        domain=domain, features=feature_matrix([r.features for r in fused]), top_right=right(fused),
        in_scope=np.array([e is not None for e in expected]),
        dense_similarity=np.array([r.faqs[0].similarity if r.faqs else -1.0 for r in dense]),
        dense_right=right(dense),
    )


def score_domains(domains: Sequence[Domain], encoder: Encoder, weights: RankingWeights,
                  progress: Progress | None = None) -> list[ScoredDomain]:
    scored = []
    for domain in domains:
        scored.append(score_domain(domain, encoder, weights))
        if progress:
            progress(len(domain.queries) + len(domain.kb.texts()))
    return scored


# --- fitting -----------------------------------------------------------------------------------


def _weights(scored: Sequence[ScoredDomain]) -> np.ndarray:
    """Every group weighs the same in total, split evenly over its domains and their questions."""
    per_group: dict[str, int] = {}
    for s in scored:
        per_group[s.domain.group] = per_group.get(s.domain.group, 0) + 1
    return np.concatenate([np.full(len(s.top_right), 1.0 / (per_group[s.domain.group] * len(s.top_right)))
                           for s in scored])


def fit_confidence(scored: Sequence[ScoredDomain], *, features: Sequence[str] = FEATURES, weights: RankingWeights,
                   min_confidence: float = 50.0, regularisation: float = REGULARISATION) -> ConfidenceModel:
    """Logistic regression of 'top FAQ is right' on the named features (standardised), domains weighing alike."""
    from sklearn.linear_model import LogisticRegression

    columns = [FEATURES.index(f) for f in features]
    x = np.vstack([s.features for s in scored])[:, columns]
    y = np.concatenate([s.top_right for s in scored]).astype(int)
    if len(set(y.tolist())) < 2:
        raise ValueError("the fitting domains need both right and wrong top answers")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale <= 1e-9] = 1.0
    sample_weight = _weights(scored)
    model = LogisticRegression(C=regularisation, max_iter=2000)
    model.fit((x - mean) / scale, y, sample_weight=sample_weight * len(y) / sample_weight.sum())
    return ConfidenceModel(features=tuple(features), coef=tuple(float(c) for c in model.coef_[0]),
                           intercept=float(model.intercept_[0]), mean=tuple(float(m) for m in mean),
                           scale=tuple(float(s) for s in scale), min_confidence=min_confidence,
                           **weights.model_fields())


# --- judging -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainRow:
    """One held-out domain: the old cosine rule, the best cosine threshold on it, and the confidence rule."""

    name: str
    group: str
    queries: int
    in_scope: int
    old_rule: float
    best_threshold: float
    best_threshold_value: float
    confidence_rule: float
    oos_refused: float
    dense_top1: float
    top1: float
    fitted: bool


def best_cosine_threshold(scored: ScoredDomain) -> tuple[float, float]:
    """The cosine threshold with the best overall accuracy on this very domain (the oracle), and that accuracy."""
    order = np.argsort(-scored.dense_similarity, kind="stable")
    sims = scored.dense_similarity[order]
    gain = np.where(scored.dense_right[order], 1, np.where(scored.in_scope[order], 0, -1))
    # Answering the top j questions: right answers among them + refused out-of-scope among the rest.
    correct = np.concatenate([[0], np.cumsum(gain)]) + int((~scored.in_scope).sum())
    cut = np.flatnonzero(np.concatenate([[True], sims[1:] < sims[:-1], [True]]))  # ties go together
    j = int(cut[np.argmax(correct[cut])])
    threshold = float(sims[j - 1]) if j > 0 else float(sims[0]) + 1e-6 if len(sims) else 1.0
    return threshold, float(correct[j] / max(1, len(sims)))


def judge(scored: ScoredDomain, model: ConfidenceModel, old_threshold: float, *, fitted: bool) -> tuple[DomainRow, np.ndarray]:
    """The domain's figures under `model` (fitted without it) and its held-out confidences."""
    confidence = model.confidence(scored.features)
    answered = confidence >= model.min_confidence
    value, best = best_cosine_threshold(scored)
    n_out = int((~scored.in_scope).sum())
    row = DomainRow(
        name=scored.domain.name, group=scored.domain.group, queries=len(scored.in_scope),
        in_scope=int(scored.in_scope.sum()),
        old_rule=overall(scored.dense_similarity >= old_threshold, scored.dense_right, scored.in_scope),
        best_threshold=best, best_threshold_value=float(value),
        confidence_rule=overall(answered, scored.top_right, scored.in_scope),
        oos_refused=float((~answered & ~scored.in_scope).sum() / n_out) if n_out else float("nan"),
        dense_top1=scored.dense_top1, top1=scored.top1, fitted=fitted,
    )
    return row, confidence


def leave_one_domain_out(scored: Sequence[ScoredDomain], extra: Sequence[ScoredDomain], old_threshold: float, *,
                         features: Sequence[str] = FEATURES, weights: RankingWeights,
                         ) -> tuple[list[DomainRow], list[tuple[str, np.ndarray, np.ndarray]]]:
    """Each group read by a model fitted on the others; `extra` domains (not fitted on) by the full model.

    Returns the rows and, per domain, (group, held-out confidences, top-right flags) for the reliability table.
    """
    rows, held_out = [], []
    for group in dict.fromkeys(s.domain.group for s in scored):
        model = fit_confidence([s for s in scored if s.domain.group != group], features=features, weights=weights)
        for s in (s for s in scored if s.domain.group == group):
            row, confidence = judge(s, model, old_threshold, fitted=True)
            rows.append(row)
            held_out.append((group, confidence, s.top_right))
    full = fit_confidence(scored, features=features, weights=weights)
    rows.extend(judge(s, full, old_threshold, fitted=False)[0] for s in extra)
    return rows, held_out


def reliability(held_out: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> list[ReliabilityBin]:
    """Per confidence bin: how often the top FAQ was right, every group weighing the same."""
    size: dict[str, int] = {}
    for group, conf, _ in held_out:
        size[group] = size.get(group, 0) + len(conf)
    return reliability_bins(np.concatenate([c for _, c, _ in held_out]), np.concatenate([r for _, _, r in held_out]),
                            np.concatenate([np.full(len(c), 1.0 / size[g]) for g, c, _ in held_out]))


def group_rows(rows: Sequence[DomainRow]) -> list[DomainRow]:
    """One row per group: the mean over its domains (sizes, variants)."""
    out = []
    for group in dict.fromkeys(r.group for r in rows):
        members = [r for r in rows if r.group == group]

        def mean(attr: str, members: list[DomainRow] = members) -> float:
            values = [getattr(r, attr) for r in members if not math.isnan(getattr(r, attr))]
            return float(np.mean(values)) if values else float("nan")

        out.append(DomainRow(
            name=group, group=group, queries=sum(r.queries for r in members), in_scope=sum(r.in_scope for r in members),
            old_rule=mean("old_rule"), best_threshold=mean("best_threshold"),
            best_threshold_value=mean("best_threshold_value"), confidence_rule=mean("confidence_rule"),
            oos_refused=mean("oos_refused"), dense_top1=mean("dense_top1"), top1=mean("top1"),
            fitted=members[0].fitted,
        ))
    return out


def choose_weight(top1_by_weight: dict[float, list[float]], in_scope: Sequence[int]) -> float:
    """The weight with the best mean top-1 over domains among those that cost no domain more than one
    question of top-1 against the ranking without that term (weight 0)."""
    base = top1_by_weight[0.0]
    fine = [w for w, t in top1_by_weight.items()
            if all(a >= b - 1.0 / max(1, n) - 1e-9 for a, b, n in zip(t, base, in_scope, strict=True))]
    return max(fine, key=lambda w: (float(np.mean(top1_by_weight[w])), -w))



@dataclass(frozen=True)
class ConfidenceFit:
    """The shipped model fitted on every domain, and the evidence for it (held-out rows, reliability, top-1
    per domain for each weight tried of each ranking term, in the order they were chosen)."""

    model: ConfidenceModel
    rows: list[DomainRow]
    reliability: list[ReliabilityBin]
    top1_by_term: dict[str, dict[float, list[float]]]
    domain_names: list[str]
    old_threshold: float


def fit_from_domains(domains: Sequence[Domain], encoder: Encoder, *, old_threshold: float,
                     extra: Sequence[Domain] = (), features: Sequence[str] = FEATURES,
                     grids: dict[str, Sequence[float]] | None = None,
                     progress: Progress | None = None) -> ConfidenceFit:
    """Choose the ranking's weights term by term (`RANKING_GRIDS`' order) on top-1, each on top of the ones
    already chosen; judge leave-one-domain-out; fit the final model on every domain.

    `grids` maps a term of `RankingWeights` to the weights tried for it (default `RANKING_GRIDS`); a grid
    without 0 takes its first weight.
    """
    grids = grids or RANKING_GRIDS
    chosen = RankingWeights()
    scored = score_domains(domains, encoder, chosen, progress)
    in_scope = [int(s.in_scope.sum()) for s in scored]
    top1_by_term: dict[str, dict[float, list[float]]] = {}
    for term, grid in grids.items():
        by_weight = {w: scored if w == getattr(chosen, term) else
                     score_domains(domains, encoder, replace(chosen, **{term: w}), progress) for w in grid}
        top1 = {w: [s.top1 for s in sc] for w, sc in by_weight.items()}
        weight = choose_weight(top1, in_scope) if 0.0 in top1 else grid[0]
        chosen, scored, top1_by_term[term] = replace(chosen, **{term: weight}), by_weight[weight], top1
    extra_scored = score_domains(extra, encoder, chosen, progress)
    rows, held_out = leave_one_domain_out(scored, extra_scored, old_threshold, features=features, weights=chosen)
    model = fit_confidence(scored, features=features, weights=chosen)
    return ConfidenceFit(model, rows, reliability(held_out), top1_by_term, [d.name for d in domains], old_threshold)
