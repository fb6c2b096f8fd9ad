"""Validating base and fine-tuned alike: recalibrate each the same way, measure held-out FAQ sets and
pair files with `faqbot eval`'s metrics, and the deploy gate (docs/finetune.md).

Each model is recalibrated on labelled pairs neither model trained on (the held-out part of the
training data, `--calibrate-pairs` minus any pair sharing a text with training), else on the
configured KB, and read at its own recalibrated threshold.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from admin.errors import CommandError
from admin.quality.calibrate import CachingEncoder, CalibrationDataError, calibrate_from_kb, calibrate_from_pairs
from admin.quality.evaluation import (
    EvalQuery,
    FaqEvalResult,
    LabelledPair,
    PairEvalResult,
    evaluate_faq,
    evaluate_pairs,
)
from bot.settings import Settings
from faq import KnowledgeBase, load_kb
from index.calibration import Calibration
from index.encoders import Encoder, EncoderSpec, load_encoder
from index.progress import progress_bar

PAIR_SAMPLE_SEED = 20240607

PairSets = dict[str, list[LabelledPair]]


@dataclass(frozen=True)
class CalibrationPairs:
    """Labelled pairs that neither model trained on, to recalibrate both the same way.

    The percent map reads every set; the threshold only `threshold_from` when it is set: the held-out
    part of the training data, the team's own domain (as the shipped calibration takes its percent map
    from LCQMC and its threshold from the customer-service pairs of BQ). A threshold pooled over domains
    sits between them and fits neither.
    """

    sets: PairSets
    threshold_from: str | None = None

    @property
    def threshold_sets(self) -> PairSets | None:
        return {self.threshold_from: self.sets[self.threshold_from]} if self.threshold_from in self.sets else None

    def describe(self) -> str:
        names = ", ".join(f"{name} ({len(pairs)} pairs)" for name, pairs in self.sets.items())
        return names + (f"; threshold from {self.threshold_from} alone" if self.threshold_sets else "")


def sample_pairs(pairs: Sequence[LabelledPair], max_pairs: int | None) -> list[LabelledPair]:
    """A seeded sample (file order kept), as `read_pair_files` samples."""
    if max_pairs is None or len(pairs) <= max_pairs:
        return list(pairs)
    keep = sorted(random.Random(PAIR_SAMPLE_SEED).sample(range(len(pairs)), max_pairs))
    return [pairs[i] for i in keep]


@dataclass(frozen=True)
class FaqSet:
    name: str
    kb: KnowledgeBase
    queries: list[EvalQuery]
    # gate: deploy only if its overall accuracy did not drop; watch: reported only (not in --gate-on);
    # simulated: the FAQ bench simulated from the held-out training pairs, reported only
    role: Literal["gate", "watch", "simulated"] = "gate"


@dataclass
class ModelFigures:
    """One model's validation: its calibration, and the FAQ and pair figures read with it."""

    label: str
    fingerprint: str
    calibration: Calibration
    faq: dict[str, FaqEvalResult]
    pairs: dict[str, PairEvalResult]
    seconds: float
    encoder: Encoder


def eval_encoder(model_dir: Path, settings: Settings, threads: int) -> Encoder:
    """The model as `faqbot serve` would load it after a deploy (same prompts, length, KB prefix)."""
    spec = EncoderSpec(spec=f"sentence-transformers:{Path(model_dir).resolve()}", kb_prefix=settings.kb_prefix,
                       query_prompt=settings.query_prompt, passage_prompt=settings.passage_prompt,
                       max_seq_length=settings.max_seq_length, threads=threads)
    return load_encoder(spec)


def fit_calibration(encoder: Encoder, settings: Settings, calibrate_sets: CalibrationPairs | None,
                    command: str) -> Calibration:
    """Recalibrate the same way for every model: from labelled pairs if given (held-out training pairs and/or
    --calibrate-pairs, never pairs the model trained on), else from the configured KB."""
    try:
        if calibrate_sets:
            total = sum(2 * len(p) for p in calibrate_sets.sets.values())
            fit = calibrate_from_pairs(encoder, calibrate_sets.sets, threshold_sets=calibrate_sets.threshold_sets,
                                       command=command, progress=progress_bar("calibrating (pairs)")(total))
        else:
            kb = load_kb(settings.kb)
            fit = calibrate_from_kb(encoder, kb, command=command,
                                    progress=progress_bar("calibrating (KB)")(2 * len(kb.texts())))
    except CalibrationDataError as exc:
        raise CommandError(f"cannot recalibrate: {exc} (give --calibrate-pairs FILE.tsv with 0/1 labelled pairs "
                           "the model does not train on, or --holdout 0.2 of a labelled training file)") from exc
    return fit.calibration


def validate(label: str, encoder: Encoder, settings: Settings, faq_sets: Sequence[FaqSet],
             pair_sets: dict[str, Any], calibrate_sets: CalibrationPairs | None, command: str) -> ModelFigures:
    started = time.monotonic()
    cached = CachingEncoder(encoder)  # the FAQ benches are often built from the pair files: encode once
    print(f"validating the {label} model ({encoder.fingerprint})", file=sys.stderr)
    calibration = fit_calibration(cached, settings, calibrate_sets, command)
    faq_results = {}
    for faq_set in faq_sets:
        advance = progress_bar(f"{label}: FAQ {faq_set.name}")(len(faq_set.kb.texts()) + len(faq_set.queries))
        # threshold None: each model is read at its own recalibrated threshold (a KB default still wins)
        faq_results[faq_set.name] = evaluate_faq(cached, faq_set.kb, faq_set.queries, calibration=calibration,
                                                 progress=advance)
    pair_results = {}
    for name, pairs in pair_sets.items():
        advance = progress_bar(f"{label}: pairs {name}")(2 * len(pairs))
        pair_results[name] = evaluate_pairs(cached, pairs, calibration=calibration, progress=advance)
    return ModelFigures(label, encoder.fingerprint, calibration, faq_results, pair_results,
                        time.monotonic() - started, cached)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]


def gate(before: ModelFigures, after: ModelFigures, tolerance: float = 0.0,
         names: Sequence[str] | None = None) -> GateDecision:
    """Deploy only if no held-out FAQ set (of `names`, default all) lost overall accuracy (beyond `tolerance`)
    at the recalibrated threshold."""
    gated = [n for n in before.faq if names is None or n in names]
    if not gated:
        return GateDecision(False, ["no held-out FAQ set to compare on (give --eval-kb KB --eval-queries Q.jsonl)"])
    reasons, passed = [], True
    for name in gated:
        old, new = before.faq[name], after.faq[name]
        delta = new.overall_accuracy - old.overall_accuracy
        ok = delta >= -tolerance - 1e-12
        passed &= ok
        verdict = "kept" if ok else "DROPPED"
        reasons.append(f"{name}: overall accuracy {old.overall_accuracy:.4f} -> {new.overall_accuracy:.4f} "
                       f"({delta:+.4f}, {verdict}; threshold {old.threshold:.4f} -> {new.threshold:.4f})")
    return GateDecision(passed, reasons)

