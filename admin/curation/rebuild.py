"""Rebuild the index without downtime, behind a regression gate, one rebuild at a time.

A rebuild loads and validates the KB, encodes it into a new in-memory index while the old one
keeps answering, runs the golden questions (`tests.yaml` beside the KB) against both, and only
then publishes the new version (atomic CURRENT pointer) and swaps it in. Other workers follow
CURRENT (bot.app polls it), so the whole server moves to the new version within seconds.
The golden questions are read by faq.golden, the same reader `faqbot eval` uses.

Rebuilds are serialised across threads *and* processes by an index.filelock.FileLock on the data
dir's rebuild lock (`<data_dir>/index/.rebuild.lock`):
two workers' reloads never interleave. The second caller waits, then usually finds the KB already
built ("unchanged"), or is told a rebuild is running when it asked not to wait.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.service import FaqService, matcher_for
from faq import KBError, KnowledgeBase, load_kb
from faq.errors import ConflictError, FaqbotError, InvalidInputError
from faq.golden import GoldenCase, golden_file, load_golden
from faq.loader import kb_files
from index.datadir import DataDir
from index.faq_index import FaqIndex, build_index, live_version, published_meta
from index.filelock import FileLock, LockTimeoutError

log = logging.getLogger("faqbot")

RELOAD_WAIT_SECONDS = 300.0
WATCH_INTERVAL_SECONDS = 2.0

def rebuild_lock(data_dir: Path | DataDir) -> FileLock:
    """One rebuild at a time per KB index (a data dir path: the `default` KB's)."""
    return FileLock(DataDir.of(data_dir).rebuild_lock)


def edit_lock(data_dir: Path) -> FileLock:
    """Held around every KB file edit so two admins never both edit the same old file."""
    return FileLock(DataDir(data_dir).kb_edit_lock)


# --- the golden-question gate ------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldenResult:
    query: str
    expected: str | None
    got: str | None
    percent: float | None
    line: int

    @property
    def correct(self) -> bool:
        return self.got == self.expected


def run_golden(cases: Sequence[GoldenCase], index: FaqIndex, service: FaqService,
               vectors: Any = None) -> list[GoldenResult]:
    """Ask every golden question of `index` the way /chat would (same thresholds and ambiguity rule)."""
    if not cases:
        return []
    if vectors is None:
        vectors = service.encode_queries([c.query for c in cases])
    decisions = matcher_for(index, service.settings).match_vectors(vectors, [c.query for c in cases], top_k=3)
    return [
        GoldenResult(c.query, c.expected, d.faq.id if d.matched and d.faq else None,
                     d.best.percent if d.best else None, c.line)
        for c, d in zip(cases, decisions, strict=True)
    ]


@dataclass
class GateReport:
    """The golden questions on the live and the candidate index; `passed` unless accuracy dropped."""

    file: str
    total: int
    new_correct: int
    live_correct: int | None
    broke: list[dict[str, object]] = field(default_factory=list)
    fixed: list[dict[str, object]] = field(default_factory=list)
    failing: list[dict[str, object]] = field(default_factory=list)
    unknown_expected: list[str] = field(default_factory=list)
    forced: bool = False

    @property
    def new_accuracy(self) -> float:
        return round(self.new_correct / self.total, 4) if self.total else 1.0

    @property
    def live_accuracy(self) -> float | None:
        if self.live_correct is None:
            return None
        return round(self.live_correct / self.total, 4) if self.total else 1.0

    @property
    def passed(self) -> bool:
        return self.live_correct is None or self.new_correct >= self.live_correct

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "total": self.total, "new_correct": self.new_correct,
                "new_accuracy": self.new_accuracy, "live_correct": self.live_correct,
                "live_accuracy": self.live_accuracy, "passed": self.passed, "forced": self.forced,
                "broke": self.broke, "fixed": self.fixed, "failing": self.failing,
                "unknown_expected": self.unknown_expected}


def _case_dict(new: GoldenResult, live: GoldenResult | None) -> dict[str, object]:
    return {"query": new.query, "expected": new.expected, "got": new.got, "percent": new.percent,
            "live_got": live.got if live else None, "line": new.line}


def gate(cases: Sequence[GoldenCase], candidate: FaqIndex, live: FaqIndex | None, service: FaqService,
         file: str) -> GateReport:
    """Compare the candidate with the live index on the golden questions (one encoding for both)."""
    vectors = service.encode_queries([c.query for c in cases]) if cases else None
    new_results = run_golden(cases, candidate, service, vectors)
    live_results = run_golden(cases, live, service, vectors) if live is not None else None
    report = GateReport(file=file, total=len(cases), new_correct=sum(r.correct for r in new_results),
                        live_correct=sum(r.correct for r in live_results) if live_results is not None else None)
    known = candidate.faq_by_id
    report.unknown_expected = sorted({c.expected for c in cases if c.expected and c.expected not in known})
    for i, new in enumerate(new_results):
        old = live_results[i] if live_results is not None else None
        if not new.correct:
            report.failing.append(_case_dict(new, old))
        if old is not None and old.correct and not new.correct:
            report.broke.append(_case_dict(new, old))
        if old is not None and not old.correct and new.correct:
            report.fixed.append(_case_dict(new, old))
    return report


# --- rebuilding --------------------------------------------------------------------------------------


@dataclass
class RebuildOutcome:
    """What a reload did. status: published | unchanged | invalid_kb | gate_failed | busy."""

    status: str
    live_version: str | None
    previous_version: str | None = None
    candidate_version: str | None = None
    problems: list[dict[str, object]] = field(default_factory=list)
    gate: GateReport | None = None
    seconds: float = 0.0
    reason: str = "api"
    message: str = ""
    finished_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.status in ("published", "unchanged")

    def as_dict(self) -> dict[str, object]:
        return {"status": self.status, "ok": self.ok, "message": self.message, "version": self.live_version,
                "previous_version": self.previous_version, "candidate_version": self.candidate_version,
                "problems": self.problems, "gate": self.gate.as_dict() if self.gate else None,
                "seconds": round(self.seconds, 3), "reason": self.reason,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.finished_at))}

    def error(self) -> FaqbotError | None:
        """A reload that did not publish, as the error a caller who asked for it gets (None when ok)."""
        if self.ok:
            return None
        if self.status == "invalid_kb":
            return InvalidInputError(self.message, code="invalid_kb", details=self.as_dict())
        code = "rebuild_running" if self.status == "busy" else self.status  # gate_failed
        return ConflictError(self.message, code=code, details=self.as_dict())


class Rebuilder:
    """Builds, gates, publishes and swaps; one per service (the admin routes and the KB watcher share it)."""

    def __init__(self, service: FaqService, *, on_done: Callable[[str, float], None] | None = None) -> None:
        self.service = service
        self.settings = service.settings
        self.on_done = on_done  # e.g. Metrics.observe_rebuild: every outcome and its duration
        self.lock = rebuild_lock(self.settings.layout)
        self.last: RebuildOutcome | None = None
        self._running = threading.Event()

    @property
    def running(self) -> bool:
        return self._running.is_set() or self.lock.held_elsewhere

    def rebuild(self, *, force: bool = False, wait: bool = True, timeout: float = RELOAD_WAIT_SECONDS,
                reason: str = "api") -> RebuildOutcome:
        """Rebuild from the KB on disk; publish unless the KB is broken or the golden gate fails (and not `force`)."""
        started = time.perf_counter()
        try:
            with self.lock.hold(timeout if wait else 0):
                self._running.set()
                try:
                    outcome = self._rebuild_locked(force=force, reason=reason)
                finally:
                    self._running.clear()
        except LockTimeoutError:
            outcome = RebuildOutcome("busy", self._live_version(), reason=reason,
                                     message="another rebuild is running; try again when it finishes")
        outcome.seconds = time.perf_counter() - started
        if outcome.status != "busy":
            self.last = outcome
        if self.on_done is not None:
            self.on_done(outcome.status, outcome.seconds)
        log.info("rebuild (%s): %s, live %s, %.1fs", reason, outcome.status, outcome.live_version, outcome.seconds)
        return outcome

    def _live_version(self) -> str | None:
        return self.service.index.version if self.service.ready else live_version(self.settings.layout)

    def _live_index(self) -> FaqIndex | None:
        """The published index as this process serves it (caught up with CURRENT first)."""
        try:
            self.service.refresh_if_published()
        except Exception as exc:  # an unreadable published version: compare against what we serve
            log.warning("could not load the published index: %s", exc)
        return self.service.index if self.service.ready else None

    def _rebuild_locked(self, *, force: bool, reason: str) -> RebuildOutcome:
        service = self.service
        previous = self._live_version()
        try:
            kb = load_kb(self.settings.kb)
        except KBError as exc:
            return RebuildOutcome("invalid_kb", previous, previous, problems=[p.as_dict() for p in exc.problems],
                                  reason=reason, message=f"{len(exc.problems)} problem(s) in the knowledge base; "
                                  f"still serving {previous}")
        meta = published_meta(self.settings.layout)
        encoder = service.encoder
        if (meta and meta.get("kb", {}).get("hash") == kb.content_hash
                and meta.get("encoder", {}).get("fingerprint") == encoder.fingerprint):
            live = self._live_index()
            version = live.version if live else meta.get("version")
            return RebuildOutcome("unchanged", version, previous, reason=reason,
                                  message="the live index was already built from this KB")
        live = self._live_index()
        calibration = live.calibration if live is not None and live.meta.fingerprint == encoder.fingerprint else None
        candidate = build_index(kb, encoder, kb_path=str(Path(self.settings.kb).resolve()), calibration=calibration)
        report = self._gate(kb, candidate, live)
        if isinstance(report, list):
            return RebuildOutcome("invalid_kb", previous, previous, candidate.version, problems=report, reason=reason,
                                  message=f"the golden questions file has problems; still serving {previous}")
        if report is not None and not report.passed:
            if not force:
                return RebuildOutcome(
                    "gate_failed", previous, previous, candidate.version, gate=report, reason=reason,
                    message=f"golden accuracy would drop from {report.live_accuracy} to {report.new_accuracy} "
                            f"({len(report.broke)} question(s) broke); still serving {previous}. "
                            "Fix the KB or reload with force=true.")
            report.forced = True
        service.publish_and_use(candidate)
        return RebuildOutcome("published", candidate.version, previous, candidate.version, gate=report, reason=reason,
                              message=f"now serving {candidate.version}")

    def _gate(self, kb: KnowledgeBase, candidate: FaqIndex,
              live: FaqIndex | None) -> GateReport | list[dict[str, object]] | None:
        path = golden_file(self.settings.kb)
        if not path.is_file():
            return None
        try:
            cases = load_golden(path)
        except KBError as exc:
            return [p.as_dict() for p in exc.problems]
        return gate(cases, candidate, live, self.service, str(path))


# --- watching the KB ---------------------------------------------------------------------------------


def kb_signature(kb_path: Path) -> tuple[tuple[str, int, int], ...]:
    """(file, mtime_ns, size) of every KB file and the golden file: changes when anyone saves one."""
    kb_path = Path(kb_path)
    files = kb_files(kb_path) if kb_path.exists() else []
    golden = golden_file(kb_path)
    signature = []
    for path in [*files, golden]:
        with contextlib.suppress(OSError):
            stat = path.stat()
            signature.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(signature)


class KbWatcher:
    """Polls the KB files and rebuilds (gated, like a reload) once a change has settled."""

    def __init__(self, rebuilder: Rebuilder, interval: float = WATCH_INTERVAL_SECONDS) -> None:
        self.rebuilder = rebuilder
        self.interval = interval

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="faqbot-kb-watch", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        service = self.rebuilder.service
        while not service.ready:  # watch from the first loaded index on, not while it is still building
            if stop.wait(self.interval):
                return
        kb_path = Path(self.rebuilder.settings.kb)
        seen = kb_signature(kb_path)
        while not stop.wait(self.interval):
            current = kb_signature(kb_path)
            if current == seen:
                continue
            # An editor may still be writing: rebuild once two polls agree.
            if stop.wait(self.interval):
                return
            settled = kb_signature(kb_path)
            if settled != current:
                continue
            seen = settled
            try:
                outcome = self.rebuilder.rebuild(reason="watch")
            except Exception:  # the watcher must survive anything one rebuild does
                log.exception("KB watcher: rebuild failed")
                continue
            if outcome.status == "invalid_kb":
                for problem in outcome.problems:
                    log.error("KB watcher: %s:%s: %s: %s", problem["file"], problem["line"], problem["field"],
                              problem["message"])
            elif outcome.status == "gate_failed" and outcome.gate is not None:
                for case in outcome.gate.broke:
                    log.error("KB watcher: golden question broke: %s (expected %s, got %s)", case["query"],
                              case["expected"], case["got"])
