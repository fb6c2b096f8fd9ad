"""`faqbot misses list|export|resolve`, `faqbot reload`, `faqbot lint`, `faqbot stats`: the improvement loop
from a terminal. Same functions as the admin API (admin.curation), run in-process on the data dir; a
running server picks up a reload through the published index version (CURRENT) within seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from admin.cli.common import add_common, open_service, print_json, settings_from
from admin.curation.lint import lint_kb
from admin.curation.misses import MissFilter, Resolution, VectorCache, cluster_misses, export, fetch_misses, resolve
from admin.curation.rebuild import Rebuilder, RebuildOutcome
from admin.curation.stats import compute_stats
from admin.errors import CommandError
from bot.service import FaqService
from faq import load_kb


def _service(args: argparse.Namespace) -> FaqService:
    """A service on the published index, as the server's workers serve it (built first only if there is
    none for this encoder), so a broken KB on disk does not stop reviewing misses or reporting it."""
    return open_service(settings_from(args), published_first=True)


def _filters(args: argparse.Namespace) -> MissFilter:
    return MissFilter.parse(args.status, args.channel, args.since, args.until)


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", default="open", choices=("open", "resolved", "ignored", "all"))
    p.add_argument("--channel", help="only this channel (web, wecom, …)")
    p.add_argument("--since", help="from this day (YYYY-MM-DD) or ISO time")
    p.add_argument("--until", help="up to and including this day, or before this ISO time")


def _candidates(cluster: dict[str, Any]) -> str:
    return ", ".join(f"{c['faq_id']} {c['percent']:.1f}%" for c in cluster["candidates"]) or "-"


def cmd_misses_list(args: argparse.Namespace) -> int:
    service = _service(args)
    result = cluster_misses(service, fetch_misses(service, _filters(args)), threshold=args.threshold)
    clusters = result["clusters"][: args.limit]
    if args.json:
        print_json({**result, "clusters": clusters})
        return 0
    print(f"{result['total_misses']} miss(es) in {result['total_clusters']} cluster(s) "
          f"(cluster cosine >= {result['threshold']}, index {result['index_version']})")
    for c in clusters:
        print(f"#{c['id']:<6} ×{c['count']:<4} {c['representative']}")
        others = [v["text"] for v in c["variants"][1:]]
        if others:
            print(f"{'':12}also: {' | '.join(others[:5])}{' …' if len(others) > 5 else ''}")
        print(f"{'':12}nearest: {_candidates(c)}   last seen {c['last_seen']}")
    return 0


def cmd_misses_export(args: argparse.Namespace) -> int:
    service = _service(args)
    kind = "training" if args.training else ("raw" if args.raw else "clusters")
    fmt = "jsonl" if args.training and args.format is None else (args.format or "csv")
    body, _ = export(service, _filters(args), fmt=fmt, kind=kind)
    if args.output:
        Path(args.output).write_text(body, encoding="utf-8")
        lines = body.count("\n") - (1 if fmt == "csv" else 0)
        print(f"wrote {lines} row(s) to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(body.lstrip("\ufeff"))
    return 0


def _print_outcome(outcome: dict[str, Any]) -> None:
    print(f"reload: {outcome['status']} — {outcome['message']}")
    for p in outcome.get("problems") or []:
        print(f"  {p['file']}:{p['line']}: {p['field']}: {p['message']}")
    gate = outcome.get("gate")
    if gate:
        print(f"  golden questions: {gate['new_correct']}/{gate['total']} correct"
              + (f" (live index: {gate['live_correct']}/{gate['total']})" if gate["live_correct"] is not None else ""))
        for case in gate["broke"]:
            print(f"  broke: {case['query']} — expected {case['expected']}, now {case['got']} "
                  f"(was {case['live_got']})")


def cmd_misses_resolve(args: argparse.Namespace) -> int:
    service = _service(args)
    if args.attach:
        action, faq_id = "attach", args.attach
    elif args.new:
        action, faq_id = "new", args.new
        if not args.answer:
            raise CommandError("--new needs --answer TEXT")
    elif args.reopen:
        action, faq_id = "reopen", None
    else:
        action, faq_id = "ignore", None
    first, *more = args.miss_ids
    extra = list(more)
    if args.cluster:
        clusters = cluster_misses(service, fetch_misses(service, MissFilter(status=None)))["clusters"]
        cluster = next((c for c in clusters if first in c["miss_ids"]), None)
        if cluster is None:
            raise CommandError(f"no miss with id {first}")
        extra += [i for i in cluster["miss_ids"] if i != first and i not in extra]
    rebuilder = Rebuilder(service)
    resolution = Resolution(action=action, faq_id=faq_id, answer=args.answer, question=args.question, file=args.file,
                            tags=tuple(args.tag or ()), miss_ids=tuple(extra),
                            paraphrases=tuple(args.text) if args.text else None, reload=not args.no_reload,
                            force=args.force)
    result = resolve(service, rebuilder, first, resolution)
    if args.json:
        print_json(result)
        return 0
    print(f"{action}: {len(result['miss_ids'])} miss(es) marked {'open' if action == 'reopen' else action}")
    edit = result.get("edit")
    if edit:
        for text in edit["added"]:
            print(f"  + {text}  ->  {edit['faq_id']} ({edit['file']}:{edit['line']})")
        for text in edit["skipped"]:
            print(f"  = {text}  (already in {edit['faq_id']})")
    if result.get("reload"):
        _print_outcome(result["reload"])
        return 0 if result["reload"]["ok"] else 1
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    service = _service(args)
    outcome: RebuildOutcome = Rebuilder(service).rebuild(force=args.force, reason="cli")
    if args.json:
        print_json(outcome.as_dict())
    else:
        _print_outcome(outcome.as_dict())
    return 0 if outcome.ok else 1


def cmd_lint(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    kb = load_kb(settings.kb)
    service = _service(args)
    report = lint_kb(kb, service.encoder, answer_threshold=service.matcher.default_threshold,
                     min_similarity=args.min_similarity, calibration=service.calibration, live=service.index,
                     tz=settings.zone)
    if args.json:
        print_json(report)
    else:
        counts = report["counts"]
        print(f"{report['faqs']} FAQs, {report['texts']} texts: {counts['duplicates']} duplicate(s), "
              f"{counts['confusable']} confusable pair(s) (cosine >= {report['min_similarity']}, "
              f"{report['min_percent']:.1f}%), {counts['misplaced']} misplaced paraphrase(s)")
        for d in report["duplicates"]:
            where = "; ".join(f"{o['faq_id']} {o['field']} ({o['file']}:{o['line']})" for o in d["occurrences"])
            print(f"duplicate: “{d['text']}” in {where}")
        for c in report["confusable"][: args.limit]:
            print(f"confusable: {c['faq_a']} ~ {c['faq_b']} {c['percent']:.1f}% (cosine {c['similarity']:.4f}): "
                  f"“{c['text_a']}” / “{c['text_b']}”")
        for m in report["misplaced"][: args.limit]:
            print(f"misplaced: “{m['text']}” of {m['faq_id']} ({m['file']}:{m['line']}) is closer to "
                  f"{m['closer']['faq_id']} “{m['closer']['text']}” {m['closer']['percent']:.1f}% than to its own "
                  f"“{m['own']['text']}” {m['own']['percent']:.1f}%")
        shown = max(0, max(counts["confusable"], counts["misplaced"]) - args.limit)
        if shown:
            print(f"… {shown} more; see --json or --limit")
        for v in report["validity"]["expired"]:
            print(f"expired: {v['faq_id']} ({v['file']}:{v['line']}) ended {v['ends_at']}: no longer answered")
        for v in report["validity"]["expiring"]:
            print(f"expiring: {v['faq_id']} ({v['file']}:{v['line']}) ends {v['ends_at']} ({v['days_left']} days left)")
    # Duplicates across FAQs are always wrong; confusable and misplaced texts are judgement calls.
    failing = sum(not d["same_faq"] for d in report["duplicates"])
    if args.strict:
        failing += len(report["duplicates"]) + report["counts"]["confusable"] + report["counts"]["misplaced"]
    return 1 if failing else 0


def cmd_stats(args: argparse.Namespace) -> int:
    service = _service(args)
    data = compute_stats(service, days=args.days, tz=args.tz, top=args.top, cache=VectorCache())
    if args.json:
        print_json(data)
        return 0
    totals = data["totals"]
    rate = f"{totals['answer_rate'] * 100:.1f}%" if totals["answer_rate"] is not None else "-"
    print(f"{data['since'][:10]} .. {data['until'][:10]} ({data['tz']}): {totals['questions']} question(s), "
          f"answered {rate}, 👍 {totals['thumbs_up']} 👎 {totals['thumbs_down']}")
    print(f"{'date':<12}{'questions':>10}{'answered':>10}{'rate':>8}")
    for day in data["days"]:
        day_rate = f"{day['answer_rate'] * 100:.0f}%" if day["answer_rate"] is not None else "-"
        print(f"{day['date']:<12}{day['questions']:>10}{day['answered']:>10}{day_rate:>8}")
    if data["top_faqs"]:
        print("top FAQs: " + ", ".join(f"{f['faq_id']} ×{f['count']}" for f in data["top_faqs"]))
    if data["top_misses"]:
        print("top open misses:")
        for m in data["top_misses"]:
            print(f"  #{m['id']} ×{m['count']} {m['representative']}")
    if data["thumbs_down"]:
        print("thumbs-down: " + ", ".join(f"{f['faq_id'] or '(no answer)'} ×{f['thumbs_down']}"
                                          for f in data["thumbs_down"]))
    handoffs = data["handoffs"]
    if totals["handoffs"]:
        kinds = handoffs["by_kind"]
        after = ", ".join(f"{f['faq_id'] or '(none)'} ×{f['count']}" for f in handoffs["after_faq"][:args.top])
        print(f"handoffs: {totals['handoffs']} ({kinds['asked']} asked, {kinds['offered']} after two misses); "
              f"after: {after}")
    ms = data["miss_status"]
    print(f"misses: {ms['open']} open, {ms['resolved']} resolved, {ms['ignored']} ignored")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    misses = sub.add_parser("misses", help="review unanswered questions: list, export, resolve")
    msub = misses.add_subparsers(dest="misses_command", metavar="ACTION", required=True)

    p = msub.add_parser("list", help="misses grouped into clusters, most frequent first")
    add_common(p)
    _add_filters(p)
    p.add_argument("--limit", type=int, default=30, help="clusters to show (default 30)")
    p.add_argument("--threshold", type=float, help="cluster cosine (default: the answer threshold)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_misses_list)

    p = msub.add_parser("export", help="write misses as CSV or JSONL (clusters, --raw rows, or --training pairs)")
    add_common(p)
    _add_filters(p)
    p.add_argument("--format", choices=("csv", "jsonl"), help="csv (default) or jsonl (default for --training)")
    p.add_argument("--raw", action="store_true", help="one row per miss instead of per cluster")
    p.add_argument("--training", action="store_true",
                   help="resolved misses as fine-tuning pairs {query, positive, faq_id}")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.set_defaults(func=cmd_misses_export)

    p = msub.add_parser("resolve", help="attach misses to an FAQ, make a new FAQ, ignore or reopen them")
    add_common(p)
    p.add_argument("miss_ids", type=int, nargs="+", metavar="MISS_ID")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--attach", metavar="FAQ_ID", help="add the questions as paraphrases of this FAQ")
    what.add_argument("--new", metavar="FAQ_ID", help="create a new FAQ with this id (needs --answer)")
    what.add_argument("--ignore", action="store_true", help="mark as ignored (not a KB question)")
    what.add_argument("--reopen", action="store_true", help="mark resolved/ignored misses open again")
    p.add_argument("--answer", help="the new FAQ's answer")
    p.add_argument("--question", help="the new FAQ's canonical question (default: the first miss)")
    p.add_argument("--file", help="KB file for the new FAQ, relative to the KB directory")
    p.add_argument("--tag", action="append", help="tag of the new FAQ (repeatable)")
    p.add_argument("--text", action="append", help="write this text instead of the miss questions (repeatable)")
    p.add_argument("--cluster", action="store_true", help="resolve every miss in the first miss's cluster")
    p.add_argument("--no-reload", dest="no_reload", action="store_true", help="edit the KB but do not rebuild")
    p.add_argument("--force", action="store_true", help="publish even if golden accuracy drops")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_misses_resolve)

    p = sub.add_parser("reload", help="rebuild the index from the KB behind the golden-question gate and publish it")
    add_common(p)
    p.add_argument("--force", action="store_true", help="publish even if golden accuracy drops")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("lint", help="find duplicate, confusable and misplaced questions in the KB")
    add_common(p)
    p.add_argument("--min-similarity", dest="min_similarity", type=float,
                   help="cosine from which two FAQs count as confusable (default: see docs/admin.md)")
    p.add_argument("--limit", type=int, default=20, help="findings of each kind to print (default 20)")
    p.add_argument("--strict", action="store_true", help="exit 1 on any finding (default: only on duplicates across FAQs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lint)

    p = sub.add_parser("stats", help="questions per day, answer rate, top FAQs and misses, thumbs-down")
    add_common(p)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--tz", default="UTC", help="IANA time zone for days, e.g. Asia/Shanghai (default UTC)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)
