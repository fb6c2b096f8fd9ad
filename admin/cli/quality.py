"""`faqbot eval` and `faqbot calibrate`: measure the matcher, fit the calibration (docs/quality.md)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from admin.cli.common import add_common, command_line, configured_encoder, settings_from
from admin.errors import CommandError, UsageError
from admin.quality.calibrate import (
    CachingEncoder,
    CalibrationFit,
    calibrate_from_kb,
    calibrate_from_pairs,
    read_pair_files,
)
from admin.quality.evaluation import (
    EvalQuery,
    FaqEvalResult,
    PairEvalResult,
    evaluate_faq,
    evaluate_pairs,
    load_queries,
)
from admin.quality.kb_calibration import MIN_EVIDENCE, kb_evidence, tune_on_golden, with_min_confidence
from admin.quality.report import fmt_number
from bot.service import build_and_publish, previous_calibration
from bot.settings import Settings
from faq import KnowledgeBase, load_kb
from faq.golden import golden_file, load_golden
from index.calibration import SCOPE_LOCAL, Calibration, default_calibration, write_shipped_calibration
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
    if result.min_confidence is not None:
        print(f"answer line:     confidence >= {result.min_confidence:g} ({threshold_origin})   margin {result.margin:.4f}")
    else:
        print(f"threshold:       {result.threshold:.4f} (= {pct(result.threshold)}%, {threshold_origin})   "
              f"margin {result.margin:.4f}")
    print(f"as /chat decides: in scope answered right {fmt_number(at.in_scope_answered_right)}   "
          f"out-of-scope rejected {fmt_number(result.oos_rejection)}   overall accuracy {fmt_number(result.overall_accuracy)}")
    print(f"                 precision {fmt_number(at.precision)}   answer rate {fmt_number(at.answer_rate)}   "
          f"clarify questions {int(at.clarified.sum())}")
    print_confidence_figures(result)
    print(f"cosine sweep:    max overall accuracy {fmt_number(sweep.best_accuracy)} at threshold {sweep.best_threshold:.4f} "
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


def print_confidence_figures(result: FaqEvalResult) -> None:
    """Overall accuracy at each confidence line, and the reliability table (does ~80 mean ~80% right?)."""
    sweep = result.confidence_sweep(step=10.0)
    if not sweep:
        return
    best = max(sweep, key=lambda row: row[1])
    print("confidence line: " + "  ".join(f">={line:.0f}: {acc:.3f}" for line, acc, _ in sweep)
          + f"   (best {best[1]:.3f} at {best[0]:.0f})")
    print("reliability:     " + "  ".join(f"{b.low}-{b.high}: {b.share_right:.0f}% right of {b.questions}"
                                          for b in result.reliability()))


def print_pair_result(name: str, result: PairEvalResult) -> None:
    if result.kind == "graded":
        print(f"{name}: {result.n_pairs} graded pairs   Spearman {fmt_number(result.spearman * 100, 1)}   "
              f"median percent: score>=4 {fmt_number(result.median_percent_positive, 1)}, score<=1 {fmt_number(result.median_percent_negative, 1)}")
    else:
        print(f"{name}: {result.n_pairs} pairs   ROC-AUC {fmt_number(result.roc_auc)}   best-threshold accuracy "
              f"{fmt_number(result.best_accuracy)} at {fmt_number(result.best_threshold, 4)}   median percent: paraphrase "
              f"{fmt_number(result.median_percent_positive, 1)}, unrelated {fmt_number(result.median_percent_negative, 1)}")


def _threshold_origin(settings: Settings, kb_default: float | None, override: float | None,
                      line: float | None = None) -> str:
    if line is not None:
        return "--min-confidence"
    if kb_default is not None:
        return "KB defaults.threshold"
    if override is not None:
        return "--threshold"
    if settings.threshold is not None:
        return "FAQBOT_THRESHOLD"
    if settings.min_confidence is not None:
        return "FAQBOT_MIN_CONFIDENCE"
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
            line = args.min_confidence if args.min_confidence is not None else settings.min_confidence
            result = evaluate_faq(encoder, kb, queries, threshold=threshold, margin=args.margin, min_confidence=line,
                                  calibration=calibration, progress=advance)
            if not args.json:
                print(f"FAQ benchmark {args.queries} on KB {settings.kb} ({len(kb.faqs)} FAQs), encoder {encoder.fingerprint}")
                print_faq_result(result, _threshold_origin(settings, kb.default_threshold, args.threshold,
                                                           args.min_confidence))
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


def _store(settings: Settings, encoder: Encoder, calibration: Calibration) -> None:
    """Publish the live index (or a fresh build) read with `calibration`; running servers pick it up."""
    try:
        live = load_index(settings.data_dir)
    except IndexUnavailableError:
        live = None
    if live is not None and live.meta.fingerprint == encoder.fingerprint:
        index = with_calibration(live, calibration)
        publish_index(index, settings.data_dir)
    else:
        index = build_and_publish(settings, encoder, calibration=calibration,
                                  progress=progress_bar("encoding the KB")(len(load_kb(settings.kb).texts())))
    print(f"stored in index {index.version} ({DataDir(settings.data_dir).index.resolve()}); running servers pick it up")


def _fit_confidence(args: argparse.Namespace, encoder: Encoder, base: Calibration) -> Calibration:
    """Fit the confidence model on pair-file and KB domains (maintainers: how the shipped one is made)."""
    from admin.quality.confidence_fit import (
        RANKING_GRIDS,
        fit_from_domains,
        group_rows,
        kb_domains,
        pair_domains,
    )
    from admin.quality.confidence_report import write_confidence_report

    domains = pair_domains(read_pair_files(args.confidence_pairs or [], max_pairs=args.max_pairs))
    domains += kb_domains(args.confidence_kbs or [])
    extra = pair_domains(read_pair_files(args.extra_pairs or [], max_pairs=args.max_pairs), sizes=(800,))
    passes = 1 + sum(len(grid) - 1 for grid in RANKING_GRIDS.values())  # each weight tried
    total = sum(len(d.queries) + len(d.kb.texts()) for d in domains) * passes + sum(
        len(d.queries) + len(d.kb.texts()) for d in extra)
    fit = fit_from_domains(domains, CachingEncoder(encoder), old_threshold=base.threshold, extra=extra,
                           progress=progress_bar("scoring domains")(total))
    weights = ", ".join(f"{term} weight {w:g}" for term, w in vars(fit.model.ranking).items())
    print(f"confidence model on {len(domains)} domains: {weights}, "
          f"features {', '.join(fit.model.features)}")
    print("  held-out domain          old rule  best thr  confidence  vs best  top-1 dense->hybrid")
    for r in group_rows(fit.rows):
        print(f"  {r.name:24s} {r.old_rule:8.3f}  {r.best_threshold:8.3f}  {r.confidence_rule:10.3f}  "
              f"{r.confidence_rule - r.best_threshold:+7.3f}  {r.dense_top1:.3f}->{r.top1:.3f}{'' if r.fitted else '  (not fitted on)'}")
    print("  reliability: " + "  ".join(f"{b.low}-{b.high}: {b.share_right:.0f}% right" for b in fit.reliability))
    if args.report_dir:
        path = write_confidence_report(fit, args.report_dir, command=command_line(), encoder=encoder.fingerprint)
        print(f"report: {path}")
    # Local until --write-shipped makes it the package's: a rebuild of this deployment keeps it.
    return replace(base, confidence=fit.model,
                   extra={**base.extra, "scope": SCOPE_LOCAL,
                          "confidence": {"domains": fit.domain_names, "command": command_line()}})


def _calibrate_kb(args: argparse.Namespace, settings: Settings, encoder: Encoder) -> Calibration | None:
    """The KB's evidence and, with a golden file, a line it clearly supports; None keeps what is in force."""

    kb = load_kb(settings.kb)
    current = configured_calibration(settings, encoder)
    if current.confidence is None:
        return _calibrate_kb_cosine(args, settings, encoder, kb)
    evidence = kb_evidence(kb, encoder, current)
    print(f"KB {settings.kb}: {len(kb.faqs)} FAQs; answer line in force: confidence >= {current.confidence.min_confidence:g} "
          f"({current.source})")
    if evidence.enough:
        print(f"  leave-out simulation: {evidence.paraphrases_right}/{evidence.paraphrases} paraphrases answered right, "
              f"{evidence.removed_refused}/{evidence.removed_questions} questions of removed FAQs refused; "
              f"the simulation's best line would be {evidence.best_line:g}")
        print("  not applied: on the measured domains a KB's own simulation did not predict its best line "
              "(docs/quality.md); a golden tests.yaml can move it")
    else:
        print(f"  the KB gives too little evidence ({evidence.paraphrases} paraphrases, {evidence.removed_questions} "
              f"questions of removed FAQs; {MIN_EVIDENCE} of each needed): keeping the shipped fit")
    golden_path = args.golden or golden_file(settings.kb)
    if not golden_path.is_file():
        print(f"  no golden questions ({golden_path}): keeping the shipped fit, nothing stored")
        return None
    if settings.threshold is not None or kb.default_threshold is not None:
        print("  a cosine threshold is set (FAQBOT_THRESHOLD or defaults.threshold): the confidence line does not apply")
        return None
    golden = [EvalQuery(c.query, c.expected) for c in load_golden(golden_path)]
    tuning = tune_on_golden(kb, encoder, current, golden)
    print(f"  golden {golden_path}: {tuning.current_right}/{tuning.cases} right at line {tuning.current_line:g}; "
          f"best line {tuning.best_line:g} gives {tuning.best_right}/{tuning.cases}")
    if tuning.adopted is None:
        print(f"  keeping line {tuning.current_line:g}: {tuning.reason}")
        return None
    print(f"  moving the line to {tuning.adopted:g}: {tuning.reason}")
    return with_min_confidence(current, tuning.adopted, f"golden {tuning.best_right}/{tuning.cases}")


def _calibrate_kb_cosine(args: argparse.Namespace, settings: Settings, encoder: Encoder,
                         kb: KnowledgeBase) -> Calibration | None:
    """Encoders without a confidence model: the KB's cosine fit, refused if it loses golden answers."""
    fit = calibrate_from_kb(encoder, kb, command=command_line(),
                            progress=progress_bar("encoding the KB")(2 * len(kb.texts())))
    print_fit(fit)
    golden_path = args.golden or golden_file(settings.kb)
    if not golden_path.is_file():
        return fit.calibration
    golden = load_queries(golden_path)
    before = evaluate_faq(encoder, kb, golden, threshold=settings.threshold,
                          calibration=configured_calibration(settings, encoder)).overall_accuracy
    after = evaluate_faq(encoder, kb, golden, threshold=settings.threshold, calibration=fit.calibration).overall_accuracy
    print(f"  golden {golden_path}: overall {before:.3f} before, {after:.3f} with the fit")
    if after < before:
        print("  refused: the fit would answer fewer golden questions right; keeping what is in force")
        return None
    return fit.calibration


def cmd_calibrate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    encoder = configured_encoder(settings)
    try:
        if args.confidence_pairs or args.confidence_kbs:
            calibration: Calibration | None = _fit_confidence(args, encoder, default_calibration(encoder.fingerprint))
        elif args.pairs:
            pair_sets = read_pair_files(args.pairs, max_pairs=args.max_pairs)
            threshold_sets = read_pair_files(args.threshold_pairs, max_pairs=args.max_pairs) if args.threshold_pairs else None
            total = sum(2 * len(p) for p in {**pair_sets, **(threshold_sets or {})}.values())
            fit = calibrate_from_pairs(encoder, pair_sets, threshold_sets=threshold_sets, max_faqs=args.max_faqs,
                                       command=command_line(),
                                       progress=progress_bar("encoding pairs + simulated FAQs")(total))
            print_fit(fit)
            calibration = replace(fit.calibration, confidence=default_calibration(encoder.fingerprint).confidence)
        else:
            calibration = _calibrate_kb(args, settings, encoder)
    except OSError as exc:
        raise CommandError(str(exc)) from exc
    if calibration is None:
        return 0
    if args.dry_run:
        print("dry run: nothing stored")
        return 0
    if args.write_shipped:
        path = write_shipped_calibration(calibration, encoder.fingerprint)
        print(f"wrote the shipped calibration {path}")
    _store(settings, encoder, calibration)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="measure the matcher on an FAQ benchmark and/or encoders on sentence pairs")
    add_common(p)
    p.add_argument("--queries", type=Path, help="JSONL of {\"query\", \"expected\": FAQ id or null}, or a golden tests.yaml (FAQ benchmark on --kb)")
    p.add_argument("--pairs", type=Path, nargs="+", help="TSV file(s) s1<TAB>s2<TAB>label (0/1, or a 0-5 score)")
    p.add_argument("--report-dir", dest="report_dir", type=Path, help="write a Markdown report with PNG plots here")
    p.add_argument("--threshold", type=float, help="evaluate at this threshold instead of the configured one")
    p.add_argument("--margin", type=float, help="ambiguity margin instead of the calibrated one")
    p.add_argument("--min-confidence", dest="min_confidence", type=float,
                   help="evaluate at this confidence line (0-100) instead of the configured one")
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
    p.add_argument("--golden", type=Path, help="golden questions (default: tests.yaml beside the KB)")
    p.add_argument("--confidence-pairs", dest="confidence_pairs", type=Path, nargs="+",
                   help="fit the confidence model: pair files simulated as FAQ domains (maintainers)")
    p.add_argument("--confidence-kbs", dest="confidence_kbs", type=Path, nargs="+",
                   help="fit the confidence model: KB directories with a tests.yaml, one domain each")
    p.add_argument("--extra-pairs", dest="extra_pairs", type=Path, nargs="+",
                   help="pair files judged by the confidence model but not fitted on (reported only)")
    p.add_argument("--report-dir", dest="report_dir", type=Path, help="write the confidence fit's report and plots here")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="fit and print, store nothing")
    p.set_defaults(func=cmd_calibrate)
