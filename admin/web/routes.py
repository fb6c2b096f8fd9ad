"""Admin HTTP API under /admin: misses, resolve, reload, index, lint, stats (docs/admin.md).

Every route needs `Authorization: Bearer $FAQBOT_ADMIN_TOKEN` (compared in constant time), or a
token of `FAQBOT_KB_ADMIN_TOKENS`, which sees only its own KB (another KB's: 403, its misses: 404).
With several KBs a route takes `?kb=NAME` (POST /admin/reload: `{"kb": NAME}`); without it, the
token's own KB or the first. With no token configured the routes answer exactly like a path that
does not exist (404), so a public deployment shows no admin surface at all. Authentication runs before a request body is
even read: an unauthorised call gets 401/404 whatever it sends, and changes nothing.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from admin.curation.lint import lint_kb
from admin.curation.misses import MissFilter, Resolution, VectorCache, cluster_misses, export, fetch_misses, resolve
from admin.curation.rebuild import KbWatcher, Rebuilder
from admin.curation.stats import compute_stats
from bot.errors import BadRequestError, ForbiddenError, UnauthorizedError
from bot.kbs import KnowledgeBases
from bot.service import FaqService
from faq import KBError, load_kb
from faq.errors import NotFoundError
from faq.golden import golden_file
from index.faq_index import live_version, published_meta


@dataclass
class AdminState:
    """What the admin routes work on: one KB's service and rebuilder (one lock per KB index), and the
    cached vectors; `kbs`/`rebuilders` hold every KB's, `for_kb` picks one."""

    service: FaqService
    rebuilder: Rebuilder
    vectors: VectorCache
    kbs: KnowledgeBases | None = None
    rebuilders: dict[str, Rebuilder] = field(default_factory=dict)

    def for_kb(self, name: str) -> AdminState:
        """The same state for the KB `name` (UnknownKbError, 404, for one not served)."""
        if self.kbs is None:
            return self
        service = self.kbs.get(name)
        return AdminState(service, self.rebuilders[service.kb_name], self.vectors, self.kbs, self.rebuilders)


@dataclass(frozen=True)
class AdminAccess:
    """Who is asking: `kb` None = every KB (FAQBOT_ADMIN_TOKEN), else the one KB a KB token sees."""

    kb: str | None


def require_admin(request: Request) -> AdminAccess:
    """404 when the admin API is off, 401 without a right Bearer token; which KBs the token sees."""
    settings = request.app.state.settings
    token, kb_tokens = settings.admin_token, settings.kb_admin_tokens
    if token is None and not kb_tokens:
        raise NotFoundError("Not Found")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    offered = given.strip().encode("utf-8")
    if scheme.lower() == "bearer":
        # Every token is compared (constant time each), so the time taken does not say which one matched.
        matches = [name for name, secret in [(None, token), *kb_tokens.items()] if secret is not None
                   and hmac.compare_digest(offered, secret.get_secret_value().encode("utf-8"))]
        if matches:
            return AdminAccess(matches[0])
    raise UnauthorizedError("missing or wrong admin token (send `Authorization: Bearer <token>`)",
                            challenge='Bearer realm="faqbot-admin"')


Access = Annotated[AdminAccess, Depends(require_admin)]
KbParam = Annotated[str | None, Query(max_length=64, description="Which KB (default: the token's own, else the first)")]


def scoped(request: Request, access: AdminAccess, kb: str | None) -> AdminState:
    """The admin state of KB `kb` as this token may see it: 403 for another KB than a KB token's own."""
    state: AdminState = request.app.state.admin
    name = kb or access.kb or state.service.kb_name
    if access.kb is not None and name != access.kb:
        raise ForbiddenError(f"this token sees only the knowledge base {access.kb!r}", code="kb_forbidden")
    return state.for_kb(name)


def _admin(request: Request, access: Access, kb: KbParam = None) -> AdminState:
    return scoped(request, access, kb)


Admin = Annotated[AdminState, Depends(_admin)]
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

Body = TypeVar("Body", bound=BaseModel)


def json_body(model: type[Body]) -> Callable[[Request], Awaitable[Body]]:
    """A dependency that reads the body only after `require_admin` passed (FastAPI parses declared
    bodies before any dependency runs, which would answer an unauthenticated caller with a 400)."""

    async def read(request: Request) -> Body:
        raw = await request.body()
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise BadRequestError("the request body is not valid JSON", code="invalid_json") from exc
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc

    return read


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": model.model_json_schema()}}}}


StatusParam = Annotated[str, Query(pattern="^(open|resolved|ignored|all)$", description="open, resolved, ignored or all")]
SinceParam = Annotated[str | None, Query(description="From this day (YYYY-MM-DD) or ISO time, UTC unless it has an offset")]
UntilParam = Annotated[str | None, Query(description="Up to and including this day, or before this ISO time")]


@router.get("/misses")
def list_misses(admin: Admin, status: StatusParam = "open", channel: str | None = None, since: SinceParam = None,
                until: UntilParam = None, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                offset: Annotated[int, Query(ge=0)] = 0,
                threshold: Annotated[float | None, Query(ge=0.0, le=1.0,
                                                         description="Cluster cosine (default: the answer threshold)")] = None,
                ) -> dict[str, Any]:
    """Unanswered questions grouped into clusters of the same question, most frequent first."""
    admin.service.require_ready()
    filters = MissFilter.parse(status, channel, since, until)
    result = cluster_misses(admin.service, fetch_misses(admin.service, filters), cache=admin.vectors,
                            threshold=threshold)
    result["clusters"] = result["clusters"][offset : offset + limit]
    return {"status": "success", "filters": filters.as_dict(), "offset": offset, "limit": limit, **result}


@router.get("/misses/export")
def export_misses(admin: Admin, export_format: Annotated[Literal["csv", "jsonl"], Query(alias="format")] = "csv",
                  kind: Annotated[Literal["clusters", "raw", "training"], Query()] = "clusters",
                  status: StatusParam = "open", channel: str | None = None, since: SinceParam = None,
                  until: UntilParam = None) -> Response:
    """Download misses as CSV/JSONL: clusters, one row per miss (`raw`), or training pairs (`training`)."""
    admin.service.require_ready()
    body, media_type = export(admin.service, MissFilter.parse(status, channel, since, until), fmt=export_format, kind=kind,
                              cache=admin.vectors)
    filename = f"faqbot-{'training' if kind == 'training' else 'misses'}-{kind}.{export_format}"
    return Response(body, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/misses/{miss_id}")
def get_miss(admin: Admin, miss_id: int) -> dict[str, Any]:
    """One logged miss with everything recorded about it."""
    miss = admin.service.store.get_miss(miss_id)
    if miss is None or miss.get("kb") != admin.service.kb_name:
        raise NotFoundError(f"no miss with id {miss_id}", code="miss_not_found")
    return {"status": "success", "miss": miss}


class ResolveRequest(BaseModel):
    """How to resolve a miss (and, with `miss_ids`, the rest of its cluster)."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["attach", "new", "ignore", "reopen"] = Field(..., description="attach | new | ignore | reopen")
    faq_id: str | None = Field(None, max_length=64, description="attach: the FAQ to add paraphrases to; new: the new id")
    answer: str | None = Field(None, max_length=20_000, description="new: the answer text (required)")
    question: str | None = Field(None, max_length=500, description="new: the canonical question (default: the miss)")
    file: str | None = Field(None, max_length=500, description="new: KB file, relative to the KB directory "
                             "(default: the file of the nearest FAQ)")
    tags: list[str] = Field(default_factory=list, max_length=32, description="new: tags")
    miss_ids: list[int] = Field(default_factory=list, max_length=10_000,
                                description="More misses resolved the same way (e.g. the cluster's miss_ids)")
    paraphrases: list[str] | None = Field(None, max_length=500, description="The texts to write "
                                          "(default: every distinct question among the misses)")
    reload: bool = Field(True, description="Rebuild and swap the index after editing the KB")
    force: bool = Field(False, description="Publish even if golden accuracy drops")


@router.post("/misses/{miss_id}/resolve", openapi_extra=_body_schema(ResolveRequest))
def resolve_miss(admin: Admin, miss_id: int,
                 body: Annotated[ResolveRequest, Depends(json_body(ResolveRequest))]) -> dict[str, Any]:
    """Attach the miss(es) to an FAQ as paraphrases, make a new FAQ, ignore, or reopen; then reload."""
    resolution = Resolution(action=body.action, faq_id=body.faq_id, answer=body.answer, question=body.question,
                            file=body.file, tags=tuple(body.tags), miss_ids=tuple(body.miss_ids),
                            paraphrases=tuple(body.paraphrases) if body.paraphrases is not None else None,
                            reload=body.reload, force=body.force)
    return resolve(admin.service, admin.rebuilder, miss_id, resolution)


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kb: str | None = Field(None, max_length=64, description="The KB to rebuild (default: the token's own, else the first)")
    force: bool = Field(False, description="Publish even if golden accuracy drops")
    wait: bool = Field(True, description="If another rebuild is running, wait for it (else 409 at once)")


@router.post("/reload", openapi_extra=_body_schema(ReloadRequest))
def reload(request: Request, access: Access, body: Annotated[ReloadRequest, Depends(json_body(ReloadRequest))],
           kb: KbParam = None) -> dict[str, Any]:
    """Rebuild one KB from its files on disk while the old index answers; publish and swap unless the
    KB is broken or the golden questions got worse. Answers once the new version is live."""
    admin = scoped(request, access, body.kb or kb)
    outcome = admin.rebuilder.rebuild(force=body.force, wait=body.wait, reason="api")
    error = outcome.error()
    if error is not None:
        raise error
    return {"status": "success", "kb": admin.service.kb_name, **outcome.as_dict()}


@router.get("/index")
def index_info(admin: Admin, access: Access) -> dict[str, Any]:
    """The live index version (here and as published for every worker) and the last rebuild."""
    service = admin.service
    settings = service.settings
    meta = published_meta(settings.layout)
    try:
        kb_hash: str | None = load_kb(settings.kb).content_hash
        kb_problems = 0
    except KBError as exc:
        kb_hash, kb_problems = None, len(exc.problems)
    live = service.index if service.ready else None
    rebuilder = admin.rebuilder
    return {
        "status": "success",
        "kb": service.kb_name,
        # The KBs this token may see (the admin page's picker): a KB token sees only its own.
        "kbs": [access.kb] if access.kb is not None else (admin.kbs.names if admin.kbs is not None else [service.kb_name]),
        "version": live.version if live else None,
        "published_version": live_version(settings.layout),
        "built_at": live.meta.built_at if live else None,
        "build_seconds": live.meta.build_seconds if live else None,
        "faqs": live.meta.n_faqs if live else None,
        "vectors": live.meta.n_vectors if live else None,
        "kb_hash": live.meta.kb_hash if live else None,
        "kb_path": str(Path(settings.kb).resolve()),
        "kb_changed": None if kb_hash is None or meta is None else kb_hash != meta["kb"]["hash"],
        "kb_problems": kb_problems,
        "golden_file": str(golden_file(settings.kb)) if golden_file(settings.kb).is_file() else None,
        "encoder": {"name": live.meta.encoder_name, "fingerprint": live.meta.fingerprint} if live else None,
        "threshold": round(service.matcher.default_threshold, 4) if live else None,
        # The line the bot answers at by default: a confidence 0-100 when set, else `threshold` (a cosine) decides.
        "min_confidence": service.matcher.min_confidence if live else None,
        "calibration_source": live.calibration.source if live else None,
        "watch_kb": settings.watch_kb,
        "load_error": service.load_error if not live else None,
        "rebuild": {"running": rebuilder.running, "last": rebuilder.last.as_dict() if rebuilder.last else None},
    }


@router.get("/faqs")
def faqs(admin: Admin) -> dict[str, Any]:
    """Every FAQ of the live index (id, question, tags, file): what a miss can be attached to."""
    admin.service.require_ready()
    return {"status": "success", "faqs": [
        {"faq_id": f.id, "question": f.question, "tags": list(f.tags), "file": str(f.source or "")}
        for f in admin.service.index.faqs
    ]}


@router.get("/lint")
def lint(admin: Admin, min_similarity: Annotated[float | None, Query(ge=0.0, le=1.0)] = None) -> dict[str, Any]:
    """Exact duplicates, FAQ pairs the bot may confuse, paraphrases closer to another FAQ than to their own."""
    service = admin.service
    kb = load_kb(service.settings.kb)  # a broken KB: KBError, 422 invalid_kb with every problem
    live = service.index if service.ready else None
    threshold = service.matcher.default_threshold if live else service.calibration.threshold
    report = lint_kb(kb, service.encoder, answer_threshold=threshold, min_similarity=min_similarity,
                     calibration=service.calibration, live=live, tz=service.settings.zone)
    return {"status": "success", **report}


@router.get("/stats")
def stats(admin: Admin, days: Annotated[int, Query(ge=1, le=366)] = 14,
          tz: Annotated[str, Query(max_length=64, description="IANA time zone, e.g. Asia/Shanghai")] = "UTC",
          top: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, Any]:
    """Questions and answer rate per day, top matched FAQs, top open misses, thumbs-down per FAQ, of the KB
    picked (`?kb=`; a KB token's own)."""
    return {"status": "success", **compute_stats(admin.service, days=days, tz=tz, top=top, cache=admin.vectors)}


def install_admin(app: FastAPI) -> None:
    """Add the admin API to a `bot.app.create_app` app (and the KB watcher when `watch_kb` is on)."""
    kbs: KnowledgeBases = app.state.kbs
    rebuilders = {s.kb_name: Rebuilder(s, on_done=app.state.metrics.observe_rebuild) for s in kbs}
    first = kbs.first
    state = AdminState(service=first, rebuilder=rebuilders[first.kb_name], vectors=VectorCache(), kbs=kbs,
                       rebuilders=rebuilders)
    app.state.admin = state
    app.include_router(router)
    if first.settings.watch_kb:
        for rebuilder in rebuilders.values():
            app.state.background_tasks.append(KbWatcher(rebuilder).start)
