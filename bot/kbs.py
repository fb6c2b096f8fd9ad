"""Several knowledge bases in one process (`--kb NAME=PATH`, repeatable): every KB's `FaqService` by name.

Each KB has its own index, calibration, threshold, reload and golden gate; they share one encoder,
one database, one query cache and one encoder worker (the first KB's service owns them). A KB that
fails to load does not stop the others: /readyz names it and /chat for it answers 503
`kb_unavailable`. A request that names no KB is answered by the first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from bot.service import FaqService
from bot.settings import Settings
from bot.store import Store
from faq.errors import NotFoundError, UnavailableError
from index.encoders import Encoder

log = logging.getLogger("faqbot")


class UnknownKbError(NotFoundError):
    """A request named a KB this deployment does not serve."""

    code = "unknown_kb"


class KbUnavailableError(UnavailableError):
    """The KB exists but its index could not be loaded at start (the other KBs answer)."""

    code = "kb_unavailable"
    retry_after = 30.0


class KnowledgeBases:
    """The KBs of one deployment, in the order configured; the first is the default."""

    def __init__(self, services: dict[str, FaqService]) -> None:
        if not services:
            raise ValueError("a deployment serves at least one KB")
        self.services = services

    @classmethod
    def from_settings(cls, settings: Settings, *, encoder: Encoder | None = None, store: Store | None = None,
                      service: FaqService | None = None) -> KnowledgeBases:
        """One service per configured KB (a given `service` is the only one: tests, the CLI)."""
        if service is not None:
            return cls({service.kb_name: service})
        names = list(settings.kb_paths)
        first = FaqService(settings.for_kb(names[0]), encoder=encoder, store=store)
        services = {names[0]: first}
        for name in names[1:]:
            services[name] = FaqService(settings.for_kb(name), shares=first)
        return cls(services)

    @property
    def first(self) -> FaqService:
        return next(iter(self.services.values()))

    @property
    def names(self) -> list[str]:
        return list(self.services)

    def __iter__(self) -> Iterator[FaqService]:
        return iter(self.services.values())

    def __len__(self) -> int:
        return len(self.services)

    def get(self, name: str | None) -> FaqService:
        """The service of KB `name` (None: the first); UnknownKbError (404) for a name not served."""
        if name is None:
            return self.first
        service = self.services.get(name)
        if service is None:
            raise UnknownKbError(f"no knowledge base named {name!r} (this deployment serves: {', '.join(self.names)})")
        return service

    def require_ready(self, service: FaqService) -> None:
        """503 until `service` answers: `kb_unavailable` for a KB that failed while others serve, else not_ready."""
        if service.ready:
            return
        if service.load_error is not None and len(self) > 1:
            raise KbUnavailableError(f"knowledge base {service.kb_name!r} is not loaded: {service.load_error}")
        service.require_ready()

    def start_all(self) -> None:
        """Load every KB's index (building where needed); one failing is kept on its service, never fatal."""
        for service in self:
            service.start()
            if service.load_error is not None:
                log.error("knowledge base %r not loaded: %s", service.kb_name, service.load_error)

    def refresh_all(self) -> list[str]:
        """Follow every KB's published version; the names of those that swapped (a failing one raises after the rest)."""
        swapped: list[str] = []
        failure: Exception | None = None
        for service in self:
            try:
                if service.refresh_if_published():
                    swapped.append(service.kb_name)
            except Exception as exc:  # one bad KB must not keep the others from following CURRENT
                failure = exc
                log.error("could not load the published index of %r: %s", service.kb_name, exc)
        if failure is not None:
            raise failure
        return swapped

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(answering?, per-KB state): ready when none is still loading and at least one loaded."""
        state: dict[str, Any] = {}
        for name, service in self.services.items():
            if service.ready:
                index = service.index
                state[name] = {"ready": True, "index_version": index.version, "faqs": index.meta.n_faqs}
            else:
                state[name] = {"ready": False, "error": service.load_error}
        loading = any(not s["ready"] and s["error"] is None for s in state.values())
        return (not loading and any(s["ready"] for s in state.values())), state
