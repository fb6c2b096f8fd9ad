"""The central object: settings + encoder + live index + store, and the chat decision around them.

`FaqService` is what the HTTP routes, the webhooks and the CLI all call, so a question gets the
same answer whichever way it arrives. It is built from explicit settings (no globals).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from bot.batcher import BatchStats, Encoded, MicroBatcher, OverloadedError, SearchSpec, limit_faiss_threads
from bot.cache import EmbeddingCache, ExactMatches
from bot.context import SessionContext, is_followup, with_context
from bot.handoff import ASKED, OFFERED, HandoffPhrases, LastTurn, SessionTurns, newer
from bot.matcher import Decision, Matcher
from bot.misswriter import ChatRow, MissWriter
from bot.related import Related, RelatedFaqs
from bot.settings import Settings
from bot.store import MissRecord, Store, utcnow
from bot.suggestions import Suggestion, Suggestions
from faq import KnowledgeBase, load_kb
from faq.errors import UnavailableError
from index.calibration import Calibration
from index.datadir import DataDir
from index.encoders import Encoder, EncoderError, EncoderSpec, load_encoder, runs_in_parallel
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

if TYPE_CHECKING:
    from bot.metrics import Metrics

log = logging.getLogger("faqbot")
T = TypeVar("T")

# A caller never waits forever on the encoder worker or the miss writer.
RESULT_TIMEOUT_SECONDS = 60.0


def matcher_for(index: FaqIndex, settings: Settings) -> Matcher:
    """The matcher /chat decides with for `index` under these settings (also the reload gate's)."""
    return Matcher(index, threshold=settings.threshold, kb_default_threshold=index.meta.kb_default_threshold,
                   min_confidence=settings.min_confidence, timezone=settings.zone)


def deployed_encoder(data_dir: Path) -> str | None:
    """The encoder spec `faqbot finetune --deploy` recorded in the data dir (`models/active.json`), if any.

    It replaces only the defaults `auto`/`bundled`: an explicit other FAQBOT_ENCODER wins (docs/finetune.md).
    """
    path = DataDir(data_dir).deployed_record
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))["encoder"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EncoderError(f"{path}: unreadable deployed-model record ({exc}); fix it, or delete it to use bundled") from exc
    if not isinstance(spec, str) or not spec:
        raise EncoderError(f"{path}: \"encoder\" must be an encoder spec such as sentence-transformers:<dir>")
    return spec


def encoder_spec(settings: Settings) -> EncoderSpec:
    spec = settings.encoder
    if spec in ("auto", "bundled"):
        spec = deployed_encoder(settings.data_dir) or spec
    return EncoderSpec(
        spec=spec,
        kb_prefix=settings.kb_prefix,
        query_prompt=settings.query_prompt,
        passage_prompt=settings.passage_prompt,
        max_seq_length=settings.max_seq_length,
        threads=settings.encoder_threads,
        models_dir=str(DataDir(settings.data_dir).models),
    )


def build_and_publish(settings: Settings, encoder: Encoder, *, kb: KnowledgeBase | None = None,
                      calibration: Calibration | None = None,
                      progress: Callable[[int], None] | None = None) -> FaqIndex:
    """Load + validate the KB, encode it, publish a new index version atomically (KBError if the KB is bad)."""
    kb = kb or load_kb(settings.kb)
    index = build_index(kb, encoder, kb_path=str(Path(settings.kb).resolve()), calibration=calibration,
                        progress=progress)
    publish_index(index, settings.layout)
    return index


def ensure_index(settings: Settings, encoder: Encoder, *,
                 progress_factory: Callable[[int], Callable[[int], None]] | None = None) -> FaqIndex:
    """The live index, rebuilt first if it is missing or stale (or StaleIndexError when auto_build is off)."""
    kb = load_kb(settings.kb)
    try:
        index = load_index(settings.layout)
        check_compatible(index, encoder, kb)
        return index
    except (IndexUnavailableError, StaleIndexError) as problem:
        if not settings.auto_build:
            raise
        log.info("building the index: %s", problem)
    progress = progress_factory(len(kb.texts())) if progress_factory else None
    previous = previous_calibration(settings, encoder)
    return build_and_publish(settings, encoder, kb=kb, calibration=previous, progress=progress)


def previous_calibration(settings: Settings, encoder: Encoder) -> Calibration | None:
    """Keep a calibration fitted by `faqbot calibrate` across KB rebuilds with the same encoder."""
    try:
        old = load_index(settings.layout)
    except IndexUnavailableError:
        return None
    # Only a locally fitted one: the shipped/uncalibrated default is re-read from the package on each build.
    return old.calibration if old.meta.fingerprint == encoder.fingerprint and old.calibration.is_local else None


@dataclass
class ChatResult:
    """One answered turn. `miss_logged` is False when the database refused to record it (answered anyway)."""

    decision: Decision
    message: str
    miss_id: int | None
    index_version: str
    answer: str | None = None
    miss_logged: bool = True
    extra: dict[str, object] = field(default_factory=dict)
    handoff: str | None = None  # bot.handoff.ASKED or OFFERED: this turn offers a person
    context_used: bool = False  # answered as a follow-up of the session's last question (bot.context)
    related: Related = field(default_factory=Related)  # questions to suggest after a matched answer


class NotReadyError(UnavailableError):
    """The index is not loaded yet (start-up build in progress, or it failed)."""

    code = "not_ready"
    retry_after = 2.0


class MissLogUnavailableError(UnavailableError):
    """The database refused to record something that must be recorded (feedback)."""

    code = "log_unavailable"
    retry_after = 5.0


# What "the database refused" looks like: locked past its busy timeout, down, the disk full.
STORE_REFUSED = (SQLAlchemyError, OSError)


class FaqService:
    """One KB served: its live index and decision, over an encoder, a store and a hot path.

    With several KBs (`shares`), every KB's service uses the first one's encoder, store, query
    cache, encoder worker and miss writer: one model in memory, one database, one batch queue.
    """

    def __init__(self, settings: Settings, *, encoder: Encoder | None = None, store: Store | None = None,
                 shares: FaqService | None = None) -> None:
        self.settings = settings
        self.kb_name = settings.kb_name
        self._shares = shares
        self._encoder = encoder if shares is None else shares._encoder
        self.store = shares.store if shares is not None else (
            store or Store(settings.resolved_database_url, first_kb=settings.kb_name))
        self._index: FaqIndex | None = None
        self._matcher: Matcher | None = None
        self._suggestions: Suggestions | None = None
        self.load_error: str | None = None
        self._swap_lock = threading.Lock()
        # Held while following CURRENT and while publishing here, so a slow refresh of an older
        # version can never swap in after (and over) a version this process just published.
        self._publish_lock = threading.RLock()
        # The hot path (docs/performance.md): query vectors come from the exact-match table, the LRU
        # cache or the encoder worker; chat-log rows and misses go through the batched writer. The
        # worker and writer run between start_pipeline() and stop_pipeline() (the app's lifespan);
        # without them (CLI, scripts) every call encodes and writes in the caller's thread.
        self.cache = shares.cache if shares is not None else EmbeddingCache(settings.cache_size)
        # A KB text's stored vector is its query vector only when both sides get the same prompt.
        self._exact_enabled = settings.exact_match and settings.kb_prefix == "query" and (
            settings.passage_prompt is None or settings.passage_prompt == settings.query_prompt)
        self._exact: ExactMatches | None = None
        self.batcher: MicroBatcher | None = None
        self.miss_writer: MissWriter | None = None
        self._metrics: Metrics | None = None
        self.vector_sources = {"exact": 0, "cache": 0, "encoder": 0}
        self.handoff_phrases = HandoffPhrases()
        self.sessions = SessionTurns()
        self.context = SessionContext(kb=self.kb_name)  # the app hands it Redis when configured
        self._related: RelatedFaqs | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = self._shares.encoder if self._shares is not None else load_encoder(encoder_spec(self.settings))
        return self._encoder

    def start(self) -> None:
        """Load (building if needed) the index and warm the encoder; errors are kept for /readyz."""
        try:
            index = ensure_index(self.settings, self.encoder)
            if self._shares is None:  # one encoder for every KB: warm it once
                self.encoder.encode_queries(["预热"])  # first call allocates buffers: keep it off a customer's request
                self.encoder.encode_queries(["预热", "你好"])  # and the batch path (it starts the OpenMP team)
            self.use_index(index)
            self.load_error = None
        except Exception as exc:  # any start-up failure is kept for /readyz and logged, never fatal to the process
            self.load_error = str(exc)
            log.error("index not loaded: %s", exc)

    def use_index(self, index: FaqIndex) -> None:
        """Swap in a new live index atomically (readers keep the one they started with)."""
        check_compatible(index, self.encoder)
        index.prepare()  # the character index is built here, before the swap, not inside the first request
        matcher = matcher_for(index, self.settings)
        exact = ExactMatches(index) if self._exact_enabled else None
        phrases = HandoffPhrases(index.meta.kb_handoff_phrases)
        related = RelatedFaqs(index)
        with self._swap_lock:
            self._exact = exact
            self._matcher = matcher
            self._index = index
            self.handoff_phrases = phrases
            self._related = related

    def refresh_if_published(self) -> bool:
        """Load the published version if another process (or worker) made a newer one live."""
        with self._publish_lock:
            version = live_version(self.settings.layout)
            if version is None or (self._index is not None and version == self._index.version):
                return False
            self.use_index(load_index(self.settings.layout, version))
            return True

    def publish_and_use(self, index: FaqIndex) -> None:
        """Make `index` the published version (every worker follows CURRENT) and serve it here at once."""
        check_compatible(index, self.encoder)
        with self._publish_lock:
            publish_index(index, self.settings.layout)
            self.use_index(index)

    @property
    def index(self) -> FaqIndex:
        if self._index is None:
            raise self.not_ready()
        return self._index

    @property
    def matcher(self) -> Matcher:
        if self._matcher is None:
            raise self.not_ready()
        return self._matcher

    @property
    def ready(self) -> bool:
        return self._index is not None

    def not_ready(self) -> NotReadyError:
        """Why there is no answer yet: the start-up error, or that the index is still loading."""
        return NotReadyError(self.load_error or "the index is still loading")

    def require_ready(self) -> None:
        """NotReadyError (503, Retry-After 2 over HTTP) until the index is loaded."""
        if not self.ready:
            raise self.not_ready()

    # --- the hot path: encoder worker, cache, miss writer -----------------------------------------
    def start_pipeline(self, metrics: Metrics | None = None) -> None:
        """Start the encoder worker and the batched miss writer (the app's lifespan calls this)."""
        settings = self.settings
        self._metrics = metrics
        if self._shares is not None:  # the first KB's service runs them for every KB
            self.batcher, self.miss_writer = self._shares.batcher, self._shares.miss_writer
            return
        # The loop thread searches too (cache hits, exact matches): with OpenMP's default thread per core
        # a 30k-row search measured 2-4x slower on 2 shared cores than on one thread (docs/performance.md).
        limit_faiss_threads()
        if settings.max_batch > 1:
            workers = settings.resolved_encoder_workers if runs_in_parallel(self.encoder) else 1
            self.batcher = MicroBatcher(self._encode_clean, max_batch=settings.max_batch,
                                        max_wait_ms=settings.max_wait_ms, queue_size=settings.queue_size,
                                        on_batch=self._observe_batch, workers=workers)
            self.batcher.start()
        self.miss_writer = MissWriter(self.store, flush_ms=settings.log_flush_ms,
                                      on_commit=(lambda rows, _misses, _s: metrics.observe_commit(rows)) if metrics else None)
        self.miss_writer.start()
        if metrics is not None:
            metrics.track(queue_depth=lambda: self.batcher.queue_depth if self.batcher else 0,
                          cache_hit_ratio=self.cache_hit_ratio, cache_entries=lambda: len(self.cache),
                          log_pending=lambda: self.miss_writer.pending if self.miss_writer else 0)

    def stop_pipeline(self) -> None:
        """Encode what is queued, commit every handed-over chat-log row and miss, stop both threads."""
        if self._shares is not None:  # not ours to stop
            self.batcher = self.miss_writer = None
            return
        batcher, self.batcher = self.batcher, None
        if batcher is not None:
            batcher.stop()
        writer, self.miss_writer = self.miss_writer, None
        if writer is not None:
            writer.close()

    def cache_hit_ratio(self) -> float:
        """Share of query vectors that did not need the encoder (exact FAQ text or LRU hit)."""
        total = sum(self.vector_sources.values())
        return (total - self.vector_sources["encoder"]) / total if total else 0.0

    def _count(self, source: str, n: int = 1) -> None:
        self.vector_sources[source] += n
        if self._metrics is not None:
            self._metrics.query_vectors.labels(source).inc(n)

    def _observe_batch(self, stats: BatchStats) -> None:
        if self._metrics is not None:
            self._metrics.observe_batch(stats.texts, stats.queued_seconds, stats.encode_seconds)

    def _encode_clean(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode_queries(texts)

    def _known_vector(self, key: str) -> np.ndarray | None:
        """The query vector without encoding: an FAQ text's own stored vector, else the LRU cache."""
        exact = self._exact
        if exact is not None and (vector := exact.get(key)) is not None:
            self._count("exact")
            return vector
        if (vector := self.cache.get(key)) is not None:
            self._count("cache")
        return vector

    def _submit(self, texts: list[str], search: SearchSpec | None = None, *, block: bool = False) -> Future[Encoded]:
        assert self.batcher is not None
        try:
            future = self.batcher.submit(texts, search, block=block, timeout=RESULT_TIMEOUT_SECONDS)
        except OverloadedError:
            if self._metrics is not None:
                self._metrics.overloaded.inc()
            raise
        self._count("encoder", len(texts))
        return future

    def _batching(self) -> bool:
        return self.batcher is not None and self.batcher.running

    # --- questions -------------------------------------------------------------------------------
    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors of `texts` (sanitised here): exact/cache hits, the rest through the encoder worker."""
        clean = [sanitize(t) for t in texts]
        if not clean:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        keys = [match_key(t) for t in clean]
        found = [self._known_vector(k) for k in keys]
        todo = [i for i, vector in enumerate(found) if vector is None]
        if todo:
            missing = [clean[i] for i in todo]
            if self._batching():
                assert self.batcher is not None
                step = min(self.batcher.max_batch, self.batcher.queue_size)
                # Long lists (admin re-checks, clustering) go in batch-sized jobs, so chat traffic interleaves.
                futures = [self._submit(missing[i:i + step], block=True) for i in range(0, len(missing), step)]
                vectors = np.concatenate([f.result(RESULT_TIMEOUT_SECONDS).vectors for f in futures])
            else:
                self._count("encoder", len(missing))
                vectors = self.encoder.encode_queries(missing)
            for i, vector in zip(todo, vectors, strict=True):
                found[i] = vector
                self.cache.put(keys[i], vector)
        return np.stack(found).astype(np.float32, copy=False)

    # --- the one chat path: /chat, the webhooks and `faqbot ask` -----------------------------------
    async def achat(self, message: str, *, channel: str = "web", session_id: str | None = None,
                    tags: Sequence[str] | None = None, top_k: int | None = None, log_turn: bool = True) -> ChatResult:
        """Answer one customer message; a miss (or ambiguity) is logged and its id returned.

        The vector comes from the exact-match table or the cache, else the encoder worker (awaited
        without holding a thread), else an encode in a thread. When the database refuses the turn
        (locked past its busy timeout, down, disk full) the customer still gets the answer and the
        result says the miss was not recorded (`miss_logged=False`).
        """
        matcher = self.matcher  # one snapshot for the whole request, even if a reload swaps meanwhile
        clean = sanitize(message, self.settings.max_message_chars)
        decision = await self._adecide(clean, matcher, tags, top_k or self.settings.top_k)
        asked_for_person = self.handoff_phrases.asks_for_person(clean)
        decision, question = await self._with_context(clean, decision, matcher, session_id, tags, top_k,
                                                      asked_for_person)
        answer = decision.faq.answer_for(channel) if decision.faq else None
        result = ChatResult(decision, clean, None, matcher.index.version, answer)
        result.context_used = question != clean
        if session_id and not asked_for_person:
            self.context.remember(session_id, question, decision.faq.id if decision.matched and decision.faq else None)
        result.handoff = await self._handoff_for(clean, decision, session_id)
        if decision.faq is not None:
            result.related = self.related_faqs(matcher.index).for_faq(decision.faq, matcher.offered)
        if session_id:
            missed = _is_miss(decision) and result.handoff != ASKED
            self.sessions.put(session_id, LastTurn(utcnow(), missed))
        if log_turn:
            await self._log_turn(result, channel, session_id)
        return result

    async def _with_context(self, clean: str, decision: Decision, matcher: Matcher, session_id: str | None,
                            tags: Sequence[str] | None, top_k: int | None, asked_for_person: bool,
                            ) -> tuple[Decision, str]:
        """A short message that does not clear the decision alone, asked again after the session's last
        question (bot.context); returns the decision to answer with and the question it stands for."""
        if decision.matched or asked_for_person or not session_id or not is_followup(clean):
            return decision, clean
        previous = self.context.last(session_id)
        if previous is None:
            return decision, clean
        question = with_context(previous[0], clean)
        combined = await self._adecide(question, matcher, tags, top_k or self.settings.top_k)
        adds_something = combined.matched and combined.faq is not None and combined.faq.id != previous[1]
        return (combined, question) if adds_something else (decision, clean)

    def related_faqs(self, index: FaqIndex) -> RelatedFaqs:
        """The related-question finder of `index` (the live one's is kept; a request that started on an
        older index during a swap gets one of its own)."""
        related = self._related
        return related if related is not None and related.index is index else RelatedFaqs(index)

    async def _handoff_for(self, clean: str, decision: Decision, session_id: str | None) -> str | None:
        """ASKED when the message asks for a person, OFFERED on a session's second miss in a row (bot.handoff)."""
        if self.handoff_phrases.asks_for_person(clean):
            return ASKED
        if not session_id or not _is_miss(decision):
            return None
        try:
            stored = await asyncio.to_thread(self.store.last_turn, session_id, self.kb_name)
        except STORE_REFUSED as exc:  # the database is only a second opinion: this process's memory decides
            log.warning("handoff: the chat log could not be read (%s)", exc)
            stored = None
        from_db = LastTurn(*stored) if stored is not None else None
        previous = newer(self.sessions.get(session_id), from_db)
        return OFFERED if previous is not None and previous.missed else None

    def chat(self, message: str, *, channel: str = "web", session_id: str | None = None,
             tags: Sequence[str] | None = None, top_k: int | None = None, log_turn: bool = True) -> ChatResult:
        """`achat` for a caller with no event loop (scripts, tests): the same path, run to completion here."""
        return _run(self.achat(message, channel=channel, session_id=session_id, tags=tags, top_k=top_k,
                               log_turn=log_turn))

    def decide(self, message: str, *, tags: Sequence[str] | None = None, top_k: int | None = None) -> Decision:
        """The decision `achat` would make, with nothing logged (for a caller with no event loop)."""
        matcher = self.matcher
        clean = sanitize(message, self.settings.max_message_chars)
        return _run(self._adecide(clean, matcher, tags, top_k or self.settings.top_k))

    async def feedback(self, message: str, *, helpful: bool, faq_id: str | None = None,
                       session_id: str | None = None, channel: str = "web") -> tuple[int, int | None]:
        """Record 👍/👎 for an answer; a 👎 puts the question in the miss log. (feedback id, miss id);
        MissLogUnavailableError when the database refuses (nothing the customer said may be lost silently)."""
        clean = sanitize(message, self.settings.max_message_chars)
        record = None
        if not helpful:
            matcher = self.matcher
            decision = await self._adecide(clean, matcher, None, self.settings.top_k)
            record = self.miss_record(clean, decision, channel, session_id, matcher.index.version, reason="feedback")
            if faq_id:
                record = replace(record, best_faq_id=faq_id)
        try:
            return await asyncio.to_thread(self._write_feedback, record, clean, faq_id, helpful, session_id)
        except STORE_REFUSED as exc:
            log.error("feedback: the database refused it: %s", exc)
            raise MissLogUnavailableError("the feedback could not be recorded right now; try again") from exc

    def _write_feedback(self, record: MissRecord | None, clean: str, faq_id: str | None, helpful: bool,
                        session_id: str | None) -> tuple[int, int | None]:
        miss_id = self.store.log_miss(record) if record is not None else None
        feedback_id = self.store.log_feedback(session_id=session_id, message=clean, faq_id=faq_id, helpful=helpful,
                                              miss_id=miss_id)
        return feedback_id, miss_id

    def _start_decision(self, clean: str, matcher: Matcher, tags: Sequence[str] | None,
                        top_k: int) -> tuple[str, Decision | Future[Encoded] | None]:
        """The decision when the vector is known; else the worker's future (or None: encode here)."""
        key = match_key(clean)
        vector = self._known_vector(key)
        if vector is not None:
            return key, matcher.match_vectors(vector[None, :], [clean], top_k=top_k, tags=tags)[0]
        if self._batching():
            return key, self._submit([clean], SearchSpec(matcher, top_k, tuple(tags) if tags else None))
        return key, None

    async def _adecide(self, clean: str, matcher: Matcher, tags: Sequence[str] | None, top_k: int) -> Decision:
        key, pending = self._start_decision(clean, matcher, tags, top_k)
        if isinstance(pending, Decision):
            return pending
        if pending is None:  # no encoder worker (max_batch=1, the CLI): encode in a thread
            return await asyncio.to_thread(self._decide_here, key, clean, matcher, tags, top_k)
        encoded = await asyncio.wrap_future(pending)
        self.cache.put(key, encoded.vectors[0])
        assert encoded.decisions is not None
        return encoded.decisions[0]

    def _decide_here(self, key: str, clean: str, matcher: Matcher, tags: Sequence[str] | None, top_k: int) -> Decision:
        self._count("encoder")
        vector = self.encoder.encode_queries([clean])
        self.cache.put(key, vector[0])
        return matcher.match_vectors(vector, [clean], top_k=top_k, tags=tags)[0]

    async def _log_turn(self, result: ChatResult, channel: str, session_id: str | None) -> None:
        """Log the turn (and the miss, if it was one) into `result`; a refusing database is logged, not raised."""
        try:
            result.miss_id = await self._record_turn(result.message, result.decision, channel, session_id,
                                                     result.index_version, result.handoff)
        except STORE_REFUSED as exc:
            log.error("chat: the miss log refused this turn (%s); answering without logging it", exc)
            if self._metrics is not None:
                self._metrics.miss_log_failures.inc()
            result.miss_logged = False

    async def _record_turn(self, clean: str, decision: Decision, channel: str, session_id: str | None,
                           index_version: str, handoff: str | None = None) -> int | None:
        """Hand the turn to the batched writer (or write it in a thread without one); the committed miss id.
        A request for a person is no miss: nothing an FAQ could have answered."""
        chat = ChatRow(channel=channel, session_id=session_id, matched=decision.matched,
                       faq_id=decision.faq.id if decision.faq else None,
                       similarity=decision.best.similarity if decision.best else None, handoff=handoff,
                       kb=self.kb_name)
        is_miss = not decision.matched and handoff != ASKED
        miss = self.miss_record(clean, decision, channel, session_id, index_version) if is_miss else None
        recorded = self._hand_over(chat, miss)
        if recorded is None:
            return await asyncio.to_thread(self._write_turn_here, chat, miss)
        return recorded.result() if recorded.done() else await asyncio.wrap_future(recorded)

    def _hand_over(self, chat: ChatRow, miss: MissRecord | None) -> Future[int | None] | None:
        writer = self.miss_writer
        if writer is None or not writer.running:
            return None
        try:
            return writer.log_turn(chat, miss)
        except RuntimeError:  # the writer closed meanwhile (shutdown): write here instead
            return None

    def _write_turn_here(self, chat: ChatRow, miss: MissRecord | None) -> int | None:
        miss_id = self.store.log_miss(miss) if miss is not None else None
        self.store.log_chat(channel=chat.channel, session_id=chat.session_id, matched=chat.matched,
                            faq_id=chat.faq_id, similarity=chat.similarity, miss_id=miss_id, handoff=chat.handoff)
        return miss_id

    def miss_record(self, message: str, decision: Decision, channel: str, session_id: str | None,
                    index_version: str | None, reason: str | None = None) -> MissRecord:
        """The miss row of a turn of this KB."""
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
            kb=self.kb_name,
        )

    def suggestions(self, limit: int) -> list[Suggestion]:
        """The welcome suggestions of the live index (bot.suggestions)."""
        if self._suggestions is None:
            self._suggestions = Suggestions(self.store, kb=self.kb_name)
        return self._suggestions.for_matcher(self.matcher, limit)

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


def _is_miss(decision: Decision) -> bool:
    """No FAQ answered and none was offered to choose from (a clarify is the bot asking back, not failing)."""
    return not decision.matched and not decision.clarify


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine of the service to completion for a caller with no event loop (bounded in time)."""
    return asyncio.run(asyncio.wait_for(work, RESULT_TIMEOUT_SECONDS))
