#!/usr/bin/env python
"""Draw docs/architecture.png: the four packages, admin's rooms, and who may import whom.

    .venv/bin/python scripts/draw_architecture.py [--out docs/architecture.png]

The picture is drawn from the rules in tests/test_architecture.py (which reads them off the code),
with matplotlib (Agg backend, no display); line counts are measured from the tree as it stands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (folder, label, what it holds, x, y, width, height) in a 100 x 100 frame
BOXES = [
    ("faq", "faq/", "the KB: schema, YAML loading with file:line errors,\ngolden questions, the error root", 5, 4, 90, 12),
    ("index", "index/", "text -> vectors -> hits: the one sanitiser, encoders, FAISS index,\n"
     "calibration, the data-dir layout, FileLock", 5, 20, 90, 12),
    ("bot", "bot/", "the running service: FaqService (the one chat path), FastAPI app,\n"
     "routes, webhooks, miss log, limits, pages; errors -> HTTP here", 5, 36, 90, 13),
    ("admin/curation", "curation/", "misses, KB edits,\ngated rebuild, lint, stats", 5, 55, 24, 11),
    ("admin/quality", "quality/", "evaluation,\ncalibration, reports", 40, 55, 24, 11),
    ("admin/web", "web/", "admin API + the\nserved app", 5, 70, 24, 10),
    ("admin/finetune", "finetune/", "data, training,\nvalidation, deploy", 40, 70, 24, 10),
    ("admin/loadtest", "loadtest/", "bench, soak\n(against a child server)", 71, 70, 24, 10),
    ("admin/cli", "cli/", "`faqbot`: flags -> typed options; errors -> exit codes here (imports every room)", 5, 85, 90, 9),
]
# (from, to): "from imports to"
ARROWS = [
    ("index", "faq"), ("bot", "index"),
    ("admin/curation", "bot"), ("admin/quality", "bot"), ("admin/loadtest", "bot"),
    ("admin/web", "admin/curation"), ("admin/finetune", "admin/quality"),
    ("admin/cli", "admin/web"), ("admin/cli", "admin/finetune"), ("admin/cli", "admin/loadtest"),
]


def lines_of(folder: str) -> int:
    return sum(len(p.read_text(encoding="utf-8").splitlines()) for p in (ROOT / folder).rglob("*.py"))


def draw(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(11, 8.2), dpi=110)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.axis("off")
    ax.add_patch(FancyBboxPatch((2, 52), 96, 45, boxstyle="round,pad=0.4", facecolor="#f3f6fb", edgecolor="#9aa7b8",
                                linestyle="--"))
    ax.text(85, 66, "admin/: rooms by job;\nadmin/errors.py:\nCommandError, UsageError", ha="left", va="top",
            fontsize=8, color="#5b6b80")
    centres = {}
    for folder, label, says, x, y, w, h in BOXES:
        colour = "#fde9d9" if folder.startswith("admin") else "#e4efe0"
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.3", facecolor=colour, edgecolor="#444"))
        ax.text(x + 1, y + h - 1.2, f"{label}  {lines_of(folder):,} lines", fontsize=10, fontweight="bold", va="top")
        ax.text(x + 1, y + h - 4.2, says, fontsize=8, va="top", color="#333")
        centres[folder] = (x, y, w, h)
    for source, target in ARROWS:
        sx, sy, sw, _ = centres[source]
        tx, ty, tw, th = centres[target]
        start = (sx + sw / 2, sy)
        end = (min(max(start[0], tx + 2), tx + tw - 2), ty + th)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#2f5d9e", lw=1.2))
    ax.set_title("faqbot: who may import whom (an arrow = imports; every admin room may also import faq, index, bot)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "architecture.png")
    print(f"wrote {draw(parser.parse_args(argv).out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
