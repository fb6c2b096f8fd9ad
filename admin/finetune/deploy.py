"""Deploying a fine-tuned model: record it in the data dir, rebuild the index with its calibration.

`bot.service.encoder_spec` reads the record (`<data_dir>/models/active.json`) in place of the
defaults `auto`/`bundled`; `undeploy` goes back to them. The model serves as itself
(sentence-transformers), as ONNX int8, or packed in the bundled engine's 4-bit format (`q4`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from admin.errors import CommandError
from admin.finetune.data import TrainRow
from admin.finetune.validation import CalibrationPairs, ModelFigures, fit_calibration
from admin.quality.calibrate import CachingEncoder
from bot.service import build_and_publish, encoder_spec, previous_calibration
from bot.settings import Settings
from faq import load_kb
from index.datadir import DataDir
from index.encoders import load_encoder
from index.progress import progress_bar

Q4_FILE = "model-q4.bin"  # `--deploy --q4`: the model packed for the bundled engine


def deployed_record_path(settings: Settings) -> Path:
    return DataDir(settings.data_dir).deployed_record


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
        raise CommandError(f"FAQBOT_ENCODER/--encoder is {settings.encoder!r}: a deployed model replaces only the defaults "
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
            raise CommandError(f"--q4: {exc}") from exc
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
        raise CommandError(f"the configured encoder ({settings.encoder!r}) does not pick up a deployed model; "
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
    path = deployed_record_path(settings)
    if not path.is_file():
        return f"nothing deployed ({path} does not exist)"
    path.replace(path.with_suffix(".json.undeployed"))
    encoder = load_encoder(encoder_spec(settings))
    kb = load_kb(settings.kb)
    index = build_and_publish(settings, encoder, kb=kb, calibration=previous_calibration(settings, encoder),
                              progress=progress_bar("encoding the KB")(len(kb.texts())))
    return f"undeployed: encoder {encoder.name}, index {index.version}. Restart `faqbot serve` to load it."

