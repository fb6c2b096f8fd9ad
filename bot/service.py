"""The central object: settings + encoder + live index + store, and the chat decision around them.

`FaqService` is what the HTTP routes, the webhooks and the CLI all call, so a question gets the
same answer whichever way it arrives. It is built from explicit settings (no globals).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bot.matcher import Decision, Matcher
from bot.settings import Settings
from bot.store import MissRecord, Store
from faq import KnowledgeBase, load_kb
from index.calibration import Calibration
from index.encoders import Encoder, EncoderSpec, load_encoder
from index.faq_index import (
    FaqIndex,
    IndexUnavailableError,
    StaleIndexError,
    build_index,
    check_compatible,
    live_version,
    load_index,
    publish_index,
)
from index.text import match_key, sanitize

log = logging.getLogger("faqbot")


def encoder_spec(settings: Settings) -> EncoderSpec:
    return EncoderSpec(
        spec=settings.encoder,
        kb_prefix=settings.kb_prefix,
        query_prompt=settings.query_prompt,
        passage_prompt=settings.passage_prompt,
        max_seq_length=settings.max_seq_length,
        threads=settings.encoder_threads,
    )


def build_and_publish(settings: Settings, encoder: Encoder, *, kb: KnowledgeBase | None = None,
                      calibration: Calibration | None = None,
                      progress: Callable[[int], None] | None = None) -> FaqIndex:
    """Load + validate the KB, encode it, publish a new index version atomically (KBError if the KB is bad)."""
    kb = kb or load_kb(settings.kb)
    index = build_index(kb, encoder, kb_path=str(Path(settings.kb).resolve()), calibration=calibration,
                        progress=progress)
    publish_index(index, settings.data_dir)
    return index


def ensure_index(settings: Settings, encoder: Encoder, *,
                 progress_factory: Callable[[int], Callable[[int], None]] | None = None) -> FaqIndex:
    """The live index, rebuilt first if it is missing or stale (or StaleIndexError when auto_build is off)."""
    kb = load_kb(settings.kb)
    try:
        index = load_index(settings.data_dir)
        check_compatible(index, encoder, kb)
        return index
    except (IndexUnavailableError, StaleIndexError) as problem:
        if not settings.auto_build:
            raise
        log.info("building the index: %s", problem)
    progress = progress_factory(len(kb.texts())) if progress_factory else None
    previous = _previous_calibration(settings, encoder)
    return build_and_publish(settings, encoder, kb=kb, calibration=previous, progress=progress)


def _previous_calibration(settings: Settings, encoder: Encoder) -> Calibration | None:
    """Keep a calibration fitted by `faqbot calibrate` across KB rebuilds with the same encoder."""
    try:
        old = load_index(settings.data_dir)
    except IndexUnavailableError:
        return None
    return old.calibration if old.meta.fingerprint == encoder.fingerprint else None


@dataclass
class ChatResult:
    decision: Decision
    message: str
    miss_id: int | None
    index_version: str
    answer: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


class NotReadyError(Exception):
    """The index is not loaded yet (start-up build in progress, or it failed)."""


class FaqService:
    """What a running faqbot is: one encoder, the live index, the store, and the settings."""

    def __init__(self, settings: Settings, *, encoder: Encoder | None = None, store: Store | None = None) -> None:
        self.settings = settings
        self._encoder = encoder
        self.store = store or Store(settings.resolved_database_url)
        self._index: FaqIndex | None = None
        self._matcher: Matcher | None = None
        self.load_error: str | None = None
        self._swap_lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = load_encoder(encoder_spec(self.settings))
        return self._encoder

    def start(self) -> None:
        """Load (building if needed) the index and warm the encoder; errors are kept for /readyz."""
        try:
            index = ensure_index(self.settings, self.encoder)
            self.encoder.encode_queries(["预热"])  # first call allocates buffers: keep it off a customer's request
            self.use_index(index)
            self.load_error = None
        except Exception as exc:  # any start-up failure is kept for /readyz and logged, never fatal to the process
            self.load_error = str(exc)
            log.error("index not loaded: %s", exc)

    def use_index(self, index: FaqIndex) -> None:
        """Swap in a new live index atomically (readers keep the one they started with)."""
        check_compatible(index, self.encoder)
        matcher = Matcher(index, threshold=self.settings.threshold, kb_default_threshold=index.meta.kb_default_threshold)
        with self._swap_lock:
            self._matcher = matcher
            self._index = index

    def refresh_if_published(self) -> bool:
        """Load the published version if another process (or worker) made a newer one live."""
        version = live_version(self.settings.data_dir)
        if version is None or (self._index is not None and version == self._index.version):
            return False
        self.use_index(load_index(self.settings.data_dir, version))
        return True

    @property
    def index(self) -> FaqIndex:
        if self._index is None:
            raise NotReadyError(self.load_error or "the index is still loading")
        return self._index

    @property
    def matcher(self) -> Matcher:
        if self._matcher is None:
            raise NotReadyError(self.load_error or "the index is still loading")
        return self._matcher

    @property
    def ready(self) -> bool:
        return self._index is not None

    # --- questions -------------------------------------------------------------------------------
    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode_queries([sanitize(t) for t in texts])

    def decide(self, message: str, *, tags: Sequence[str] | None = None, top_k: int | None = None) -> Decision:
        matcher = self.matcher
        vector = self.encode_queries([message])
        return matcher.match_vectors(vector, top_k=top_k or self.settings.top_k, tags=tags)[0]

    def chat(self, message: str, *, channel: str = "web", session_id: str | None = None,
             tags: Sequence[str] | None = None, top_k: int | None = None, log_turn: bool = True) -> ChatResult:
        """Answer one customer message; a miss (or ambiguity) is logged and its id returned."""
        matcher = self.matcher  # one snapshot for the whole request, even if a reload swaps meanwhile
        clean = sanitize(message, self.settings.max_message_chars)
        vector = self.encode_queries([clean])
        decision = matcher.match_vectors(vector, top_k=top_k or self.settings.top_k, tags=tags)[0]
        miss_id = None
        if log_turn and not decision.matched:
            miss_id = self.store.log_miss(self.miss_record(clean, decision, channel, session_id, matcher.index.version))
        if log_turn:
            self.store.log_chat(channel=channel, session_id=session_id, matched=decision.matched,
                                faq_id=decision.faq.id if decision.faq else None,
                                similarity=decision.best.similarity if decision.best else None, miss_id=miss_id)
        answer = decision.faq.answer if decision.faq else None
        return ChatResult(decision, clean, miss_id, matcher.index.version, answer)

    @staticmethod
    def miss_record(message: str, decision: Decision, channel: str, session_id: str | None,
                    index_version: str | None, reason: str | None = None) -> MissRecord:
        best = decision.best
        return MissRecord(
            message=message,
            match_key=match_key(message),
            channel=channel,
            session_id=session_id,
            reason=reason or decision.reason,
            best_faq_id=best.faq_id if best else None,
            best_similarity=best.similarity if best else None,
            best_percent=best.percent if best else None,
            candidates=[c.as_dict() for c in decision.candidates],
            index_version=index_version,
        )

    def similarity(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, float]]:
        """(cosine, percent) per pair, both sides encoded as queries (a symmetric comparison)."""
        if not pairs:
            return []
        texts = [t for pair in pairs for t in pair]
        vectors = self.encode_queries(texts)
        left, right = vectors[0::2], vectors[1::2]
        cosines = np.clip(np.sum(left * right, axis=1), -1.0, 1.0)
        calibration = self.calibration
        return [(float(c), float(calibration.percent(float(c)))) for c in cosines]

    @property
    def calibration(self) -> Calibration:
        if self._index is not None:
            return self._index.calibration
        from index.calibration import default_calibration

        return default_calibration(self.encoder.fingerprint)
