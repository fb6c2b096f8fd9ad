"""The Markdown report and PNG plots of a confidence fit (`faqbot calibrate --confidence-* --report-dir`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from admin.quality.confidence_fit import ConfidenceFit, DomainRow, group_rows
from admin.quality.report import fmt_number, plot_reliability, pyplot


def plot_domains(rows: Sequence[DomainRow], path: Path) -> Path:
    """Overall accuracy per held-out domain: old cosine rule, best threshold on the domain, confidence rule."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows)), 4.5), dpi=110)
    x = np.arange(len(rows))
    for offset, attr, colour, label in ((-0.27, "old_rule", "#9e9e9e", "old rule (shipped cosine threshold)"),
                                        (0.0, "best_threshold", "#90caf9", "best cosine threshold on the domain"),
                                        (0.27, "confidence_rule", "#2e7d32", "confidence >= line (held out)")):
        ax.bar(x + offset, [getattr(r, attr) for r in rows], width=0.27, color=colour, label=label)
    ax.set_xticks(x, [r.name for r in rows], rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("overall accuracy")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def domain_table(rows: Sequence[DomainRow]) -> list[str]:
    lines = ["| held-out domain | questions | old rule | best threshold | confidence rule | vs best | out-of-scope refused | top-1 dense → hybrid |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = "" if r.fitted else " (not fitted on)"
        lines.append(f"| {r.name}{mark} | {r.queries} | {fmt_number(r.old_rule)} | {fmt_number(r.best_threshold)} | "
                     f"{fmt_number(r.confidence_rule)} | {r.confidence_rule - r.best_threshold:+.3f} | "
                     f"{fmt_number(r.oos_refused)} | {fmt_number(r.dense_top1)} → {fmt_number(r.top1)} |")
    return lines


def write_confidence_report(fit: ConfidenceFit, out_dir: Path, *, command: str, encoder: str) -> Path:
    """confidence.md with the leave-one-domain-out table, the reliability table and the two plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    grouped = group_rows(fit.rows)
    plot_reliability(fit.reliability, out_dir / "confidence_reliability.png",
                     "Reliability, every domain held out (domains weigh alike)")
    plot_domains(grouped, out_dir / "confidence_domains.png")
    m = fit.model
    steps = "; then ".join(f"by {term} weight " + " · ".join(f"{w:g}: {np.mean(t):.4f}" for w, t in top1.items())
                           for term, top1 in fit.top1_by_term.items())
    lines = [
        "# Confidence model: leave-one-domain-out", "",
        f"Encoder `{encoder}`. Command: `{command}`", "",
        f"Domains ({len(fit.domain_names)}): {', '.join(fit.domain_names)}.", "",
        f"Model: logistic over {', '.join(m.features)}; ranking weights: "
        + ", ".join(f"{term} {w:g}" for term, w in vars(m.ranking).items())
        + f"; answers at confidence >= {m.min_confidence:g}.",
        f"Mean top-1 over domains, each term on top of the weights chosen before it: {steps}.", "",
        f"Each row is read by a model fitted without that domain (all its sizes and variants). The old rule is the "
        f"dense ranking with the shipped cosine threshold {fit.old_threshold:.4f}; best threshold is the cosine "
        "threshold chosen on the domain itself (an oracle).", "",
        *domain_table(grouped), "",
        "## Reliability (held out)", "",
        "| confidence | questions | mean confidence | % top FAQ right |", "|---|---:|---:|---:|",
        *[f"| {b.low}-{b.high} | {b.questions} | {b.mean_confidence:.1f} | {b.share_right:.1f} |" for b in fit.reliability],
        "", "![reliability](confidence_reliability.png)", "", "![domains](confidence_domains.png)", "",
        "## Every domain", "", *domain_table(fit.rows), "",
    ]
    path = out_dir / "confidence.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
