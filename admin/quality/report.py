"""Markdown reports and PNG plots for `faqbot eval --report-dir` (matplotlib, Agg backend: no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from admin.quality.evaluation import FaqEvalResult, PairEvalResult, ReliabilityBin

HIST_COLOURS = {"correct": "#2e7d32", "wrong": "#c62828", "out_of_scope": "#757575"}
HIST_LABELS = {"correct": "in scope, best match right", "wrong": "in scope, best match wrong",
               "out_of_scope": "out of scope (best match)"}


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fmt_number(value: float | None, digits: int = 3) -> str:
    """A figure for a table or a line: `digits` decimals, "–" for none (None or nan)."""
    if value is None or value != value:  # nan is not equal to itself
        return "–"
    return f"{value:.{digits}f}"


def plot_similarity_histograms(result: FaqEvalResult, path: Path) -> Path:
    """Best-match cosines of right / wrong / out-of-scope queries, with the threshold in force."""
    plt = pyplot()
    groups = result.similarity_groups()
    values = np.concatenate([v for v in groups.values() if v.size]) if any(v.size for v in groups.values()) else np.zeros(1)
    bins = np.linspace(float(np.floor(values.min() * 50) / 50), 1.0, 51)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, sims in groups.items():
        if sims.size:
            ax.hist(sims, bins=bins, alpha=0.55, color=HIST_COLOURS[name], label=f"{HIST_LABELS[name]} ({sims.size})")
    ax.axvline(result.threshold, color="black", linestyle="--",
               label=f"threshold {result.threshold:.3f} ({result.calibration.percent(result.threshold):.0f}%)")
    ax.axvline(result.sweep.best_threshold, color="#1565c0", linestyle=":",
               label=f"best-accuracy threshold {result.sweep.best_threshold:.3f}")
    ax.set_xlabel("cosine of the best-matching FAQ")
    ax.set_ylabel("queries")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Best-match similarity by outcome")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_accuracy_curve(result: FaqEvalResult, path: Path) -> Path:
    """Overall accuracy, precision and answer rate against the threshold."""
    plt = pyplot()
    sweep = result.sweep
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(sweep.thresholds, sweep.accuracy, label="overall accuracy", color="#1565c0")
    ax.plot(sweep.thresholds, sweep.precision, label="precision of answers", color="#2e7d32")
    ax.plot(sweep.thresholds, sweep.answer_rate, label="answer rate", color="#9e9e9e")
    ax.axvline(result.threshold, color="black", linestyle="--", label=f"threshold in force {result.threshold:.3f}")
    ax.axvline(sweep.best_threshold, color="#1565c0", linestyle=":",
               label=f"max accuracy {sweep.best_accuracy:.3f} at {sweep.best_threshold:.3f}")
    if sweep.precision_threshold is not None:
        ax.axvline(sweep.precision_threshold, color="#2e7d32", linestyle=":",
                   label=f"{sweep.precision_target:.0%} precision from {sweep.precision_threshold:.3f}")
    ax.set_xlabel("threshold (cosine)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"Accuracy vs threshold (margin {sweep.margin:.4f})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_reliability(bins: Sequence[ReliabilityBin], path: Path, title: str) -> Path:
    """Stated confidence against the share of right top answers, per bin (the diagonal is a perfect reading)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.plot([0, 100], [0, 100], color="#9e9e9e", linestyle="--", label="perfectly calibrated")
    if bins:
        ax.plot([b.mean_confidence for b in bins], [b.share_right for b in bins], marker="o", color="#1565c0",
                label="held-out questions")
        for b in bins:
            ax.annotate(str(b.questions), (b.mean_confidence, b.share_right), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("confidence (bin mean)")
    ax.set_ylabel("% of these questions whose top FAQ was right")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def faq_report_markdown(result: FaqEvalResult, *, title: str, command: str, encoder: str,
                        images: Sequence[str] = ()) -> str:
    s = result.summary()
    at = result.at_threshold
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`  ",
        f"Encoder: `{encoder}`  ",
        f"Calibration: {result.calibration.source}",
        "",
        f"{result.n_queries} queries: {result.n_in_scope} in scope, {result.n_out_of_scope} out of scope.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| top-1 (in scope) | {fmt_number(result.top1)} |",
        f"| MRR@10 (in scope) | {fmt_number(result.mrr10)} |",
        f"| recall@5 (in scope) | {fmt_number(result.recall5)} |",
        (f"| answer line in force | confidence >= {result.min_confidence:g} |" if result.min_confidence is not None
         else f"| threshold in force | {fmt_number(result.threshold, 4)} (= {s['threshold_percent']}%) |"),
        f"| ambiguity margin | {fmt_number(result.margin, 4)} |",
        f"| in scope answered right | {fmt_number(at.in_scope_answered_right)} |",
        f"| out-of-scope rejected | {fmt_number(result.oos_rejection)} |",
        f"| **overall accuracy** | **{fmt_number(result.overall_accuracy)}** |",
        f"| precision of answers | {fmt_number(at.precision)} |",
        f"| answer rate | {fmt_number(at.answer_rate)} |",
        f"| clarify questions | {int(at.clarified.sum())} |",
        f"| threshold with max overall accuracy | {fmt_number(result.sweep.best_threshold, 4)} → {fmt_number(result.sweep.best_accuracy)} |",
        f"| lowest threshold with {result.sweep.precision_target:.0%} precision | "
        f"{fmt_number(result.sweep.precision_threshold, 4)} → accuracy {fmt_number(result.sweep.precision_threshold_accuracy)}, "
        f"answer rate {fmt_number(result.sweep.precision_threshold_answer_rate)} |",
        "",
        *_confidence_section(result),
        f"## Ambiguity margin at threshold {result.threshold:.4f}",
        "",
        "A margin m turns an answer into a clarify question (您是想问…) when the runner-up also clears its threshold "
        "and is within m of the best. Compared with no margin:",
        "",
        "| margin | clarify questions | wrong answers prevented | right answers delayed | right FAQ offered | overall accuracy |",
        "|---|---|---|---|---|---|",
        *(f"| {r.margin:.4f} | {r.clarified} | {r.wrong_prevented} | {r.right_delayed} | {r.expected_offered} | "
          f"{r.accuracy:.3f} |" for r in result.margins),
        "",
        f"Recommended margin (the largest whose clarify questions replace wrong answers at least 75% of the time): "
        f"{result.recommended_margin:.4f}",
        "",
    ]
    if result.unknown_expected:
        lines += [f"Warning: {len(result.unknown_expected)} expected id(s) are not in the KB, e.g. "
                  f"{', '.join(result.unknown_expected[:5])}.", ""]
    for image in images:
        lines += [f"![{image}]({image})", ""]
    mistakes = [r for r in result.results if not r.correct][:30]
    if mistakes:
        lines += ["## First mistakes", "", "| query | expected | bot | best match | cosine | percent |", "|---|---|---|---|---|---|"]
        for r in mistakes:
            best = r.decision.best
            verdict = "answered" if r.decision.matched else r.decision.reason
            lines.append(f"| {_cell(r.query)} | {r.expected or '(out of scope)'} | {verdict} | "
                         f"{best.faq_id if best else '–'} | {fmt_number(best.similarity if best else None, 4)} | "
                         f"{fmt_number(best.percent if best else None, 1)} |")
        lines.append("")
    return "\n".join(lines)


def _confidence_section(result: FaqEvalResult) -> list[str]:
    """The confidence sweep and the reliability table, when the encoder has a confidence model."""
    sweep = result.confidence_sweep(step=10.0)
    if not sweep:
        return []
    return [
        "## Confidence", "",
        "Overall accuracy if the bot answered at each confidence line (per-FAQ thresholds aside):", "",
        "| min_confidence | overall accuracy | out-of-scope refused |", "|---|---|---|",
        *(f"| {line:.0f} | {acc:.3f} | {refused:.3f} |" for line, acc, refused in sweep), "",
        "Reliability: of the questions whose confidence fell in a bin, the share whose top FAQ was right "
        "(a trustworthy confidence sits on the diagonal).", "",
        "| confidence | questions | mean confidence | % right |", "|---|---|---|---|",
        *(f"| {b.low}-{b.high} | {b.questions} | {b.mean_confidence:.1f} | {b.share_right:.1f} |" for b in result.reliability()),
        "", "![reliability](reliability.png)", "",
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_faq_report(result: FaqEvalResult, out_dir: Path, *, title: str, command: str, encoder: str) -> Path:
    """Write report.md plus similarity_histograms.png and accuracy_vs_threshold.png into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_similarity_histograms(result, out_dir / "similarity_histograms.png")
    plot_accuracy_curve(result, out_dir / "accuracy_vs_threshold.png")
    if result.confidences is not None:
        plot_reliability(result.reliability(), out_dir / "reliability.png", "Reliability of the confidence on this benchmark")
    report = out_dir / "report.md"
    report.write_text(faq_report_markdown(result, title=title, command=command, encoder=encoder,
                                          images=("similarity_histograms.png", "accuracy_vs_threshold.png")),
                      encoding="utf-8")
    return report


def plot_pair_histogram(name: str, result: PairEvalResult, path: Path) -> Path:
    """Cosine histograms of the two labels (binary) or of each score (graded)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    bins = np.linspace(float(np.floor(result.cosines.min() * 50) / 50), 1.0, 51)
    for value in np.unique(result.labels):
        ax.hist(result.cosines[result.labels == value], bins=bins, alpha=0.5, label=f"label {value:g}")
    if result.best_threshold is not None:
        ax.axvline(result.best_threshold, color="black", linestyle="--", label=f"best threshold {result.best_threshold:.3f}")
    ax.set_xlabel("cosine")
    ax.set_ylabel("pairs")
    ax.set_title(name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_pairs_report(results: dict[str, PairEvalResult], out_dir: Path, *, command: str, encoder: str) -> Path:
    """pairs.md with one row per file, and a cosine histogram per file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Sentence-pair evaluation", "", f"Command: `{command}`  ", f"Encoder: `{encoder}`", "",
        "| file | pairs | Spearman | ROC-AUC | best threshold | best accuracy | median % paraphrase | median % unrelated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r.n_pairs} | {fmt_number(r.spearman)} | {fmt_number(r.roc_auc)} | {fmt_number(r.best_threshold, 4)} | "
                     f"{fmt_number(r.best_accuracy)} | {fmt_number(r.median_percent_positive, 1)} | {fmt_number(r.median_percent_negative, 1)} |")
    lines.append("")
    for name, r in results.items():
        image = "pairs_" + "".join(c if c.isalnum() else "_" for c in name) + ".png"
        plot_pair_histogram(name, r, out_dir / image)
        lines += [f"![{name}]({image})", ""]
    report = out_dir / "pairs.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
