"""Texts joined by pairs into groups (union-find): one implementation for every place that groups.

Calibration's simulated FAQ benches, fine-tuning's intents and its held-out split all ask the same
question — which texts are connected through the pairs that mention them — and must agree on it.
"""

from __future__ import annotations


class TextGroups:
    """Disjoint sets of text keys with path halving; unknown keys are their own group."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        """The representative key of `key`'s group."""
        parent = self._parent
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def join(self, keep: str, other: str) -> None:
        """Put `other`'s group into `keep`'s (whose representative stays the representative)."""
        root_keep, root_other = self.find(keep), self.find(other)
        if root_keep != root_other:
            self._parent[root_other] = root_keep
