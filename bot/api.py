"""Public HTTP routes: /chat, /feedback, /similarity, /v1/embeddings, /healthz, /readyz, /metrics.

Routes are thin: validate, call `FaqService`, shape the JSON; errors are raised as domain errors
and rendered by bot.errors. /chat and /feedback await the service; the other handlers are plain
`def`, so their blocking work (encoding) runs in FastAPI's thread pool.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from bot.errors import error_response
from bot.handoff import ASKED
from bot.kbs import KnowledgeBases
from bot.matcher import Decision
from bot.metrics import Metrics
from bot.schemas import ChatRequest, EmbeddingsRequest, FeedbackRequest, SimilarityRequest
from bot.service import ChatResult, FaqService
from bot.suggestions import MAX_SUGGESTIONS
from faq.errors import InvalidInputError
from index.text import sanitize

router = APIRouter()
log = logging.getLogger("faqbot")

MISS_NOT_LOGGED = "the miss log is unavailable right now; this question was not recorded"


async def get_service(request: Request) -> FaqService:
    # Async on purpose: FastAPI runs a plain-`def` dependency in its thread pool, a thread hop on
    # every request only to read an attribute (docs/performance.md).
    return request.app.state.service


async def get_kbs(request: Request) -> KnowledgeBases:
    return request.app.state.kbs


Service = Annotated[FaqService, Depends(get_service)]
Kbs = Annotated[KnowledgeBases, Depends(get_kbs)]


def require_text(value: str, field: str, max_chars: int) -> str:
    """Reject empty (after cleaning) and over-long text with a 422 that names the field."""
    if len(value) > max_chars:
        raise InvalidInputError(f"{field}: longer than {max_chars} characters", code="message_too_long")
    if not sanitize(value):
        raise InvalidInputError(f"{field}: must contain some text", code="empty_message")
    return value


def chat_response(result: ChatResult, service: FaqService) -> dict[str, Any]:
    """The /chat JSON for one answered turn (also what the webhooks and `faqbot ask --json` show)."""
    decision: Decision = result.decision
    best = decision.best
    body: dict[str, Any] = {
        "matched": decision.matched,
        "answer": result.answer if decision.matched else service.settings.fallback_answer,
        "faq_id": decision.faq.id if decision.faq else None,
        "question": decision.faq.question if decision.faq else None,
        "similarity": round(best.similarity, 4) if best else None,
        "percent": best.percent if best else None,
        "confidence": decision.confidence,
        "min_confidence": decision.min_confidence,
        "threshold": round(decision.threshold, 4) if decision.threshold is not None else None,
        "alternatives": [c.as_dict() for c in (decision.candidates[1:] if decision.matched else decision.candidates)],
        "miss_id": result.miss_id,
        "index_version": result.index_version,
    }
    if decision.clarify:
        body["clarify"] = [{"faq_id": c.faq_id, "question": c.question, "percent": c.percent} for c in decision.clarify]
        body["answer"] = service.settings.clarify_prefix + "".join(
            f"\n{i}. {c.question}" for i, c in enumerate(decision.clarify, 1)
        )
    body["related"] = result.related.as_list() if decision.matched else []
    body["context_used"] = result.context_used
    body["related_source"] = result.related.source if decision.matched else None
    body["handoff"] = result.handoff is not None
    if result.handoff is not None:
        body["handoff_reason"] = result.handoff
        if result.handoff == ASKED and not decision.matched:
            body["answer"] = service.settings.handoff_answer
    if (not decision.matched or result.handoff) and service.settings.handoff_url:
        body["handoff_url"] = service.settings.handoff_url
    if not result.miss_logged and not decision.matched and result.handoff != ASKED:
        body["miss_logged"] = False
        body["miss_error"] = MISS_NOT_LOGGED
    return body


def answer_label(result: ChatResult) -> str:
    """The `answers` metric's outcome of a turn: matched, below_threshold, ambiguous or handoff (asked for a person)."""
    if result.decision.matched:
        return "matched"
    return "handoff" if result.handoff == ASKED else result.decision.reason


@router.post("/chat", tags=["chat"])
async def chat(body: ChatRequest, kbs: Kbs, request: Request) -> dict[str, Any]:
    """Answer a customer question with the best FAQ of the KB `kb` (default: the first), or the fallback
    (logged as a miss) below the threshold."""
    # Async: the request waits for the encoder worker (micro-batched with other questions) and, on a
    # miss, for the batched commit of the miss log, without holding a thread (docs/performance.md).
    service = kbs.get(body.kb)
    require_text(body.message, "message", service.settings.max_message_chars)
    kbs.require_ready(service)
    result = await service.achat(body.message, channel=body.channel, session_id=body.session_id, tags=body.tags,
                                 top_k=body.top_k)
    metrics: Metrics = request.app.state.metrics
    metrics.answers.labels(answer_label(result), body.channel).inc()
    return chat_response(result, service)


@router.post("/feedback", tags=["chat"])
async def feedback(body: FeedbackRequest, kbs: Kbs) -> dict[str, Any]:
    """Record 👍/👎 for an answer of the KB `kb`; a 👎 puts the question in that KB's miss log for review."""
    service = kbs.get(body.kb)
    require_text(body.message, "message", service.settings.max_message_chars)
    if not body.helpful:
        kbs.require_ready(service)
    feedback_id, miss_id = await service.feedback(body.message, helpful=body.helpful, faq_id=body.faq_id,
                                                  session_id=body.session_id, channel=body.channel)
    return {"status": "success", "feedback_id": feedback_id, "miss_id": miss_id}


@router.get("/suggestions", tags=["chat"])
def suggestions(kbs: Kbs, kb: str | None = None,
                limit: Annotated[int, Query(ge=1, le=MAX_SUGGESTIONS)] = 6) -> dict[str, Any]:
    """Welcome suggestions (猜你想问): the most answered questions of the last 7 days, else the KB's first FAQs."""
    service = kbs.get(kb)
    kbs.require_ready(service)
    found = service.suggestions(limit)
    return {"suggestions": [{"faq_id": s.faq_id, "question": s.question, "source": s.source} for s in found]}


@router.post("/similarity", tags=["similarity"])
def similarity(body: SimilarityRequest, service: Service) -> dict[str, Any]:
    """Semantic similarity of two sentences (raw cosine and calibrated percent), or of a batch of pairs."""
    limit = service.settings.max_message_chars
    if body.pairs is not None:
        pairs = [(require_text(a, f"pairs[{i}][0]", limit), require_text(b, f"pairs[{i}][1]", limit))
                 for i, (a, b) in enumerate(body.pairs)]
        scores = service.similarity(pairs)
        return {"status": "success", "results": [
            {"sentence_a": a, "sentence_b": b, "similarity": round(cos, 4), "percent": pct, "status": "success"}
            for (a, b), (cos, pct) in zip(pairs, scores, strict=True)
        ]}
    if body.sentence_a is None or body.sentence_b is None:
        raise InvalidInputError("give `sentence_a` and `sentence_b`, or `pairs`")
    a = require_text(body.sentence_a, "sentence_a", limit)
    b = require_text(body.sentence_b, "sentence_b", limit)
    ((cos, pct),) = service.similarity([(a, b)])
    return {"sentence_a": a, "sentence_b": b, "similarity": round(cos, 4), "percent": pct, "status": "success"}


@router.post("/v1/embeddings", tags=["similarity"])
def embeddings(body: EmbeddingsRequest, service: Service) -> dict[str, Any]:
    """OpenAI-compatible embeddings of the configured encoder (L2-normalised)."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise InvalidInputError("input: give at least one text")
    if len(texts) > 256:
        raise InvalidInputError("input: at most 256 texts per request", code="batch_too_large")
    limit = service.settings.max_message_chars
    texts = [require_text(t, f"input[{i}]", limit) for i, t in enumerate(texts)]
    encoder = service.encoder
    clean = [sanitize(t) for t in texts]
    # Queries go the way /chat's do (exact matches, the cache, the encoder worker's queue and batches).
    vectors = service.encode_queries(clean) if body.input_type == "query" else encoder.encode_passages(clean)
    tokens = sum(len(t) for t in clean)  # characters as a cheap, deterministic usage figure
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
        "model": encoder.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@router.get("/healthz", tags=["ops"])
def healthz() -> dict[str, str]:
    """The process is up (says nothing about the index)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"])
def readyz(service: Service, kbs: Kbs, request: Request) -> Response:
    """200 once the index is loaded (with its version), 503 before or if loading failed. With several
    KBs: 200 once none is still loading and one answers; `kbs` names each, and why one is not loaded."""
    answering, state = kbs.readiness()
    if len(kbs) > 1 and answering:
        service = next(s for s in kbs if s.ready)
    if not service.ready or not answering:
        response = error_response(service.not_ready())
        if len(kbs) > 1:
            body = json.loads(bytes(response.body))
            response = JSONResponse({**body, "kbs": state}, status_code=response.status_code, headers={
                k: v for k, v in response.headers.items() if k.lower() == "retry-after"})
        return response
    index = service.index
    shared = getattr(request.app.state, "shared_state", None)
    failed = [name for name, s in state.items() if not s["ready"]]
    return JSONResponse({"status": "ready", "index_version": index.version,
                         "faqs": index.meta.n_faqs, "kbs": state, "kbs_failed": failed,
                         "vectors": index.meta.n_vectors, "encoder": index.meta.encoder_name,
                         "degraded": bool(shared and shared.degraded),
                         "shared_state": shared.status() if shared else None})


@router.get("/metrics", tags=["ops"])
def metrics(request: Request, service: Service) -> Response:
    """Prometheus metrics of this process."""
    m: Metrics = request.app.state.metrics
    m.ready.set(1 if service.ready else 0)
    m.index_info.clear()
    if service.ready:
        m.index_info.labels(service.index.version).set(1)
    return Response(m.render(), media_type="text/plain; version=0.0.4")
