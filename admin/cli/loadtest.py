"""`faqbot bench` and `faqbot soak`: the flags of the load tests (admin.loadtest does the work)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from admin.cli.common import ENCODER_HELP, settings_from
from admin.errors import CommandError, UsageError
from admin.loadtest.bench import BenchOptions, printer, run_bench
from admin.loadtest.soak import soak


def cmd_bench(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.seconds <= 0 or args.soak_seconds < 0:
        raise CommandError("--seconds must be > 0 and --soak-seconds >= 0")
    options = BenchOptions(threads=args.threads or settings.encoder_threads, seconds=float(args.seconds),
                           soak_seconds=float(args.soak_seconds), workers=args.workers, url=args.url,
                           baseline_url=args.baseline_url, baseline=not args.no_baseline,
                           extra_encoders=tuple(args.extra_encoder), json_path=args.json, questions=args.questions,
                           reference=not args.no_reference, reference_model=args.reference_model)
    if args.questions is not None and not args.questions.is_file():
        raise CommandError(f"--questions {args.questions}: no such file")
    run_bench(settings, options, say=printer())
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    if args.duration <= 0 or args.duration > 3600:
        raise UsageError("--duration: between 1 and 3600 seconds")
    if args.concurrency < 1 or args.concurrency > 1024:
        raise UsageError("--concurrency: between 1 and 1024")
    settings = settings_from(args)
    try:
        report = soak(settings, url=args.url, duration=args.duration, concurrency=args.concurrency,
                      database_url=args.database_url, data_dir=args.data_dir if args.url is None else None)
    except RuntimeError as exc:
        raise CommandError(str(exc)) from exc
    except OSError as exc:
        raise CommandError(f"cannot reach the server or the database: {exc}") from exc
    if args.json:
        print(json.dumps(asdict(report), ensure_ascii=False, indent=2))
    else:
        print("\n".join(report.lines()))
        for sample in report.error_samples:
            print(f"  error: {sample}")
    return 0 if report.lost == 0 and report.errors == 0 else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="measure /chat against the bare encoder and a naive server (prints figures)")
    p.add_argument("--kb", type=Path, help="FAQ YAML file or directory (FAQBOT_KB); questions are drawn from it")
    p.add_argument("--data-dir", dest="data_dir", type=Path,
                   help="runtime data directory (FAQBOT_DATA_DIR): its models (auto's export, a deployed model) are "
                        "benched; the servers build their own index in a temporary directory")
    p.add_argument("--encoder", help=ENCODER_HELP)
    p.add_argument("--threads", type=int, help="encoder threads per process (FAQBOT_ENCODER_THREADS)")
    p.add_argument("--workers", type=int, default=1, help="worker processes of the batched server (default 1)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase (default 8)")
    p.add_argument("--soak-seconds", dest="soak_seconds", type=float, default=60.0,
                   help="concurrency-64 soak on the batched server (default 60; 0 = skip)")
    p.add_argument("--url", help="bench this running server instead of starting one (its base URL)")
    p.add_argument("--baseline-url", dest="baseline_url", help="with --url: a naive server to compare with")
    p.add_argument("--no-baseline", dest="no_baseline", action="store_true", help="skip the naive server")
    p.add_argument("--extra-encoder", dest="extra_encoder", action="append", default=[], metavar="SPEC",
                   help="also bench this encoder (e.g. onnx:var/models/e5/onnx/model_int8.onnx); repeatable")
    p.add_argument("--questions", type=Path, metavar="FILE.jsonl",
                   help="ask these questions (JSONL lines with a \"query\", e.g. an FAQ benchmark's queries.jsonl) "
                        "instead of questions made from the KB's texts")
    p.add_argument("--no-reference", dest="no_reference", action="store_true",
                   help="skip issue #21's hand-made reference (its first build exports with torch: ~1 min)")
    p.add_argument("--reference-model", dest="reference_model", type=Path, metavar="DIR",
                   help="sentence-transformers dir the reference is built from (default: the bundled weights, "
                        "exported into <data_dir>/models/bundled)")
    p.add_argument("--json", type=Path, help="also write every figure as JSON here")
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("soak", help="bounded load test; checks every acknowledged miss is in the database")
    p.add_argument("--url", help="soak this running server (default: start one on loopback)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument("--database-url", dest="database_url",
                   help="where the server logs misses (default: FAQBOT_DATABASE_URL or the data dir's SQLite)")
    p.add_argument("--kb", type=Path, help="KB to serve and to draw questions from (FAQBOT_KB)")
    p.add_argument("--data-dir", dest="data_dir", type=Path,
                   help="with --url: the server's data dir, whose SQLite holds its miss log (FAQBOT_DATA_DIR); "
                        "else the data dir of the server it starts (default: temp)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_soak)
