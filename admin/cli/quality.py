"""`faqbot eval` and `faqbot calibrate`: measure the matcher, fit the calibration (docs/quality.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from admin.cli.common import add_common, command_line, configured_encoder, settings_from
from admin.errors import CommandError, UsageError
from admin.quality.calibrate import CalibrationFit, calibrate_from_kb, calibrate_from_pairs, read_pair_files
from admin.quality.evaluation import FaqEvalResult, PairEvalResult, evaluate_faq, evaluate_pairs, load_queries
from admin.quality.report import fmt_number
from bot.service import build_and_publish, previous_calibration
from bot.settings import Settings
from faq import load_kb
from index.calibration import Calibration, default_calibration, write_shipped_calibration
from index.datadir import DataDir
from index.encoders import Encoder
from index.faq_index import IndexUnavailableError, load_index, publish_index, with_calibration
from index.progress import progress_bar


def configured_calibration(settings: Settings, encoder: Encoder) -> Calibration:
    """What a fresh `faqbot build` would read scores with: a locally fitted calibration, else the shipped one."""
    return previous_calibration(settings, encoder) or default_calibration(encoder.fingerprint)


def print_faq_result(result: FaqEvalResult, threshold_origin: str) -> None:
    at, sweep = result.at_threshold, result.sweep
    pct = result.calibration.percent
    print(f"queries: {result.n_queries} ({result.n_in_scope} in scope, {result.n_out_of_scope} out of scope)")
    if result.unknown_expected:
        print(f"warning: {len(result.unknown_expected)} expected id(s) not in the KB, e.g. {', '.join(result.unknown_expected[:5])}")
    print(f"in scope:        top-1 {fmt_number(result.top1)}   MRR@10 {fmt_number(result.mrr10)}   recall@5 {fmt_number(result.recall5)}")
    print(f"threshold:       {result.threshold:.4f} (= {pct(result.threshold)}%, {threshold_origin})   "
          f"margin {result.margin:.4f}")
    print(f"at threshold:    in scope answered right {fmt_number(at.in_scope_answered_right)}   "
          f"out-of-scope rejected {fmt_number(result.oos_rejection)}   overall accuracy {fmt_number(result.overall_accuracy)}")
    print(f"                 precision {fmt_number(at.precision)}   answer rate {fmt_number(at.answer_rate)}   "
          f"clarify questions {int(at.clarified.sum())}")
    print(f"sweep:           max overall accuracy {fmt_number(sweep.best_accuracy)} at threshold {sweep.best_threshold:.4f} "
          f"(= {pct(sweep.best_threshold)}%)")
    if sweep.precision_threshold is None:
        print(f"                 {sweep.precision_target:.0%} precision is not reached at any threshold")
    else:
        print(f"                 {sweep.precision_target:.0%} precision from threshold {sweep.precision_threshold:.4f} "
              f"(= {pct(sweep.precision_threshold)}%): accuracy {fmt_number(sweep.precision_threshold_accuracy)}, "
              f"answer rate {fmt_number(sweep.precision_threshold_answer_rate)}")
    print(f"ambiguity margin at threshold {result.threshold:.4f} (vs no margin):")
    print("  margin  clarify  wrong-prevented  right-delayed  right-offered  accuracy")
    for row in result.margins:
        print(f"  {row.margin:.4f}  {row.clarified:7d}  {row.wrong_prevented:15d}  {row.right_delayed:13d}  "
              f"{row.expected_offered:13d}  {row.accuracy:.3f}")
    print(f"  recommended margin: {result.recommended_margin:.4f}")


def print_pair_result(name: str, result: PairEvalResult) -> None:
    if result.kind == "graded":
        print(f"{name}: {result.n_pairs} graded pairs   Spearman {fmt_number(result.spearman * 100, 1)}   "
              f"median percent: score>=4 {fmt_number(result.median_percent_positive, 1)}, score<=1 {fmt_number(result.median_percent_negative, 1)}")
    else:
        print(f"{name}: {result.n_pairs} pairs   ROC-AUC {fmt_number(result.roc_auc)}   best-threshold accuracy "
              f"{fmt_number(result.best_accuracy)} at {fmt_number(result.best_threshold, 4)}   median percent: paraphrase "
              f"{fmt_number(result.median_percent_positive, 1)}, unrelated {fmt_number(result.median_percent_negative, 1)}")


def _threshold_origin(settings: Settings, kb_default: float | None, override: float | None) -> str:
    if kb_default is not None:
        return "KB defaults.threshold"
    if override is not None:
        return "--threshold"
    if settings.threshold is not None:
        return "FAQBOT_THRESHOLD"
    return "calibration"


def cmd_eval(args: argparse.Namespace) -> int:
    if not args.queries and not args.pairs:
        raise UsageError("give --queries FILE.jsonl (with --kb) for an FAQ benchmark, or --pairs FILE.tsv")
    settings = settings_from(args)
    encoder = configured_encoder(settings)
    calibration = configured_calibration(settings, encoder)
    summary: dict[str, object] = {"encoder": encoder.fingerprint, "calibration": calibration.source}
    command = command_line()
    try:
        if args.queries:
            kb = load_kb(settings.kb)
            queries = load_queries(args.queries)
            threshold = args.threshold if args.threshold is not None else settings.threshold
            advance = progress_bar("encoding KB + queries")(len(kb.texts()) + len(queries))
            result = evaluate_faq(encoder, kb, queries, threshold=threshold, margin=args.margin,
                                  calibration=calibration, progress=advance)
            if not args.json:
                print(f"FAQ benchmark {args.queries} on KB {settings.kb} ({len(kb.faqs)} FAQs), encoder {encoder.fingerprint}")
                print_faq_result(result, _threshold_origin(settings, kb.default_threshold, args.threshold))
            summary["faq"] = result.summary()
            if args.report_dir:
                from admin.quality.report import write_faq_report

                report = write_faq_report(result, args.report_dir, title=f"FAQ evaluation: {args.queries}",
                                          command=command, encoder=encoder.fingerprint)
                sys.stdout.flush()
                print(f"report: {report}", file=sys.stderr)
        if args.pairs:
            pair_sets = read_pair_files(args.pairs, max_pairs=args.max_pairs)
            pair_results = {}
            for name, pairs in pair_sets.items():
                advance = progress_bar(f"encoding {name}")(2 * len(pairs))
                pair_results[name] = evaluate_pairs(encoder, pairs, calibration=calibration, progress=advance)
                if not args.json:
                    print_pair_result(name, pair_results[name])
            summary["pairs"] = {name: r.summary() for name, r in pair_results.items()}
            if args.report_dir:
                from admin.quality.report import write_pairs_report

                report = write_pairs_report(pair_results, args.report_dir, command=command, encoder=encoder.fingerprint)
                sys.stdout.flush()
                print(f"report: {report}", file=sys.stderr)
    except OSError as exc:  # a file that cannot be read (the data errors say their line themselves)
        raise CommandError(str(exc)) from exc
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


def print_fit(fit: CalibrationFit) -> None:
    cal = fit.calibration
    print(f"calibration for {cal.extra.get('fingerprint')}: {cal.source}")
    print("  source                 pairs  ROC-AUC  median% para  median% unrel  FAQ queries  best thr  acc@thr")
    for s in fit.sources:
        print(f"  {s.name:20s} {s.pairs:7d}  {s.roc_auc:7.3f}  {s.median_percent_positive:12.1f}  "
              f"{s.median_percent_negative:13.1f}  {s.faq_queries:11d}  {s.best_threshold:8.4f}  {s.accuracy_at_threshold:7.3f}")
    readings = "  ".join(f"{c:.2f}->{cal.percent(c):.0f}%" for c in (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98, 1.0))
    print(f"  percent map: {readings}")
    how = "class-balanced pair accuracy" if cal.source.startswith("pairs") else "leave-one-out FAQ accuracy"
    print(f"  threshold {cal.threshold:.4f} (= {cal.percent(cal.threshold)}%), {how} {fit.pooled_accuracy:.3f}")
    print(f"  margin {cal.margin:.4f}   (margin, clarify, wrong prevented, right delayed: "
          + "; ".join(f"{r.margin:.4f} {r.clarified} {r.wrong_prevented} {r.right_delayed}" for r in fit.margins[:7]) + ")")


def cmd_calibrate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    encoder = configured_encoder(settings)
    command = command_line()
    try:
        if args.pairs:
            pair_sets = read_pair_files(args.pairs, max_pairs=args.max_pairs)
            threshold_sets = read_pair_files(args.threshold_pairs, max_pairs=args.max_pairs) if args.threshold_pairs else None
            total = sum(2 * len(p) for p in {**pair_sets, **(threshold_sets or {})}.values())
            fit = calibrate_from_pairs(encoder, pair_sets, threshold_sets=threshold_sets, max_faqs=args.max_faqs,
                                       command=command, progress=progress_bar("encoding pairs + simulated FAQs")(total))
        else:
            kb = load_kb(settings.kb)
            fit = calibrate_from_kb(encoder, kb, command=command,
                                    progress=progress_bar("encoding the KB")(2 * len(kb.texts())))
    except OSError as exc:
        raise CommandError(str(exc)) from exc
    print_fit(fit)
    if args.dry_run:
        print("dry run: nothing stored")
        return 0
    if args.write_shipped:
        path = write_shipped_calibration(fit.calibration, encoder.fingerprint)
        print(f"wrote the shipped calibration {path}")
    try:
        live = load_index(settings.data_dir)
    except IndexUnavailableError:
        live = None
    if live is not None and live.meta.fingerprint == encoder.fingerprint:
        index = with_calibration(live, fit.calibration)
        publish_index(index, settings.data_dir)
    else:
        index = build_and_publish(settings, encoder, calibration=fit.calibration,
                                  progress=progress_bar("encoding the KB")(len(load_kb(settings.kb).texts())))
    print(f"stored in index {index.version} ({DataDir(settings.data_dir).index.resolve()}); running servers pick it up")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="measure the matcher on an FAQ benchmark and/or encoders on sentence pairs")
    add_common(p)
    p.add_argument("--queries", type=Path, help="JSONL of {\"query\", \"expected\": FAQ id or null}, or a golden tests.yaml (FAQ benchmark on --kb)")
    p.add_argument("--pairs", type=Path, nargs="+", help="TSV file(s) s1<TAB>s2<TAB>label (0/1, or a 0-5 score)")
    p.add_argument("--report-dir", dest="report_dir", type=Path, help="write a Markdown report with PNG plots here")
    p.add_argument("--threshold", type=float, help="evaluate at this threshold instead of the configured one")
    p.add_argument("--margin", type=float, help="ambiguity margin instead of the calibrated one")
    p.add_argument("--max-pairs", dest="max_pairs", type=int, help="use a seeded sample of this many pairs per file")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("calibrate", help="fit the percent map, default threshold and margin for the encoder")
    add_common(p)
    p.add_argument("--pairs", type=Path, nargs="+",
                   help="labelled 0/1 pair TSV file(s), one per domain (default: calibrate from the KB alone)")
    p.add_argument("--threshold-pairs", dest="threshold_pairs", type=Path, nargs="+",
                   help="0/1 pair file(s) whose best class-balanced accuracy sets the default threshold "
                        "(default: the --pairs files)")
    p.add_argument("--max-pairs", dest="max_pairs", type=int, default=4000,
                   help="seeded sample of at most this many pairs per file (default 4000)")
    p.add_argument("--max-faqs", dest="max_faqs", type=int, default=800,
                   help="FAQs per simulated retrieval benchmark (default 800)")
    p.add_argument("--write-shipped", dest="write_shipped", action="store_true",
                   help="also write the package's calibration file for this encoder (maintainers)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="fit and print, store nothing")
    p.set_defaults(func=cmd_calibrate)
