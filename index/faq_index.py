"""The FAISS index of a KB: build, publish atomically, load, search.

Layout under `<data_dir>/index/` (index.datadir names the paths):
  versions/<version>/vectors.faiss  every question and paraphrase: exact (IndexFlatIP), or HNSW from
                                    APPROXIMATE_FROM_ROWS texts on (flat search then costs more than ~1 ms)
  versions/<version>/answers.npy    one vector per FAQ answer (float32), for the confidence features
  versions/<version>/meta.json      encoder fingerprint, KB hash, counts, calibration, the FAQs
  CURRENT                           the live version's name, replaced atomically (os.replace)

A build writes a fresh version directory under a temporary name, fsyncs it, renames it into
place and only then points CURRENT at it, so a crash or a broken KB never leaves a half-written
index live, and every worker or replica sharing the directory sees one consistent version.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from faq import FAQ, KnowledgeBase
from faq.errors import FaqbotError
from index.calibration import SCOPE_SHIPPED, Calibration, default_calibration, shipped_calibration
from index.confidence import ANSWER_EVIDENCE_MIN, REST_DEPTH, RankingWeights, ranking_features
from index.datadir import DataDir
from index.encoders import Encoder, encode_in_chunks
from index.lexical import LexicalIndex

FORMAT_VERSION = 2  # 2: answers.npy (the answers' vectors, read by the confidence model)
KEEP_VERSIONS = 3
CANDIDATE_ROWS = 256  # dense rows fetched per query before the hybrid re-ranking
CANDIDATE_FAQS = 48  # distinct FAQs among them that are re-scored with their lexical score
# Flat search grows with the rows (0.25 ms at 3k, 2-7 ms at 30k, 72 ms at 300k on one core); HNSW32 at
# efSearch 256 kept recall@1 1.000 at 30k and 0.995 at 300k for ~1.1-1.3 ms (docs/performance.md, "Scale").
APPROXIMATE_FROM_ROWS = 20_000
HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 256  # at least the candidate rows a ranking asks for (a search raises it to k where k is larger)


class IndexUnavailableError(FaqbotError):
    """An index that cannot be used: missing, half-written, or built by another encoder."""

    code = "index_unavailable"


class StaleIndexError(IndexUnavailableError):
    """The live index was built from another KB or encoder than the one configured."""

    code = "stale_index"


@dataclass(frozen=True)
class Hit:
    """One FAQ found for a query: its best vector's cosine and which text matched."""

    faq_id: str
    similarity: float
    matched_text: str


@dataclass(frozen=True)
class RankedFaq:
    """One FAQ in a hybrid ranking: best dense cosine, best character cosine, and their fused score."""

    faq_id: str
    similarity: float
    lexical: float
    score: float
    matched_text: str


@dataclass(frozen=True)
class Ranking:
    """A query's FAQs, best fused score first, and the confidence that the first is right (None: no model)."""

    faqs: tuple[RankedFaq, ...]
    confidence: float | None
    features: np.ndarray


@dataclass(frozen=True)
class IndexMeta:
    version: str
    encoder_name: str
    fingerprint: str
    dim: int
    kb_hash: str
    kb_path: str
    n_faqs: int
    n_vectors: int
    built_at: str
    build_seconds: float
    calibration: Calibration
    kb_default_threshold: float | None = None
    answer_evidence: float = 0.0
    kb_handoff_phrases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "format": FORMAT_VERSION,
            "version": self.version,
            "encoder": {"name": self.encoder_name, "fingerprint": self.fingerprint, "dim": self.dim},
            "kb": {"hash": self.kb_hash, "path": self.kb_path, "faqs": self.n_faqs, "vectors": self.n_vectors,
                   "default_threshold": self.kb_default_threshold, "handoff_phrases": list(self.kb_handoff_phrases)},
            "built_at": self.built_at,
            "build_seconds": self.build_seconds,
            "calibration": self.calibration.to_dict(),
            "answers": {"evidence": self.answer_evidence},
        }

    @classmethod
    def from_dict(cls, data: dict) -> IndexMeta:
        return cls(
            version=data["version"],
            encoder_name=data["encoder"]["name"],
            fingerprint=data["encoder"]["fingerprint"],
            dim=int(data["encoder"]["dim"]),
            kb_hash=data["kb"]["hash"],
            kb_path=data["kb"]["path"],
            n_faqs=int(data["kb"]["faqs"]),
            n_vectors=int(data["kb"]["vectors"]),
            built_at=data["built_at"],
            build_seconds=float(data["build_seconds"]),
            calibration=Calibration.from_dict(data["calibration"]),
            kb_default_threshold=data["kb"].get("default_threshold"),
            answer_evidence=float(data.get("answers", {}).get("evidence", 0.0)),
            kb_handoff_phrases=tuple(data["kb"].get("handoff_phrases", ())),
        )


class FaqIndex:
    """Vectors of every FAQ text, the FAQs themselves, and how to read their scores."""

    def __init__(self, meta: IndexMeta, faqs: Sequence[FAQ], row_faq: Sequence[int], row_text: Sequence[str],
                 vectors: faiss.Index, answers: np.ndarray | None = None) -> None:
        self.meta = meta
        self.answers = answers if answers is not None else np.zeros((len(faqs), vectors.d), dtype=np.float32)
        self.faqs = tuple(faqs)
        self.faq_by_id = {f.id: f for f in self.faqs}
        self.row_faq = np.asarray(row_faq, dtype=np.int64)
        self.row_text = list(row_text)
        self.vectors = vectors
        self._lexical: LexicalIndex | None = None
        self._answer_lexical: LexicalIndex | None = None
        self._faq_rows = _rows_per_faq(self.row_faq, len(self.faqs))
        self._rows_by_tag: dict[str, np.ndarray] = {}
        for tag in {t for f in self.faqs for t in f.tags}:
            tagged = np.array([i for i, f in enumerate(self.faqs) if tag in f.tags], dtype=np.int64)
            self._rows_by_tag[tag] = np.flatnonzero(np.isin(self.row_faq, tagged)).astype(np.int64)

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def calibration(self) -> Calibration:
        return self.meta.calibration

    def prepare(self) -> None:
        """Build what the ranking reads lazily (the character indexes), so serving never pays for it in a request."""
        model = self.calibration.confidence
        if model is not None:  # its features read the character index
            _ = self.lexical
            if model.answer_lexical_weight > 0 and self.answers_speak:
                _ = self.answer_lexical

    @property
    def lexical(self) -> LexicalIndex:
        """The character index of the row texts, built on first use (a few ms per thousand texts)."""
        if self._lexical is None:
            self._lexical = LexicalIndex(self.row_text, self.row_faq, len(self.faqs))
        return self._lexical

    @property
    def answer_lexical(self) -> LexicalIndex:
        """The character index of the FAQs' answers (one row per FAQ), built on first use like `lexical`."""
        if self._answer_lexical is None:
            self._answer_lexical = LexicalIndex([f.answer for f in self.faqs])
        return self._answer_lexical

    def _dense_rows(self, queries: np.ndarray, k_rows: int, tags: Sequence[str] | None,
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """FAISS's best `k_rows` rows per query (within `tags`), or None when no row is allowed."""
        n_rows = self.vectors.ntotal
        if n_rows == 0 or len(queries) == 0:
            return None
        selector = None
        allowed = n_rows
        if tags:
            rows = np.unique(np.concatenate([self._rows_by_tag.get(t, np.zeros(0, np.int64)) for t in tags]))
            if rows.size == 0:
                return None
            selector = faiss.IDSelectorBatch(rows)
            allowed = int(rows.size)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(allowed, k_rows)
        extra: dict[str, Any] = {} if selector is None else {"sel": selector}
        params: faiss.SearchParameters | None = faiss.SearchParameters(**extra) if extra else None
        if isinstance(self.vectors, faiss.IndexHNSW):  # the graph must look at least k deep to return k rows
            params = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, k), **extra)
        return self.vectors.search(queries, k, params=params)

    def rank(self, queries: np.ndarray, texts: Sequence[str], *, depth: int = REST_DEPTH,
             tags: Sequence[str] | None = None) -> list[Ranking]:
        """The hybrid ranking of each query (dense cosine + the calibration's weights of the character score, of
        the coverage and of the answer's dense and character cosines), `depth` FAQs deep, with the calibrated
        confidence that its first FAQ is the right one.

        Without a confidence model in the calibration it is the dense ranking and confidence is None.
        """
        model = self.calibration.confidence
        found = self._dense_rows(queries, max(CANDIDATE_ROWS, depth * 8), tags)
        if found is None:
            return [self._ranking([], np.zeros(0), np.zeros(0), []) for _ in range(len(queries))]
        weights = model.ranking if model else RankingWeights()
        lexical_queries = self.lexical.queries(texts) if weights.lexical > 0 else None
        answers_read = model is not None and self.answers_speak
        answer_queries = (self.answer_lexical.queries(texts) if answers_read and weights.answer_lexical > 0
                          else None)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        rankings = []
        for i, (row_scores, row_ids) in enumerate(zip(*found, strict=True)):
            positions, dense, matched = self._best_rows(row_scores, row_ids, CANDIDATE_FAQS if weights.rescores else depth)
            lexical = self._faq_lexical(lexical_queries[i], positions) if lexical_queries is not None else np.zeros(len(positions))
            cover, cover_share = self.lexical.coverage(texts[i], positions) if model else (None, None)
            answer = self.answers[positions] @ queries[i] if answers_read and positions else None
            answer_lexical = (self.answer_lexical.scores(answer_queries[i], np.asarray(positions, dtype=np.int64))
                              if answer_queries is not None and positions else None)
            fused = weights.fuse(dense, lexical, cover, answer, answer_lexical)
            order = np.argsort(-fused, kind="stable")
            ordered = [positions[j] for j in order]
            top_cover = (float(cover[order[0]]), float(cover_share[order[0]])) if cover is not None and ordered else (0.0, 0.0)
            rankings.append(self._ranking(ordered, dense[order], lexical[order], [matched[j] for j in order],
                                          fused[order], answer[order][:REST_DEPTH] if answer is not None else None,
                                          depth, top_cover))
        return rankings

    @property
    def answers_speak(self) -> bool:
        """Whether the answers say which FAQ they belong to (not "ANSWER 1"-style stand-ins): only then are they read."""
        return self.meta.answer_evidence >= ANSWER_EVIDENCE_MIN

    def _best_rows(self, row_scores: np.ndarray, row_ids: np.ndarray, limit: int,
                   ) -> tuple[list[int], np.ndarray, list[str]]:
        """Distinct FAQ positions in dense order (an FAQ scores by its best text), at most `limit`."""
        valid = row_ids >= 0
        row_ids, row_scores = row_ids[valid], row_scores[valid]
        _, first = np.unique(self.row_faq[row_ids], return_index=True)  # each FAQ's first (best) row
        first = np.sort(first)[:limit]
        best_rows = row_ids[first]
        dense = np.minimum(row_scores[first].astype(np.float64), 1.0)
        return self.row_faq[best_rows].tolist(), dense, [self.row_text[r] for r in best_rows.tolist()]

    def _faq_lexical(self, query: Any, positions: Sequence[int]) -> np.ndarray:
        """Each FAQ's best character cosine over all its texts."""
        if not positions:
            return np.zeros(0)
        groups = [self._faq_rows[p] for p in positions]
        scores = self.lexical.scores(query, np.concatenate(groups))
        starts = np.cumsum([0] + [len(g) for g in groups[:-1]])
        return np.maximum.reduceat(scores, starts).astype(np.float64)

    def _ranking(self, positions: Sequence[int], dense: np.ndarray, lexical: np.ndarray, matched: Sequence[str],
                 fused: np.ndarray | None = None, answer: np.ndarray | None = None, depth: int = REST_DEPTH,
                 coverage: tuple[float, float] = (0.0, 0.0)) -> Ranking:
        fused = dense if fused is None else fused
        model = self.calibration.confidence
        features = ranking_features(dense, lexical, fused, len(self.faqs), answer, coverage)
        confidence = float(model.confidence(features)[0]) if model and len(positions) else None
        faqs = tuple(RankedFaq(self.faqs[p].id, float(dense[j]), float(lexical[j]), float(fused[j]), matched[j])
                     for j, p in enumerate(positions[:depth]))
        return Ranking(faqs, confidence, features)

    def search(self, queries: np.ndarray, top_k: int = 3, tags: Sequence[str] | None = None) -> list[list[Hit]]:
        """Top-k distinct FAQs per query row by dense cosine alone (an FAQ scores by its best vector)."""
        # Several texts per FAQ: fetch enough rows that top_k distinct FAQs are almost always among them.
        found = self._dense_rows(queries, max(top_k * 8, 32), tags)
        if found is None:
            return [[] for _ in range(len(queries))]
        scores, ids = found
        results = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            positions, dense, matched = self._best_rows(row_scores, row_ids, top_k)
            results.append([Hit(self.faqs[p].id, float(d), text) for p, d, text in zip(positions, dense, matched, strict=True)])
        return results


def _rows_per_faq(row_faq: np.ndarray, n_faqs: int) -> list[np.ndarray]:
    """Each FAQ's rows, ascending: one stable sort, not a scan of every row per FAQ (quadratic at 300k)."""
    if n_faqs == 0:
        return []
    order = np.argsort(row_faq, kind="stable").astype(np.int64)
    counts = np.bincount(row_faq, minlength=n_faqs)
    return np.split(order, np.cumsum(counts)[:-1])


def new_version(kb_hash: str) -> str:
    """Sortable, unique-enough version name: UTC time to the millisecond + KB hash prefix."""
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{kb_hash[:8]}"


def build_index(kb: KnowledgeBase, encoder: Encoder, *, kb_path: str = "", calibration: Calibration | None = None,
                progress: Callable[[int], None] | None = None) -> FaqIndex:
    """Encode every question and paraphrase of `kb` into a new in-memory index."""
    started = time.perf_counter()
    pairs = kb.texts()
    positions = {f.id: i for i, f in enumerate(kb.faqs)}
    texts = [text for _, text in pairs]
    matrix = encode_in_chunks(encoder.encode_passages, texts, encoder.dim, progress=progress)
    answers = encode_in_chunks(encoder.encode_passages, [f.answer for f in kb.faqs], encoder.dim)
    question_rows = [i for i, (fid, _) in enumerate(pairs) if i == 0 or pairs[i - 1][0] != fid]
    vectors = vector_index(np.ascontiguousarray(matrix, dtype=np.float32), encoder.dim)
    meta = IndexMeta(
        version=new_version(kb.content_hash),
        encoder_name=encoder.name,
        fingerprint=encoder.fingerprint,
        dim=encoder.dim,
        kb_hash=kb.content_hash,
        kb_path=kb_path,
        n_faqs=len(kb.faqs),
        n_vectors=len(texts),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=round(time.perf_counter() - started, 3),
        calibration=calibration or default_calibration(encoder.fingerprint),
        kb_default_threshold=kb.default_threshold,
        answer_evidence=answer_evidence(matrix[question_rows], answers),
        kb_handoff_phrases=kb.handoff_phrases,
    )
    return FaqIndex(meta, kb.faqs, [positions[fid] for fid, _ in pairs], texts, vectors, answers)


def vector_index(matrix: np.ndarray, dim: int) -> faiss.Index:
    """Inner-product index over the rows: exact below APPROXIMATE_FROM_ROWS, HNSW from there on."""
    if len(matrix) >= APPROXIMATE_FROM_ROWS:
        index: faiss.Index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        index = faiss.IndexFlatIP(dim)
    if len(matrix):
        index.add(matrix)
    return index


def answer_evidence(questions: np.ndarray, answers: np.ndarray, sample: int = 512) -> float:
    """Share of FAQs whose question lies nearest to its own answer among all answers (a seeded sample of them).

    High on a real KB (0.75-0.92 on ours), ~0 when answers are placeholders or all alike: only then
    does the confidence model read the query's similarity to the answers.
    """
    n = len(questions)
    if n < 2:
        return 0.0
    rows = np.random.default_rng(0).choice(n, size=min(n, sample), replace=False)
    search = faiss.IndexFlatIP(answers.shape[1])
    search.add(np.ascontiguousarray(answers, dtype=np.float32))
    _, nearest = search.search(np.ascontiguousarray(questions[rows], dtype=np.float32), 1)
    return round(float(np.mean(nearest[:, 0] == rows)), 4)


def with_calibration(index: FaqIndex, calibration: Calibration) -> FaqIndex:
    """The same vectors and FAQs as a new version read with another calibration (`faqbot calibrate`)."""
    version = new_version(index.meta.kb_hash)
    while version == index.version:  # same millisecond: a version name must never be reused
        time.sleep(0.001)
        version = new_version(index.meta.kb_hash)
    meta = replace(index.meta, version=version, calibration=calibration)
    return FaqIndex(meta, index.faqs, index.row_faq.tolist(), index.row_text, index.vectors, index.answers)


def _faq_to_dict(f: FAQ) -> dict[str, object]:
    return f.to_dict()


def _faq_from_dict(d: dict) -> FAQ:
    return FAQ.from_dict(d)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def publish_index(index: FaqIndex, data_dir: Path | DataDir) -> Path:
    """Write `index` as a new version and make it live atomically; prune old versions."""
    layout = DataDir.of(data_dir)
    root = layout.index
    versions = layout.index_versions
    versions.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=versions))
    try:
        _write_file(staging / "vectors.faiss", faiss.serialize_index(index.vectors).tobytes())
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(index.answers, dtype=np.float32))
        _write_file(staging / "answers.npy", buffer.getvalue())
        payload = {
            **index.meta.to_dict(),
            "faqs": [_faq_to_dict(f) for f in index.faqs],
            "rows": {"faq": index.row_faq.tolist(), "text": index.row_text},
        }
        _write_file(staging / "meta.json", json.dumps(payload, ensure_ascii=False).encode("utf-8"))
        _fsync_dir(staging)
        final = versions / index.version
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pointer_tmp = root / f".CURRENT.{os.getpid()}.tmp"
    _write_file(pointer_tmp, index.version.encode())
    os.replace(pointer_tmp, layout.current_pointer)
    _fsync_dir(root)
    _prune(versions, keep=index.version)
    return final


def _prune(versions: Path, keep: str) -> None:
    """Keep the newest few versions (other workers may still be reading one); drop stale builds."""
    done = sorted((p for p in versions.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    for old in done[:-KEEP_VERSIONS]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in versions.glob(".build-*"):
        if time.time() - leftover.stat().st_mtime > 3600:
            shutil.rmtree(leftover, ignore_errors=True)


def live_version(data_dir: Path | DataDir) -> str | None:
    """The published version name, or None if nothing was ever published."""
    try:
        return DataDir.of(data_dir).current_pointer.read_text().strip() or None
    except FileNotFoundError:
        return None


def published_meta(data_dir: Path | DataDir) -> dict[str, Any] | None:
    """The live version's meta.json (without loading vectors), or None."""
    version = live_version(data_dir)
    if not version:
        return None
    try:
        return json.loads((DataDir.of(data_dir).index_version(version) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_index(data_dir: Path | DataDir, version: str | None = None) -> FaqIndex:
    """Load the live (or a given) version; IndexUnavailableError if missing or incomplete."""
    layout = DataDir.of(data_dir)
    version = version or live_version(data_dir)
    if not version:
        raise IndexUnavailableError(f"no index in {layout.index}: run `faqbot build` first")
    folder = layout.index_version(version)
    try:
        payload = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        vectors = faiss.deserialize_index(np.fromfile(folder / "vectors.faiss", dtype=np.uint8))
        answers = np.load(folder / "answers.npy")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise IndexUnavailableError(f"index version {version} in {folder} cannot be read: {exc}") from exc
    if payload.get("format") != FORMAT_VERSION:
        raise IndexUnavailableError(f"index version {version} has format {payload.get('format')}, expected {FORMAT_VERSION}")
    meta = _current_shipped(IndexMeta.from_dict(payload))
    if vectors.ntotal != meta.n_vectors:
        raise IndexUnavailableError(f"index version {version} is incomplete ({vectors.ntotal} of {meta.n_vectors} vectors)")
    faqs = [_faq_from_dict(d) for d in payload["faqs"]]
    if answers.shape != (len(faqs), vectors.d):
        raise IndexUnavailableError(f"index version {version} has {answers.shape} answer vectors for {len(faqs)} FAQs")
    return FaqIndex(meta, faqs, payload["rows"]["faq"], payload["rows"]["text"], vectors, answers)


def _current_shipped(meta: IndexMeta) -> IndexMeta:
    """An index keeps a copy of the calibration it was built with; where that copy is the package's shipped
    one, read the package's file as it is now, so an upgrade's better fit applies without re-encoding the KB.
    A calibration fitted for this deployment (`faqbot calibrate`, scope local) stays as stored."""
    if meta.calibration.scope != SCOPE_SHIPPED:
        return meta
    current = shipped_calibration(meta.fingerprint)
    return meta if current is None or current == meta.calibration else replace(meta, calibration=current)


def check_compatible(index: FaqIndex, encoder: Encoder, kb: KnowledgeBase | None = None) -> None:
    """Refuse an index built by another encoder (or from another KB), with a message saying what to do."""
    if index.meta.fingerprint != encoder.fingerprint:
        raise StaleIndexError(
            f"index {index.version} was built with encoder {index.meta.fingerprint!r}, "
            f"but the configured encoder is {encoder.fingerprint!r}: run `faqbot build` to rebuild it"
        )
    if kb is not None and index.meta.kb_hash != kb.content_hash:
        raise StaleIndexError(
            f"index {index.version} was built from another version of the KB "
            f"(hash {index.meta.kb_hash}, KB now {kb.content_hash}): run `faqbot build` to rebuild it"
        )
