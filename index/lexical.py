"""Character TF-IDF over the KB's texts: the lexical half of the hybrid ranking.

Chinese questions that share their content characters (发票, 退款, 改签) are usually about the same
thing even where the dense model hesitates, and a character model needs no tokenizer or word list.
Weights follow scikit-learn's TfidfVectorizer (sublinear tf, smoothed idf, L2-normalised rows), so a
text's score against a row is the cosine of their character vectors, 0..1. Built from the row
texts when an index loads (milliseconds for thousands of texts), so nothing extra is stored.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse


def lexical_form(text: str) -> str:
    """The characters that carry meaning: NFKC, case folded, without spaces, punctuation or symbols."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch)[0] not in ("P", "S"))


@dataclass(frozen=True)
class CharVector:
    """One text's L2-normalised TF-IDF character weights: column ids and their weights (float32)."""

    indices: np.ndarray
    data: np.ndarray

    @property
    def nnz(self) -> int:
        return int(self.indices.size)


class LexicalIndex:
    """Sparse character vectors of every row text; `scores` gives query x row cosines."""

    def __init__(self, texts: Sequence[str], groups: Sequence[int] | None = None, n_groups: int | None = None) -> None:
        """`groups` gives each text's group (its FAQ); `coverage` reads the union of a group's characters.
        Without it every text is its own group."""
        self.vocabulary: dict[str, int] = {}
        counts = [self._counts(lexical_form(t), grow=True) for t in texts]
        n = max(1, len(texts))
        df = np.zeros(len(self.vocabulary), dtype=np.float64)
        for row in counts:
            df[list(row)] += 1
        self.idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
        self.unseen_idf = float(np.log(1.0 + n) + 1.0)  # the smoothed idf of a character no text has
        self.rows = self._matrix(counts)
        self.group_chars = _group_union(self.rows, groups, n_groups)

    def _counts(self, form: str, *, grow: bool) -> dict[int, int]:
        counts: dict[int, int] = {}
        for ch in form:
            col = self.vocabulary.get(ch)
            if col is None:
                if not grow:
                    continue  # a character no FAQ text has cannot match any row
                col = self.vocabulary[ch] = len(self.vocabulary)
            counts[col] = counts.get(col, 0) + 1
        return counts

    def _matrix(self, counts: Sequence[dict[int, int]]) -> sparse.csr_matrix:
        vectors = [self._vector(row) for row in counts]
        indptr = np.cumsum([0] + [v.nnz for v in vectors], dtype=np.int64)
        indices = np.concatenate([v.indices for v in vectors]) if vectors else np.zeros(0, np.int64)
        data = np.concatenate([v.data for v in vectors]) if vectors else np.zeros(0, np.float32)
        return sparse.csr_matrix((data, indices, indptr), shape=(len(counts), len(self.vocabulary)))

    def queries(self, texts: Sequence[str]) -> list[CharVector]:
        """Query vectors in the rows' space (characters unseen in the KB are dropped), one per text.

        Plain arrays, not scipy rows: building a CSR matrix and slicing a row out of it cost more than
        the scoring itself (~0.2 ms a request)."""
        return [self._vector(self._counts(lexical_form(t), grow=False)) for t in texts]

    def _vector(self, counts: dict[int, int]) -> CharVector:
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        weights = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))) * self.idf[cols]
        norm = float(np.linalg.norm(weights))
        return CharVector(cols, (weights / norm if norm > 0 else weights).astype(np.float32))

    def coverage(self, text: str, groups: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """How much of the text each group's characters cover (all its texts): (share of the text's idf
        weight, share of its characters), each occurrence counted, one value per group. "驾驶证丢了能补吗"
        against an FAQ about 身份证 leaves 驾驶 uncovered, rare characters that name another thing; a
        paraphrase's filler characters weigh little. 1 for a text with no meaningful characters."""
        groups = np.asarray(groups, dtype=np.int64)
        form = lexical_form(text)
        if not form or groups.size == 0:
            return np.ones(groups.size), np.ones(groups.size)
        width_vocab = self.rows.shape[1]
        seen = np.array([c for c in (self.vocabulary.get(ch, -1) for ch in form) if c >= 0], dtype=np.int64)
        total_weight = float(self.idf[seen].sum()) + (len(form) - seen.size) * self.unseen_idf
        weight_of = np.zeros(width_vocab + 1)  # the last column: padding, weight 0
        count_of = np.zeros(width_vocab + 1)
        np.add.at(weight_of, seen, self.idf[seen])
        np.add.at(count_of, seen, 1.0)
        indptr, indices = self.group_chars.indptr, self.group_chars.indices
        starts = indptr[groups]
        lengths = indptr[groups + 1] - starts
        width = int(lengths.max(initial=0))
        real = np.arange(width) < lengths[:, None]
        columns = np.where(real, indices[np.where(real, starts[:, None] + np.arange(width), 0)], width_vocab)
        return weight_of[columns].sum(axis=1) / total_weight, count_of[columns].sum(axis=1) / len(form)

    def scores(self, query: CharVector, rows: np.ndarray) -> np.ndarray:
        """Cosine of one query vector (1 x vocab) against the given rows, as a dense float array.

        Plain numpy on the CSR arrays instead of `self.rows[rows] @ query.T` (scipy's checks and new
        matrices cost ~0.2 ms a request): the same float32 products summed in the same order (each
        row's stored order; a character the query lacks adds an exact 0), so the same bits.
        """
        if rows.size == 0 or query.nnz == 0:
            return np.zeros(rows.size, dtype=np.float32)
        rows = np.asarray(rows, dtype=np.int64)
        weights = np.zeros(self.rows.shape[1] + 1, dtype=np.float32)  # the last column: padding, weight 0
        weights[query.indices] = query.data
        starts = self.rows.indptr[rows]
        lengths = self.rows.indptr[rows + 1] - starts
        width = int(lengths.max(initial=0))
        if width == 0:
            return np.zeros(rows.size, dtype=np.float32)
        at = starts[:, None] + np.arange(width)
        real = np.arange(width) < lengths[:, None]
        at = np.where(real, at, 0)
        columns = np.where(real, self.rows.indices[at], self.rows.shape[1])
        products = np.where(real, self.rows.data[at], np.float32(0)) * weights[columns]
        return np.add.accumulate(products, axis=1, dtype=np.float32)[:, -1]  # sequential, as scipy's loop


def _group_union(rows: sparse.csr_matrix, groups: Sequence[int] | None, n_groups: int | None) -> sparse.csr_matrix:
    """One row per group with the union of its texts' characters (the pattern is what counts)."""
    n_rows = rows.shape[0]
    group_ids = np.arange(n_rows) if groups is None else np.asarray(groups, dtype=np.int64)
    n = int(n_groups if n_groups is not None else (group_ids.max(initial=-1) + 1))
    member = sparse.csr_matrix((np.ones(n_rows), (group_ids, np.arange(n_rows))), shape=(n, n_rows))
    union = (member @ (rows != 0).astype(np.float64)).tocsr()
    union.sum_duplicates()
    return union
