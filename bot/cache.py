"""Query vectors without the encoder: an LRU of query embeddings and the exact-match table.

Customer-service traffic is highly repetitive, so most questions have been asked before in some
spelling. Both structures are keyed by `index.text.match_key`, the one normalisation of a question:

    NFKC (full-width letters, digits and punctuation become half-width), case folded, every
    whitespace run removed, trailing punctuation (?？!！.。,，;；:：~～…、) dropped.

So `"怎么退货？"`, `"怎么退货"`, `"怎么 退货 ?"` and `"ＩＰＨＯＮＥ怎么退货"` / `"iphone怎么退货"` share a key.

* `EmbeddingCache` remembers the vector the encoder gave for a key (thread-safe LRU, capacity 0 =
  off). Vectors do not depend on the index, so an index swap keeps the cache.
* `ExactMatches` maps the key of every FAQ question and paraphrase of one index to that text's own
  vector in the index. It is only valid when the KB side is encoded exactly like a query (the
  symmetric `kb_prefix=query` set-up), because then that stored vector *is* the query's vector.
  Using it, a question that equals an FAQ text skips the encoder and still goes through the normal
  search and decision (alternatives, ambiguity between two FAQs sharing a paraphrase).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from index.faq_index import FaqIndex
from index.text import match_key

__all__ = ["EmbeddingCache", "ExactMatches", "match_key"]


class EmbeddingCache:
    """A thread-safe LRU of query vectors keyed by `match_key`; counts hits and misses for /metrics."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, key: str) -> np.ndarray | None:
        """The cached vector (and mark it recently used), or None; a disabled cache counts nothing."""
        if not self.enabled:
            return None
        with self._lock:
            vector = self._vectors.get(key)
            if vector is None:
                self.misses += 1
                return None
            self._vectors.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        """Remember `vector` (stored read-only, so a caller cannot change what others get)."""
        if not self.enabled:
            return
        stored = np.array(vector, dtype=np.float32, copy=True)
        stored.setflags(write=False)
        with self._lock:
            self._vectors[key] = stored
            self._vectors.move_to_end(key)
            while len(self._vectors) > self.capacity:
                self._vectors.popitem(last=False)

    def remember(self, keys: Sequence[str], texts: Sequence[str], encode: Callable[[list[str]], np.ndarray],
                 dim: int) -> np.ndarray:
        """The vectors of `texts` kept under `keys`: those not kept yet are encoded (each key once, in one
        call to `encode`) and kept. [len(texts), dim] float32."""
        found: dict[str, np.ndarray] = {}
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key in found or key in missing:
                continue
            vector = self.get(key)
            if vector is None:
                missing[key] = text
            else:
                found[key] = vector
        if missing:
            for key, vector in zip(missing, encode(list(missing.values())), strict=True):
                self.put(key, vector)
                found[key] = vector
        if not found:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)

    def clear(self) -> None:
        with self._lock:
            self._vectors.clear()

    @property
    def hit_ratio(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


class ExactMatches:
    """The normalised key of every FAQ text of one index -> that text's stored (query-side) vector."""

    def __init__(self, index: FaqIndex) -> None:
        self.index = index
        rows: dict[str, int] = {}
        for row, text in enumerate(index.row_text):
            rows.setdefault(match_key(text), row)
        self._rows = rows
        self._vectors = _stored_vectors(index)

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> np.ndarray | None:
        row = self._rows.get(key)
        return None if row is None else self._vectors[row]


def _stored_vectors(index: FaqIndex) -> np.ndarray:
    """The index's own vectors as a read-only [n, d] view (no copy for a flat index; a big KB is not doubled)."""
    import faiss

    total, dim = int(index.vectors.ntotal), int(index.vectors.d)
    if total == 0:
        return np.zeros((0, dim), dtype=np.float32)
    get_xb = getattr(index.vectors, "get_xb", None)
    if get_xb is not None:
        view = faiss.rev_swig_ptr(get_xb(), total * dim).reshape(total, dim)
    else:
        view = index.vectors.reconstruct_n(0, total)
    view.setflags(write=False)
    return view
