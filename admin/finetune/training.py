"""Training a sentence-transformers model on CPU: the base, the config, the loop (docs/finetune.md).

Our own small loop around sentence-transformers' losses (MultipleNegativesRankingLoss, CoSENT,
CosineSimilarityLoss): no `datasets`/`accelerate` needed, with CPU-aware defaults (the 250k-row
word-embedding matrix frozen, 64 tokens, batches of 32), a progress bar with ETA, a checkpoint per
epoch, and Ctrl-C saving the weights of the last finished step.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from admin.errors import CommandError
from admin.finetune.data import TrainRow, mnrl_batches, plain_batches
from faq.errors import FaqbotError
from index.datadir import DataDir
from index.default_model import ensure_standard_export

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

LOSSES = ("auto", "mnrl", "cosent", "cosine")
POOLINGS = ("mean", "cls", "max")
CHECKPOINTS = "checkpoints"


class TrainingInterruptedError(FaqbotError):
    """Ctrl-C during training; `checkpoint` holds the weights of the last finished step."""

    code = "interrupted"

    def __init__(self, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted; checkpoint: {checkpoint}")
        self.checkpoint = checkpoint


# --- the base model -----------------------------------------------------------------------------


def resolve_base(base: str, data_dir: Path, *, progress: bool = True) -> Path:
    """The base as a sentence-transformers directory: `bundled` is exported once into the data dir."""
    if base == "bundled":
        return ensure_standard_export(DataDir(data_dir).bundled_export, progress=progress).resolve()
    path = Path(base)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CommandError(f"--base {base}: not 'bundled' nor a model directory (need config.json + weights; "
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
            raise CommandError(f"--pooling: the base model {base_dir} has no pooling module to replace")
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
            raise CommandError("--trainable-layers needs a BERT-shaped model (encoder.layer)")
        for parameter in transformer.embeddings.parameters():
            parameter.requires_grad_(False)
        for layer in list(layers)[: max(0, len(layers) - config.trainable_layers)]:
            for parameter in layer.parameters():
                parameter.requires_grad_(False)
    return model, query_prompt, kb_prompt


def loss_function(model: SentenceTransformer, config: TrainConfig) -> Any:
    """The sentence-transformers loss `config.loss` names, with its similarity scale."""
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


def save_model(model: SentenceTransformer, target: Path, base_dir: Path) -> Path:
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
    from tqdm import tqdm

    loss_fn = loss_function(model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise CommandError("nothing to train: every parameter is frozen")
    epochs = [plan_batches(rows, config, epoch) for epoch in range(config.epochs)]
    planned = sum(len(batches) for batches in epochs)
    if planned == 0:
        raise CommandError(f"{len(rows)} training example(s) make no batch of two distinct intents; add more pairs")
    total = min(planned, config.max_steps) if config.max_steps else planned
    optimizer, scheduler = _optimizer(trainable, config, total)
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
                loss_value = _step(model, loss_fn, batch, config, query_prompt, kb_prompt, trainable, optimizer)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                result.steps += 1
                result.losses.append(loss_value)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{np.mean(result.losses[-20:]):.4f}")
                if bar.disable and show_progress and (result.steps % max(1, total // 20) == 0 or result.steps == total):
                    _progress_line(result, total, epoch, started)
                if config.max_steps and result.steps >= config.max_steps:
                    result.stopped_early = f"--max-steps {config.max_steps}"
                elif deadline and time.monotonic() > deadline:
                    result.stopped_early = f"time budget of {config.time_budget_minutes:g} min"
                if result.stopped_early:
                    break
            if result.stopped_early or epoch == config.epochs:
                break
            model.eval()
            result.checkpoints.append(str(save_model(model, checkpoints / f"epoch-{epoch}", base_dir)))
            model.train()
    except KeyboardInterrupt:
        bar.close()
        model.eval()
        optimizer.zero_grad(set_to_none=True)
        saved = save_model(model, checkpoints / "interrupted", base_dir) if result.steps else None
        raise TrainingInterruptedError(saved) from None
    bar.close()
    model.eval()
    if config.base_weight:
        blend_with_base(model, base_dir, config.base_weight)
    result.seconds = time.monotonic() - started
    save_model(model, Path(out_dir), base_dir)
    return result


def _optimizer(trainable: list[Any], config: TrainConfig, total: int) -> tuple[Any, Any]:
    """AdamW with linear warm-up then linear decay to 0 over `total` steps."""
    import torch

    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.01)
    warmup = max(1, int(total * config.warmup_ratio)) if total > 1 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _step(model: SentenceTransformer, loss_fn: Any, batch: Sequence[TrainRow], config: TrainConfig,
          query_prompt: str, kb_prompt: str, trainable: list[Any], optimizer: Any) -> float:
    """One optimiser step on one batch (gradients clipped to norm 1); the batch's loss."""
    import torch

    features, labels = _features(model, batch, config, query_prompt, kb_prompt)
    loss_value = loss_fn(features, labels)
    loss_value.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    return float(loss_value.detach())


def _progress_line(result: TrainResult, total: int, epoch: int, started: float) -> None:
    """No terminal (nohup, a log file): a plain line every 5% so the log still shows progress and ETA."""
    elapsed = time.monotonic() - started
    eta = elapsed / result.steps * (total - result.steps)
    print(f"training: step {result.steps}/{total}, epoch {epoch}, loss "
          f"{np.mean(result.losses[-20:]):.4f}, {elapsed / 60:.1f} min elapsed, ETA {eta / 60:.1f} min",
          file=sys.stderr, flush=True)
