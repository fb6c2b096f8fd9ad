"""`faqbot finetune`: teach the encoder the team's own words, offline, and deploy it only if it is better.

The flow of the sentence-transformers documentation (data -> model -> training pairs -> parameters ->
train -> validate -> deploy) on a plain CPU server (docs/finetune.md):

1. base: the bundled model exported as a sentence-transformers dir (`<data_dir>/models/bundled`,
   made on first use, no download) or any sentence-transformers model directory;
2. data: JSONL pairs/triplets/scored pairs and TSV files (admin.finetune.data), `--from-kb`
   and `--from-misses`, hard negatives mined from the FAQs the base model confuses them with;
3. train: our own small loop around sentence-transformers' losses (MultipleNegativesRankingLoss,
   CoSENT, CosineSimilarityLoss) — no `datasets`/`accelerate` needed — with CPU-aware defaults:
   the 250k-row word-embedding matrix frozen, 64 tokens, batches of 32; a progress bar with ETA,
   a checkpoint per epoch, and Ctrl-C saving the weights of the last finished step;
4. validate: the base and the new model, on the same backend, each recalibrated the same way on
   labelled pairs the model did not train on (`--holdout`: a text-grouped part of the training pairs;
   `--calibrate-pairs` files minus any pair sharing a text with training), on held-out FAQ sets
   (`faqbot eval`'s metrics) and pair files; a Markdown report with PNG plots;
5. deploy (`--deploy`): only when no held-out FAQ set lost overall accuracy — records the model in
   `<data_dir>/models/active.json` (read by `bot.service.encoder_spec`), rebuilds the index with
   the new calibration. `--undeploy` goes back to the default encoder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from admin.cli.main import CliError, _add_common, progress_bar, settings_from
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
    mnrl_batches,
    pairs_from_kb,
    pairs_from_misses,
    plain_batches,
    rows_for_loss,
    sample_rows,
    training_texts,
)
from admin.quality.calibrate import (
    CachingEncoder,
    CalibrationDataError,
    calibrate_from_kb,
    calibrate_from_pairs,
    read_pair_files,
)
from admin.quality.evaluation import (
    EvalDataError,
    EvalQuery,
    FaqEvalResult,
    LabelledPair,
    PairEvalResult,
    evaluate_faq,
    evaluate_pairs,
    load_queries,
)
from bot.service import DEPLOYED_ENCODER_FILE, build_and_publish, encoder_spec
from bot.settings import Settings
from faq import KnowledgeBase, load_kb
from index.calibration import Calibration
from index.default_model import EXPORT_DIR, ensure_standard_export
from index.encoders import Encoder, EncoderSpec, load_encoder

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

LOSSES = ("auto", "mnrl", "cosent", "cosine")
POOLINGS = ("mean", "cls", "max")
BUNDLED_DIR = Path("models") / EXPORT_DIR
CHECKPOINTS = "checkpoints"
PROVENANCE_FILE = "finetune.json"
Q4_FILE = "model-q4.bin"  # `--deploy --q4`: the model packed for the bundled engine
DEFAULT_HOLDOUT = 0.2  # of labelled training pairs, kept out of training to recalibrate on (docs/finetune.md)
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


class TrainingInterruptedError(Exception):
    """Ctrl-C during training; `checkpoint` holds the weights of the last finished step."""

    def __init__(self, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted; checkpoint: {checkpoint}")
        self.checkpoint = checkpoint


# --- the base model -----------------------------------------------------------------------------


def resolve_base(base: str, data_dir: Path, *, progress: bool = True) -> Path:
    """The base as a sentence-transformers directory: `bundled` is exported once into the data dir."""
    if base == "bundled":
        return ensure_standard_export(Path(data_dir) / BUNDLED_DIR, progress=progress).resolve()
    path = Path(base)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CliError(f"--base {base}: not 'bundled' nor a model directory (need config.json + weights; "
                       "a sentence-transformers dir, e.g. from `faqbot model export-bundled`)")
    return path.resolve()


# --- training -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Training parameters; the defaults are what finishes on a 2-core CPU server (docs/finetune.md)."""

    loss: str = "mnrl"
    symmetric: bool = False  # MNRL also ranks each pair's anchor first among the batch's anchors
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 3e-5
    warmup_ratio: float = 0.1
    max_seq_length: int = 64
    freeze_embeddings: bool = True
    trainable_layers: int | None = None  # None = every transformer layer
    pooling: str | None = None  # None = keep the base model's
    query_prompt: str | None = None  # None = the model's own "query" prompt
    kb_prompt: str | None = None  # None = per FAQBOT_KB_PREFIX
    threads: int = 2
    seed: int = 20240607
    max_steps: int | None = None
    time_budget_minutes: float | None = None
    base_weight: float = 0.0  # blend the trained weights back toward the base's by this much (WiSE-FT)
    scale: float = 20.0  # MNRL/CoSENT similarity scale (1 / temperature); sentence-transformers' default is 20


@dataclass
class TrainResult:
    steps: int
    planned_steps: int
    rows: int
    seconds: float
    stopped_early: str | None  # why training ended before the plan (time budget, max steps)
    losses: list[float] = field(default_factory=list)
    trainable_parameters: int = 0
    checkpoints: list[str] = field(default_factory=list)


def _prompts(model: SentenceTransformer, config: TrainConfig, kb_prefix: str) -> tuple[str, str]:
    """(query prompt, KB-side prompt) as the encoder will use them when serving this model."""
    prompts = dict(getattr(model, "prompts", {}) or {})
    query = config.query_prompt if config.query_prompt is not None else prompts.get("query", "")
    if config.kb_prompt is not None:
        return query, config.kb_prompt
    return query, query if kb_prefix == "query" else prompts.get("passage", "")


def prepare_model(base_dir: Path, config: TrainConfig, kb_prefix: str) -> tuple[SentenceTransformer, str, str]:
    """Load the base, apply pooling/prompt/length options and freeze what is not trained."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    torch.set_num_threads(max(1, config.threads))
    torch.manual_seed(config.seed)
    model = SentenceTransformer(str(base_dir), device="cpu")
    model.max_seq_length = config.max_seq_length
    pooling_index = next((i for i, m in enumerate(model) if isinstance(m, Pooling)), None)
    if config.pooling is not None:
        if pooling_index is None:
            raise CliError(f"--pooling: the base model {base_dir} has no pooling module to replace")
        old = model[pooling_index]
        if config.pooling not in getattr(old, "pooling_mode", ()) or len(getattr(old, "pooling_mode", ())) != 1:
            model._modules[str(pooling_index)] = Pooling(model.get_embedding_dimension(), pooling_mode=config.pooling,
                                                          include_prompt=getattr(old, "include_prompt", True))
    query_prompt, kb_prompt = _prompts(model, config, kb_prefix)
    prompts = dict(getattr(model, "prompts", {}) or {})
    prompts["query"] = query_prompt
    prompts.setdefault("passage", kb_prompt)
    if config.kb_prompt is not None:
        prompts["passage"] = config.kb_prompt
    model.prompts = prompts

    transformer = model[0].auto_model
    if config.freeze_embeddings:
        transformer.get_input_embeddings().weight.requires_grad_(False)
    if config.trainable_layers is not None:
        layers = getattr(getattr(transformer, "encoder", None), "layer", None)
        if layers is None:
            raise CliError("--trainable-layers needs a BERT-shaped model (encoder.layer)")
        for parameter in transformer.embeddings.parameters():
            parameter.requires_grad_(False)
        for layer in list(layers)[: max(0, len(layers) - config.trainable_layers)]:
            for parameter in layer.parameters():
                parameter.requires_grad_(False)
    return model, query_prompt, kb_prompt


def _loss(model: SentenceTransformer, config: TrainConfig) -> Any:
    from sentence_transformers.sentence_transformer import losses

    if config.loss == "mnrl":
        # symmetric: a query must find its FAQ among the batch's FAQs *and* the FAQ its query among the
        # batch's queries; the FAQ side of a file pair is not known, and serving compares both ways
        directions = ("query_to_doc", "doc_to_query") if config.symmetric else ("query_to_doc",)
        return losses.MultipleNegativesRankingLoss(model, scale=config.scale, directions=directions)
    if config.loss == "cosent":
        return losses.CoSENTLoss(model, scale=config.scale)
    return losses.CosineSimilarityLoss(model)


def plan_batches(rows: Sequence[TrainRow], config: TrainConfig, epoch: int) -> list[list[TrainRow]]:
    seed = config.seed + epoch
    if config.loss == "mnrl":
        return mnrl_batches(rows, config.batch_size, seed)
    return plain_batches(rows, config.batch_size, seed)


def _features(model: SentenceTransformer, batch: Sequence[TrainRow], config: TrainConfig, query_prompt: str,
              kb_prompt: str) -> tuple[list[dict[str, Any]], Any]:
    import torch

    if config.loss == "mnrl":
        columns = [([r.anchor for r in batch], query_prompt), ([r.other for r in batch], kb_prompt)]
        if batch[0].negative is not None:
            columns.append(([r.negative or "" for r in batch], kb_prompt))
        labels = None
    else:
        # a scored pair is two sentences compared as /similarity does: both with the query prompt
        columns = [([r.anchor for r in batch], query_prompt), ([r.other for r in batch], query_prompt)]
        scale = 5.0 if config.loss == "cosine" and any((r.score or 0.0) > 1.0 for r in batch) else 1.0
        labels = torch.tensor([float(r.score or 0.0) / scale for r in batch], dtype=torch.float32)
    return [model.preprocess(texts, prompt=prompt or None) for texts, prompt in columns], labels


def blend_with_base(model: SentenceTransformer, base_dir: Path, base_weight: float) -> int:
    """Move every weight back toward the base's: `(1 - base_weight) * tuned + base_weight * base`.

    Weight-space ensembling (WiSE-FT, Wortsman et al. 2022): the blend keeps most of what training
    taught the model about the team's domain and more of what the base knew about everything else
    (the forgetting `--eval-kb` sets watch). Returns how many tensors were blended.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    base_state = SentenceTransformer(str(base_dir), device="cpu").state_dict()
    blended = 0
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            old = base_state.get(name)
            if old is not None and tensor.is_floating_point() and old.shape == tensor.shape:
                tensor.mul_(1.0 - base_weight).add_(old.to(tensor.dtype), alpha=base_weight)
                blended += 1
    return blended


def _save(model: SentenceTransformer, target: Path, base_dir: Path) -> Path:
    """Save as a sentence-transformers dir, carrying the base's LICENSE/NOTICE along (MIT needs them)."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save(str(partial), create_model_card=False)
    _keep_model_kwargs(base_dir, partial)
    for name in ("LICENSE", "NOTICE"):
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, partial / name)
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


def _keep_model_kwargs(base_dir: Path, saved_dir: Path) -> None:
    """sentence-transformers 6 drops the base's `model_args` (e.g. `add_pooling_layer: false`, the bundled
    export has no pooler) on save: put them back, or every load warns of 'missing' pooler weights."""
    from index.onnx_export import declared_model_kwargs

    kwargs = declared_model_kwargs(base_dir)
    config_file = saved_dir / "sentence_bert_config.json"
    if not kwargs or not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["model_kwargs"] = {**config.get("model_kwargs", {}), **kwargs}
    config_file.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


def train(model: SentenceTransformer, base_dir: Path, rows: Sequence[TrainRow], out_dir: Path, config: TrainConfig,
          query_prompt: str, kb_prompt: str, *, show_progress: bool = True) -> TrainResult:
    """Train in place and save to `out_dir` (epochs before the last also to checkpoints/epoch-N), blended
    with the base by `config.base_weight` (the checkpoints are not: they are for continuing).

    Ctrl-C saves the weights as of the last finished step to checkpoints/interrupted and raises
    TrainingInterruptedError; the time budget and `max_steps` end training early but normally.
    """
    import torch
    from tqdm import tqdm

    loss_fn = _loss(model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise CliError("nothing to train: every parameter is frozen")
    epochs = [plan_batches(rows, config, epoch) for epoch in range(config.epochs)]
    planned = sum(len(batches) for batches in epochs)
    if planned == 0:
        raise CliError(f"{len(rows)} training example(s) make no batch of two distinct intents; add more pairs")
    total = min(planned, config.max_steps) if config.max_steps else planned
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.01)
    warmup = max(1, int(total * config.warmup_ratio)) if total > 1 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    result = TrainResult(steps=0, planned_steps=planned, rows=len(rows), seconds=0.0, stopped_early=None,
                         trainable_parameters=sum(p.numel() for p in trainable))
    deadline = time.monotonic() + config.time_budget_minutes * 60 if config.time_budget_minutes else None
    started = time.monotonic()
    bar = tqdm(total=total, desc="training", unit="step", file=sys.stderr, disable=not show_progress or None)
    model.train()
    checkpoints = Path(out_dir) / CHECKPOINTS
    try:
        for epoch, batches in enumerate(epochs, 1):
            for batch in batches:
                features, labels = _features(model, batch, config, query_prompt, kb_prompt)
                loss_value = loss_fn(features, labels)
                loss_value.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                result.steps += 1
                result.losses.append(float(loss_value.detach()))
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{np.mean(result.losses[-20:]):.4f}")
                if bar.disable and show_progress and (result.steps % max(1, total // 20) == 0 or result.steps == total):
                    # no terminal (nohup, a log file): a plain line every 5% so the log still shows progress and ETA
                    elapsed = time.monotonic() - started
                    eta = elapsed / result.steps * (total - result.steps)
                    print(f"training: step {result.steps}/{total}, epoch {epoch}, loss "
                          f"{np.mean(result.losses[-20:]):.4f}, {elapsed / 60:.1f} min elapsed, ETA {eta / 60:.1f} min",
                          file=sys.stderr, flush=True)
                if config.max_steps and result.steps >= config.max_steps:
                    result.stopped_early = f"--max-steps {config.max_steps}"
                elif deadline and time.monotonic() > deadline:
                    result.stopped_early = f"time budget of {config.time_budget_minutes:g} min"
                if result.stopped_early:
                    break
            if result.stopped_early or epoch == config.epochs:
                break
            model.eval()
            result.checkpoints.append(str(_save(model, checkpoints / f"epoch-{epoch}", base_dir)))
            model.train()
    except KeyboardInterrupt:
        bar.close()
        model.eval()
        optimizer.zero_grad(set_to_none=True)
        saved = _save(model, checkpoints / "interrupted", base_dir) if result.steps else None
        raise TrainingInterruptedError(saved) from None
    bar.close()
    model.eval()
    if config.base_weight:
        blend_with_base(model, base_dir, config.base_weight)
    result.seconds = time.monotonic() - started
    _save(model, Path(out_dir), base_dir)
    return result


# --- validation ---------------------------------------------------------------------------------


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
        raise CliError(f"cannot recalibrate: {exc} (give --calibrate-pairs FILE.tsv with 0/1 labelled pairs "
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


# --- report -------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def _delta(old: float | None, new: float | None, digits: int = 3) -> str:
    if old is None or new is None or old != old or new != new:
        return "–"
    return f"{new - old:+.{digits}f}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def plot_similarity(before: ModelFigures, after: ModelFigures, out_dir: Path) -> list[str]:
    """Per eval set, cosine distributions before | after: pairs by label, FAQ queries by outcome."""
    from admin.quality.report import HIST_COLOURS, HIST_LABELS, _pyplot

    plt = _pyplot()
    images = []
    for name in before.pairs:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharey=True)
        for ax, figures in zip(axes, (before, after), strict=True):
            result = figures.pairs[name]
            bins = np.linspace(float(np.floor(result.cosines.min() * 50) / 50), 1.0, 51)
            for value in np.unique(result.labels):
                ax.hist(result.cosines[result.labels == value], bins=bins, alpha=0.55, label=f"label {value:g}")
            ax.set_title(f"{figures.label}: {name} (ROC-AUC {_fmt(result.roc_auc)})")
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
            ax.set_title(f"{figures.label}: FAQ {name} (top-1 {_fmt(result.top1)})")
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

    from admin.quality.report import _pyplot

    texts, owners, is_kb = _map_points(faq_set, max_faqs)
    if len(set(owners)) < 2 or len(texts) < 6:
        return None
    plt = _pyplot()
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
        f"| loss (first 20 steps → last 20) | {_fmt(float(np.mean(train_result.losses[:20])), 4)} → "
        f"{_fmt(float(np.mean(train_result.losses[-20:])), 4)} |",
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
            lines.append(f"| {name} | {label} | {_fmt(a, 4)} | {_fmt(b, 4)} | {_delta(a, b, 4)} |")
    for name, old in before.pairs.items():
        new = after.pairs[name]
        if old.kind == "binary":
            lines.append(f"| {name} | pair ROC-AUC | {_fmt(old.roc_auc, 4)} | {_fmt(new.roc_auc, 4)} | "
                         f"{_delta(old.roc_auc, new.roc_auc, 4)} |")
        else:
            lines.append(f"| {name} | Spearman | {_fmt(old.spearman, 4)} | {_fmt(new.spearman, 4)} | "
                         f"{_delta(old.spearman, new.spearman, 4)} |")
    lines.append("")
    if decision is not None:
        lines += ["## Deploy gate", "", f"**{'PASSED' if decision.passed else 'REFUSED'}**: held-out overall "
                  "accuracy must not drop on any FAQ set.", "", *(f"- {r}" for r in decision.reasons), ""]
    lines += ["## Plots", ""]
    for image in images:
        lines += [f"![{image}]({image})", ""]
    return "\n".join(lines)


# --- deploy -------------------------------------------------------------------------------------


def deployed_record_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / DEPLOYED_ENCODER_FILE


def write_deployed(settings: Settings, record: dict[str, Any]) -> Path:
    """Atomically record the deployed model (the previous record kept inside it, for the audit trail)."""
    path = deployed_record_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        with contextlib.suppress(ValueError):
            record = {**record, "previous": json.loads(path.read_text(encoding="utf-8"))}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


PACK_TEXTS = 512  # training texts that calibrate the 4-bit rounding; 2,048 measured no better (docs/finetune.md)


def pack_texts(rows: Sequence[TrainRow], seed: int, limit: int = PACK_TEXTS) -> list[str]:
    """A seeded sample of the training texts: the wording the packed model must keep (GPTQ calibration)."""
    texts = sorted({t for r in rows for t in (r.anchor, r.other, r.negative) if t})
    random.Random(seed).shuffle(texts)
    return texts[:limit]


def deploy(settings: Settings, out_dir: Path, after: ModelFigures, *, serve_as: str,
           calibrate_sets: CalibrationPairs | None, command: str, report: Path | None,
           calibration_texts: Sequence[str] = ()) -> str:
    """Switch the configured encoder to the fine-tuned model, rebuild the index with its calibration.

    `serve_as`: `sentence-transformers` (the directory itself), `onnx` (int8 export) or `q4` (packed in
    the bundled engine's format, its rounding calibrated on `calibration_texts`).
    """
    if settings.encoder not in ("auto", "bundled"):
        raise CliError(f"FAQBOT_ENCODER/--encoder is {settings.encoder!r}: a deployed model replaces only the defaults "
                       f"`auto`/`bundled`; unset it, or set it to sentence-transformers:{out_dir} yourself")
    spec = f"sentence-transformers:{Path(out_dir).resolve()}"
    if serve_as == "onnx":
        from index.onnx_export import export_onnx

        print("exporting the fine-tuned model to ONNX int8", file=sys.stderr)
        spec = f"onnx:{export_onnx(Path(out_dir), int8=True)[-1].resolve()}"
    elif serve_as == "q4":
        from index.bundled_pack import PackError, pack_bundled

        print(f"packing the fine-tuned model in the bundled engine's 4-bit format (rounding calibrated on "
              f"{len(calibration_texts)} training texts)", file=sys.stderr)
        try:
            packed = pack_bundled(Path(out_dir), Path(out_dir) / Q4_FILE, calibration_texts,
                                  threads=settings.encoder_threads, progress=sys.stderr.isatty())
        except PackError as exc:
            raise CliError(f"--q4: {exc}") from exc
        spec = f"bundled:{packed.resolve()}"
    record = {"encoder": spec, "model_dir": str(Path(out_dir).resolve()),
              "deployed_at": datetime.now(UTC).isoformat(timespec="seconds"), "command": command,
              "report": str(report) if report else None}
    previous = deployed_record_path(settings).read_bytes() if deployed_record_path(settings).is_file() else None
    path = write_deployed(settings, record)
    if encoder_spec(settings).spec != spec:  # the encoder setting does not read the deployed record: undo, say so
        if previous is None:
            path.unlink()
        else:
            path.write_bytes(previous)
        raise CliError(f"the configured encoder ({settings.encoder!r}) does not pick up a deployed model; "
                       f"set FAQBOT_ENCODER=sentence-transformers:{Path(out_dir).resolve()} yourself")
    encoder = load_encoder(encoder_spec(settings))
    calibration = after.calibration
    if encoder.fingerprint != after.fingerprint:  # e.g. the int8 ONNX file: its cosines differ slightly
        calibration = fit_calibration(CachingEncoder(encoder), settings, calibrate_sets, command)
    kb = load_kb(settings.kb)
    index = build_and_publish(settings, encoder, kb=kb, calibration=calibration,
                              progress=progress_bar("encoding the KB")(len(kb.texts())))
    return (f"deployed {spec} (recorded in {path}); index {index.version} built with it, threshold "
            f"{calibration.threshold:.4f}. Restart `faqbot serve` to load the new encoder.")


def undeploy(settings: Settings) -> str:
    """Back to the default encoder (`auto` or `bundled`, as configured): drop the record, rebuild the index."""
    from bot.service import _previous_calibration

    path = deployed_record_path(settings)
    if not path.is_file():
        return f"nothing deployed ({path} does not exist)"
    path.replace(path.with_suffix(".json.undeployed"))
    encoder = load_encoder(encoder_spec(settings))
    kb = load_kb(settings.kb)
    index = build_and_publish(settings, encoder, kb=kb, calibration=_previous_calibration(settings, encoder),
                              progress=progress_bar("encoding the KB")(len(kb.texts())))
    return f"undeployed: encoder {encoder.name}, index {index.version}. Restart `faqbot serve` to load it."


# --- the command --------------------------------------------------------------------------------


def _command_line() -> str:
    return "faqbot " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def load_training_rows(args: argparse.Namespace, settings: Settings) -> tuple[list[TrainRow], dict[str, int]]:
    """Every source the command names, validated before anything heavy starts."""
    rows: list[TrainRow] = []
    summary: dict[str, int] = {}
    for path in args.train or []:
        loaded = load_training_file(path)
        rows += loaded
        summary[Path(path).name] = len(loaded)
    if args.from_kb:
        kb_rows = pairs_from_kb(load_kb(args.from_kb))
        rows += kb_rows
        summary["from KB"] = len(kb_rows)
    if args.from_misses:
        from bot.store import Store

        store = Store(settings.resolved_database_url)
        try:
            miss_rows = pairs_from_misses(store.list_misses(status="resolved", limit=100_000), load_kb(settings.kb))
        finally:
            store.close()
        rows += miss_rows
        summary["from misses"] = len(miss_rows)
    if not rows:
        raise CliError("no training data: give --train FILE, --from-kb KB and/or --from-misses", 2)
    return rows, summary


def _sample(pairs: Sequence[LabelledPair], max_pairs: int | None) -> list[LabelledPair]:
    """A seeded sample (file order kept), as `read_pair_files` samples."""
    if max_pairs is None or len(pairs) <= max_pairs:
        return list(pairs)
    keep = sorted(random.Random(PAIR_SAMPLE_SEED).sample(range(len(pairs)), max_pairs))
    return [pairs[i] for i in keep]


def holdout_fraction(args: argparse.Namespace, rows: Sequence[TrainRow], validating: bool) -> float:
    """`--holdout` as given; by default 0.2 when the command validates, has no --calibrate-pairs and the
    training data holds labelled same/different pairs (a TSV or scored JSONL) to calibrate on."""
    if args.holdout is not None:
        if args.holdout and not validating:
            raise CliError("--holdout keeps pairs for recalibrating at validation: give --eval-kb/--eval-queries "
                           "and/or --eval-pairs too", 2)
        return args.holdout
    if validating and not args.calibrate_pairs and has_labelled_pairs(rows):
        return DEFAULT_HOLDOUT
    return 0.0


def heldout_name(args: argparse.Namespace) -> str:
    files = args.train or []
    if len(files) == 1 and not args.from_kb and not args.from_misses:
        path = Path(files[0])
        return f"{path.parent.name}/{path.stem} held out" if path.parent.name else f"{path.stem} held out"
    return "training data held out"


def heldout_faq_set(heldout: Sequence[TrainRow], name: str) -> FaqSet | None:
    """An FAQ bench simulated from the held-out pairs (as calibration simulates one): a development figure
    for choosing training parameters without looking at the test sets. Reported, not gated on."""
    from admin.quality.calibrate import faq_bench_from_pairs

    kb, queries = faq_bench_from_pairs(labelled_pairs(heldout), name="heldout")
    if len(kb.faqs) < 2 or not any(q.expected for q in queries):
        return None
    return FaqSet(f"{name} (simulated)", kb, queries, role="simulated")


def calibration_sets(args: argparse.Namespace, train_rows: Sequence[TrainRow], heldout: Sequence[TrainRow],
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
            sets[name] = _sample(pairs, args.calibrate_max_pairs)
            if {p.label for p in sets[name]} >= {0.0, 1.0}:
                threshold_from = name
    if args.calibrate_pairs:
        seen = training_texts(train_rows)
        try:
            files = read_pair_files(list(args.calibrate_pairs))
        except (EvalDataError, OSError) as exc:
            raise CliError(f"--calibrate-pairs: {exc}") from exc
        for file_name, pairs in files.items():
            kept, dropped = drop_seen(pairs, seen)
            if dropped:
                print(f"warning: --calibrate-pairs {file_name}: {dropped} of {len(pairs)} pairs share a text with the "
                      f"training data; dropped (calibrating on training data fits a threshold that does not transfer"
                      f"{'; use --holdout to keep part of the training file for calibration' if not kept else ''})",
                      file=sys.stderr)
            if kept:
                sets[file_name] = _sample(kept, args.calibrate_max_pairs)
        if not sets:
            raise CliError("--calibrate-pairs: every pair shares a text with the training data; give pairs the model "
                           "does not train on, or --holdout 0.2 to keep part of the training file for calibration", 2)
    return CalibrationPairs(sets, threshold_from) if sets else None


def warn_eval_overlap(pair_sets: dict[str, Any], train_rows: Sequence[TrainRow]) -> None:
    """Pair figures on texts the model trained on flatter it: say so (the figures are still computed)."""
    seen = training_texts(train_rows)
    for name, pairs in pair_sets.items():
        _, shared = drop_seen(pairs, seen)
        if shared:
            print(f"warning: --eval-pairs {name}: {shared} of {len(pairs)} pairs share a text with the training data; "
                  "their figures flatter the fine-tuned model", file=sys.stderr)


def _eval_sets(args: argparse.Namespace) -> tuple[list[FaqSet], dict[str, Any]]:
    kbs, query_files = args.eval_kb or [], args.eval_queries or []
    if len(kbs) != len(query_files):
        raise CliError("give --eval-kb and --eval-queries in pairs (one KB per queries file)", 2)
    faq_sets = []
    for kb_path, query_path in zip(kbs, query_files, strict=True):
        name = Path(kb_path).name if Path(kb_path).is_dir() else Path(kb_path).parent.name
        faq_sets.append(FaqSet(name or str(kb_path), load_kb(kb_path), load_queries(query_path)))
    if args.gate_on:
        unknown = sorted(set(args.gate_on) - {s.name for s in faq_sets})
        if unknown:
            raise CliError(f"--gate-on {', '.join(unknown)}: not an --eval-kb set (they are: "
                           f"{', '.join(s.name for s in faq_sets) or 'none'})", 2)
        faq_sets = [s if s.name in args.gate_on else replace(s, role="watch") for s in faq_sets]
    pair_sets = read_pair_files(args.eval_pairs, max_pairs=args.eval_max_pairs) if args.eval_pairs else {}
    return faq_sets, pair_sets


def config_from(args: argparse.Namespace, loss: str) -> TrainConfig:
    if not 0.0 <= args.base_weight < 1.0:  # checked before training, not after it
        raise CliError(f"--base-weight {args.base_weight:g}: give a fraction in [0, 1), e.g. 0.3", 2)
    if not args.scale > 0:
        raise CliError(f"--scale {args.scale:g}: give a positive number, e.g. 20 (the default) or 50", 2)
    return TrainConfig(
        loss=loss, symmetric=args.symmetric, base_weight=args.base_weight, scale=args.scale, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_ratio=args.warmup_ratio, max_seq_length=args.max_seq_length,
        freeze_embeddings=not args.train_embeddings, trainable_layers=args.trainable_layers, pooling=args.pooling,
        query_prompt=args.query_prompt, kb_prompt=args.kb_prompt, threads=args.threads, seed=args.seed,
        max_steps=args.max_steps, time_budget_minutes=args.time_budget,
    )


def choose_loss(requested: str, rows: Sequence[TrainRow]) -> str:
    """`auto`: MNRL when any row is a pair/triplet, CoSENT when every row is a scored pair."""
    if requested != "auto":
        return requested
    return "mnrl" if any(r.positive for r in rows) else "cosent"


def cmd_finetune(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.undeploy:
        print(undeploy(settings))
        return 0
    command = _command_line()
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        rows, data_summary = load_training_rows(args, settings)
        faq_sets, pair_sets = _eval_sets(args)
    except (TrainingDataError, EvalDataError) as exc:
        raise CliError(str(exc)) from exc
    if args.deploy and not faq_sets:
        raise CliError("--deploy needs a held-out FAQ set to gate on: --eval-kb KB --eval-queries Q.jsonl", 2)
    validating = bool(faq_sets or pair_sets)
    fraction = holdout_fraction(args, rows, validating)
    heldout: list[TrainRow] = []
    holdout_label = heldout_name(args)
    if fraction > 0:
        try:
            rows, heldout = holdout_split(rows, fraction, args.seed)
        except TrainingDataError as exc:
            raise CliError(str(exc), 2) from exc
        if not rows or not heldout:
            raise CliError(f"--holdout {fraction:g}: the training data is one connected group of texts and cannot "
                           "be split; give --calibrate-pairs FILE.tsv instead", 2)
        data_summary["of them held out for calibration"] = len(heldout)
        print(f"holding out {len(heldout)} of {len(rows) + len(heldout)} training examples ({fraction:g}, grouped by "
              "text: no text in both parts) to recalibrate both models on", file=sys.stderr)
    calibrate_sets = calibration_sets(args, rows, heldout, holdout_label) if validating else None
    if heldout and validating:
        simulated = heldout_faq_set(heldout, holdout_label)
        if simulated is not None:
            faq_sets.append(simulated)
        pair_sets[holdout_label] = _sample(labelled_pairs(heldout), args.eval_max_pairs)
    warn_eval_overlap({n: p for n, p in pair_sets.items() if n != holdout_label}, rows)
    loss = choose_loss(args.loss, rows)
    config = config_from(args, loss)
    out_dir = Path(args.out or Path(settings.data_dir) / "models" / f"finetuned-{datetime.now():%Y%m%d-%H%M%S}")
    if out_dir.exists() and any(out_dir.iterdir()) and not args.overwrite:
        raise CliError(f"--out {out_dir} exists and is not empty (use --overwrite, or another directory)", 2)
    out_dir.mkdir(parents=True, exist_ok=True)

    base_dir = resolve_base(args.base, Path(settings.data_dir))
    if args.deploy and args.q4:  # the base decides whether the engine can serve the result: say so now
        from index.bundled_export import read_bundled
        from index.bundled_pack import PackError, check_packable

        try:
            check_packable(base_dir, read_bundled())
        except PackError as exc:
            raise CliError(f"--q4: the bundled engine cannot serve a model fine-tuned from {base_dir}: {exc}", 2) from exc
    timings["base export / load"] = time.monotonic() - started
    phase = time.monotonic()
    model, query_prompt, kb_prompt = prepare_model(base_dir, config, settings.kb_prefix)
    rows = intent_groups(rows)
    for flag, given in (("--mine-negatives", args.mine_negatives), ("--symmetric", args.symmetric)):
        if given and loss != "mnrl":
            print(f"note: {flag} applies to the mnrl loss only; ignored for {loss}", file=sys.stderr)
    if (args.from_kb or args.from_misses or args.mine_negatives) and loss == "mnrl":
        def encode(texts: Sequence[str]) -> np.ndarray:
            return model.encode(list(texts), prompt=query_prompt or None, normalize_embeddings=True,
                                convert_to_numpy=True, batch_size=64, show_progress_bar=sys.stderr.isatty())

        if args.from_kb or args.from_misses or any(not r.group.startswith(TEXT_INTENT) for r in rows):
            print("mining hard negatives: the FAQ the base model confuses each question with", file=sys.stderr)
            rows = mine_kb_negatives(rows, load_kb(args.from_kb or settings.kb), encode)
        if args.mine_negatives and any(r.group.startswith(TEXT_INTENT) for r in rows):
            print("mining hard negatives: the training text of another intent the base model puts closest to each "
                  "pair (below its own partner)", file=sys.stderr)
            before_mining = sum(r.negative is not None for r in rows)
            rows = mine_pair_negatives(rows, encode)
            data_summary["given a mined negative"] = sum(r.negative is not None for r in rows) - before_mining
    train_rows = sample_rows(rows_for_loss(rows, loss), args.max_examples, args.seed)
    if not train_rows:
        raise CliError(f"no usable examples for the {loss} loss (MNRL needs pairs that mean the same)")
    timings["data + mining"] = time.monotonic() - phase
    print(f"training {loss} on {len(train_rows)} examples from {data_summary}, base {base_dir}", file=sys.stderr)

    before = None
    if faq_sets or pair_sets:
        phase = time.monotonic()
        before = validate("base", eval_encoder(base_dir, settings, config.threads), settings, faq_sets, pair_sets,
                          calibrate_sets, command)
        timings["validation (base)"] = time.monotonic() - phase

    phase = time.monotonic()
    try:
        result = train(model, base_dir, train_rows, out_dir, config, query_prompt, kb_prompt)
    except TrainingInterruptedError as exc:
        where = exc.checkpoint or "(no step finished: nothing saved)"
        print(f"faqbot: interrupted; weights of the last finished step are in {where} "
              "(a usable sentence-transformers model dir)", file=sys.stderr)
        return 130
    timings["training"] = time.monotonic() - phase
    print(f"trained {result.steps} step(s) in {result.seconds:.0f} s"
          + (f" (stopped early: {result.stopped_early})" if result.stopped_early else "") + f"; saved {out_dir}")

    provenance: dict[str, Any] = {
        "base": str(base_dir), "command": command, "data": data_summary, "loss": loss,
        "config": config.__dict__, "steps": result.steps, "planned_steps": result.planned_steps,
        "stopped_early": result.stopped_early, "train_seconds": round(result.seconds, 1),
        "loss_first": result.losses[:1], "loss_last": result.losses[-1:],
        "holdout": {"fraction": fraction, "train_rows": len(rows), "heldout_rows": len(heldout)},
        "calibration_pairs": {n: len(p) for n, p in (calibrate_sets.sets if calibrate_sets else {}).items()},
        "threshold_from": calibrate_sets.threshold_from if calibrate_sets and calibrate_sets.threshold_sets else None,
    }
    decision = None
    report_path = None
    if before is not None:
        phase = time.monotonic()
        after = validate("fine-tuned", eval_encoder(out_dir, settings, config.threads), settings, faq_sets, pair_sets,
                         calibrate_sets, command)
        timings["validation (fine-tuned)"] = time.monotonic() - phase
        gated = [s.name for s in faq_sets if s.role == "gate"]
        decision = gate(before, after, args.gate_tolerance, gated) if gated else None
        report_dir = out_dir / "report"
        report_dir.mkdir(exist_ok=True)
        images = plot_similarity(before, after, report_dir)
        for faq_set in (s for s in faq_sets if s.role != "simulated"):
            image = plot_faq_map(faq_set, before, after, report_dir)
            if image:
                images.append(image)
        timings["total"] = time.monotonic() - started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        report_path = report_dir / "report.md"
        report_path.write_text(report_markdown(
            command=command, base_dir=base_dir, out_dir=out_dir, config=config, train_result=result, before=before,
            after=after, decision=decision, timings=timings, peak_rss_mb=peak_mb, images=images,
            data_summary=data_summary, calibrate_sets=calibrate_sets, heldout_rows=len(heldout),
            simulated=[s.name for s in faq_sets if s.role == "simulated"],
            watched=[s.name for s in faq_sets if s.role == "watch"]), encoding="utf-8")
        provenance["figures"] = {
            label: {"faq": {n: r.summary() for n, r in figures.faq.items()},
                    "pairs": {n: r.summary() for n, r in figures.pairs.items()},
                    "calibration_threshold": figures.calibration.threshold}
            for label, figures in (("base", before), ("fine-tuned", after))
        }
        provenance["gate"] = decision.__dict__ if decision else None
        _print_comparison(before, after)
        print(f"report: {report_path}")
    timings.setdefault("total", time.monotonic() - started)
    provenance["timings_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    provenance["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, ensure_ascii=False, indent=2, default=str),
                                           encoding="utf-8")
    print(f"wall time {timings['total'] / 60:.1f} min, peak memory {provenance['peak_rss_mb']} MB")

    if args.deploy:
        assert decision is not None and before is not None  # --deploy requires FAQ sets (checked above)
        for reason in decision.reasons:
            print(f"  {reason}")
        if not decision.passed:
            print("deploy refused: held-out overall accuracy dropped; the configured encoder is unchanged")
            return 3
        serve_as = "onnx" if args.onnx else "q4" if args.q4 else "sentence-transformers"
        print(deploy(settings, out_dir, after, serve_as=serve_as, calibrate_sets=calibrate_sets, command=command,
                     report=report_path, calibration_texts=pack_texts(train_rows, args.seed) if args.q4 else ()))
    return 0


def _print_comparison(before: ModelFigures, after: ModelFigures) -> None:
    print("                                   base    fine-tuned")
    for name, old in before.faq.items():
        new = after.faq[name]
        print(f"FAQ {name:12s} top-1             {_fmt(old.top1, 4)}  {_fmt(new.top1, 4)}")
        print(f"FAQ {name:12s} overall accuracy  {_fmt(old.overall_accuracy, 4)}  {_fmt(new.overall_accuracy, 4)}"
              f"   (thresholds {old.threshold:.4f} / {new.threshold:.4f})")
    for name, old in before.pairs.items():
        new = after.pairs[name]
        print(f"pairs {name:16s} ROC-AUC  {_fmt(old.roc_auc, 4)}  {_fmt(new.roc_auc, 4)}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune the encoder on your own pairs; validate; --deploy if not worse",
                              description="Fine-tune a sentence-transformers model on CPU (docs/finetune.md).")
    _add_common(p)
    data = p.add_argument_group("data")
    data.add_argument("--base", default="bundled", help="bundled (exported once into the data dir) or a model directory")
    data.add_argument("--train", type=Path, nargs="+", help="JSONL pairs/triplets/scored pairs, or TSV s1<TAB>s2<TAB>label")
    data.add_argument("--from-kb", dest="from_kb", type=Path, help="also train on the paraphrases of this KB")
    data.add_argument("--from-misses", dest="from_misses", action="store_true",
                      help="also train on resolved misses (attached to an FAQ) from the miss log")
    data.add_argument("--mine-negatives", dest="mine_negatives", action="store_true",
                      help="give each pair a hard negative the base model confuses it with: from the KB for pairs "
                           "with an FAQ id (always on for --from-kb/--from-misses), else from the other intents in "
                           "the training files")
    data.add_argument("--max-examples", dest="max_examples", type=int, help="train on a seeded sample of at most this many examples (after pairs are built)")
    data.add_argument("--out", type=Path, help="output model directory (default <data_dir>/models/finetuned-<time>)")
    data.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")

    train_group = p.add_argument_group("training (defaults finish on a 2-core CPU)")
    train_group.add_argument("--loss", choices=LOSSES, default="auto",
                             help="auto: mnrl for pairs/triplets, cosent when all examples are scored pairs")
    train_group.add_argument("--epochs", type=int, default=1)
    train_group.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    train_group.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float, default=3e-5)
    train_group.add_argument("--warmup-ratio", dest="warmup_ratio", type=float, default=0.1)
    train_group.add_argument("--max-seq-length", dest="max_seq_length", type=int, default=64,
                             help="tokens per text while training (default 64; FAQ questions are short)")
    train_group.add_argument("--train-embeddings", dest="train_embeddings", action="store_true",
                             help="also train the word-embedding matrix (250k rows for e5: 2x slower, more RAM)")
    train_group.add_argument("--trainable-layers", dest="trainable_layers", type=int,
                             help="train only the top N transformer layers (faster; default all)")
    train_group.add_argument("--symmetric", action="store_true",
                             help="MNRL both ways: each text of a pair must also find its partner among the "
                                  "batch's anchors (no extra encoding)")
    train_group.add_argument("--base-weight", dest="base_weight", type=float, default=0.0,
                             help="after training, blend the weights back toward the base's by this fraction "
                                  "(0.3: 70%% tuned + 30%% base): keeps more of what the base knew (default 0)")
    train_group.add_argument("--scale", type=float, default=20.0,
                             help="MNRL/CoSENT similarity scale, 1/temperature (default 20; e5 was pre-trained "
                                  "at 100, so its cosines sit close together)")
    train_group.add_argument("--pooling", choices=POOLINGS, help="replace the base's pooling (default: keep it)")
    train_group.add_argument("--query-prompt", dest="query_prompt", help="prefix for questions (default: the model's)")
    train_group.add_argument("--kb-prompt", dest="kb_prompt", help="prefix for KB texts (default per FAQBOT_KB_PREFIX)")
    train_group.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    train_group.add_argument("--seed", type=int, default=20240607)
    train_group.add_argument("--max-steps", dest="max_steps", type=int, help="stop after this many steps")
    train_group.add_argument("--time-budget", dest="time_budget", type=float,
                             help="stop training after this many minutes (the model is saved normally)")

    check = p.add_argument_group("validation and deploy")
    check.add_argument("--eval-kb", dest="eval_kb", type=Path, action="append",
                       help="held-out KB (repeatable, paired with --eval-queries)")
    check.add_argument("--eval-queries", dest="eval_queries", type=Path, action="append",
                       help="held-out {\"query\", \"expected\"} JSONL for the --eval-kb of the same position")
    check.add_argument("--eval-pairs", dest="eval_pairs", type=Path, nargs="+", help="held-out pair TSV files (ROC-AUC)")
    check.add_argument("--eval-max-pairs", dest="eval_max_pairs", type=int, help="seeded sample per --eval-pairs file")
    check.add_argument("--holdout", type=float, metavar="FRACTION",
                       help="keep this fraction of the training pairs out of training (grouped by text: no text in both "
                            "parts) and recalibrate both models on it; default 0.2 when the training data has 0/1 "
                            "labelled pairs and no --calibrate-pairs is given, else 0 (none)")
    check.add_argument("--calibrate-pairs", dest="calibrate_pairs", type=Path, nargs="+",
                       help="0/1 pair TSV files to recalibrate both models with (pairs sharing a text with the training "
                            "data are dropped; default: the --holdout part, else the configured KB)")
    check.add_argument("--calibrate-max-pairs", dest="calibrate_max_pairs", type=int, default=2000,
                       help="seeded sample per calibration pair set (default 2000)")
    check.add_argument("--gate-on", dest="gate_on", nargs="+", metavar="NAME",
                       help="the --eval-kb sets (by folder name, e.g. bq) whose overall accuracy gates a deploy: your "
                            "own FAQ; the others are reported only (default: every --eval-kb set gates)")
    check.add_argument("--gate-tolerance", dest="gate_tolerance", type=float, default=0.0,
                       help="accept a held-out overall-accuracy drop up to this (default 0: must not drop)")
    check.add_argument("--deploy", action="store_true",
                       help="if the gate passes: switch the encoder to the new model, rebuild + recalibrate the index")
    serving = check.add_mutually_exclusive_group()
    serving.add_argument("--onnx", action="store_true", help="with --deploy: serve it as ONNX int8 (faster on CPU)")
    serving.add_argument("--q4", action="store_true",
                         help=f"with --deploy: pack it in the bundled engine's 4-bit format ({Q4_FILE} in --out) "
                              "and serve it there: bundled speed and memory, no torch")
    check.add_argument("--undeploy", action="store_true", help="go back to the default encoder, auto or bundled (and rebuild the index)")
    p.set_defaults(func=cmd_finetune)
