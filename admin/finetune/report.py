"""The fine-tuning report: before/after tables, similarity histograms and FAQ maps (Markdown + PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from admin.finetune.training import TrainConfig, TrainResult
from admin.finetune.validation import CalibrationPairs, FaqSet, GateDecision, ModelFigures
from admin.quality.report import HIST_COLOURS, HIST_LABELS, fmt_number, pyplot


def _delta(old: float | None, new: float | None, digits: int = 3) -> str:
    if old is None or new is None or old != old or new != new:
        return "–"
    return f"{new - old:+.{digits}f}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def plot_similarity(before: ModelFigures, after: ModelFigures, out_dir: Path) -> list[str]:
    """Per eval set, cosine distributions before | after: pairs by label, FAQ queries by outcome."""
    plt = pyplot()
    images = []
    for name in before.pairs:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharey=True)
        for ax, figures in zip(axes, (before, after), strict=True):
            result = figures.pairs[name]
            bins = np.linspace(float(np.floor(result.cosines.min() * 50) / 50), 1.0, 51)
            for value in np.unique(result.labels):
                ax.hist(result.cosines[result.labels == value], bins=bins, alpha=0.55, label=f"label {value:g}")
            ax.set_title(f"{figures.label}: {name} (ROC-AUC {fmt_number(result.roc_auc)})")
            ax.set_xlabel("cosine")
            ax.legend(fontsize=8)
        fig.tight_layout()
        image = f"pairs_{_slug(name)}.png"
        fig.savefig(out_dir / image)
        plt.close(fig)
        images.append(image)
    for name in before.faq:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharey=True)
        for ax, figures in zip(axes, (before, after), strict=True):
            result = figures.faq[name]
            groups = result.similarity_groups()
            values = np.concatenate([v for v in groups.values() if v.size] or [np.zeros(1)])
            bins = np.linspace(float(np.floor(np.nanmin(values) * 50) / 50), 1.0, 51)
            for group, sims in groups.items():
                if sims.size:
                    ax.hist(sims, bins=bins, alpha=0.55, color=HIST_COLOURS[group], label=f"{HIST_LABELS[group]} ({sims.size})")
            ax.axvline(result.threshold, color="black", linestyle="--", label=f"threshold {result.threshold:.3f}")
            ax.set_title(f"{figures.label}: FAQ {name} (top-1 {fmt_number(result.top1)})")
            ax.set_xlabel("cosine of the best-matching FAQ")
            ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        image = f"faq_similarity_{_slug(name)}.png"
        fig.savefig(out_dir / image)
        plt.close(fig)
        images.append(image)
    return images


def _map_points(faq_set: FaqSet, max_faqs: int) -> tuple[list[str], list[str], list[bool]]:
    """Texts of the FAQs with the most ways of asking (question, paraphrases, held-out queries): (texts, faq ids, is KB text)."""
    asked: dict[str, list[str]] = {}
    for query in faq_set.queries:
        if query.expected is not None:
            asked.setdefault(query.expected, []).append(query.query)
    ranked = sorted(faq_set.kb.faqs, key=lambda f: -(len(f.texts) + len(asked.get(f.id, []))))
    texts, owners, is_kb = [], [], []
    for faq in ranked[:max_faqs]:
        if len(faq.texts) + len(asked.get(faq.id, [])) < 2:
            break
        for text in faq.texts:
            texts.append(text)
            owners.append(faq.id)
            is_kb.append(True)
        for text in asked.get(faq.id, [])[:15]:
            texts.append(text)
            owners.append(faq.id)
            is_kb.append(False)
    return texts, owners, is_kb


def plot_faq_map(faq_set: FaqSet, before: ModelFigures, after: ModelFigures, out_dir: Path,
                 max_faqs: int = 12) -> str | None:
    """t-SNE of the most-asked FAQs' texts, before | after, one colour per FAQ (squares: KB texts)."""
    from sklearn.manifold import TSNE

    texts, owners, is_kb = _map_points(faq_set, max_faqs)
    if len(set(owners)) < 2 or len(texts) < 6:
        return None
    plt = pyplot()
    colours = plt.get_cmap("tab20")
    ids = list(dict.fromkeys(owners))
    kb_mask = np.array(is_kb)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), dpi=100)
    for ax, figures in zip(axes, (before, after), strict=True):
        vectors = np.where(kb_mask[:, None], figures.encoder.encode_passages(texts), figures.encoder.encode_queries(texts))
        perplexity = float(min(15, max(2, (len(texts) - 1) // 3)))
        points = TSNE(n_components=2, metric="cosine", init="random", random_state=0,
                      perplexity=perplexity).fit_transform(vectors)
        for i, faq_id in enumerate(ids):
            mine = np.array([o == faq_id for o in owners])
            ax.scatter(points[mine & ~kb_mask, 0], points[mine & ~kb_mask, 1], s=18, color=colours(i % 20),
                       label=faq_id)
            ax.scatter(points[mine & kb_mask, 0], points[mine & kb_mask, 1], s=60, marker="s",
                       color=colours(i % 20), edgecolors="black")
        ax.set_title(f"{figures.label}: {faq_set.name}, {len(ids)} FAQs (t-SNE)")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    image = f"faq_map_{_slug(faq_set.name)}.png"
    fig.savefig(out_dir / image)
    plt.close(fig)
    return image


def report_markdown(*, command: str, base_dir: Path, out_dir: Path, config: TrainConfig, train_result: TrainResult,
                    before: ModelFigures, after: ModelFigures, decision: GateDecision | None,
                    timings: dict[str, float], peak_rss_mb: float, images: Sequence[str],
                    data_summary: dict[str, int], calibrate_sets: CalibrationPairs | None = None,
                    heldout_rows: int = 0, watched: Sequence[str] = (),
                    simulated: Sequence[str] = ()) -> str:
    calibrated_on = calibrate_sets.describe() if calibrate_sets else "the configured KB"
    lines = [
        "# Fine-tuning report", "",
        f"Command: `{command}`  ", f"Base: `{base_dir}`  ", f"Fine-tuned: `{out_dir}`  ",
        "Backend for both (same prompts, length and recalibration): `sentence-transformers`  ",
        f"Recalibrated on: {calibrated_on}"
        + (f"; {heldout_rows} training examples held out for it (no text shared with training)" if heldout_rows else "")
        + "  ", f"Calibration: {after.calibration.source}", "",
        "## Training", "",
        "| parameter | value |", "|---|---|",
        f"| loss | {config.loss}{' (symmetric)' if config.symmetric else ''}"
        f"{'' if config.loss == 'cosine' else f', scale {config.scale:g}'} |", f"| examples | {train_result.rows} ({', '.join(f'{k} {v}' for k, v in data_summary.items())}) |",
        f"| steps | {train_result.steps} of {train_result.planned_steps} planned"
        f"{' (' + train_result.stopped_early + ')' if train_result.stopped_early else ''} |",
        f"| epochs / batch size / learning rate | {config.epochs} / {config.batch_size} / {config.learning_rate:g} |",
        f"| blended back toward the base | {config.base_weight:g} |",
        f"| max sequence length | {config.max_seq_length} tokens |",
        f"| word embeddings | {'frozen' if config.freeze_embeddings else 'trained'} |",
        f"| trainable layers | {'all' if config.trainable_layers is None else config.trainable_layers} |",
        f"| trainable parameters | {train_result.trainable_parameters:,} |",
        f"| threads | {config.threads} |",
        f"| loss (first 20 steps → last 20) | {fmt_number(float(np.mean(train_result.losses[:20])), 4)} → "
        f"{fmt_number(float(np.mean(train_result.losses[-20:])), 4)} |",
        "", "| phase | wall time |", "|---|---|",
        *(f"| {phase} | {seconds / 60:.1f} min ({seconds:.0f} s) |" for phase, seconds in timings.items()),
        f"| peak memory (RSS) | {peak_rss_mb:,.0f} MB |", "",
        "## Before / after", "",
        "Each model is recalibrated the same way and read at its own recalibrated threshold."
        + (f" `{'`, `'.join(simulated)}`: an FAQ bench simulated from the held-out training pairs (a development "
           "figure for choosing parameters; not gated on)." if simulated else "")
        + (f" `{'`, `'.join(watched)}`: watched for what the model forgets, not gated on (`--gate-on`)."
           if watched else ""), "",
        "| set | figure | base | fine-tuned | change |", "|---|---|---|---|---|",
    ]
    for name, old in before.faq.items():
        new = after.faq[name]
        for label, a, b in (("FAQ top-1", old.top1, new.top1), ("FAQ MRR@10", old.mrr10, new.mrr10),
                            ("threshold (recalibrated)", old.threshold, new.threshold),
                            ("overall accuracy at threshold", old.overall_accuracy, new.overall_accuracy),
                            ("best overall accuracy (any threshold)", old.sweep.best_accuracy, new.sweep.best_accuracy)):
            lines.append(f"| {name} | {label} | {fmt_number(a, 4)} | {fmt_number(b, 4)} | {_delta(a, b, 4)} |")
    for name, old in before.pairs.items():
        new = after.pairs[name]
        if old.kind == "binary":
            lines.append(f"| {name} | pair ROC-AUC | {fmt_number(old.roc_auc, 4)} | {fmt_number(new.roc_auc, 4)} | "
                         f"{_delta(old.roc_auc, new.roc_auc, 4)} |")
        else:
            lines.append(f"| {name} | Spearman | {fmt_number(old.spearman, 4)} | {fmt_number(new.spearman, 4)} | "
                         f"{_delta(old.spearman, new.spearman, 4)} |")
    lines.append("")
    if decision is not None:
        lines += ["## Deploy gate", "", f"**{'PASSED' if decision.passed else 'REFUSED'}**: held-out overall "
                  "accuracy must not drop on any FAQ set.", "", *(f"- {r}" for r in decision.reasons), ""]
    lines += ["## Plots", ""]
    for image in images:
        lines += [f"![{image}]({image})", ""]
    return "\n".join(lines)


def print_comparison(before: ModelFigures, after: ModelFigures) -> None:
    print("                                   base    fine-tuned")
    for name, old in before.faq.items():
        new = after.faq[name]
        print(f"FAQ {name:12s} top-1             {fmt_number(old.top1, 4)}  {fmt_number(new.top1, 4)}")
        print(f"FAQ {name:12s} overall accuracy  {fmt_number(old.overall_accuracy, 4)}  {fmt_number(new.overall_accuracy, 4)}"
              f"   (thresholds {old.threshold:.4f} / {new.threshold:.4f})")
    for name, old in before.pairs.items():
        new = after.pairs[name]
        print(f"pairs {name:16s} ROC-AUC  {fmt_number(old.roc_auc, 4)}  {fmt_number(new.roc_auc, 4)}")

