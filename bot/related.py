"""Related questions shown after an answer: the FAQ's own `related` list, else its nearest FAQs.

The nearest are read off the index's question vectors (each FAQ's canonical question). A cosine
means different things to different encoders (e5-style models give ~0.85 to unrelated questions),
so "modestly similar" is relative to the KB itself: above the 90th percentile of the cosines
between its questions. Computed once per index version; the neighbours of an FAQ on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from faq import FAQ
from index.faq_index import FaqIndex

KB_MAX = 5  # at most this many of the FAQ's own list
NEAREST_MAX = 3  # at most this many nearest FAQs
NEAREST_QUANTILE = 0.9  # "modestly similar": closer than 90% of the KB's question pairs
NEAREST_POOL = 12  # neighbours kept per FAQ, so some remain when others are out of their validity window
SAMPLE_QUESTIONS = 512  # questions sampled (seeded) to estimate the quantile on a large KB

KB = "kb"
NEAREST = "nearest"


@dataclass(frozen=True)
class Related:
    """The questions to suggest after an answer, and where they came from (`kb`, `nearest`, or None)."""

    faqs: tuple[FAQ, ...] = ()
    source: str | None = None

    def as_list(self) -> list[dict[str, str]]:
        return [{"faq_id": f.id, "question": f.question} for f in self.faqs]


class RelatedFaqs:
    """The related questions of the FAQs of one index version."""

    def __init__(self, index: FaqIndex) -> None:
        self.index = index
        self._nearest: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        positions, first_rows = np.unique(index.row_faq, return_index=True)
        self._faq_ids = [index.faqs[int(p)].id for p in positions]
        self._position = {faq_id: i for i, faq_id in enumerate(self._faq_ids)}
        if len(first_rows) and index.vectors.ntotal:
            self._questions = np.ascontiguousarray(index.vectors.reconstruct_n(0, index.vectors.ntotal)[first_rows])
        else:
            self._questions = np.zeros((0, index.vectors.d), dtype=np.float32)
        self.line = _kb_line(self._questions)

    def for_faq(self, faq: FAQ, offered: Callable[[FAQ], bool] = lambda _faq: True) -> Related:
        """The FAQ's own list (the ones that may be `offered` now), else its nearest that may be."""
        by_id = self.index.faq_by_id
        own = tuple(by_id[i] for i in faq.related if i in by_id and offered(by_id[i]))[:KB_MAX]
        if own:
            return Related(own, KB)
        near = tuple(by_id[i] for i in self.nearest(faq.id) if offered(by_id[i]))[:NEAREST_MAX]
        return Related(near, NEAREST) if near else Related()

    def nearest(self, faq_id: str) -> tuple[str, ...]:
        """Ids of the FAQs whose question is closest to this FAQ's, above the KB's line, closest first."""
        with self._lock:
            cached = self._nearest.get(faq_id)
        if cached is not None:
            return cached
        pos = self._position.get(faq_id)
        if pos is None:
            return ()
        cosines = self._questions @ self._questions[pos]
        cosines[pos] = -np.inf
        order = _closest(cosines, NEAREST_POOL)
        found = tuple(self._faq_ids[j] for j in order if cosines[j] > self.line)
        with self._lock:
            self._nearest[faq_id] = found
        return found


def _closest(cosines: np.ndarray, n: int) -> np.ndarray:
    """Indices of the `n` largest cosines, largest first, ties by index (as a stable full sort would give):
    a partition first, so an answer in a large KB does not sort every question (~0.3 ms at 3,000)."""
    if len(cosines) > n:
        pool = np.argpartition(-cosines, n - 1)[:n]
        cut = cosines[pool].min()
        pool = np.flatnonzero(cosines >= cut)  # every tie at the cut, so the index order decides among them
    else:
        pool = np.arange(len(cosines))
    return pool[np.lexsort((pool, -cosines[pool]))][:n]


def _kb_line(questions: np.ndarray) -> float:
    """The NEAREST_QUANTILE of the cosines between distinct questions of the KB (inf: too few to say)."""
    n = len(questions)
    if n < 3:
        return float("inf")
    rows = np.random.default_rng(0).choice(n, size=min(n, SAMPLE_QUESTIONS), replace=False)
    cosines = questions[rows] @ questions.T
    cosines[np.arange(len(rows)), rows] = np.nan
    return float(np.nanquantile(cosines, NEAREST_QUANTILE))
