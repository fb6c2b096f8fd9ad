"""`faqbot finetune`: teach the encoder the team's own words, offline, and deploy it only if it is better.

The flow of the sentence-transformers documentation (data -> model -> training pairs -> parameters ->
train -> validate -> deploy) on a plain CPU server (docs/finetune.md), over one typed request:

1. base: the bundled model exported as a sentence-transformers dir (`<data_dir>/models/bundled`,
   made on first use, no download) or any sentence-transformers model directory;
2. data: JSONL pairs/triplets/scored pairs and TSV files (admin.finetune.data), `--from-kb`
   and `--from-misses`, hard negatives mined from the FAQs the base model confuses them with;
3. train: admin.finetune.training (CPU-aware defaults, checkpoints, Ctrl-C keeps the last step);
4. validate: the base and the new model, on the same backend, each recalibrated the same way on
   labelled pairs the model did not train on (admin.finetune.validation), on held-out FAQ sets
   (`faqbot eval`'s metrics) and pair files; a Markdown report with PNG plots (admin.finetune.report);
5. deploy (`--deploy`): only when no held-out FAQ set lost overall accuracy (admin.finetune.deploy).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from admin.errors import CommandError, UsageError
from admin.finetune.data import (
    TEXT_INTENT,
    TrainingDataError,
    TrainRow,
    drop_seen,
    has_labelled_pairs,
    holdout_split,
    intent_groups,
    labelled_pairs,
    load_training_file,
    mine_kb_negatives,
    mine_pair_negatives,
    pairs_from_kb,
    pairs_from_misses,
    rows_for_loss,
    sample_rows,
    training_texts,
)
from admin.finetune.deploy import deploy, pack_texts
from admin.finetune.report import plot_faq_map, plot_similarity, print_comparison, report_markdown
from admin.finetune.training import TrainConfig, TrainResult, prepare_model, resolve_base, train
from admin.finetune.validation import (
    CalibrationPairs,
    FaqSet,
    GateDecision,
    ModelFigures,
    PairSets,
    eval_encoder,
    gate,
    sample_pairs,
    validate,
)
from admin.quality.calibrate import faq_bench_from_pairs, read_pair_files
from admin.quality.evaluation import EvalDataError, load_queries
from bot.settings import Settings
from faq import load_kb
from faq.golden import golden_file
from index.datadir import DataDir

PROVENANCE_FILE = "finetune.json"
DEFAULT_HOLDOUT = 0.2  # of labelled training pairs, kept out of training to recalibrate on (docs/finetune.md)
ServeAs = Literal["sentence-transformers", "onnx", "q4"]


@dataclass(frozen=True)
class TrainingData:
    """Where the training examples come from."""

    files: tuple[Path, ...] = ()
    from_kb: Path | None = None
    from_misses: bool = False
    mine_negatives: bool = False
    max_examples: int | None = None

    @property
    def heldout_name(self) -> str:
        """The name the held-out part goes by in the report: the training file's, when there is one file."""
        if len(self.files) == 1 and not self.from_kb and not self.from_misses:
            path = Path(self.files[0])
            return f"{path.parent.name}/{path.stem} held out" if path.parent.name else f"{path.stem} held out"
        return "training data held out"


@dataclass(frozen=True)
class Validation:
    """What both models are measured on, what they are recalibrated on, and what gates a deploy."""

    eval_kbs: tuple[Path, ...] = ()
    eval_queries: tuple[Path, ...] = ()
    eval_pairs: tuple[Path, ...] = ()
    eval_max_pairs: int | None = None
    holdout: float | None = None
    calibrate_pairs: tuple[Path, ...] = ()
    calibrate_max_pairs: int = 2000
    gate_on: tuple[str, ...] = ()
    gate_tolerance: float = 0.0


@dataclass(frozen=True)
class FinetuneRequest:
    """One fine-tuning run (the flags of `faqbot finetune`); `config.loss` may be `auto`."""

    data: TrainingData
    config: TrainConfig = field(default_factory=TrainConfig)
    validation: Validation = field(default_factory=Validation)
    base: str = "bundled"
    out: Path | None = None
    overwrite: bool = False
    deploy: bool = False
    serve_as: ServeAs = "sentence-transformers"


@dataclass(frozen=True)
class FinetuneOutcome:
    """What a run did. status: trained | deployed | deploy_refused."""

    status: Literal["trained", "deployed", "deploy_refused"]
    out_dir: Path
    report: Path | None = None


# --- data and sets, checked before anything heavy starts -------------------------------------------


def load_training_rows(data: TrainingData, settings: Settings) -> tuple[list[TrainRow], dict[str, int]]:
    """Every source the request names, validated before anything heavy starts."""
    rows: list[TrainRow] = []
    summary: dict[str, int] = {}
    for path in data.files:
        loaded = load_training_file(path)
        rows += loaded
        summary[Path(path).name] = len(loaded)
    if data.from_kb:
        kb_rows = pairs_from_kb(load_kb(data.from_kb))
        rows += kb_rows
        summary["from KB"] = len(kb_rows)
    if data.from_misses:
        from bot.store import Store

        store = Store(settings.resolved_database_url)
        try:
            miss_rows = pairs_from_misses(store.list_misses(status="resolved", limit=100_000), load_kb(settings.kb))
        finally:
            store.close()
        rows += miss_rows
        summary["from misses"] = len(miss_rows)
    if not rows:
        raise UsageError("no training data: give --train FILE, --from-kb KB and/or --from-misses")
    return rows, summary


def holdout_fraction(validation: Validation, rows: Sequence[TrainRow], validating: bool) -> float:
    """`--holdout` as given; by default 0.2 when the run validates, has no --calibrate-pairs and the
    training data holds labelled same/different pairs (a TSV or scored JSONL) to calibrate on."""
    if validation.holdout is not None:
        if validation.holdout and not validating:
            raise UsageError("--holdout keeps pairs for recalibrating at validation: give --eval-kb/--eval-queries "
                             "and/or --eval-pairs too")
        return validation.holdout
    if validating and not validation.calibrate_pairs and has_labelled_pairs(rows):
        return DEFAULT_HOLDOUT
    return 0.0


def heldout_faq_set(heldout: Sequence[TrainRow], name: str) -> FaqSet | None:
    """An FAQ bench simulated from the held-out pairs (as calibration simulates one): a development figure
    for choosing training parameters without looking at the test sets. Reported, not gated on."""
    kb, queries = faq_bench_from_pairs(labelled_pairs(heldout), name="heldout")
    if len(kb.faqs) < 2 or not any(q.expected for q in queries):
        return None
    return FaqSet(f"{name} (simulated)", kb, queries, role="simulated")


def calibration_sets(validation: Validation, train_rows: Sequence[TrainRow], heldout: Sequence[TrainRow],
                     name: str) -> CalibrationPairs | None:
    """Labelled pairs to recalibrate both models on: the held-out part of the training data, plus the
    --calibrate-pairs files with every pair that shares a text with the training data dropped (a
    threshold fitted on pairs the model trained on does not transfer to new questions). None: use the KB.
    The threshold comes from the held-out part alone when it holds both labels (see CalibrationPairs)."""
    sets: PairSets = {}
    threshold_from = None
    if heldout:
        pairs = labelled_pairs(heldout)
        if pairs:
            sets[name] = sample_pairs(pairs, validation.calibrate_max_pairs)
            if {p.label for p in sets[name]} >= {0.0, 1.0}:
                threshold_from = name
    if validation.calibrate_pairs:
        seen = training_texts(train_rows)
        try:
            files = read_pair_files(list(validation.calibrate_pairs))
        except (EvalDataError, OSError) as exc:
            raise CommandError(f"--calibrate-pairs: {exc}") from exc
        for file_name, pairs in files.items():
            kept, dropped = drop_seen(pairs, seen)
            if dropped:
                print(f"warning: --calibrate-pairs {file_name}: {dropped} of {len(pairs)} pairs share a text with the "
                      f"training data; dropped (calibrating on training data fits a threshold that does not transfer"
                      f"{'; use --holdout to keep part of the training file for calibration' if not kept else ''})",
                      file=sys.stderr)
            if kept:
                sets[file_name] = sample_pairs(kept, validation.calibrate_max_pairs)
        if not sets:
            raise UsageError("--calibrate-pairs: every pair shares a text with the training data; give pairs the "
                             "model does not train on, or --holdout 0.2 to keep part of the training file for "
                             "calibration")
    return CalibrationPairs(sets, threshold_from) if sets else None


def warn_eval_overlap(pair_sets: dict[str, Any], train_rows: Sequence[TrainRow]) -> None:
    """Pair figures on texts the model trained on flatter it: say so (the figures are still computed)."""
    seen = training_texts(train_rows)
    for name, pairs in pair_sets.items():
        _, shared = drop_seen(pairs, seen)
        if shared:
            print(f"warning: --eval-pairs {name}: {shared} of {len(pairs)} pairs share a text with the training data; "
                  "their figures flatter the fine-tuned model", file=sys.stderr)


def eval_sets(validation: Validation) -> tuple[list[FaqSet], dict[str, Any]]:
    """The held-out FAQ sets (gated on, or watched) and pair files both models are measured on."""
    kbs, query_files = validation.eval_kbs, validation.eval_queries
    if len(kbs) != len(query_files):
        raise UsageError("give --eval-kb and --eval-queries in pairs (one KB per queries file)")
    faq_sets = []
    for kb_path, query_path in zip(kbs, query_files, strict=True):
        name = Path(kb_path).name if Path(kb_path).is_dir() else Path(kb_path).parent.name
        faq_sets.append(FaqSet(name or str(kb_path), load_kb(kb_path), load_queries(query_path)))
    if validation.gate_on:
        unknown = sorted(set(validation.gate_on) - {s.name for s in faq_sets})
        if unknown:
            raise UsageError(f"--gate-on {', '.join(unknown)}: not an --eval-kb set (they are: "
                             f"{', '.join(s.name for s in faq_sets) or 'none'})")
        faq_sets = [s if s.name in validation.gate_on else replace(s, role="watch") for s in faq_sets]
    pair_sets = read_pair_files(validation.eval_pairs, max_pairs=validation.eval_max_pairs) if validation.eval_pairs else {}
    return faq_sets, pair_sets


def check_config(config: TrainConfig) -> None:
    """Options that would only fail after training, refused before it."""
    if not 0.0 <= config.base_weight < 1.0:
        raise UsageError(f"--base-weight {config.base_weight:g}: give a fraction in [0, 1), e.g. 0.3")
    if not config.scale > 0:
        raise UsageError(f"--scale {config.scale:g}: give a positive number, e.g. 20 (the default) or 50")


def choose_loss(requested: str, rows: Sequence[TrainRow]) -> str:
    """`auto`: MNRL when any row is a pair/triplet, CoSENT when every row is a scored pair."""
    if requested != "auto":
        return requested
    return "mnrl" if any(r.positive for r in rows) else "cosent"


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What the checks before training settled: the data, the sets, the config, where it goes."""

    rows: list[TrainRow]
    data_summary: dict[str, int]
    faq_sets: list[FaqSet]
    pair_sets: dict[str, Any]
    heldout: list[TrainRow]
    fraction: float
    calibrate_sets: CalibrationPairs | None
    config: TrainConfig
    out_dir: Path
    base_dir: Path = Path()
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


def run_finetune(request: FinetuneRequest, settings: Settings, *, command: str) -> FinetuneOutcome:
    """Train, validate, report and (if asked and the gate passes) deploy; see the module docstring.

    Every option is checked before the model loads (UsageError); Ctrl-C during training raises
    TrainingInterruptedError with the checkpoint of the last finished step.
    """
    plan = _plan(request, settings)
    plan.base_dir = _base(request, settings, plan.out_dir)
    plan.timings["base export / load"] = time.monotonic() - plan.started
    phase = time.monotonic()
    model, query_prompt, kb_prompt = prepare_model(plan.base_dir, plan.config, settings.kb_prefix)
    train_rows = _training_rows(plan, request.data, settings, model, query_prompt)
    plan.timings["data + mining"] = time.monotonic() - phase
    print(f"training {plan.config.loss} on {len(train_rows)} examples from {plan.data_summary}, base {plan.base_dir}",
          file=sys.stderr)
    before = _validated(plan, "base", plan.base_dir, settings, command) if plan.faq_sets or plan.pair_sets else None
    phase = time.monotonic()
    result = train(model, plan.base_dir, train_rows, plan.out_dir, plan.config, query_prompt, kb_prompt)
    plan.timings["training"] = time.monotonic() - phase
    print(f"trained {result.steps} step(s) in {result.seconds:.0f} s"
          + (f" (stopped early: {result.stopped_early})" if result.stopped_early else "") + f"; saved {plan.out_dir}")
    provenance = _provenance(plan, result, command)
    after = decision = report = None
    if before is not None:
        after = _validated(plan, "fine-tuned", plan.out_dir, settings, command)
        gated = [s.name for s in plan.faq_sets if s.role == "gate"]
        decision = gate(before, after, request.validation.gate_tolerance, gated) if gated else None
        report = _report(plan, result, before, after, decision, command, provenance)
    _write_provenance(plan, provenance)
    if not request.deploy:
        return FinetuneOutcome("trained", plan.out_dir, report)
    assert decision is not None and after is not None  # --deploy requires FAQ sets (checked in _plan)
    for reason in decision.reasons:
        print(f"  {reason}")
    if not decision.passed:
        print("deploy refused: held-out overall accuracy dropped; the configured encoder is unchanged")
        return FinetuneOutcome("deploy_refused", plan.out_dir, report)
    texts = pack_texts(train_rows, plan.config.seed) if request.serve_as == "q4" else ()
    print(deploy(settings, plan.out_dir, after, serve_as=request.serve_as, calibrate_sets=plan.calibrate_sets,
                 command=command, report=report, calibration_texts=texts))
    return FinetuneOutcome("deployed", plan.out_dir, report)


def served_golden_set(settings: Settings, validation: Validation) -> list[FaqSet]:
    """The served KB's own golden questions (tests.yaml beside it) always gate a deploy, as they gate a reload:
    a fine-tune that answers fewer of them right is not deployed."""
    golden = golden_file(settings.kb)
    if not golden.is_file() or any(Path(k).resolve() == Path(settings.kb).resolve() for k in validation.eval_kbs):
        return []
    return [FaqSet(f"golden:{Path(settings.kb).name}", load_kb(settings.kb), load_queries(golden))]


def _plan(request: FinetuneRequest, settings: Settings) -> _Plan:
    """The data, the held-out split, the sets and the config, every option checked (UsageError)."""
    started = time.monotonic()
    rows, data_summary = load_training_rows(request.data, settings)
    faq_sets, pair_sets = eval_sets(request.validation)
    faq_sets += served_golden_set(settings, request.validation)
    if request.deploy and not faq_sets:
        raise UsageError("--deploy needs a held-out FAQ set to gate on: --eval-kb KB --eval-queries Q.jsonl")
    validating = bool(faq_sets or pair_sets)
    fraction = holdout_fraction(request.validation, rows, validating)
    heldout: list[TrainRow] = []
    holdout_label = request.data.heldout_name
    if fraction > 0:
        try:
            rows, heldout = holdout_split(rows, fraction, request.config.seed)
        except TrainingDataError as exc:
            raise UsageError(str(exc)) from exc
        if not rows or not heldout:
            raise UsageError(f"--holdout {fraction:g}: the training data is one connected group of texts and cannot "
                             "be split; give --calibrate-pairs FILE.tsv instead")
        data_summary["of them held out for calibration"] = len(heldout)
        print(f"holding out {len(heldout)} of {len(rows) + len(heldout)} training examples ({fraction:g}, grouped by "
              "text: no text in both parts) to recalibrate both models on", file=sys.stderr)
    calibrate_sets = calibration_sets(request.validation, rows, heldout, holdout_label) if validating else None
    if heldout and validating:
        simulated = heldout_faq_set(heldout, holdout_label)
        if simulated is not None:
            faq_sets.append(simulated)
        pair_sets[holdout_label] = sample_pairs(labelled_pairs(heldout), request.validation.eval_max_pairs)
    warn_eval_overlap({n: p for n, p in pair_sets.items() if n != holdout_label}, rows)
    config = replace(request.config, loss=choose_loss(request.config.loss, rows))
    check_config(config)
    out_dir = Path(request.out or DataDir(settings.data_dir).finetuned(f"{datetime.now():%Y%m%d-%H%M%S}"))
    if out_dir.exists() and any(out_dir.iterdir()) and not request.overwrite:
        raise UsageError(f"--out {out_dir} exists and is not empty (use --overwrite, or another directory)")
    out_dir.mkdir(parents=True, exist_ok=True)
    return _Plan(rows, data_summary, faq_sets, pair_sets, heldout, fraction, calibrate_sets, config, out_dir,
                 started=started)


def _base(request: FinetuneRequest, settings: Settings, out_dir: Path) -> Path:
    """The base model's directory; with `q4`, refused now if the engine could not serve what trains from it."""
    base_dir = resolve_base(request.base, Path(settings.data_dir))
    if request.deploy and request.serve_as == "q4":
        from index.bundled_export import read_bundled
        from index.bundled_pack import PackError, check_packable

        try:
            check_packable(base_dir, read_bundled())
        except PackError as exc:
            raise UsageError(f"--q4: the bundled engine cannot serve a model fine-tuned from {base_dir}: {exc}") from exc
    return base_dir


def _training_rows(plan: _Plan, data: TrainingData, settings: Settings, model: Any, query_prompt: str) -> list[TrainRow]:
    """Intents, mined hard negatives, the rows the loss needs (a seeded sample of at most `max_examples`)."""
    loss = plan.config.loss
    plan.rows = intent_groups(plan.rows)
    for flag, given in (("--mine-negatives", data.mine_negatives), ("--symmetric", plan.config.symmetric)):
        if given and loss != "mnrl":
            print(f"note: {flag} applies to the mnrl loss only; ignored for {loss}", file=sys.stderr)
    if (data.from_kb or data.from_misses or data.mine_negatives) and loss == "mnrl":
        def encode(texts: Sequence[str]) -> np.ndarray:
            return model.encode(list(texts), prompt=query_prompt or None, normalize_embeddings=True,
                                convert_to_numpy=True, batch_size=64, show_progress_bar=sys.stderr.isatty())

        if data.from_kb or data.from_misses or any(not r.group.startswith(TEXT_INTENT) for r in plan.rows):
            print("mining hard negatives: the FAQ the base model confuses each question with", file=sys.stderr)
            plan.rows = mine_kb_negatives(plan.rows, load_kb(data.from_kb or settings.kb), encode)
        if data.mine_negatives and any(r.group.startswith(TEXT_INTENT) for r in plan.rows):
            print("mining hard negatives: the training text of another intent the base model puts closest to each "
                  "pair (below its own partner)", file=sys.stderr)
            before_mining = sum(r.negative is not None for r in plan.rows)
            plan.rows = mine_pair_negatives(plan.rows, encode)
            plan.data_summary["given a mined negative"] = sum(r.negative is not None for r in plan.rows) - before_mining
    train_rows = sample_rows(rows_for_loss(plan.rows, loss), data.max_examples, plan.config.seed)
    if not train_rows:
        raise CommandError(f"no usable examples for the {loss} loss (MNRL needs pairs that mean the same)")
    return train_rows


def _validated(plan: _Plan, label: str, model_dir: Path, settings: Settings, command: str) -> ModelFigures:
    phase = time.monotonic()
    figures = validate(label, eval_encoder(model_dir, settings, plan.config.threads), settings, plan.faq_sets,
                       plan.pair_sets, plan.calibrate_sets, command)
    plan.timings[f"validation ({label})"] = time.monotonic() - phase
    return figures


def _provenance(plan: _Plan, result: TrainResult, command: str) -> dict[str, Any]:
    calibrate_sets = plan.calibrate_sets
    return {
        "base": str(plan.base_dir), "command": command, "data": plan.data_summary, "loss": plan.config.loss,
        "config": plan.config.__dict__, "steps": result.steps, "planned_steps": result.planned_steps,
        "stopped_early": result.stopped_early, "train_seconds": round(result.seconds, 1),
        "loss_first": result.losses[:1], "loss_last": result.losses[-1:],
        "holdout": {"fraction": plan.fraction, "train_rows": len(plan.rows), "heldout_rows": len(plan.heldout)},
        "calibration_pairs": {n: len(p) for n, p in (calibrate_sets.sets if calibrate_sets else {}).items()},
        "threshold_from": calibrate_sets.threshold_from if calibrate_sets and calibrate_sets.threshold_sets else None,
    }


def _report(plan: _Plan, result: TrainResult, before: ModelFigures, after: ModelFigures,
            decision: GateDecision | None, command: str, provenance: dict[str, Any]) -> Path:
    """report/report.md with its plots in the output directory; the figures go into the provenance too."""
    report_dir = plan.out_dir / "report"
    report_dir.mkdir(exist_ok=True)
    images = plot_similarity(before, after, report_dir)
    for faq_set in (s for s in plan.faq_sets if s.role != "simulated"):
        image = plot_faq_map(faq_set, before, after, report_dir)
        if image:
            images.append(image)
    plan.timings["total"] = time.monotonic() - plan.started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report_path = report_dir / "report.md"
    report_path.write_text(report_markdown(
        command=command, base_dir=plan.base_dir, out_dir=plan.out_dir, config=plan.config, train_result=result,
        before=before, after=after, decision=decision, timings=plan.timings, peak_rss_mb=peak_mb, images=images,
        data_summary=plan.data_summary, calibrate_sets=plan.calibrate_sets, heldout_rows=len(plan.heldout),
        simulated=[s.name for s in plan.faq_sets if s.role == "simulated"],
        watched=[s.name for s in plan.faq_sets if s.role == "watch"]), encoding="utf-8")
    provenance["figures"] = {
        label: {"faq": {n: r.summary() for n, r in figures.faq.items()},
                "pairs": {n: r.summary() for n, r in figures.pairs.items()},
                "calibration_threshold": figures.calibration.threshold}
        for label, figures in (("base", before), ("fine-tuned", after))
    }
    provenance["gate"] = decision.__dict__ if decision else None
    print_comparison(before, after)
    print(f"report: {report_path}")
    return report_path


def _write_provenance(plan: _Plan, provenance: dict[str, Any]) -> None:
    plan.timings.setdefault("total", time.monotonic() - plan.started)
    provenance["timings_seconds"] = {k: round(v, 1) for k, v in plan.timings.items()}
    provenance["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    (plan.out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, ensure_ascii=False, indent=2, default=str),
                                                encoding="utf-8")
    print(f"wall time {plan.timings['total'] / 60:.1f} min, peak memory {provenance['peak_rss_mb']} MB")
