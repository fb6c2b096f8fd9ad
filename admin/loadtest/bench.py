"""`faqbot bench`: how fast /chat is on this machine, against the bare encoder and a naive server.

One run, one machine, loopback only, bounded in time (about 13 phases × `--seconds` + the soak):

1. the bare encoder, in a child process with the configured backend and threads: ms per single
   query, texts/s in batches of 1..32 (the best of them is the encoder's ceiling);
2. `faqbot serve` as it is configured (micro-batching, cache, exact match) on a temporary copy of
   the index, and the same server as a naive baseline (`max_batch=1`, `cache_size=0`,
   `exact_match=false`: encode per request, no batching, no cache), one after the other;
3. against each: /chat at concurrency 1, 16 and 64 on a stream of unique questions (no cache can
   help) and on a Zipf-distributed stream drawn from a fixed pool (what customer traffic looks
   like), then a soak at concurrency 64 (Zipf) on the batched server; p50/p95/p99, req/s, errors, RSS,
   and what the server's own /metrics say per phase (batch sizes, encode and queue time, cache
   hit ratio) — the profile of where the time goes;
4. the issue #8 targets as ratios of figures from this one run.

The load generator speaks minimal HTTP/1.1 over keep-alive asyncio streams (a full HTTP client
would cost the shared CPU more than the server's own overhead that is being measured).
Benchmarks are commands that print figures, not timed tests (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from admin.loadtest.local_server import faqbot_server
from admin.loadtest.reference import run_reference
from bot.settings import Settings
from index.datadir import DataDir

CONCURRENCIES = (1, 16, 64)
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
ZIPF_POOL = 2000
ZIPF_EXPONENT = 1.1
NAIVE_ENV = {"FAQBOT_MAX_BATCH": "1", "FAQBOT_CACHE_SIZE": "0", "FAQBOT_EXACT_MATCH": "false"}

# Ways customers wrap a question; with a serial number every generated question is distinct
# (and has a distinct match key), the length of real chat messages (15-30 characters).
OPENERS = ("", "请问", "你好，", "您好，请问", "想问一下", "麻烦问下", "客服，", "在吗？")
CLOSERS = ("", "？", "呢", "啊", "，谢谢", "，急", "？在线等", "。")


def kb_questions(kb_path: Path) -> list[str]:
    from faq import load_kb

    return [text for _, text in load_kb(kb_path).texts()]


def file_questions(path: Path) -> list[str]:
    """The `query` of each line of a JSONL benchmark file (e.g. the LCQMC FAQ bench's queries.jsonl)."""
    questions = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                questions.append(str(json.loads(line)["query"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a JSON object with a \"query\": {exc}") from exc
    return questions


class QuestionStreams:
    """Endless question streams over the KB's own texts, or over given questions (deterministic for a seed).

    With `questions` (a benchmark's real user questions) the unique stream asks each of them once as
    written, then wrapped like KB texts with a serial number; the Zipf pool is those questions."""

    def __init__(self, kb_texts: Sequence[str], seed: int = 8, questions: Sequence[str] | None = None) -> None:
        from index.text import match_key

        if not kb_texts and not questions:
            raise ValueError("the KB has no questions to benchmark with")
        # distinct match keys: a question asked twice would be a cache hit in the "unique" stream
        first: dict[str, str] = {}
        for question in questions or ():
            first.setdefault(match_key(question), question)
        first.pop("", None)
        self.questions = list(first.values())
        self.kb_texts = [t.rstrip("？?。.!！") for t in (self.questions or kb_texts)]
        self.faq_texts = [t for t in kb_texts if t.strip()]  # asked verbatim: the exact-match path, no encoder
        self._exact_at = 0
        self.seed = seed
        self._serial = 0
        rng = random.Random(seed)
        pool = list(self.questions or kb_texts)  # the FAQ texts themselves are the most frequent questions of all
        while len(pool) < ZIPF_POOL:
            pool.append(f"{rng.choice(OPENERS)}{rng.choice(self.kb_texts)}{rng.choice(CLOSERS)}")
        pool = list(dict.fromkeys(pool))
        rng.shuffle(pool)
        self.zipf_pool = pool
        weights = [1.0 / (rank ** ZIPF_EXPONENT) for rank in range(1, len(pool) + 1)]
        total = sum(weights)
        self._cumulative = []
        running = 0.0
        for w in weights:
            running += w / total
            self._cumulative.append(running)
        self._rng = random.Random(seed + 1)

    def unique(self) -> str:
        """A question never produced before by this object (a serial number makes it distinct)."""
        self._serial += 1
        n = self._serial
        if n <= len(self.questions):
            return self.questions[n - 1]
        core = self.kb_texts[(n * 7919) % len(self.kb_texts)]
        return f"{OPENERS[n % len(OPENERS)]}{core}，订单{100000 + n}{CLOSERS[(n // 8) % len(CLOSERS)]}"

    def exact(self) -> str:
        """The KB's own texts in turn: /chat without the encoder (the server's own cost per request)."""
        self._exact_at += 1
        return self.faq_texts[(self._exact_at - 1) % len(self.faq_texts)]

    def zipf(self) -> str:
        import bisect

        return self.zipf_pool[min(bisect.bisect_left(self._cumulative, self._rng.random()), len(self.zipf_pool) - 1)]


# --- the bare encoder (a child process, so its threads and memory are its own) ------------------
def bare_encoder(encoder: str, threads: int, kb_path: Path, seconds: float, data_dir: Path,
                 questions: Path | None = None) -> dict[str, object]:
    """Encode-only figures: single-query latency and batched throughput on the bench's unique stream.

    `data_dir` is the configured one: `auto` finds (or makes, once) its ONNX export there, and a
    deployed fine-tuned model is what `auto`/`bundled` then mean, as for `faqbot serve`."""
    from bot.service import encoder_spec
    from index.encoders import load_encoder

    settings = Settings(encoder=encoder, encoder_threads=threads, kb=kb_path, data_dir=data_dir)
    model = load_encoder(encoder_spec(settings))
    streams = QuestionStreams(kb_questions(kb_path), questions=file_questions(questions) if questions else None)
    model.encode_queries([streams.unique() for _ in range(4)])  # warm both paths
    model.encode_queries([streams.unique()])
    single: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(single) < 20:
        text = streams.unique()
        started = time.perf_counter()
        model.encode_queries([text])
        single.append(time.perf_counter() - started)
    batched: dict[int, float] = {}
    for size in BATCH_SIZES:
        texts_done, spent = 0, 0.0
        deadline = time.perf_counter() + seconds / 2
        while time.perf_counter() < deadline or texts_done < 2 * size:
            batch = [streams.unique() for _ in range(size)]
            started = time.perf_counter()
            model.encode_queries(batch)
            spent += time.perf_counter() - started
            texts_done += size
        batched[size] = texts_done / spent
    best = max(batched, key=lambda b: batched[b])
    return {"encoder": encoder, "serving": model.name, "threads": threads, "single_ms_p50": statistics.median(single) * 1000,
            "single_ms_mean": statistics.fmean(single) * 1000, "batched": batched, "best_batch": best,
            "best_texts_per_s": batched[best], "rss_mb": _rss_mb(os.getpid())}


def run_bare(encoder: str, threads: int, kb_path: Path, seconds: float, data_dir: Path,
             questions: Path | None = None) -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, "-m", "admin.loadtest.bench", "--bare", encoder, str(threads), str(kb_path), str(seconds),
         str(data_dir), str(questions or "-")],
        capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2], timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bare encoder run failed: {proc.stderr[-2000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["batched"] = {int(k): v for k, v in data["batched"].items()}
    return data


# --- memory ---------------------------------------------------------------------------------------
def _proc_kb(pid: int, file: str, field: str) -> float:
    """One `Field:  N kB` figure of /proc/<pid>/<file>, in MB (0 when the process or the file is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb(pid: int) -> float:
    return _proc_kb(pid, "status", "VmRSS:")


def _pss_mb(pid: int) -> float:
    """Proportional set size: shared pages (the mmapped model, libraries) split between the processes using them."""
    return _proc_kb(pid, "smaps_rollup", "Pss:")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (uvicorn's worker processes), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


# --- a minimal keep-alive HTTP/1.1 client ---------------------------------------------------------
class LoopbackClient:
    """POST JSON over one keep-alive connection; a few µs of client CPU per request."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self._writer.write(head + body)
        header_block = await self._reader.readuntil(b"\r\n\r\n")
        lines = header_block.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self._reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, payload


@dataclass
class Phase:
    """One load phase against one server: what was asked, what came back."""

    server: str
    stream: str
    concurrency: int
    seconds: float
    requests: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    server_profile: dict[str, float] = field(default_factory=dict)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The value at share `q` (0..1) of an ascending list, nearest rank (0 for an empty list)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


async def _load(base: str, next_question: Iterator[str], concurrency: int, seconds: float,
                phase: Phase) -> None:
    from urllib.parse import urlsplit

    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    warmup = min(1.0, seconds / 5)
    started = time.perf_counter()
    measure_from, deadline = started + warmup, started + warmup + seconds
    latencies: list[float] = []

    async def worker() -> None:
        client = LoopbackClient(host, port)
        try:
            while (now := time.perf_counter()) < deadline:
                body = json.dumps({"message": next(next_question), "channel": "bench"}, ensure_ascii=False).encode()
                try:
                    status, _payload = await client.request("POST", "/chat", body)
                    kind = None if status == 200 else f"HTTP {status}"
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    kind = type(exc).__name__
                    await client.close()
                done = time.perf_counter()
                if now < measure_from:
                    continue
                if kind is None:
                    latencies.append(done - now)
                else:
                    phase.errors += 1
                    phase.error_kinds[kind] = phase.error_kinds.get(kind, 0) + 1
        finally:
            await client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = max(1e-9, time.perf_counter() - measure_from)
    latencies.sort()
    phase.requests = len(latencies) + phase.errors
    phase.rps = len(latencies) / elapsed
    phase.p50_ms, phase.p95_ms, phase.p99_ms = (percentile(latencies, q) * 1000 for q in (0.50, 0.95, 0.99))


def _scrape(base: str) -> dict[str, float]:
    """The server's hot-path counters from /metrics (sums and counts; deltas make a phase's profile)."""
    import httpx

    wanted = {
        "faqbot_encoder_batch_texts_sum": "batch_texts", "faqbot_encoder_batch_texts_count": "batches",
        "faqbot_encoder_batch_seconds_sum": "encode_s", "faqbot_encoder_queue_seconds_sum": "queue_s",
        'faqbot_query_vectors_total{source="encoder"}': "v_encoder", 'faqbot_query_vectors_total{source="cache"}': "v_cache",
        'faqbot_query_vectors_total{source="exact"}': "v_exact", "faqbot_encoder_overloaded_total": "overloaded",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    try:
        text = httpx.get(base + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return out
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


def _profile(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    vectors = delta["v_encoder"] + delta["v_cache"] + delta["v_exact"]
    batches = delta["batches"]
    return {
        "mean_batch": delta["batch_texts"] / batches if batches else 0.0,
        "encode_ms_per_batch": 1000 * delta["encode_s"] / batches if batches else 0.0,
        "queue_ms_per_batch": 1000 * delta["queue_s"] / batches if batches else 0.0,
        "cache_hit_ratio": (delta["v_cache"] + delta["v_exact"]) / vectors if vectors else 0.0,
        "overloaded": delta["overloaded"],
    }


def run_phase(base: str, server: str, stream: str, source: QuestionStreams, concurrency: int,
              seconds: float, profile: bool = True) -> Phase:
    """One phase; `profile=False` when /metrics is per worker process (a scrape reaches any one of them)."""
    phase = Phase(server, stream, concurrency, seconds)
    questions = _endless({"unique": source.unique, "exact": source.exact}.get(stream, source.zipf))
    before = _scrape(base) if profile else {}
    asyncio.run(_load(base, questions, concurrency, seconds, phase))
    if profile:
        phase.server_profile = _profile(before, _scrape(base))
    return phase


def _endless(produce: Callable[[], str]) -> Iterator[str]:
    while True:
        yield produce()


# --- servers ----------------------------------------------------------------------------------------
@dataclass
class ServerRun:
    label: str
    phases: list[Phase]
    rss_mb: float | None
    workers: int
    pss_mb: float | None = None


def bench_server(label: str, base: str, pid: int | None, source: QuestionStreams, seconds: float,
                 soak_seconds: float = 0.0, workers: int = 1, say: Callable[[str], None] = print) -> ServerRun:
    phases = []
    for stream in ("unique", "zipf"):
        for concurrency in CONCURRENCIES:
            phase = run_phase(base, label, stream, source, concurrency, seconds, profile=workers == 1)
            say(_phase_line(phase))
            phases.append(phase)
    if source.faq_texts:  # the server without the encoder, for "where /chat c1 goes"
        phase = run_phase(base, label, "exact", source, 1, max(1.0, seconds / 2), profile=workers == 1)
        say(_phase_line(phase))
        phases.append(phase)
    if soak_seconds > 0:  # customer-like traffic (Zipf, cache on) at the highest concurrency, for longer
        phase = run_phase(base, label, "zipf", source, 64, soak_seconds, profile=workers == 1)
        phase.stream = "soak-zipf"
        say(_phase_line(phase))
        phases.append(phase)
    if pid is None:
        return ServerRun(label, phases, None, workers)
    tree = process_tree(pid)
    return ServerRun(label, phases, sum(_rss_mb(p) for p in tree), workers, sum(_pss_mb(p) for p in tree))


# --- report -------------------------------------------------------------------------------------------
HEADER = (f"{'server':<24}{'stream':<12}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'errors':>8}  server profile")


def _phase_line(p: Phase) -> str:
    prof = p.server_profile
    profile = "n/a (one /metrics per worker process)"
    if prof and not prof["mean_batch"]:
        profile = f"no encoder worker (encode per request), cache hits {100 * prof['cache_hit_ratio']:.0f}%"
    elif prof:
        profile = (f"batch {prof['mean_batch']:.1f}, encode {prof['encode_ms_per_batch']:.1f} ms/batch, "
                   f"queue {prof['queue_ms_per_batch']:.1f} ms, cache hits {100 * prof['cache_hit_ratio']:.0f}%")
    errors = f"{p.errors}" + (f" {p.error_kinds}" if p.error_kinds else "")
    return (f"{p.server:<24}{p.stream:<12}{p.concurrency:>5}{p.rps:>9.1f}{p.p50_ms:>9.1f}{p.p95_ms:>9.1f}"
            f"{p.p99_ms:>9.1f}{errors:>8}  {profile}")


def _find(run: ServerRun, stream: str, concurrency: int) -> Phase:
    return next(p for p in run.phases if p.stream == stream and p.concurrency == concurrency)


def targets(bare: dict[str, object], batched: ServerRun, naive: ServerRun | None) -> list[tuple[str, float, str, bool]]:
    """(what, measured ratio, target, met) for the issue #8 targets."""
    single_ms = float(bare["single_ms_p50"])  # type: ignore[arg-type]
    best_tps = float(bare["best_texts_per_s"])  # type: ignore[arg-type]
    c1 = _find(batched, "unique", 1)
    c16 = _find(batched, "unique", 16)
    zipf16 = _find(batched, "zipf", 16)
    unique64 = _find(batched, "unique", 64)
    soak = next((p for p in batched.phases if p.stream == "soak-zipf"), None) or _find(batched, "zipf", 64)
    rows = [
        ("/chat p50 c1 / bare single-query encode", c1.p50_ms / single_ms, "<= 1.25", c1.p50_ms / single_ms <= 1.25),
        ("req/s c16 unique / bare best texts/s", c16.rps / best_tps, ">= 0.85", c16.rps / best_tps >= 0.85),
    ]
    if naive is not None:
        naive16 = _find(naive, "unique", 16)
        naive_zipf16 = _find(naive, "zipf", 16)
        rows.append(("req/s c16 unique / naive c16 unique", c16.rps / naive16.rps, ">= 2", c16.rps / naive16.rps >= 2))
        rows.append(("req/s c16 zipf+cache / naive c16 zipf", zipf16.rps / naive_zipf16.rps, ">= 5",
                     zipf16.rps / naive_zipf16.rps >= 5))
    errors = sum(p.errors for p in batched.phases)
    rows.append((f"errors, all phases (c64 {soak.stream} {soak.seconds:g} s)", float(errors), "== 0", errors == 0))
    rows.append((f"p99 c64 {soak.stream} / p50 c1", soak.p99_ms / c1.p50_ms, "< 10", soak.p99_ms / c1.p50_ms < 10))
    rows.append(("p99 c64 unique / p50 c1", unique64.p99_ms / c1.p50_ms, "< 10", unique64.p99_ms / c1.p50_ms < 10))
    return rows


def _bare_lines(bare: dict[str, object]) -> list[str]:
    batched = bare["batched"]
    assert isinstance(batched, dict)
    sizes = "  ".join(f"b{size}: {tps:.0f}" for size, tps in batched.items())
    return [
        f"bare encoder {bare['encoder']}"
        + (f" = {bare['serving']}" if bare.get("serving") not in (None, bare["encoder"]) else "")
        + f" (threads={bare['threads']}): single query p50 "
        f"{float(bare['single_ms_p50']):.2f} ms (mean {float(bare['single_ms_mean']):.2f} ms), "  # type: ignore[arg-type]
        f"RSS {float(bare['rss_mb']):.0f} MB",  # type: ignore[arg-type]
        f"  texts/s by batch size: {sizes}  -> best {float(bare['best_texts_per_s']):.0f} texts/s "  # type: ignore[arg-type]
        f"at batch {bare['best_batch']}",
    ]


def _machine_line(seconds: float, soak: float) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"faqbot bench: {os.cpu_count()} CPUs, load average {load}, {seconds:g} s per phase"
            f"{f', soak {soak:g} s' if soak else ''}, Python {sys.version.split()[0]}")


# --- the run ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchOptions:
    """What `faqbot bench` measures (its flags)."""

    threads: int
    seconds: float = 8.0
    soak_seconds: float = 60.0
    workers: int = 1
    url: str | None = None
    baseline_url: str | None = None
    baseline: bool = True
    extra_encoders: tuple[str, ...] = ()
    json_path: Path | None = None
    questions: Path | None = None  # a JSONL benchmark's queries instead of questions made from the KB
    reference: bool = True  # build and time issue #21's hand-made reference (admin.loadtest.reference)
    reference_model: Path | None = None  # its weights (default: the bundled ones, as export-bundled writes)


def run_bench(settings: Settings, options: BenchOptions, say: Callable[[str], None] = print) -> dict[str, object]:
    """Every phase of the bench (see the module docstring), printed as it goes; the figures as a dict."""
    kb_path = Path(settings.kb).resolve()
    questions = Path(options.questions).resolve() if options.questions else None
    asked = file_questions(questions) if questions else None
    source = QuestionStreams(kb_questions(kb_path), questions=asked)
    seconds, soak = options.seconds, options.soak_seconds
    say(_machine_line(seconds, soak))
    say(f"KB {kb_path}, questions {f'from {questions} ({len(source.questions)} distinct)' if questions else 'made from the KB texts'}")
    report: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}, "runs": []}
    encoders = [settings.encoder, *options.extra_encoders]
    bares = {}
    for spec in encoders:
        bares[spec] = run_bare(spec, options.threads, kb_path, max(1.0, min(seconds, 6.0)),
                               Path(settings.data_dir).resolve(), questions)
        for line in _bare_lines(bares[spec]):
            say(line)
    report["bare"] = bares
    report["reference"] = _reference(settings, options, kb_path, asked, say)
    say("")
    say(HEADER)
    runs = _bench_servers(settings, options, encoders, kb_path, source, say)
    say("")
    for run in runs.values():
        if run.rss_mb is not None:
            say(f"RSS {run.label}: {run.rss_mb:.0f} MB with {run.workers} worker(s) "
                f"(PSS {run.pss_mb or 0:.0f} MB: shared model pages counted once)")
    rows = _say_targets(settings, options, bares, runs, say)
    report["reference_targets"] = _say_reference_targets(report["reference"], runs["batched"], say)
    say(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    report["runs"] = {k: asdict(v) for k, v in runs.items()}
    report["targets"] = [{"what": w, "value": v, "target": t, "met": m} for w, v, t, m in rows]
    if options.json_path:
        Path(options.json_path).write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    return report


def _bench_servers(settings: Settings, options: BenchOptions, encoders: Sequence[str], kb_path: Path,
                   source: QuestionStreams, say: Callable[[str], None]) -> dict[str, ServerRun]:
    """The given servers, or a batched server per encoder and the naive baseline, one after the other."""
    seconds, soak = options.seconds, options.soak_seconds
    runs: dict[str, ServerRun] = {}
    if options.url:
        runs["batched"] = bench_server("given server", options.url.rstrip("/"), None, source, seconds, soak, say=say)
        if options.baseline_url:
            runs["naive"] = bench_server("given baseline", options.baseline_url.rstrip("/"), None, source, seconds,
                                         say=say)
        return runs
    env_common = {"FAQBOT_ENCODER_THREADS": str(options.threads), "OMP_NUM_THREADS": str(options.threads)}
    models_dir = DataDir(settings.data_dir).models.resolve()
    workdir = Path(tempfile.mkdtemp(prefix="faqbot-bench-"))
    try:
        for i, spec in enumerate(encoders):
            data_dir = workdir / f"data{i}"
            env = {**env_common, "FAQBOT_ENCODER": spec}  # the first server builds the index, the naive one reuses it
            label = "batched" if i == 0 else f"batched {spec.partition(':')[0]} #{i}"
            # the configured models (auto's export, made once by the bare run above), not a new export each
            with faqbot_server(kb_path, data_dir, env, workers=options.workers, models_dir=models_dir) as (base, proc):
                runs[label] = bench_server(label, base, proc.pid, source, seconds, soak if i == 0 else 0.0,
                                           workers=options.workers, say=say)
            if i == 0 and options.baseline:
                with faqbot_server(kb_path, data_dir, {**env, **NAIVE_ENV}) as (base, proc):
                    runs["naive"] = bench_server("naive (no batch/cache)", base, proc.pid, source, seconds, say=say)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return runs


def _say_targets(settings: Settings, options: BenchOptions, bares: dict[str, dict[str, object]],
                 runs: dict[str, ServerRun], say: Callable[[str], None]) -> list[tuple[str, float, str, bool]]:
    say("")
    say(f"targets (issue #8), ratios from this run ({settings.encoder}, threads={options.threads}):")
    rows = targets(bares[settings.encoder], runs["batched"], runs.get("naive"))
    for what, value, target, met in rows:
        say(f"  {what:<44}{value:>8.2f}  {target:<8} {'met' if met else 'NOT MET'}")
    for i, spec in enumerate(options.extra_encoders, 1):
        extra = next((run for label, run in runs.items() if label.endswith(f" #{i}")), None)
        if extra is None:
            continue
        say(f"targets for #{i} {spec} (threads={options.threads}; no naive run):")
        for what, value, target, met in targets(bares[spec], extra, None):
            say(f"  {what:<44}{value:>8.2f}  {target:<8} {'met' if met else 'NOT MET'}")
    return rows


def _reference(settings: Settings, options: BenchOptions, kb_path: Path, asked: Sequence[str] | None,
               say: Callable[[str], None]) -> dict[str, object]:
    """Issue #21's reference, timed on the same questions as the servers (a fresh stream: the same order)."""
    if not options.reference:
        return {"skipped": "--no-reference"}
    stream = QuestionStreams(kb_questions(kb_path), questions=asked)
    texts = [stream.unique() for _ in range(3000)]
    ref = run_reference(Path(settings.data_dir), texts, max(1.0, min(options.seconds, 6.0)), options.reference_model)
    if "skipped" in ref:
        say(f"reference (issue #21): skipped: {ref['skipped']}")
    else:
        say(f"reference (issue #21: export-bundled -> torch.onnx.export -> quantize_dynamic QInt8 per tensor, "
            f"1 thread, mean pooling): single question p50 {float(ref['single_ms_p50']):.2f} ms, "  # type: ignore[arg-type]
            f"batch {ref['batch']}: {float(ref['batch_texts_per_s']):.0f} texts/s "  # type: ignore[arg-type]
            f"({float(ref['build_s']):.0f} s to build or find it in {Path(str(ref['model'])).parent})")  # type: ignore[arg-type]
    return ref


def reference_targets(ref: dict[str, object], batched: ServerRun) -> list[tuple[str, float, str, bool]]:
    """(what, measured ratio, target, met) for the issue #21 targets against the hand-made reference."""
    single_ms = float(ref["single_ms_p50"])  # type: ignore[arg-type]
    batch_tps = float(ref["batch_texts_per_s"])  # type: ignore[arg-type]
    c1, c16, c64 = (_find(batched, "unique", c) for c in CONCURRENCIES)
    soak = next((p for p in batched.phases if p.stream == "soak-zipf"), None) or _find(batched, "zipf", 64)
    return [
        ("/chat p50 c1 / reference single question", c1.p50_ms / single_ms, "<= 1.25", c1.p50_ms / single_ms <= 1.25),
        (f"req/s c16 unique / reference batch-{ref['batch']} texts/s", c16.rps / batch_tps, ">= 0.8",
         c16.rps / batch_tps >= 0.8),
        ("p99 c64 unique / p50 c1", c64.p99_ms / c1.p50_ms, "<= 10", c64.p99_ms / c1.p50_ms <= 10),
        (f"errors in the soak (c64 {soak.stream} {soak.seconds:g} s)", float(soak.errors), "== 0", soak.errors == 0),
    ]


def c1_breakdown(ref: dict[str, object], batched: ServerRun) -> list[str]:
    """Where /chat c1 goes: the server without the encoder (FAQ texts asked verbatim), the encoder as the
    server ran it, and the reference's single question back to back and after an idle gap."""
    c1 = _find(batched, "unique", 1)
    exact = next((p for p in batched.phases if p.stream == "exact"), None)
    encode_ms = (c1.server_profile or {}).get("encode_ms_per_batch", 0.0)
    paced = ref.get("paced_single_ms_p50")
    if exact is None or not encode_ms or paced is None:
        return []
    return [
        f"where /chat c1 goes: p50 {c1.p50_ms:.1f} ms = encoder in the server {encode_ms:.1f} ms (mean per question) + "
        f"the rest {c1.p50_ms - encode_ms:.1f} ms; the same server without the encoder (FAQ texts verbatim) "
        f"{exact.p50_ms:.1f} ms",
        f"  reference single question: {float(ref['single_ms_p50']):.2f} ms back to back, "  # type: ignore[arg-type]
        f"{float(paced):.2f} ms after {float(ref.get('paced_gap_ms', 0)):.0f} ms idle "  # type: ignore[arg-type]
        f"(as between requests at c1: the weights are read from memory again); /chat p50 c1 / paced "
        f"{c1.p50_ms / float(paced):.2f}",  # type: ignore[arg-type]
    ]


def _say_reference_targets(ref: dict[str, object], batched: ServerRun,
                           say: Callable[[str], None]) -> list[dict[str, object]]:
    if "skipped" in ref:
        say(f"targets (issue #21): not measured, the reference was skipped ({ref['skipped']})")
        return []
    say("targets (issue #21), ratios to the hand-made reference from this run:")
    rows = reference_targets(ref, batched)
    for what, value, target, met in rows:
        say(f"  {what:<44}{value:>8.2f}  {target:<8} {'met' if met else 'NOT MET'}")
    for line in c1_breakdown(ref, batched):
        say(line)
    return [{"what": w, "value": v, "target": t, "met": m} for w, v, t, m in rows]


def printer() -> Callable[[str], None]:
    """`print` that flushes each line (a long run shows its progress in a log file as it goes)."""

    def say(line: str) -> None:
        print(line, flush=True)

    return say


def _bare_main(argv: Sequence[str]) -> int:
    encoder, threads, kb_path, seconds, data_dir, questions = argv
    print(json.dumps(bare_encoder(encoder, int(threads), Path(kb_path), float(seconds), Path(data_dir),
                                  None if questions == "-" else Path(questions))))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--bare":
        sys.exit(_bare_main(sys.argv[2:]))
    sys.exit(f"usage: faqbot bench (this module is run as `{sys.argv[0]} --bare ...` only by the bench itself)")
